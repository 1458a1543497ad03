"""The README's Quick tour: its two commands, their outputs and the blocks that show them.

`quick_tour` writes what `layerpolicy entropy` and `layerpolicy compare` print on the cached runs of
scripts/make_figures.py (ENTROPY_OUTPUT, COMPARE_OUTPUT: the CLI's own rendering at
TERMINAL_WIDTH columns), after checking that the commands shown name these very runs.
`render_entropy_tour` and `render_compare_tour` turn those outputs into the README's tour-entropy
and tour-compare blocks, from the figures directory alone, with long tables cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from layerpolicy.cli.app import app, spec_from_argv
from layerpolicy.cli.console import console, err_console
from layerpolicy.cli.entropy import print_summary
from typer.testing import CliRunner

import layerpolicy as lp
from layerpolicy.comparison import CompareResult, cache_name
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.runs import atomic_path, read_json
from layerpolicy.spec import RunSpec

from .findings_format import (
    COMPARE_OUTPUT,
    ENTROPY_OUTPUT,
    RECORD,
    TERMINAL_WIDTH,
    count_word,
    device_phrase,
    duration,
    wrap,
)

REPO = Path(__file__).resolve().parent.parent
TOUR_FAMILY = "llama"  # the family whose raw run the Quick tour's entropy table shows
HEAD_ROWS, TAIL_ROWS, READING_LINES = 5, 4, 3  # what the Quick tour keeps of long outputs
CUT = "…"


# ------------------------------------------------------------------------------ commands


def quick_tour(
    raw: CompareResult, spec: RunSpec, runs: Path, out: Path, families: tuple[str, ...]
) -> dict[str, Any]:
    """The Quick tour's two outputs, rendered by the CLI's own code on the cached runs `raw` of
    `families` (analysed as `spec` says, cached under `runs`/cache), as the commands shown with
    them print them (checked to name these very runs first)."""
    run = raw.runs[list(raw.runs)[families.index(TOUR_FAMILY)]]
    entropy = entropy_argv(spec, TOUR_FAMILY)
    check_same_run(entropy, run)
    with _terminal(TERMINAL_WIDTH), console.capture() as captured:
        print_summary(lp.load_run(run))
    _write_text(out / ENTROPY_OUTPUT, captured.get())
    comparison = compare_argv(spec, runs, families)
    check_loads_cached(comparison, raw)
    with _terminal(TERMINAL_WIDTH), _working_directory(REPO):
        result = CliRunner().invoke(app, comparison[1:])
    if result.exit_code != 0:
        raise LayerpolicyError(
            f"`{shlex.join(comparison)}` failed: {result.exception}"
        ) from result.exception
    _write_text(out / COMPARE_OUTPUT, result.stdout)
    return {
        "entropy": {"family": TOUR_FAMILY, "command": shlex.join(entropy)},
        "compare": {"command": shlex.join(comparison), "cache": shown(str(runs / "cache"))},
    }


def entropy_argv(spec: RunSpec, family: str) -> list[str]:
    """The `layerpolicy entropy` command line of `family`'s run as `spec` says."""
    return spec.replace(model=family).to_argv()


def compare_argv(spec: RunSpec, runs: Path, families: tuple[str, ...]) -> list[str]:
    """The `layerpolicy compare` command line that loads the runs of `families` analysed as
    `spec` says from the cache (run in the repository; --cache and --out only where `runs` is
    not the repository's runs/)."""
    argv = ["layerpolicy", "compare", *families, *spec.to_argv()[2:]]
    if runs.resolve() != (REPO / "runs").resolve():
        where = runs / f"compare-{'-'.join(families)}"
        argv += ["--cache", shown(str(runs / "cache")), "--out", shown(str(where))]
    return argv


def check_same_run(argv: list[str], run: Path) -> None:
    """Raise unless the `layerpolicy entropy` command line `argv` has the settings of `run`."""
    spec = spec_from_argv(argv[1:])
    try:
        spec.check_against(
            read_json(run / "run.json"),
            where=shown(str(run)),
            prompts_sha256=spec.prompts.load().sha256,
            model_name=spec.model.resolve().name,
        )
    except RunDirectoryError as error:
        raise LayerpolicyError(f"`{shlex.join(argv)}` would not reproduce: {error}") from None


def check_loads_cached(argv: list[str], result: CompareResult) -> None:
    """Raise unless the `layerpolicy compare` command line `argv`, run in the repository, loads
    the runs of `result` from its cache (instead of analysing anything)."""
    base = spec_from_argv(argv[1:])
    params = cli_params(argv[1:])
    sha256 = base.prompts.load().sha256
    cached = set()
    for model in params["specs"]:
        one = base.replace(model=model)
        source = one.model.resolve()
        name = cache_name(one, source.name, source.location, sha256)
        cached.add((REPO / params["cache"] / name).resolve())
    if cached != {Path(p).resolve() for p in result.runs.values()}:
        raise LayerpolicyError(
            f"`{shlex.join(argv)}` would not load the cached runs of family_runs(); make "
            "compare_argv() match it"
        )


def cli_params(argv: list[str]) -> dict[str, Any]:
    """The parsed parameters of a `layerpolicy` command line (parsed by click, not run)."""
    group = typer.main.get_command(app)
    command = group.get_command(typer.Context(group), argv[0])
    if command is None:
        raise LayerpolicyError(f"no layerpolicy command {argv[0]!r}")
    return command.make_context(argv[0], list(argv[1:])).params


def shown(source: str) -> str:
    """A prompt source as a command takes it: a named set as is, a file relative to the repository
    when it lies in it."""
    path = Path(source)
    if not path.exists():
        return source
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else source


@contextlib.contextmanager
def _terminal(width: int) -> Iterator[None]:
    """The CLI's consoles `width` columns wide, as on a terminal of that width."""
    saved = [(c, c._width) for c in (console, err_console)]
    for c, _ in saved:
        c.width = width
    try:
        yield
    finally:
        for c, before in saved:
            c._width = before


@contextlib.contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def _write_text(path: Path, text: str) -> None:
    """`text` as a terminal shows it (no escape codes, no trailing blanks), written atomically."""
    plain = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)", "", text)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(line.rstrip() for line in plain.splitlines()) + "\n")


# ------------------------------------------------------------------------------ README blocks


def render_entropy_tour(figures_dir: Path) -> str:
    """The Quick tour's single-model block: what it costs, the command, its table (cut)."""
    record = read_json(figures_dir / RECORD)
    tour = record["quick_tour"]["entropy"]
    model = record["models"][tour["family"]]
    lines = (figures_dir / ENTROPY_OUTPUT).read_text().splitlines()
    intro = (
        f"One model's profile ({duration(model['seconds']['raw'])} to sample and score "
        f"{record['prompts']['n_problems']} {record['prompts']['title']} problems on "
        f"{device_phrase(model['device'])}): residual entropy with its 95% CI, the entropy "
        "change of attention and MLP, and KL(π_θ ‖ π^l):"
    )
    return (
        f"{wrap(intro)}\n\n```bash\n{tour['command']}\n```\n\n```text\n"
        + "\n".join(cut_table(lines, HEAD_ROWS, TAIL_ROWS))
        + "\n```"
    )


def render_compare_tour(figures_dir: Path) -> str:
    """The Quick tour's comparison block: the command and its output (cut)."""
    record = read_json(figures_dir / RECORD)
    tour = record["quick_tour"]["compare"]
    lines = (figures_dir / COMPARE_OUTPUT).read_text().splitlines()
    ends = [i for i, line in enumerate(lines) if line.startswith("└")]
    head = ends[0] + 1 + READING_LINES if ends else len(lines)
    tail = next(
        (len(lines) - i for i, line in enumerate(lines) if line.startswith("results in")), 0
    )
    intro = (
        f"{count_word(len(record['families'])).capitalize()} families on the same problems "
        f"(the runs are cached under `{tour['cache']}/`, so "
        "this repeat only loads them):"
    )
    return (
        f"{wrap(intro)}\n\n```bash\n{tour['command']}\n```\n\n```text\n"
        + "\n".join(keep_ends(lines, head, tail))
        + "\n```"
    )


def keep_ends(lines: list[str], head: int, tail: int, marker: str = CUT) -> list[str]:
    """The first `head` and last `tail` lines with `marker` between (all when nothing is cut)."""
    if head + tail >= len(lines) - 1:
        return lines
    return [*lines[:head], marker, *lines[len(lines) - tail :]]


def cut_table(lines: list[str], head: int, tail: int) -> list[str]:
    """A rich table keeping its first `head` and last `tail` body rows, an empty row marked `…`
    in their place."""
    starts = [i for i, line in enumerate(lines) if line.startswith("┡")]
    ends = [i for i, line in enumerate(lines) if line.startswith("└")]
    if not starts or not ends:
        return lines
    first, last = starts[0] + 1, ends[0]
    if head + tail >= last - first - 1:
        return lines
    cells = lines[first].split("│")
    blank = ["", *(" " * len(c) for c in cells[1:-1]), ""]
    blank[1] = blank[1][:-2] + CUT + " "
    return [*lines[: first + head], "│".join(blank), *lines[last - tail :]]
