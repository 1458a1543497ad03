"""The report of one comparison: its figure set and comparison.md."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .. import plots
from ..tables.reading import markdown_table
from ..tables.results import ComparisonTables
from ..tables.schema import ENTROPY_CHANGE
from .run import save_all


def compare_figures(
    summaries: Mapping[str, pd.DataFrame],
    directory: Path,
    *,
    x: str = "rel_depth",
    pair: tuple[str, str] | None = None,
    difference: pd.DataFrame | None = None,
) -> list[Path]:
    """PNG and SVG overlays of every model, and for a before/after pair its differences.

    entropy and kl_to_final (residual stream), entropy_change (attn and mlp, models that have
    both), and with `pair` (before, after labels) and its `difference` table:
    difference_entropy and, when both runs have module sites, difference_entropy_change.
    `x` is the depth axis ("rel_depth" or "layer").
    """
    drawn = {
        "entropy": plots.plot_compare(summaries, metric="entropy", x=x),
        "kl_to_final": plots.plot_compare(summaries, metric="kl_to_final", x=x),
    }
    with_modules = {name: s for name, s in summaries.items() if _has_module_changes(s)}
    if with_modules:
        drawn["entropy_change"] = plots.plot_compare_entropy_change(with_modules, x=x)
    if pair is not None and difference is not None:
        readout = str(summaries[pair[1]]["readout"].iloc[0])
        drawn["difference_entropy"] = plots.plot_difference(
            difference, labels=pair, readout=readout
        )
        if pair[0] in with_modules and pair[1] in with_modules:
            drawn["difference_entropy_change"] = plots.plot_difference(
                difference,
                metric=ENTROPY_CHANGE,
                sites=("attn", "mlp"),
                labels=pair,
                readout=readout,
            )
    return save_all(drawn, Path(directory))


def comparison_markdown(result: ComparisonTables, x: str = "rel_depth") -> str:
    """comparison.md: the reading, the shape table, runs, notes and figures."""
    names = ", ".join(result.comparison["model"])
    lines = [f"# Comparison: {names}", "", result.reading, "", "## Shape statistics", ""]
    lines += markdown_table(result.comparison.drop(columns=["run"]))
    lines += ["", "Definitions: docs/shape.md. Entropies in nats; KL is KL(pi_theta || readout)."]
    if result.runs:
        lines += ["", "## Runs", ""] + [f"- {name}: `{p}`" for name, p in result.runs.items()]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    if result.figures:
        lines += ["", f"## Figures (x axis: {plots.X_LABELS[x]})", ""]
        lines += [f"- `figures/{p.name}`" for p in result.figures if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _has_module_changes(summary: pd.DataFrame) -> bool:
    """True when the summary holds the entropy change of both attn and mlp."""
    return {"attn", "mlp"} <= set(summary.loc[summary["metric"] == ENTROPY_CHANGE, "site"])
