"""serve: run the app under uvicorn until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from llmsession.server.app import create_app
from llmsession.server.settings import ServerSettings

__all__ = ["STARTUP_FAILURE", "serve"]

#: Exit status when the server could not start (uvicorn's own code for it).
STARTUP_FAILURE = 3

logger = logging.getLogger("llmsession.server")


def _note_signal(signum: int, frame: FrameType | None) -> None:
    logger.info("stopped by signal %s", signal.Signals(signum).name)


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve ``settings`` until SIGTERM/SIGINT; in-flight requests finish first.

    Returns normally after a graceful stop (so the process exits 0). If the
    server cannot start (store unreachable, port taken), raises
    ``SystemExit(STARTUP_FAILURE)`` after uvicorn has logged why.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal once it has shut down, to the handler
    # that was installed before it ran; with the default one that would kill the
    # process after a clean shutdown. A handler that only logs lets us exit 0.
    previous = {
        signum: signal.signal(signum, _note_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
