"""Figures across runs: model overlays on relative depth and before/after differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .base import (
    READOUT_LABELS,
    SITE_LINESTYLES,
    PlotInputError,
    _band,
    _check_x,
    _compare_rows,
    _layer_axis,
    _metric_label,
    _metric_rows,
    _model_colors,
    _new_figure,
    _single,
    _site_bands,
    _site_rows,
    _style,
    escape_text,
)


def plot_compare(
    summaries: Mapping[str, pd.DataFrame],
    *,
    metric: str = "entropy",
    sites: Sequence[str] = ("resid",),
    x: str = "rel_depth",
    title: str | None = None,
) -> Figure:
    """Overlay of several models (legend = dict key) with 95% CI bands; x = l/L by default."""
    _check_x(x)
    rows, note = _compare_rows(summaries, metric)
    colors = _model_colors(list(rows))
    with _style():
        fig, ax = _new_figure(figsize=(7.5, 4.2))
        for name, model_rows in rows.items():
            for site in sites:
                site_rows = _site_rows(model_rows, site, metric, f"summary of {name!r}")
                label = escape_text(name) if len(sites) == 1 else f"{escape_text(name)} · {site}"
                _band(
                    ax,
                    site_rows,
                    x=x,
                    color=colors[name],
                    label=label,
                    linestyle=SITE_LINESTYLES.get(site, "-"),
                )
        ax.set_ylabel(_metric_label(metric))
        _layer_axis(ax, x)
        ax.legend(loc="best", fontsize="small")
        default = f"{metric} per layer, {', '.join(sites)} (mean, 95% CI)\n{note}"
        ax.set_title(escape_text(title) if title is not None else default)
    return fig


def plot_compare_entropy_change(
    summaries: Mapping[str, pd.DataFrame], *, x: str = "rel_depth", title: str | None = None
) -> Figure:
    """Entropy change of attn and mlp, one line with 95% CI band per model (legend = dict key)."""
    _check_x(x)
    rows, note = _compare_rows(summaries, "entropy_change")
    colors = _model_colors(list(rows))
    with _style():
        fig, axes = _new_figure(2, 1, figsize=(7.5, 6.0), sharex=True)
        for ax, site in zip(axes, ("attn", "mlp"), strict=True):
            for name, model_rows in rows.items():
                site_rows = _site_rows(model_rows, site, "entropy_change", f"summary of {name!r}")
                _band(ax, site_rows, x=x, color=colors[name], label=escape_text(name))
            ax.axhline(0, color="#333333", linewidth=0.8)
            ax.set_ylabel(f"ΔH {site} (nats)")
        axes[0].legend(loc="best", fontsize="small")
        _layer_axis(axes[-1], x)
        default = f"entropy change per layer (mean, 95% CI)\n{note}"
        fig.suptitle(escape_text(title) if title is not None else default)
    return fig


def plot_difference(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    metric: str = "entropy",
    sites: Sequence[str] = ("resid", "attn", "mlp"),
    labels: tuple[str, str] = ("before", "after"),
    title: str | None = None,
) -> Figure:
    """after − before per layer; band = difference ± CI half-widths combined in quadrature.

    The band is an approximation: (ci_high − ci_low) / 2 of each run, combined as if independent.
    """
    b_rows = _metric_rows(before, metric, f"{labels[0]} summary")
    a_rows = _metric_rows(after, metric, f"{labels[1]} summary")
    b_readout = _single(before, "readout", "summary")
    a_readout = _single(after, "readout", "summary")
    if b_readout != a_readout:
        raise PlotInputError(
            f"{labels[0]} uses readout {b_readout!r} but {labels[1]} uses {a_readout!r}; "
            "compare runs made with the same readout"
        )
    b_layers, a_layers = set(b_rows["n_layers"]), set(a_rows["n_layers"])
    if b_layers != a_layers:
        raise PlotInputError(
            f"{labels[0]} has n_layers {sorted(b_layers)} but {labels[1]} has {sorted(a_layers)}; "
            "a before/after difference needs the same architecture"
        )
    diffs: dict[str, pd.DataFrame] = {}
    for site in sites:
        merged = pd.merge(
            _site_rows(b_rows, site, metric, f"{labels[0]} summary"),
            _site_rows(a_rows, site, metric, f"{labels[1]} summary"),
            on="layer",
            suffixes=("_b", "_a"),
        )
        delta = merged["mean_a"] - merged["mean_b"]
        half = np.hypot(
            (merged["ci_high_a"] - merged["ci_low_a"]) / 2,
            (merged["ci_high_b"] - merged["ci_low_b"]) / 2,
        )
        diffs[site] = pd.DataFrame(
            {
                "layer": merged["layer"],
                "mean": delta,
                "ci_low": delta - half,
                "ci_high": delta + half,
            }
        )
    b_name = escape_text(_single(before, "model", "summary"))
    a_name = escape_text(_single(after, "model", "summary"))
    with _style():
        fig, ax = _new_figure(figsize=(7.5, 4.4))
        _site_bands(ax, diffs)
        ax.axhline(0, color="#333333", linewidth=0.8)
        lb, la = escape_text(labels[0]), escape_text(labels[1])
        ax.set_ylabel(
            f"Δ {_metric_label(metric)}, {la} − {lb}\n"
            "band: approx. 95% CI, half-widths in quadrature"
        )
        _layer_axis(ax)
        ax.legend(loc="best", fontsize="small")
        default = (
            f"{metric}: {la} ({a_name}) − {lb} ({b_name})\n"
            f"{READOUT_LABELS.get(a_readout, a_readout)}"
        )
        ax.set_title(escape_text(title) if title is not None else default)
    return fig
