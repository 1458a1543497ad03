"""The graded runs behind the README's profiles by correctness and three readouts.

Each family's raw-readout run of the problems, sampled with room for answers to end so that they
can be graded (make_figures' `graded_spec`), analysed or loaded through the run cache; then the
record.json entries of the two parts drawn from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerpolicy.comparison import compare
from layerpolicy.spec import RunSpec

from .figures_correctness import correctness_facts
from .figures_readouts import readout_facts


def graded_runs(families: tuple[str, ...], spec: RunSpec, cache: Path) -> dict[str, Path]:
    """Each family's graded run directory (`spec`, analysed or loaded in `cache`), by family."""
    graded = compare(families, spec, cache=cache)
    return dict(zip(families, graded.runs.values(), strict=True))


def correctness_record(runs: dict[str, Path], spec: RunSpec, out: Path) -> dict[str, Any]:
    """record.json's "by_correct" from the graded runs (their figures and tables into `out`)."""
    return {**correctness_facts(runs, out), "max_new_tokens": spec.prompts.generate}


def readouts_record(
    runs: dict[str, Path], spec: RunSpec, cache: Path, out: Path
) -> tuple[dict[str, Any], list[Path]]:
    """record.json's "readouts" from the graded runs (their J-lens and logit-lens runs in
    `cache`), and the figures drawn into `out`."""
    dirs = {family: (family, raw_dir) for family, raw_dir in runs.items()}
    readouts, drawn = readout_facts(dirs, spec, cache, out)
    return {**readouts, "max_new_tokens": spec.prompts.generate}, drawn
