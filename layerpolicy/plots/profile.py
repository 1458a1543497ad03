"""Single-run figures: entropy profile, module entropy change, KL to final, token heatmap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .base import (
    METRIC_LABELS,
    READOUT_LABELS,
    SIGN_COLORS,
    SITE_COLORS,
    PlotInputError,
    _check_columns,
    _layer_axis,
    _metric_label,
    _metric_rows,
    _new_figure,
    _single,
    _site_bands,
    _site_rows,
    _style,
    _title,
    _yerr,
    escape_text,
)


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
        _site_bands(ax, per_site)
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
            _site_bands(nax, norms)
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
        _site_bands(ax, per_site)
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
