"""The figure set of one training run: its log and, with both analyses, after − before."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import plots
from ..tables.difference import difference as difference_table
from .run import save_all


def train_figures(
    directory: Path,
    log: pd.DataFrame,
    *,
    before: pd.DataFrame | None = None,
    after: pd.DataFrame | None = None,
    title: str | None = None,
) -> list[Path]:
    """PNG and SVG of training_log and, with both summaries, entropy_difference; their paths.

    `log`: the training log (one row per step); `before`/`after`: summary.csv tables of the
    model before and after training (same architecture and readout).
    """
    drawn = {"training_log": plots.plot_training_log(log, title=title)}
    if before is not None and after is not None:
        diff = difference_table(before, after)
        drawn["entropy_difference"] = plots.plot_difference(
            diff,
            readout=str(after["readout"].iloc[0]),
            title=None if title is None else f"after − before · {title}",
        )
    return save_all(drawn, Path(directory))
