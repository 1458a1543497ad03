"""Figures drawn from result tables only (layouts in docs/tables.md); no metric is computed here.

Every figure function takes DataFrames, returns a `matplotlib.figure.Figure` rendered by the Agg
canvas (never registered with pyplot, so nothing is shown twice in notebooks), and styles it inside
a local `rc_context`: no global matplotlib or seaborn state changes. `save_figure` writes it out.

Site colours (`SITE_COLORS`) are the same in every figure. Where several models share one axis,
colour names the model and the line style names the site.
"""

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
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from layerpolicy.errors import LayerpolicyError

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
}
SUMMARY_COLUMNS: tuple[str, ...] = (
    "model",
    "readout",
    "site",
    "layer",
    "n_layers",
    "rel_depth",
    "metric",
    "n_prompts",
    "n_tokens",
    "mean",
    "ci_low",
    "ci_high",
    "pooled_mean",
)
TRAINING_LOG_COLUMNS: tuple[str, ...] = (
    "step",
    "reward_mean",
    "entropy_final",
    "entropy_layer_k",
    "kl_layer_k_final",
    "loss",
    "clip_frac",
    "grad_norm",
    "response_len",
    "phase",
)
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


# ---------------------------------------------------------------- figures


def plot_entropy_profile(
    summary: pd.DataFrame,
    *,
    sites: Sequence[str] = ("resid", "attn", "mlp"),
    show_final: bool = True,
    show_norm: bool = False,
    vocab_size: int | None = None,
    title: str | None = None,
) -> Figure:
    """Entropy per layer with 95% CI bands per site, pi_theta marked at layer L, ln|V| dashed.

    `show_norm` adds a lower panel with the RMS norm of each read-out vector (log y), since raw
    readouts sharpen as the stream grows.
    """
    rows = _metric_rows(summary, "entropy")
    per_site = {site: _site_rows(rows, site, "entropy") for site in sites}
    final = _site_rows(rows, "final", "entropy") if show_final else None
    norms = None
    if show_norm:
        norm_rows = _metric_rows(summary, "rms_norm")
        norms = {site: _site_rows(norm_rows, site, "rms_norm") for site in sites}
    with _style():
        if norms is None:
            fig, ax = _new_figure(figsize=(7.5, 4.2))
            axes = [ax]
        else:
            fig, axes = _new_figure(
                2, 1, figsize=(7.5, 6.6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
            )
        ax = axes[0]
        for site, site_rows in per_site.items():
            _band(
                ax,
                site_rows,
                color=SITE_COLORS.get(site, "#333333"),
                label=site,
                linestyle=SITE_LINESTYLES.get(site, "-"),
            )
        if final is not None:
            ax.errorbar(
                final["layer"].to_numpy(float),
                final["mean"].to_numpy(float),
                yerr=_yerr(final),
                fmt="*",
                markersize=13,
                color=SITE_COLORS["final"],
                capsize=3,
                zorder=5,
                label=r"final $\pi_\theta$",
            )
        if vocab_size is not None:
            ax.axhline(
                float(np.log(vocab_size)),
                color="#555555",
                linestyle="--",
                linewidth=1,
                label=f"ln|V| = {np.log(vocab_size):.2f}",
            )
        ax.set_ylabel(_metric_label("entropy"))
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize="small")
        ax.set_title(_title(summary, "entropy per layer (mean, 95% CI over prompts)", title))
        if norms is not None:
            nax = axes[1]
            for site, site_rows in norms.items():
                _band(
                    nax,
                    site_rows,
                    color=SITE_COLORS.get(site, "#333333"),
                    label=site,
                    linestyle=SITE_LINESTYLES.get(site, "-"),
                )
            nax.set_yscale("log")
            nax.set_ylabel("RMS norm\n(model units, log)")
        _layer_axis(axes[-1])
    return fig


def plot_entropy_change(
    summary: pd.DataFrame,
    *,
    sites: Sequence[str] = ("attn", "mlp"),
    color_by_sign: bool = False,
    title: str | None = None,
) -> Figure:
    """Per-layer entropy change (paper Fig. 3): one bar panel per site with 95% CI error bars.

    ΔH > 0 is expansion, ≈ 0 integration, < 0 convergence; `color_by_sign` colours bars by sign.
    """
    rows = _metric_rows(summary, "entropy_change")
    per_site = {site: _site_rows(rows, site, "entropy_change") for site in sites}
    with _style():
        fig, axes = _new_figure(
            len(per_site), 1, figsize=(7.5, 2.4 * len(per_site) + 0.8), sharex=True, squeeze=False
        )
        for ax, (site, site_rows) in zip(axes[:, 0], per_site.items(), strict=True):
            mean = site_rows["mean"].to_numpy(float)
            if color_by_sign:
                colors = [SIGN_COLORS["positive" if m > 0 else "negative"] for m in mean]
            else:
                colors = SITE_COLORS.get(site, "#333333")
            ax.bar(
                site_rows["layer"].to_numpy(float),
                mean,
                width=0.8,
                color=colors,
                yerr=_yerr(site_rows),
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"},
                label=site,
            )
            ax.axhline(0, color="#333333", linewidth=0.8)
            ax.set_ylabel(f"ΔH {site} (nats)")
        if color_by_sign:
            axes[0, 0].legend(
                handles=[
                    Patch(color=SIGN_COLORS["positive"], label="ΔH > 0 expansion"),
                    Patch(color=SIGN_COLORS["negative"], label="ΔH ≤ 0 convergence"),
                ],
                fontsize="small",
                loc="best",
            )
        _layer_axis(axes[-1, 0])
        fig.suptitle(_title(summary, "entropy change per layer (mean, 95% CI)", title))
    return fig


def plot_kl_to_final(
    summary: pd.DataFrame,
    *,
    sites: Sequence[str] = ("resid",),
    log_y: bool = False,
    title: str | None = None,
) -> Figure:
    """Forward KL(pi_theta ‖ readout) per layer with 95% CI bands per site."""
    rows = _metric_rows(summary, "kl_to_final")
    per_site = {site: _site_rows(rows, site, "kl_to_final") for site in sites}
    with _style():
        fig, ax = _new_figure(figsize=(7.5, 4.2))
        for site, site_rows in per_site.items():
            _band(
                ax,
                site_rows,
                color=SITE_COLORS.get(site, "#333333"),
                label=site,
                linestyle=SITE_LINESTYLES.get(site, "-"),
            )
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel(_metric_label("kl_to_final") + (", log scale" if log_y else ""))
        _layer_axis(ax)
        ax.legend(loc="best", fontsize="small")
        ax.set_title(_title(summary, "KL to the final policy (mean, 95% CI)", title))
    return fig


def plot_token_heatmap(
    tokens: pd.DataFrame,
    prompt_id: str,
    *,
    metric: str = "entropy",
    site: str = "resid",
    readout: str | None = None,
    max_positions: int = 64,
) -> Figure:
    """Layer x position heatmap of one token-level metric for one prompt (first `max_positions`).

    `readout` picks a mode when tokens.parquet holds both; x tick labels are the input tokens.
    """
    _check_columns(
        tokens,
        ("prompt_id", "position", "token", "model", "readout", "site", "layer"),
        "tokens table",
    )
    if metric not in tokens.columns:
        raise PlotInputError(
            f"tokens table has no metric column {metric!r}; available: "
            + ", ".join(c for c in METRIC_LABELS if c in tokens.columns)
        )
    ids = tokens["prompt_id"].astype(str)
    if str(prompt_id) not in set(ids):
        available = sorted(ids.unique())
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise PlotInputError(f"prompt_id {prompt_id!r} not in tokens table; available ids: {shown}")
    rows = tokens[ids == str(prompt_id)]
    if readout is not None:
        if readout not in set(rows["readout"]):
            raise PlotInputError(
                f"readout {readout!r} not in tokens table for prompt {prompt_id!r}; available: "
                + ", ".join(sorted(rows["readout"].astype(str).unique()))
            )
        rows = rows[rows["readout"] == readout]
    what = f"tokens of prompt {prompt_id!r}"
    model = _single(rows, "model", what)
    mode = _single(rows, "readout", what + " (pass readout=...)")
    site_rows = rows[rows["site"] == site]
    if site_rows.empty:
        raise PlotInputError(
            f"tokens table has no site {site!r} for prompt {prompt_id!r}; available sites: "
            + ", ".join(sorted(rows["site"].astype(str).unique()))
        )
    if site_rows.duplicated(["layer", "position"]).any():
        raise PlotInputError(f"{what} has several rows per (site, layer, position); pass one run")
    all_positions = np.sort(site_rows["position"].unique())
    positions = all_positions[:max_positions]
    site_rows = site_rows[site_rows["position"].isin(positions)]
    grid = site_rows.pivot(index="layer", columns="position", values=metric).astype(float)
    grid = grid.reindex(columns=positions)
    token_text = site_rows.drop_duplicates("position").set_index("position")["token"]
    labels = [escape_text(_truncate(str(token_text[p]))) for p in positions]
    shown = (
        f"positions {positions[0]}–{positions[-1]} ({len(positions)} of {len(all_positions)})"
        if len(positions) < len(all_positions)
        else f"{len(positions)} positions"
    )
    with _style():
        fig, ax = _new_figure(
            figsize=(max(6.0, 0.17 * len(positions) + 2.5), max(3.0, 0.16 * len(grid) + 2.2))
        )
        image = ax.imshow(
            grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest"
        )
        ax.set_xticks(np.arange(len(positions)), labels, rotation=90, fontsize=7)
        layer_ticks = np.arange(len(grid))
        step = max(1, len(grid) // 12)
        ax.set_yticks(layer_ticks[::step], [str(v) for v in grid.index[::step]])
        ax.set_ylabel(f"layer ({site})")
        ax.set_xlabel("input token (readout predicts the next one)")
        ax.grid(False)
        fig.colorbar(image, ax=ax, label=_metric_label(metric), pad=0.01)
        ax.set_title(
            f"{escape_text(model)} — prompt {escape_text(str(prompt_id))}, {shown}\n"
            f"{READOUT_LABELS.get(mode, mode)}"
        )
    return fig


def _truncate(text: str, width: int = 10) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
        for site, site_rows in diffs.items():
            _band(
                ax,
                site_rows,
                color=SITE_COLORS.get(site, "#333333"),
                label=site,
                linestyle=SITE_LINESTYLES.get(site, "-"),
            )
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
