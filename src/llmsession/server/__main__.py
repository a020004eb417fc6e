"""``python -m llmsession.server``: serve with settings from the LLMSESSION_* variables."""

from __future__ import annotations

import sys

from llmsession.console import exit_if_server_extra_missing
from llmsession.errors import InvalidInput
from llmsession.server.settings import ServerSettings

__all__ = ["main"]


def main() -> int:
    """Serve until stopped; the exit status of ``llmsession serve`` (docs/cli.md)."""
    try:
        # The runner loads uvicorn: without the server extra, say so in one line.
        from llmsession.server.runner import EXIT_BAD_INPUT, run
    except ModuleNotFoundError as error:
        exit_if_server_extra_missing(error, "python -m llmsession.server")
        raise
    try:
        settings = ServerSettings.from_env()
    except InvalidInput as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
