"""Training dynamics figures from dynamics.parquet (`layerpolicy.dynamics`): the layer x step
entropy heatmap, and the internal policy's quantities against the optimizer step (the entropy
of pi^k, KL(pi^k || pi^j) and cos(H^k, H^j) for every later layer j, the perplexity of
pi_theta), with BuPO's phase boundary marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes

from .base import PlotInputError, _check_columns, _new_figure, save_figure

NEEDED = ("step", "phase", "k", "site", "layer", "metric", "mean", "ci_low", "ci_high")


def phase_boundary(table: pd.DataFrame) -> int | None:
    """The first step scored in BuPO's phase 2 ("full") after phase-1 steps; None without one."""
    phases = table.drop_duplicates("step").sort_values("step")
    full = phases[phases["phase"] == "full"]["step"]
    if full.empty or not (phases["phase"] == "inter").any():
        return None
    return int(full.iloc[0])


def plot_entropy_heatmap(table: pd.DataFrame, site: str = "resid", title: str | None = None):
    """Mean entropy (nats) of the `site` readouts, layer (rows) x optimizer step (columns)."""
    _check_columns(table, NEEDED, "dynamics table")
    rows = table[(table["metric"] == "entropy") & (table["site"] == site)]
    if rows.empty:
        raise PlotInputError(f"the dynamics table has no {site} entropy rows")
    grid = rows.pivot_table(index="layer", columns="step", values="mean")
    fig, ax = _new_figure(figsize=(7.0, 4.2))
    steps, layers = grid.columns.to_numpy(), grid.index.to_numpy()
    image = ax.pcolormesh(
        _edges(steps), _edges(layers), grid.to_numpy(), cmap="viridis", shading="flat"
    )
    fig.colorbar(image, ax=ax, label=f"H({site} readout), nats")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    _mark_boundary(ax, phase_boundary(table))
    ax.set_title(title or f"entropy of the {site} readouts during training")
    return fig


def plot_dynamics(table: pd.DataFrame, title: str | None = None):
    """Four panels against the optimizer step: H(pi^k), KL(pi^k || pi^j), cos(H^k, H^j) for
    every j > k (colour: j), and the perplexity of pi_theta; 95% CI bands where one line."""
    _check_columns(table, NEEDED, "dynamics table")
    k = int(table["k"].iloc[0])
    fig, axes = _new_figure(2, 2, figsize=(10.0, 6.4), sharex=True)
    own = table[(table["metric"] == "entropy") & (table["site"] == "resid")]
    _band(axes[0, 0], own[own["layer"] == k], f"H(pi^{k}), nats")
    _by_layer(axes[0, 1], table[table["metric"] == "kl_from_k"], f"KL(pi^{k} || pi^j), nats")
    _by_layer(axes[1, 0], table[table["metric"] == "cos_with_k"], f"cos(H^{k}, H^j)")
    _band(axes[1, 1], table[table["metric"] == "perplexity"], "perplexity of pi_theta")
    boundary = phase_boundary(table)
    for ax in axes.flat:
        _mark_boundary(ax, boundary)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(title or f"internal policy of layer k = {k} during training")
    return fig


def dynamics_figure(table: pd.DataFrame, directory: str | Path, title: str | None = None):
    """Draw both figures into `directory` (dynamics.png/.svg, dynamics_heatmap.png/.svg)."""
    paths = save_figure(plot_dynamics(table, title), Path(directory) / "dynamics")
    heatmap = plot_entropy_heatmap(table, title=title)
    return paths + save_figure(heatmap, Path(directory) / "dynamics_heatmap")


def _band(ax: Axes, rows: pd.DataFrame, label: str) -> None:
    rows = rows.sort_values("step")
    ax.plot(rows["step"], rows["mean"], marker="o", markersize=3, color="C0")
    ax.fill_between(rows["step"], rows["ci_low"], rows["ci_high"], alpha=0.25, color="C0")
    ax.set_ylabel(label)


def _by_layer(ax: Axes, rows: pd.DataFrame, label: str) -> None:
    layers = sorted(rows["layer"].unique())
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(1, len(layers))))
    for colour, layer in zip(colours, layers, strict=False):
        line = rows[rows["layer"] == layer].sort_values("step")
        ax.plot(line["step"], line["mean"], color=colour, label=f"j = {layer}")
    if 0 < len(layers) <= 8:
        ax.legend(fontsize="small", ncols=2)
    ax.set_ylabel(label)


def _mark_boundary(ax: Axes, step: int | None) -> None:
    if step is not None:
        ax.axvline(step, color="0.3", linestyle="--", linewidth=1.0, label="_phase 2 starts")


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (unit width for a single one)."""
    centres = np.asarray(centres, dtype=float)
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])
