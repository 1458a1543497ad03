"""The README's figure set: a family comparison under two readouts and BuPO against GRPO, as PNGs.

Per model (named by its family label): the entropy profile with the RMS-norm panel and ln|V|,
and the module entropy changes coloured by sign; all models on relative depth under the raw
readout and under the logit lens, and their module entropy changes. For the training runs
(`showcase_figures`): their reward per rollout on one axis, and per run the after − before
entropy profile and the training dynamics (`layerpolicy.plots.dynamics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import plots
from ..plots.base import _new_figure, _style
from ..plots.dynamics import plot_dynamics
from ..tables.difference import difference

_COLOURS = ("C0", "C1", "C2", "C3")  # one per training run on a shared axis


@dataclass(frozen=True)
class TrainedTables:
    """A finished training run's tables: `record` its run.json (method, model, layer k), `log`
    its training log (one row per rollout), `before`, `after` the summary tables of its two
    analyses, `dynamics` its dynamics.parquet table."""

    record: Mapping[str, Any]
    log: pd.DataFrame
    before: pd.DataFrame
    after: pd.DataFrame
    dynamics: pd.DataFrame


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


def showcase_figures(runs: Mapping[str, TrainedTables], out: Path) -> list[Path]:
    """BuPO against GRPO: both runs' reward per rollout on one axis, and per run its after −
    before entropy profile and its training dynamics.

    `runs`: each run's tables by label (e.g. "bupo", "grpo"), the BuPO run first. Files
    `showcase_reward.png`, `showcase_difference_<label>.png`, `showcase_dynamics_<label>.png`.
    """
    logs = {run.record["method"]: run.log for run in runs.values()}
    drawn = {"showcase_reward": plot_reward_by_run(logs)}
    for label, run in runs.items():
        record = run.record
        title = f"{record['method']} · {record['model']['name']} · k = {record['layer']['k']}"
        drawn[f"showcase_difference_{label}"] = plots.plot_difference(
            difference(run.before, run.after), title=f"entropy, after − before · {title}"
        )
        drawn[f"showcase_dynamics_{label}"] = plot_dynamics(run.dynamics, title=title)
    return save_png(drawn, out)


def plot_reward_by_run(logs: Mapping[str, pd.DataFrame]) -> Figure:
    """Mean reward per rollout (`reward_mean` against `step`) of each training log, labelled by
    its key; the rollouts of a log's IPA phase ("inter") shaded in its line's colour."""
    with _style():
        fig, ax = _new_figure(figsize=(7.0, 3.6))
        for colour, (label, log) in zip(_COLOURS, logs.items(), strict=False):
            log = log.sort_values("step")
            ax.plot(
                log["step"], log["reward_mean"], marker="o", markersize=3, color=colour, label=label
            )
            inter = log.loc[log["phase"] == "inter", "step"]
            if len(inter):
                ax.axvspan(
                    inter.min() - 0.5,
                    inter.max() + 0.5,
                    color=colour,
                    alpha=0.12,
                    linewidth=0,
                    label=f"{label}: IPA rollouts (π^k)",
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rollout")
        ax.set_ylabel("mean reward of the rollout")
        ax.legend(fontsize="small")
        ax.set_title("reward per rollout")
    return fig


def save_png(drawn: Mapping[str, Figure], out: Path) -> list[Path]:
    """Each figure as `out/<name>.png` (written atomically); the paths written."""
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, out / name, formats=("png",))
    return paths
