"""``python -m llmsession.server``: serve with settings from the LLMSESSION_* variables."""

from __future__ import annotations

import sys

from llmsession.errors import InvalidInput
from llmsession.server.runner import EXIT_BAD_INPUT, run
from llmsession.server.settings import ServerSettings

__all__ = ["main"]


def main() -> int:
    """Serve until stopped; the exit status of ``llmsession serve`` (docs/cli.md)."""
    try:
        settings = ServerSettings.from_env()
    except InvalidInput as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
