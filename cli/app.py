"""Typer application: registers the commands and turns user errors into one line on stderr."""

from __future__ import annotations

import inspect
import sys
import warnings

import typer

from layerpolicy.config import DEFAULT_MODEL
from layerpolicy.errors import LayerpolicyError
from layerpolicy.spec import RunSpec

from . import compare, entropy, lens, models, options, train, view
from .console import err_console

app = typer.Typer(
    name="layerpolicy",
    help="Read a language model's residual stream as a stack of internal policies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _command in (entropy, compare, train, models, lens, view):
    _command.register(app)


def spec_from_argv(argv: list[str]) -> RunSpec:
    """The RunSpec of a `layerpolicy entropy ...` or `layerpolicy compare ...` command line
    (`argv` without `layerpolicy`), parsed as the command parses it: the inverse of
    `RunSpec.to_argv` for entropy runs. For compare, the spec its models are analysed with
    (its model: the default; `spec.replace(model=...)` gives each model's)."""
    group = typer.main.get_command(app)
    command = group.get_command(typer.Context(group), argv[0]) if argv else None
    if command is None or argv[0] not in ("entropy", "compare"):
        raise LayerpolicyError(f"not a `layerpolicy entropy` or `compare` command line: {argv!r}")
    params = command.make_context(argv[0], list(argv[1:])).params
    given = {"model": DEFAULT_MODEL, "column": None, "response_column": None, **params}
    names = inspect.signature(options.analysis_spec).parameters
    return options.analysis_spec(**{name: given[name] for name in names})


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def _error(message: str) -> None:
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)


def _usage_line(usage: typer.TyperException) -> str:
    """Click's usage error as one line that names the command's --help."""
    message = " ".join(usage.format_message().replace("Value error, ", "").split())
    ctx = getattr(usage, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


def main(argv: list[str] | None = None) -> int:
    """Run the command line on `argv`; user errors are one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="layerpolicy", standalone_mode=False)
    except LayerpolicyError as error:
        _error(str(error))
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
    except typer.TyperException as usage:  # bad options or arguments
        _error(_usage_line(usage))
        return getattr(usage, "exit_code", 2)
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
