"""The ``llmsession`` console script: the CLI, or one line saying which extra it needs.

The command and the server it runs need the ``server`` extra (click, FastAPI,
uvicorn, prometheus-client). A plain ``pip install llmsession`` installs the
script all the same, so without the extra it names the install command instead
of ending in a traceback. Nothing here imports a module of that extra before
the CLI does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final, NoReturn

__all__ = ["SERVER_MODULES", "exit_if_server_extra_missing", "main"]

#: The top-level modules the ``server`` extra installs (FastAPI brings starlette and pydantic).
SERVER_MODULES: Final = frozenset(
    {"click", "fastapi", "starlette", "pydantic", "uvicorn", "prometheus_client"}
)

#: The exit status when the extra is missing: the CLI's status for a failure that is
#: not bad input.
EXIT_MISSING_EXTRA: Final = 1


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``llmsession`` command; without the ``server`` extra, say how to install it."""
    try:
        from llmsession.cli import main as cli_main

        cli_main(argv)
    except ModuleNotFoundError as error:
        exit_if_server_extra_missing(error, "the llmsession command")
        raise


def exit_if_server_extra_missing(error: ModuleNotFoundError, what: str) -> None:
    """Exit with one line naming the install command if ``error`` is a module of the
    ``server`` extra; return (for the caller to re-raise) if it is any other module."""
    missing = (error.name or "").partition(".")[0]
    if missing not in SERVER_MODULES:
        return
    print(
        f"Error: {what} needs the server extra ({missing} is not installed): "
        "pip install 'llmsession[server]'",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_MISSING_EXTRA) from None
