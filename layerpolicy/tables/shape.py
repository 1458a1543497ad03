"""Shape statistics of one model's layer profile.

A profile is a pd.Series indexed by integer layer (sorted on use): the entropy profile of the
residual stream in nats (layers 0..L with the embedding at 0, or 1..L), or the per-layer entropy
change dH (nats) of a module at layers 1..L with its bootstrap interval. L is the profile's last
layer. Between consecutive profile layers l-1 -> l the entropy *drop* is max(0, h_{l-1} - h_l);
the *total drop* is the sum of these drops over the profile (for a profile that only falls it
equals first value minus last value).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerpolicy.tables.regions import (  # the regions' API, re-exported with the statistics
    MIN_LENGTH,
    REGION_KINDS,
    TAU_SCALE,
    NoBoundaryLayerError,
    Region,
    boundary_layer,
    change_scale,
    default_tau,
    eic_regions,
    format_regions,
    module_regions,
)
from layerpolicy.tables.schema import ENTROPY_CHANGE, SHAPE_COLUMNS
from layerpolicy.tables.stats import profile
from layerpolicy.tables.values import is_missing

__all__ = [
    "MIN_LENGTH", "REGION_KINDS", "TAU_SCALE", "NoBoundaryLayerError", "Region", "abruptness",
    "boundary_layer", "change_scale", "convergence_depth", "default_tau", "eic_regions",
    "format_regions", "largest_drop_share", "module_regions", "shape_statistics",
]  # fmt: skip


def convergence_depth(entropy: pd.Series, fraction: float = 0.5) -> float:
    """Relative depth at which the entropy profile has converged.

    With threshold t = min + fraction * (max - min) over the profile, returns l* / L for the
    smallest layer l* such that the entropy is <= t at l* and at every later layer ("falls below
    and stays below"). NaN for a flat profile (max == min) or when the last layer is above t.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    layers, h = _profile(entropy)
    if h.max() == h.min():
        return math.nan
    above = np.flatnonzero(h > h.min() + fraction * (h.max() - h.min()))
    first = above[-1] + 1 if above.size else 0
    return float(layers[first] / layers[-1]) if first < len(h) else math.nan


def abruptness(entropy: pd.Series, last_fraction: float = 0.1) -> float:
    """Share of the total entropy drop that happens in the last k layers of the profile.

    k = max(1, round(last_fraction * L)) (halves round up); the drops counted are those into
    layers L-k+1..L. A single step at the end gives 1.0, a linear ramp from layer 0 gives k / L.
    NaN when the profile never drops.
    """
    if not 0.0 <= last_fraction <= 1.0:
        raise ValueError(f"last_fraction must lie in [0, 1], got {last_fraction}")
    layers, drops = _drops(entropy)
    k = max(1, math.floor(last_fraction * layers[-1] + 0.5))
    tail = layers[1:] > layers[-1] - k
    return _share(drops[tail].sum(), drops)


def largest_drop_share(entropy: pd.Series) -> float:
    """Largest single-layer drop divided by the total drop (1.0 for one step; NaN if no drop)."""
    _, drops = _drops(entropy)
    return _share(drops.max(), drops)


def shape_statistics(summary: pd.DataFrame, *, resid_site: str = "resid") -> dict[str, object]:
    """Shape statistics of one model's summary table (summary.csv layout, one model/readout).

    Entropy shape (on the `mean` entropy of `resid_site`, with `embed` at layer 0 when present):
    n_layers, policy_entropy (site `final`, i.e. pi_theta), last_layer_entropy (the profile's
    value at layer L: the readout of H^L, which is not pi_theta), convergence_depth, abruptness,
    largest_drop_share. Module shape (on `entropy_change` of mlp and attn): eic_mlp / eic_attn,
    tau_mlp / tau_attn (nats), mean_abs_dh_mlp / mean_abs_dh_attn (mean over layers of |mean dH|,
    nats), boundary_layer (1-based, from the mlp regions) and boundary_layer_index (k - 1).
    Plain Python values (JSON-ready); None where a value is undefined or its site is absent.
    """
    n_layers = summary["n_layers"].unique()
    if len(n_layers) != 1:
        raise ValueError(f"summary mixes models with n_layers {sorted(n_layers)}")
    entropy = profile(summary, "entropy", resid_site)
    if (summary["site"] == "embed").any():
        entropy = pd.concat([profile(summary, "entropy", "embed"), entropy]).sort_index()
    final = summary[(summary["site"] == "final") & (summary["metric"] == "entropy")]["mean"]
    stats: dict[str, object] = {
        "n_layers": int(n_layers[0]),
        "policy_entropy": float(final.iloc[0]) if len(final) else math.nan,
        "last_layer_entropy": float(entropy.iloc[-1]),
        "convergence_depth": convergence_depth(entropy),
        "abruptness": abruptness(entropy),
        "largest_drop_share": largest_drop_share(entropy),
    }
    regions: dict[str, list[Region] | None] = {}
    for site in ("mlp", "attn"):
        regions[site], module_stats = _module_statistics(summary, site)
        stats.update(module_stats)
    k = _boundary_or_none(regions["mlp"])
    stats["boundary_layer"] = k
    stats["boundary_layer_index"] = None if k is None else k - 1
    return {key: None if is_missing(stats[key]) else stats[key] for key in SHAPE_COLUMNS}


def _module_statistics(
    summary: pd.DataFrame, site: str
) -> tuple[list[Region] | None, dict[str, object]]:
    """EIC regions of a module's entropy change and their summary entries (NaN if absent)."""
    rows = (summary["site"] == site) & (summary["metric"] == ENTROPY_CHANGE)
    if not rows.any():
        empty = {f"eic_{site}": None, f"tau_{site}": math.nan, f"mean_abs_dh_{site}": math.nan}
        return None, empty
    mean = profile(summary, ENTROPY_CHANGE, site)
    regions = module_regions(summary, site)
    return regions, {
        f"eic_{site}": format_regions(regions),
        f"tau_{site}": default_tau(mean),
        f"mean_abs_dh_{site}": float(mean.abs().mean()),
    }


def _boundary_or_none(regions: list[Region] | None) -> int | None:
    """`boundary_layer(regions)`, or None where there is none (tables state it, never raise)."""
    if regions is None:
        return None
    try:
        return boundary_layer(regions)
    except NoBoundaryLayerError:
        return None


def _profile(entropy: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(layers, values) of a profile sorted by layer; needs >= 2 layers, no NaN, L > 0."""
    series = entropy.sort_index()
    if len(series) < 2 or series.isna().any():
        raise ValueError(f"a profile needs >= 2 layers and no NaN, got {series.to_dict()}")
    layers = series.index.to_numpy()
    if not np.issubdtype(layers.dtype, np.integer) or layers[-1] <= 0:
        raise ValueError(f"profile layers must be integers ending at L > 0, got {list(layers)}")
    return layers, series.to_numpy(np.float64)


def _drops(entropy: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(layers, drops): drops[i] = max(0, h[i] - h[i+1]) is the drop into layers[i + 1]."""
    layers, h = _profile(entropy)
    return layers, np.maximum(h[:-1] - h[1:], 0.0)


def _share(part: float, drops: np.ndarray) -> float:
    """part / total drop; NaN when the profile never drops."""
    total = drops.sum()
    return float(part / total) if total > 0 else math.nan
