"""How a command of llmsession's reports a failure: one ``Error:`` line on stderr, and
its exit status (docs/cli.md): 2 for bad input, 3 for an address it cannot listen
on, 1 for anything else.

Shared by the ``llmsession`` command and ``python -m llmsession.fake_provider``,
which runs without it.
"""

from __future__ import annotations

import os
from typing import Any, Final

import click

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CANNOT_LISTEN",
    "BadInput",
    "CannotListen",
    "Failure",
    "OneLineCommand",
    "usage_failure",
]

#: Exit status for bad input: an option, an argument, a file that cannot be used.
EXIT_BAD_INPUT: Final = 2
#: Exit status when the address is in use or cannot be bound.
EXIT_CANNOT_LISTEN: Final = 3


class Failure(click.ClickException):
    """An error shown as one line on stderr; exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class BadInput(Failure):
    """Bad input shown as one line on stderr; exit status 2."""

    exit_code = EXIT_BAD_INPUT


class CannotListen(Failure):
    """An address that cannot be listened on, as one line on stderr; exit status 3."""

    exit_code = EXIT_CANNOT_LISTEN


def usage_failure(error: click.UsageError) -> BadInput:
    """Click's usage error (usage, hint and message on three lines) as one line; a
    bad value that came from an environment variable names the variable, which
    the user set, besides the option, which they did not type."""
    message = error.format_message()
    if isinstance(error, click.BadParameter) and error.ctx is not None:
        variable = _from_environment(error.ctx, error.param)
        if variable is not None:
            message = f"{message.removesuffix('.')}, set by {variable} in the environment."
    where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
    return BadInput(f"{message}{where}")


def _from_environment(ctx: click.Context, param: click.Parameter | None) -> str | None:
    """The environment variable ``param``'s value came from, if it did."""
    if param is None:
        return None
    if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.ENVIRONMENT:
        return None
    envvar = param.envvar
    if isinstance(envvar, str):
        return envvar
    # Several names: the first one set gave the value.
    return next((name for name in envvar or () if os.environ.get(name)), None)


class OneLineCommand(click.Command):
    """A command whose usage errors are one line (:func:`usage_failure`).

    Click prints a usage error as usage, hint and message on three lines. An
    option given without its value is refused by the option parser before the
    command's context exists: the error is given one, so that its line too
    names the command's ``--help``. A group mixes it in ahead of ``click.Group``.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            if error.ctx is None:
                error.ctx = click.Context(self, info_name=info_name, parent=parent)
            raise usage_failure(error) from error

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as error:
            raise usage_failure(error) from error
