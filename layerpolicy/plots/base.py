"""Shared pieces of every figure: palette, labels, style, validation, atomic saving."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from layerpolicy.errors import LayerpolicyError
from layerpolicy.tables.schema import SUMMARY_COLUMNS

SITE_COLORS: dict[str, str] = {
    "embed": "#949494",
    "resid": "#0173b2",
    "attn": "#de8f05",
    "mlp": "#029e73",
    "attn_in": "#cc78bc",
    "mlp_in": "#ca9161",
    "final": "#000000",
}
SITE_LINESTYLES: dict[str, str | tuple] = {
    "embed": "-",
    "resid": "-",
    "attn": "--",
    "mlp": ":",
    "attn_in": "-.",
    "mlp_in": (0, (5, 1, 1, 1)),
    "final": "-",
}
SIGN_COLORS: dict[str, str] = {"positive": "#d55e00", "negative": "#56b4e9"}
METRIC_LABELS: dict[str, str] = {
    "entropy": "entropy (nats)",
    "entropy_change": "entropy change ΔH (nats)",
    "kl_to_final": r"KL($\pi_\theta$ ‖ readout) (nats)",
    "target_logprob": "log-prob of next token (nats)",
    "target_rank": "rank of next token (1 = top)",
    "top1_agree": r"top-1 agreement with $\pi_\theta$ (fraction)",
    "rms_norm": "RMS norm of read-out vector (model units)",
}
READOUT_LABELS: dict[str, str] = {
    "raw": "raw readout softmax(x W_U)",
    "logit-lens": "logit lens softmax(LN_final(x) W_U)",
    "jacobian-lens": "Jacobian lens softmax(LN_final(J_l x) W_U)",
}
X_LABELS: dict[str, str] = {
    "layer": "layer l",
    "rel_depth": "relative depth l / L",
}

_STYLE: dict[str, object] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "figure.dpi": 100,
    "legend.frameon": False,
    "svg.fonttype": "none",
}
_IMAGE_SUFFIXES = {".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".ps"}


class PlotInputError(LayerpolicyError, ValueError):
    """A table handed to a figure function lacks what the figure needs."""


def _style() -> contextlib.AbstractContextManager:
    """The local style every figure is drawn and saved under."""
    return mpl.rc_context(_STYLE)


def _new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw) -> tuple:
    """A constrained-layout Figure on the Agg canvas and its axes (squeezed like plt.subplots)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def escape_text(text: str) -> str:
    """Make arbitrary text (tokens, model names) safe for matplotlib: no mathtext, no breaks."""
    return (
        str(text).replace("$", r"\$").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )


def save_figure(
    fig: Figure, path_without_suffix: Path | str, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write `fig` once per format (`<path>.<fmt>`, png at 150 dpi) atomically, then close it."""
    base = Path(path_without_suffix)
    if base.suffix.lower() in _IMAGE_SUFFIXES:
        raise PlotInputError(
            f"save_figure takes a path without suffix, got {base}; pass {base.with_suffix('')}"
        )
    base.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with _style():
            for fmt in formats:
                target = base.with_name(f"{base.name}.{fmt}")
                tmp = base.with_name(f".{base.name}.{uuid.uuid4().hex}.{fmt}.tmp")
                try:
                    fig.savefig(
                        tmp,
                        format=fmt,
                        dpi=150 if fmt == "png" else "figure",
                        bbox_inches="tight",
                    )
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                written.append(target)
    finally:
        plt.close(fig)
    return written


# ---------------------------------------------------------------- table selection (no computation)


def _check_columns(df: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise PlotInputError(
            f"{what} lacks column(s) {', '.join(missing)}; expected the layout in docs/tables.md"
        )


def _single(df: pd.DataFrame, column: str, what: str) -> str:
    values = sorted(df[column].astype(str).unique())
    if len(values) != 1:
        raise PlotInputError(
            f"{what} holds {len(values)} {column} values ({', '.join(values)}); "
            f"filter it to one {column} (or use plot_compare for several models)"
        )
    return values[0]


def _metric_rows(summary: pd.DataFrame, metric: str, what: str = "summary") -> pd.DataFrame:
    """Rows of one metric of a one-model, one-readout summary table."""
    _check_columns(summary, SUMMARY_COLUMNS, what)
    if summary.empty:
        raise PlotInputError(f"{what} is empty; nothing to plot")
    _single(summary, "model", what)
    _single(summary, "readout", what)
    rows = summary[summary["metric"] == metric]
    if rows.empty:
        available = ", ".join(sorted(summary["metric"].astype(str).unique()))
        raise PlotInputError(f"{what} has no metric {metric!r}; available metrics: {available}")
    dup = rows.duplicated(["site", "layer"])
    if dup.any():
        site, layer = rows.loc[dup, ["site", "layer"]].iloc[0]
        raise PlotInputError(
            f"{what} has several rows for metric {metric!r}, site {site!r}, layer {layer}; "
            "pass the summary of a single run"
        )
    return rows


def _site_rows(rows: pd.DataFrame, site: str, metric: str, what: str = "summary") -> pd.DataFrame:
    """One site's rows sorted by layer; `resid` starts at the embedding (H^0) when it is present."""
    picked = rows[rows["site"] == site]
    if picked.empty:
        available = ", ".join(sorted(rows["site"].astype(str).unique()))
        raise PlotInputError(
            f"{what} has no site {site!r} for metric {metric!r}; available sites: {available}"
        )
    if site == "resid":
        picked = pd.concat([rows[rows["site"] == "embed"], picked])
    return picked.sort_values("layer")


def _title(summary: pd.DataFrame, what: str, title: str | None) -> str:
    if title is not None:
        return escape_text(title)
    model = escape_text(_single(summary, "model", "summary"))
    readout = _single(summary, "readout", "summary")
    return f"{model} — {what}\n{READOUT_LABELS.get(readout, readout)}"


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _check_x(x: str) -> None:
    if x not in X_LABELS:
        raise PlotInputError(f"x must be one of {', '.join(X_LABELS)}, got {x!r}")


# ---------------------------------------------------------------- drawing helpers


def _band(
    ax: Axes,
    rows: pd.DataFrame,
    *,
    x: str = "layer",
    color: str,
    label: str,
    linestyle: object = "-",
) -> Line2D:
    """Mean line and its 95% CI band (ci_low..ci_high)."""
    xs = rows[x].to_numpy(float)
    (line,) = ax.plot(
        xs,
        rows["mean"].to_numpy(float),
        color=color,
        linestyle=linestyle,
        marker="o" if len(xs) == 1 else None,
        markersize=4,
        linewidth=1.6,
        label=label,
    )
    ax.fill_between(
        xs,
        rows["ci_low"].to_numpy(float),
        rows["ci_high"].to_numpy(float),
        color=color,
        alpha=0.18,
        linewidth=0,
    )
    return line


def _site_bands(ax: Axes, per_site: Mapping[str, pd.DataFrame]) -> None:
    """One `_band` per site, in the site's colour and line style."""
    for site, rows in per_site.items():
        _band(
            ax,
            rows,
            color=SITE_COLORS.get(site, "#333333"),
            label=site,
            linestyle=SITE_LINESTYLES.get(site, "-"),
        )


def _yerr(rows: pd.DataFrame) -> np.ndarray:
    mean = rows["mean"].to_numpy(float)
    return np.vstack(
        [
            np.clip(mean - rows["ci_low"].to_numpy(float), 0, None),
            np.clip(rows["ci_high"].to_numpy(float) - mean, 0, None),
        ]
    )


def _layer_axis(ax: Axes, x: str = "layer") -> None:
    """Label the depth axis; a layer axis that reaches 0 says that 0 is the embedding."""
    embed = x == "layer" and ax.dataLim.x0 <= 0
    ax.set_xlabel(X_LABELS[x] + (" (0 = embedding)" if embed else ""))
    if x == "layer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _model_colors(names: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))


def _compare_rows(
    summaries: Mapping[str, pd.DataFrame], metric: str
) -> tuple[dict[str, pd.DataFrame], str]:
    """Per-model rows of `metric` and a readout note for the title."""
    if not summaries:
        raise PlotInputError("plot_compare needs at least one summary table")
    rows = {
        name: _metric_rows(df, metric, f"summary of {name!r}") for name, df in summaries.items()
    }
    readouts = sorted({_single(df, "readout", "summary") for df in summaries.values()})
    if len(readouts) == 1:
        note = READOUT_LABELS.get(readouts[0], readouts[0])
    else:
        note = "readouts differ: " + ", ".join(readouts)
    return rows, note
