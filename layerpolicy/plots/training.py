"""The training-log figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from layerpolicy.tables.schema import TRAINING_LOG_COLUMNS

from .base import PlotInputError, _check_columns, _new_figure, _style, escape_text

_TRAINING_PANELS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("reward_mean",), "mean reward"),
    (("entropy_final", "entropy_layer_k"), "entropy (nats)"),
    (("kl_layer_k_final",), r"KL($\pi_\theta$ ‖ $\pi^k_\mathrm{layer}$) (nats)"),
    (("loss",), "loss"),
    (("clip_frac",), "clipped fraction"),
    (("grad_norm",), "gradient norm"),
    (("response_len",), "response length (tokens)"),
)
_TRAINING_LABELS: dict[str, str] = {
    "entropy_final": r"$\pi_\theta$ (final)",
    "entropy_layer_k": r"$\pi^k_\mathrm{layer}$ (layer k)",
}


def plot_training_log(log: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Small multiples of a training log against step; the IPA ("inter") phase is shaded."""
    _check_columns(log, TRAINING_LOG_COLUMNS, "training log")
    if log.empty:
        raise PlotInputError("training log is empty; nothing to plot")
    log = log.sort_values("step")
    steps = log["step"].to_numpy(float)
    spans = _inter_spans(steps, (log["phase"] == "inter").to_numpy())
    with _style():
        fig, axes = _new_figure(2, 4, figsize=(13.0, 5.6), sharex=True)
        flat = axes.ravel()
        for ax, (columns, ylabel) in zip(flat, _TRAINING_PANELS, strict=False):
            for lo, hi in spans:
                ax.axvspan(lo, hi, color="#bbbbbb", alpha=0.35, linewidth=0)
            for column in columns:
                ax.plot(
                    steps,
                    log[column].to_numpy(float),
                    linewidth=1.3,
                    label=_TRAINING_LABELS.get(column, column),
                )
            ax.set_ylabel(ylabel)
            if len(columns) > 1:
                ax.legend(fontsize="small", loc="best")
        legend_ax = flat[len(_TRAINING_PANELS)]
        above_legend = flat[len(_TRAINING_PANELS) - axes.shape[1]]
        above_legend.xaxis.set_tick_params(labelbottom=True)
        for ax in [*axes[-1], above_legend]:
            ax.set_xlabel("training step")
        legend_ax.axis("off")
        legend_ax.legend(
            handles=[
                Patch(color="#bbbbbb", alpha=0.35, label="shaded: inter phase (IPA, layer k)"),
                Line2D([], [], color="none", label=r"unshaded: full phase (GRPO, $\pi_\theta$)"),
            ],
            loc="center",
        )
        fig.suptitle(escape_text(title) if title is not None else "training log")
    return fig


def _inter_spans(steps: np.ndarray, inter: np.ndarray) -> list[tuple[float, float]]:
    """[start, end] step ranges of consecutive inter-phase rows, padded half a step each side."""
    pad = float(np.median(np.diff(steps))) / 2 if len(steps) > 1 else 0.5
    spans: list[tuple[float, float]] = []
    start = None
    for i, flag in enumerate(inter):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == len(inter) - 1):
            end = i if flag else i - 1
            spans.append((steps[start] - pad, steps[end] + pad))
            start = None
    return spans
