"""Typer application: each command parses options into a config and calls the library."""

from __future__ import annotations

import sys
import warnings

import typer
from rich.console import Console

from layerpolicy.errors import LayerpolicyError

app = typer.Typer(
    name="layerpolicy",
    help="Read a language model's residual stream as a stack of internal policies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _register() -> None:
    from . import entropy, models

    for module in (entropy, models):
        module.register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def main() -> None:
    """Console-script entry point: user errors are one line on stderr with exit code 2."""
    warnings.showwarning = _show_warning
    _register()
    try:
        app(standalone_mode=False)
    except LayerpolicyError as error:
        err_console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted:[/] finished prompts are saved; rerun the same command to resume"
        )
        sys.exit(130)
    except (typer.Abort, typer.Exit) as stop:
        sys.exit(getattr(stop, "exit_code", 1))
    except Exception as error:  # click usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
