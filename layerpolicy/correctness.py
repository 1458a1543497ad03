"""Profiles by correctness: correct against incorrect responses of one graded run.

The unit is a response (a prompt's samples may land in both groups): each response's per-layer
means (`stats.response_means`) form its group's sample. Per group: the summary (mean over
responses, 95% percentile bootstrap CI), and its shape statistics; per (site, layer, metric): the
difference correct − incorrect with a two-sample percentile bootstrap CI (`stats.two_sample_ci`,
each group resampled on its own). Written as by_correct.csv, by_correct_summary.csv,
by_correct_shape.csv and by_correct.json, figures in figures/ (PNG + SVG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis import AnalysisResult, load_run
from .errors import LayerpolicyError
from .plots.base import save_figure
from .plots.comparison import plot_compare
from .runs import write_csv, write_json
from .tables import shape, stats
from .tables.schema import BY_CORRECT_COLUMNS, CORRECT_COLUMN, SAMPLE_COLUMN

GROUPS = ("correct", "incorrect")
_ROW = ["site", "layer", "n_layers", "metric"]


@dataclass
class CorrectnessResult:
    """Correct against incorrect responses of one run (tables in the module docstring)."""

    by_correct: pd.DataFrame
    summaries: dict[str, pd.DataFrame]
    shapes: pd.DataFrame
    record: dict[str, Any]
    path: Path | None = None
    figures: list[Path] = field(default_factory=list)


def check_graded(run: AnalysisResult, where: str) -> pd.Series:
    """The grade of each response of `run` ((prompt_id, sample) index); one line unless the run
    holds graded responses of both kinds."""
    responses = run.responses
    if responses is None or SAMPLE_COLUMN not in run.tokens.columns:
        raise LayerpolicyError(
            f"{where} holds no responses; --by correct needs a run made with --generate (or "
            "--responses) on prompts with answers (math500, deepmath)"
        )
    grades = responses.set_index(["prompt_id", "sample"])[CORRECT_COLUMN].astype("boolean")
    if grades.isna().all():
        raise LayerpolicyError(
            f"{where} holds ungraded responses (its prompts have no answers); --by correct "
            "needs prompts with answers (math500, deepmath)"
        )
    counts = {g: int((grades == (g == "correct")).sum()) for g in GROUPS}
    if min(counts.values()) == 0:
        raise LayerpolicyError(
            f"{where} has {counts['correct']} correct and {counts['incorrect']} incorrect "
            "responses; --by correct needs both (more prompts, --samples, or another model)"
        )
    return grades.dropna()


def by_correct(
    run: str | Path | AnalysisResult,
    *,
    out: str | Path | None = None,
    n_boot: int | None = None,
    seed: int | None = None,
) -> CorrectnessResult:
    """Correct against incorrect responses of a graded run (a run directory or its result).

    `n_boot` and `seed` default to the run's own; with `out`, tables and figures go there."""
    result = run if isinstance(run, AnalysisResult) else load_run(run)
    where = str(result.path or "the run")
    grades = check_graded(result, where)
    settings = result.record["settings"]
    n_boot = settings["n_boot"] if n_boot is None else n_boot
    seed = settings["seed"] if seed is None else seed
    means = stats.response_means(result.tokens)
    keys = pd.MultiIndex.from_frame(means[["prompt_id", "sample"]])
    means = means.assign(correct=grades.reindex(keys).to_numpy())
    means = means[means["correct"].notna()]
    wide = {g: _wide(means[means["correct"] == (g == "correct")]) for g in GROUPS}
    rows = wide["correct"].index.intersection(wide["incorrect"].index)
    model, readout = result.record["model"]["name"], settings["readout"]
    summaries = {
        g: stats.summarise(
            _long(means[means["correct"] == (g == "correct")]),
            model=f"{model} · {g}",
            readout=readout,
            n_boot=n_boot,
            seed=seed,
        )
        for g in GROUPS
    }
    table = _difference(wide, rows, summaries, n_boot=n_boot, seed=seed)
    shapes = pd.DataFrame([{"group": g, **shape.shape_statistics(summaries[g])} for g in GROUPS])
    record = {
        "run": where,
        "model": model,
        "readout": readout,
        "unit": "response",
        "n_responses": {g: int(wide[g].shape[1]) for g in GROUPS},
        "n_boot": n_boot,
        "seed": seed,
        "verifier": (result.record.get("responses") or {}).get("verifier"),
    }
    found = CorrectnessResult(table, summaries, shapes, record)
    if out is not None:
        _write(found, Path(out))
    return found


def _wide(means: pd.DataFrame) -> pd.DataFrame:
    """(site, layer, n_layers, metric) x response values."""
    response = means["prompt_id"].astype(str) + "#" + means["sample"].astype(str)
    return means.assign(response=response).pivot_table(
        index=_ROW, columns="response", values="value", aggfunc="first"
    )


def _long(means: pd.DataFrame) -> pd.DataFrame:
    """Response means in the prompt_means layout, each response its own unit."""
    response = means["prompt_id"].astype(str) + "#" + means["sample"].astype(str)
    return means.assign(prompt_id=response).drop(columns=["sample", "correct"])


def _difference(
    wide: dict[str, pd.DataFrame],
    rows: pd.Index,
    summaries: dict[str, pd.DataFrame],
    *,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """The by_correct.csv rows: each group's mean and CI (from its summary), and correct −
    incorrect with its two-sample bootstrap CI, per (site, layer, metric) both groups have."""
    table = rows.to_frame(index=False)
    table["layer"] = table["layer"].astype(int)
    table["n_layers"] = table["n_layers"].astype(int)
    table["rel_depth"] = table["layer"] / table["n_layers"]
    for g in GROUPS:
        own = summaries[g][[*_ROW, "n_prompts", "mean", "ci_low", "ci_high"]].rename(
            columns={
                "n_prompts": f"n_{g}",
                "mean": g,
                "ci_low": f"{g}_low",
                "ci_high": f"{g}_high",
            }
        )
        table = table.merge(own, on=_ROW, how="left", validate="1:1")
    first, second = (wide[g].loc[rows].to_numpy(dtype=np.float64) for g in GROUPS)
    table["difference"] = table["correct"] - table["incorrect"]
    low, high = stats.two_sample_ci(first, second, n_boot=n_boot, seed=seed)
    table["difference_low"], table["difference_high"] = low, high
    return table.sort_values(["metric", "site", "layer"], ignore_index=True)[BY_CORRECT_COLUMNS]


def _write(found: CorrectnessResult, out: Path) -> None:
    """Tables, record and figures of a correctness comparison into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(found.by_correct, out / "by_correct.csv")
    summary = pd.concat([s.assign(group=g) for g, s in found.summaries.items()], ignore_index=True)
    write_csv(summary, out / "by_correct_summary.csv")
    write_csv(found.shapes, out / "by_correct_shape.csv")
    write_json(found.record, out / "by_correct.json")
    figures = out / "figures"
    found.figures = save_figure(
        plot_compare(found.summaries, x="layer", title=_title(found, "entropy, resid")),
        figures / "by_correct_entropy",
    )
    has_changes = (found.by_correct["metric"] == "entropy_change").any()
    if has_changes:
        changes = plot_compare(
            found.summaries,
            metric="entropy_change",
            sites=("attn", "mlp"),
            x="layer",
            title=_title(found, "entropy change, attn and mlp"),
        )
        found.figures += save_figure(changes, figures / "by_correct_entropy_change")
    found.path = out


def _title(found: CorrectnessResult, what: str) -> str:
    n = found.record["n_responses"]
    return (
        f"{found.record['model']}: {what} per layer (mean, 95% CI), "
        f"{n['correct']} correct vs {n['incorrect']} incorrect responses"
    )
