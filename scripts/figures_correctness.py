"""The data behind the README's profiles by correctness: figures/by_correct_<family>.csv, the
by_correct figures as PNG, and record.json's "by_correct" facts.

Each family's raw-readout run (its responses graded by the verifier when sampled) is split into
correct and incorrect responses by `layerpolicy.correctness.by_correct`, the code of `layerpolicy
compare RUN --by correct`. A group of fewer than MIN_GROUP responses is not compared: the facts
then hold the counts only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from layerpolicy.analysis import AnalysisResult, load_run
from layerpolicy.correctness import GROUPS, by_correct
from layerpolicy.errors import LayerpolicyError
from layerpolicy.runs import atomic_path, write_csv
from layerpolicy.tables.schema import CORRECT_COLUMN

from .tour import shown

MIN_GROUP = 3  # responses each group needs before the two are compared
TABLE_ROWS = {  # metric -> sites whose by_correct rows figures/by_correct_<family>.csv keeps
    "entropy": ("resid", "final"),
    "entropy_change": ("attn", "mlp"),
}
FIGURES = ("by_correct_entropy", "by_correct_entropy_change")  # as by_correct draws them


def correctness_facts(runs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """record.json's "by_correct": per family of `runs` (family -> raw run directory) its
    response counts and, where both groups reach MIN_GROUP, the table and figures written into
    `out` (`by_correct_<family>.csv`, `<figure>_<family>.png` for FIGURES)."""
    return {
        "min_group": MIN_GROUP,
        "models": {family: family_facts(family, run, out) for family, run in runs.items()},
    }


def family_facts(family: str, run_dir: Path, out: Path) -> dict[str, Any]:
    """One family's counts, and its table and figures in `out` when both groups are large enough."""
    run = load_run(run_dir)
    counts = response_counts(run)
    settings = run.record["settings"]
    facts: dict[str, Any] = {
        "model": run.record["model"]["name"],
        "n_layers": run.record["model"]["n_layers"],
        "run": shown(str(run_dir)),
        "command": f"layerpolicy compare {shown(str(run_dir))} --by correct",
        "n_responses": counts,
        "at_cap": int((run.responses["finish_reason"] == "length").sum()),
        "verifier": (run.record.get("responses") or {}).get("verifier"),
        "n_boot": settings["n_boot"],
        "seed": settings["seed"],
        "compared": min(counts[g] for g in GROUPS) >= MIN_GROUP,
        "table": None,
        "figures": [],
    }
    if facts["compared"]:
        facts["table"], facts["figures"] = _compare(family, run, out)
    return facts


def response_counts(run: AnalysisResult) -> dict[str, int]:
    """Correct, incorrect and ungraded responses of `run`; one line unless it holds graded ones."""
    where = shown(str(run.path))
    if run.responses is None:
        raise LayerpolicyError(
            f"{where} holds no responses.parquet; delete it so that `make figures` samples and "
            "grades its responses again"
        )
    grades = run.responses[CORRECT_COLUMN].astype("boolean")
    if grades.isna().all():
        raise LayerpolicyError(
            f"{where} holds ungraded responses; the profiles by correctness need prompts with "
            "answers (math500, deepmath)"
        )
    return {
        "correct": int(grades.fillna(False).sum()),
        "incorrect": int((~grades).fillna(False).sum()),
        "ungraded": int(grades.isna().sum()),
    }


def _compare(family: str, run: AnalysisResult, out: Path) -> tuple[str, list[str]]:
    """by_correct on `run`: its TABLE_ROWS into `out`/by_correct_<family>.csv, its figures as
    `out`/<figure>_<family>.png; the names written."""
    with tempfile.TemporaryDirectory(prefix="by-correct-") as tmp:
        found = by_correct(run, out=tmp)
        figures = []
        for figure in FIGURES:
            drawn = Path(tmp) / "figures" / f"{figure}.png"
            if drawn.is_file():
                name = f"{figure}_{family}.png"
                with atomic_path(out / name) as target:
                    shutil.copyfile(drawn, target)
                figures.append(name)
    rows = found.by_correct
    keep = pd.concat(
        [rows[(rows.metric == m) & rows.site.isin(sites)] for m, sites in TABLE_ROWS.items()],
        ignore_index=True,
    )
    table = f"by_correct_{family}.csv"
    write_csv(keep, out / table)
    return table, figures
