"""The README's figure set: a family comparison under two readouts and one BuPO run, as PNGs.

Per model (named by its family label): the entropy profile with the RMS-norm panel and ln|V|,
and the module entropy changes coloured by sign; all models on relative depth under the raw
readout and under the logit lens, and their module entropy changes; for the BuPO run its
training log and the after − before entropy profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .. import plots
from ..tables.difference import difference


def family_figures(
    families: Sequence[str],
    raw: Mapping[str, pd.DataFrame],
    lens: Mapping[str, pd.DataFrame],
    vocab_sizes: Mapping[str, int],
    out: Path,
) -> list[Path]:
    """Per-model profiles and entropy changes; all models on relative depth, raw and logit lens.

    `raw`, `lens`: summary tables by model name, one per family label of `families`, in order;
    `vocab_sizes`: |V| by model name. Files `<figure>_<family>.png` and `compare_*.png`.
    """
    drawn = {}
    for family, (name, summary) in zip(families, raw.items(), strict=True):
        drawn[f"entropy_profile_{family}"] = plots.plot_entropy_profile(
            summary, vocab_size=vocab_sizes[name], show_norm=True
        )
        drawn[f"entropy_change_{family}"] = plots.plot_entropy_change(summary, color_by_sign=True)
    drawn["compare_entropy"] = plots.plot_compare(raw, x="rel_depth")
    drawn["compare_entropy_logit_lens"] = plots.plot_compare(lens, x="rel_depth")
    drawn["compare_entropy_change"] = plots.plot_compare_entropy_change(raw)
    return save_png(drawn, out)


def bupo_figures(
    record: Mapping[str, Any],
    log: pd.DataFrame,
    before: pd.DataFrame,
    after: pd.DataFrame,
    out: Path,
) -> list[Path]:
    """The training log and the after − before entropy profile of a BuPO run.

    `record`: the run's run.json (method, model name, layer k for the titles); `log`: its
    training log; `before`, `after`: the summary tables of its two analyses.
    """
    k = record["layer"]["k"]
    title = f"{record['method']} · {record['model']['name']} · k = {k}"
    drawn = {
        "bupo_training_log": plots.plot_training_log(log, title=title),
        "bupo_difference": plots.plot_difference(
            difference(before, after), title=f"entropy, after − before · {title}"
        ),
    }
    return save_png(drawn, out)


def save_png(drawn: Mapping[str, Figure], out: Path) -> list[Path]:
    """Each figure as `out/<name>.png` (written atomically); the paths written."""
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, out / name, formats=("png",))
    return paths
