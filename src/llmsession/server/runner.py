"""Run the server: check the store, take the port, serve under uvicorn until SIGTERM or
SIGINT, then shut down gracefully.

``llmsession serve`` and ``python -m llmsession.server`` both end in :func:`run`, so
they fail the same way, with the same exit status (docs/cli.md has the table):

====  ===============================================================================
0     stopped gracefully by SIGTERM or SIGINT
1     the store cannot be reached or used
2     bad input: a setting, a store URL, the providers' file
3     the server could not start: its address is in use or cannot be bound, or the
      application's startup failed
====  ===============================================================================

Every failure before serving is one line on stderr, ``Error: ...``, and comes before
uvicorn announces anything.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from llmsession.errors import InvalidInput, LLMSessionError
from llmsession.gateway.config import GatewayConfig, load_config
from llmsession.server.app import create_app
from llmsession.server.settings import ServerSettings
from llmsession.store import open_store

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "STARTUP_FAILURE",
    "check_store",
    "listen",
    "run",
    "serve",
    "shown_url",
]

#: Exit status when the store cannot be reached or used.
EXIT_FAILURE = 1
#: Exit status for bad input: a setting or a store URL.
EXIT_BAD_INPUT = 2
#: Exit status when the server could not start (uvicorn's own code for it).
STARTUP_FAILURE = 3

logger = logging.getLogger("llmsession.server")


def run(settings: ServerSettings) -> int:
    """Check the store, bind the address, then serve; the exit status (see above).

    What both entry points do once they have their settings. A failure before
    serving is printed as one ``Error:`` line on stderr.
    """
    _configure_logging()
    try:
        # The providers first: a bad file is one line, before the store (a SQLite
        # file, say) is made or anything is announced.
        gateway_config = (
            None if settings.gateway_config is None else load_config(settings.gateway_config)
        )
        check_store(settings.store_url)
    except InvalidInput as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except LLMSessionError as error:
        return _fail(str(error), EXIT_FAILURE)
    try:
        sock = listen(settings.host, settings.port)
    except OSError as error:
        return _fail(str(error), STARTUP_FAILURE)
    logger.info("store: %s", shown_url(settings.store_url))
    serve(settings, sock=sock, gateway_config=gateway_config)
    return 0


def check_store(store_url: str) -> None:
    """Open the store once and ping it, so a wrong URL or an unreachable database is
    a clear error (InvalidInput, StoreError) before the server starts, not a
    traceback from its startup."""

    async def check() -> None:
        store = await open_store(store_url)
        try:
            await store.ping()
        finally:
            await store.aclose()

    asyncio.run(check())


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, ready for uvicorn.

    Bound before the application starts, so an address in use is an OSError
    naming the address now, not after uvicorn has announced a startup.
    """
    # As uvicorn binds: IPv6 for an address with a colon, SO_REUSEADDR so a restart
    # does not wait for the old connections' TIME_WAIT.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        reason = error.strerror or str(error)
        if error.errno == errno.EADDRINUSE:
            hint = (
                "is another server running there? Choose another --port (LLMSESSION_PORT) "
                "or --host (LLMSESSION_HOST)"
            )
        else:
            # Not an address of this machine, or not an address at all.
            hint = "give --host (LLMSESSION_HOST) an address of this machine, e.g. 127.0.0.1"
        raise OSError(f"cannot listen on {where}: {reason}; {hint}") from error
    return sock


def serve(
    settings: ServerSettings,
    *,
    log_level: str = "info",
    sock: socket.socket | None = None,
    gateway_config: GatewayConfig | None = None,
) -> None:
    """Serve ``settings`` until SIGTERM/SIGINT; in-flight requests finish first.

    ``sock`` is an address already bound by :func:`listen`; without it, serve binds
    one. ``gateway_config`` is the providers' file already read (else create_app
    reads the one the settings name). Returns normally after a graceful stop (so
    the process exits 0). If the server cannot start (address in use, the
    application's startup failed), raises ``SystemExit(STARTUP_FAILURE)`` after
    logging why.
    """
    if sock is None:
        try:
            sock = listen(settings.host, settings.port)
        except OSError as error:
            logger.error("%s", error)
            raise SystemExit(STARTUP_FAILURE) from error
    config = uvicorn.Config(
        create_app(settings, gateway_config=gateway_config),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        server_header=False,
    )
    server = _Server(config)
    # uvicorn re-raises the stop signal once it has shut down, to the handler
    # that was installed before it ran; with the default one that would kill the
    # process after a clean shutdown. A handler that only logs lets us exit 0.
    previous = {
        signum: signal.signal(signum, _note_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def shown_url(url: str) -> str:
    """``url`` without its password, to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the address once the application has started.

    uvicorn announces only the addresses it binds itself, and here the socket
    is bound beforehand (:func:`listen`).
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if sockets[0].family == socket.AF_INET6 else host
            logger.info("serving on http://%s:%d (SIGTERM or Ctrl-C stops)", shown, port)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    logger.info("stopped by signal %s", signal.Signals(signum).name)


def _configure_logging() -> None:
    # uvicorn configures only its own loggers; llmsession's (the store line, the
    # sweeper, a store's warnings) take this format. A no-op if the root logger
    # was set up already.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _fail(message: str, status: int) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return status
