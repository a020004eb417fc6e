"""Run the fake provider under uvicorn, and the ``fake-provider`` command that does it.

Its startup errors follow the ``llmsession`` command's rules (docs/cli.md), under
either name (``llmsession fake-provider``, ``python -m llmsession.fake_provider``):
one ``Error:`` line on stderr, exit status 2 for bad input and 3 for an address
that cannot be bound.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from pathlib import Path
from signal import SIGINT, SIGTERM
from types import FrameType
from typing import Final

import click

from llmsession.command_errors import (
    EXIT_BAD_INPUT,
    EXIT_CANNOT_LISTEN,
    CannotListen,
    OneLineCommand,
)
from llmsession.fake_provider.provider import FakeProvider

__all__ = ["API_KEY_ENV", "EXIT_BAD_INPUT", "EXIT_CANNOT_LISTEN", "fake_provider_command", "serve"]

#: The variable holding the accepted API key(s), comma-separated, when no --api-key is given.
API_KEY_ENV: Final = "LLMSESSION_FAKE_API_KEY"


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def serve(provider: FakeProvider, *, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``provider`` on ``host:port`` (0: any free port) until SIGINT or SIGTERM.

    The socket is bound and listening before the URL is printed, so a caller that
    reads the line can connect at once.
    """
    # Imported here: the ``llmsession`` command loads this module for every command.
    import uvicorn

    from llmsession.fake_provider.app import create_app

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if error.errno == errno.EADDRINUSE:
            hint = "is another server running there? Choose another --port (0 picks a free one)"
        else:
            # Not an address of this machine, or not an address at all.
            hint = "give --host an address of this machine, e.g. 127.0.0.1"
        reason = error.strerror or str(error)
        raise CannotListen(f"cannot listen on {where}: {reason}; {hint}") from None
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"fake provider listening on http://{shown_host}:{bound_port}/v1", nl=True)
    config = uvicorn.Config(
        create_app(provider),
        lifespan="off",
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    # uvicorn re-raises the stop signal after its shutdown to the handler installed
    # before it ran; with the default one that kills the process after a clean stop.
    previous = {signum: signal.signal(signum, _ignore) for signum in (SIGTERM, SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command("fake-provider", cls=OneLineCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on; 0 picks a free one (the printed URL names it).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help=f"An accepted API key; repeat for several [env {API_KEY_ENV}, comma-separated]. "
    "Prefer the variable: a flag shows in the process list.",
)
@click.option(
    "--billing-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append each billing entry to this JSON Lines file.",
)
@click.option(
    "--cache-ttl",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an unused cached prefix lives [default: until a reset].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="uvicorn's log level.",
)
def fake_provider_command(
    *,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    billing_log: Path | None,
    cache_ttl: float | None,
    log_level: str,
) -> None:
    """Run a fake provider on loopback, for tests and demos.

    It speaks Chat Completions, Responses, Anthropic's Messages and Gemini's
    generateContent (streaming too), counts tokens with a documented rule, caches
    prompts as each provider does, logs what it bills at GET /_fake/billing and
    takes faults at POST /_fake/faults (docs/fake-provider.md).
    """
    keys = api_keys or tuple(
        key.strip() for key in os.environ.get(API_KEY_ENV, "").split(",") if key.strip()
    )
    if not keys:
        raise click.UsageError(f"give an accepted key with --api-key or {API_KEY_ENV}")
    if any(not key.strip() for key in keys):
        raise click.BadParameter(
            "an API key cannot be empty or blank; give the key a client will send",
            param_hint="'--api-key'",
        )
    if billing_log is not None:
        _check_writable(billing_log)
    provider = FakeProvider(keys, billing_log=billing_log, cache_ttl_seconds=cache_ttl)
    serve(provider, host=host, port=port, log_level=log_level)


def _check_writable(path: Path) -> None:
    """Refuse a billing log that cannot be appended to, now rather than as a 500 on
    every billed request; the file is created if it does not exist."""
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as error:
        raise click.BadParameter(
            f"cannot append to {str(path)!r}: {error.strerror or error}; "
            "give a file in an existing directory that this process can write to",
            param_hint="'--billing-log'",
        ) from None
