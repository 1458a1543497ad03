"""Before/after differences: after − before of two summaries of one architecture and readout."""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerpolicy.errors import LayerpolicyError
from layerpolicy.tables.schema import DIFFERENCE_COLUMNS

DIGITS = 3  # difference.csv and comparison.csv round floats alike
_KEYS = ["site", "layer", "n_layers", "rel_depth", "metric"]
_FLOATS = ["before", "after", "mean", "ci_low", "ci_high"]


def difference(
    before: pd.DataFrame, after: pd.DataFrame, *, labels: tuple[str, str] = ("before", "after")
) -> pd.DataFrame:
    """after − before of every (site, layer, metric) both summaries have (difference.csv layout).

    `before`, `after`: summary.csv tables of one model and readout each, of one architecture.
    `mean` is the difference of the means (nats for entropies); `ci_low`/`ci_high` an
    approximate 95% interval: the two CI half-widths combined in quadrature, as if the runs were
    independent. Floats are rounded to `DIGITS` decimals. `labels` name the runs in errors.
    """
    _check_pair(before, after, labels)
    merged = before[[*_KEYS, "mean", "ci_low", "ci_high"]].merge(
        after[[*_KEYS, "mean", "ci_low", "ci_high"]], on=_KEYS, suffixes=("_b", "_a")
    )
    delta = merged["mean_a"] - merged["mean_b"]
    half = np.hypot(
        (merged["ci_high_a"] - merged["ci_low_a"]) / 2,
        (merged["ci_high_b"] - merged["ci_low_b"]) / 2,
    )
    table = merged[_KEYS].assign(
        before=merged["mean_b"],
        after=merged["mean_a"],
        mean=delta,
        ci_low=delta - half,
        ci_high=delta + half,
    )
    table[_FLOATS] = table[_FLOATS].round(DIGITS)
    return table.sort_values(["metric", "site", "layer"], ignore_index=True)[DIFFERENCE_COLUMNS]


def _check_pair(before: pd.DataFrame, after: pd.DataFrame, labels: tuple[str, str]) -> None:
    """Raise unless both summaries hold one readout, the same one, and the same depth."""
    found = {}
    for column in ("readout", "n_layers"):
        values = [sorted(table[column].astype(str).unique()) for table in (before, after)]
        for label, value in zip(labels, values, strict=True):
            if len(value) != 1:
                raise LayerpolicyError(
                    f"the {label} summary holds {len(value)} {column} values "
                    f"({', '.join(value)}); pass the summary of one run"
                )
        found[column] = [value[0] for value in values]
    readouts, depths = found["readout"], found["n_layers"]
    if readouts[0] != readouts[1]:
        raise LayerpolicyError(
            f"{labels[0]} uses readout {readouts[0]!r} but {labels[1]} uses {readouts[1]!r}; "
            "compare runs made with the same readout"
        )
    if depths[0] != depths[1]:
        raise LayerpolicyError(
            f"{labels[0]} has {depths[0]} layers but {labels[1]} has {depths[1]}; "
            "a before/after difference needs one architecture"
        )
