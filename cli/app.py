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
    from . import compare, entropy, models, train

    for module in (entropy, compare, train, models):
        module.register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on `argv`; user errors are one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    if not app.registered_commands:
        _register()
    try:
        app(args=argv, standalone_mode=False)
    except LayerpolicyError as error:
        err_console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted:[/] finished work is saved; rerun the same command to resume "
            "(train: add --resume)",
            soft_wrap=True,
        )
        return 130
    except typer.Exit as stop:
        return stop.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as usage:  # bad options or arguments: click's usage message
        usage.show()
        return getattr(usage, "exit_code", 2)
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
