"""Figures across runs: model overlays on relative depth and before/after differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from layerpolicy.tables.schema import DIFFERENCE_COLUMNS

from .base import (
    READOUT_LABELS,
    SITE_LINESTYLES,
    PlotInputError,
    _band,
    _check_columns,
    _check_x,
    _compare_rows,
    _layer_axis,
    _metric_label,
    _model_colors,
    _new_figure,
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
    difference: pd.DataFrame,
    *,
    metric: str = "entropy",
    sites: Sequence[str] = ("resid", "attn", "mlp"),
    labels: tuple[str, str] = ("before", "after"),
    readout: str | None = None,
    title: str | None = None,
) -> Figure:
    """after − before per layer from a difference table (`tables.difference.difference`).

    The band is the table's ci_low..ci_high: an approximate 95% interval whose half-width
    combines the two runs' CI half-widths in quadrature, as if independent. `readout` names
    the runs' readout in the default title.
    """
    _check_columns(difference, DIFFERENCE_COLUMNS, "difference table")
    rows = difference[difference["metric"] == metric]
    if rows.empty:
        available = ", ".join(sorted(difference["metric"].astype(str).unique())) or "none"
        raise PlotInputError(
            f"difference table has no metric {metric!r}; available metrics: {available}"
        )
    diffs = {site: _site_rows(rows, site, metric, "difference table") for site in sites}
    lb, la = escape_text(labels[0]), escape_text(labels[1])
    with _style():
        fig, ax = _new_figure(figsize=(7.5, 4.4))
        _site_bands(ax, diffs)
        ax.axhline(0, color="#333333", linewidth=0.8)
        ax.set_ylabel(
            f"Δ {_metric_label(metric)}, {la} − {lb}\n"
            "band: approx. 95% CI, half-widths in quadrature"
        )
        _layer_axis(ax)
        ax.legend(loc="best", fontsize="small")
        default = f"{metric}: {la} − {lb}"
        if readout is not None:
            default += f"\n{READOUT_LABELS.get(readout, readout)}"
        ax.set_title(escape_text(title) if title is not None else default)
    return fig
