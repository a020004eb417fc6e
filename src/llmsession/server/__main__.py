"""``python -m llmsession.server``: serve with settings from the LLMSESSION_* variables."""

from __future__ import annotations

import logging
import sys

from llmsession.errors import InvalidInput
from llmsession.server.runner import serve
from llmsession.server.settings import ServerSettings

__all__ = ["main"]


def main() -> int:
    """Serve until stopped; 0 after a graceful stop, 2 for bad settings, 3 if startup fails."""
    try:
        settings = ServerSettings.from_env()
    except InvalidInput as error:
        print(f"llmsession.server: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
