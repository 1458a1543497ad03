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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from layerpolicy.errors import LayerpolicyError
from layerpolicy.tables.schema import ENTROPY_CHANGE, SHAPE_COLUMNS
from layerpolicy.tables.stats import profile

REGION_KINDS = ("exploration", "integration", "convergence")
TAU_SCALE = 0.15  # integration band: this share of `change_scale` (docs/shape.md says why)
SCALE_QUANTILE = 0.9
MIN_LENGTH = 2  # shorter inner regions between two of one kind take their kind


class NoBoundaryLayerError(LayerpolicyError):
    """The dH_mlp regions give no boundary layer k; the user has to choose the layer."""


@dataclass(frozen=True)
class Region:
    """A run of consecutive layers of one kind; `start`/`end` are 1-based layers, inclusive."""

    kind: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS or self.start > self.end:
            raise ValueError(f"invalid region {self.kind!r} {self.start}-{self.end}")

    def __str__(self) -> str:
        """Compact form: kind initial and layers, e.g. `E1-6`, or `I7` for one layer."""
        tag = self.kind[0].upper()
        return f"{tag}{self.start}" if self.start == self.end else f"{tag}{self.start}-{self.end}"


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


def default_tau(dh_mean: pd.Series, tau_scale: float = TAU_SCALE) -> float:
    """Default integration band (nats): tau_scale * `change_scale(dh_mean)`."""
    return float(tau_scale * change_scale(dh_mean))


def change_scale(dh_mean: pd.Series) -> float:
    """The size of a large per-layer change (nats): the 90th percentile of |mean dH|.

    Taken as one layer's own value (the lower order statistic), so with two or more layers the
    single largest |dH| never sets it (from 12 layers on, neither do the two largest). NaN
    layers are left out; 0.0 when no layer has a value.
    """
    values = np.abs(dh_mean.to_numpy(np.float64))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    return float(np.quantile(values, SCALE_QUANTILE, method="lower"))


def eic_regions(
    dh_mean: pd.Series,
    ci_low: pd.Series,
    ci_high: pd.Series,
    tau: float | None = None,
    tau_scale: float = TAU_SCALE,
    min_length: int = MIN_LENGTH,
) -> list[Region]:
    """Exploration / integration / convergence regions of a per-layer entropy change dH (nats).

    Layer l is exploration if mean > tau and ci_low > 0, convergence if mean < -tau and
    ci_high < 0, otherwise integration (NaN counts as integration). tau defaults to
    `default_tau(dh_mean, tau_scale)`. Consecutive layers of one kind form one region; then a
    region shorter than `min_length` layers whose two neighbours are of one kind takes their
    kind (shortest first, then leftmost), so one stray layer neither splits a run nor makes a
    region of its own. Regions at either end are kept as they are. The three series share one
    index of consecutive integer layers.
    """
    layers = _consecutive_layers(dh_mean, ci_low, ci_high)
    if tau is None:
        tau = default_tau(dh_mean, tau_scale)
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    mean, low, high = (s.reindex(layers).to_numpy(np.float64) for s in (dh_mean, ci_low, ci_high))
    kinds = np.full(len(layers), "integration", dtype=object)
    kinds[(mean > tau) & (low > 0)] = "exploration"
    kinds[(mean < -tau) & (high < 0)] = "convergence"
    return _absorb_short(_runs(layers, kinds), min_length)


def module_regions(summary: pd.DataFrame, site: str = "mlp") -> list[Region]:
    """EIC regions (default rule) of a module's entropy change in one model's summary table.

    `summary`: the summary.csv layout of one model and readout; ValueError when it has no
    `entropy_change` rows at `site`.
    """
    mean, low, high = (
        profile(summary, ENTROPY_CHANGE, site, v) for v in ("mean", "ci_low", "ci_high")
    )
    return eic_regions(mean, low, high)


def boundary_layer(regions: Sequence[Region], *, n_layers: int | None = None) -> int:
    """BuPO's boundary layer k (1-based): the last layer of the leading exploration region.

    `regions`: the EIC regions of dH_mlp. Leading integration regions are skipped (the first
    exploration region counts). Raises `NoBoundaryLayerError` (one line naming the regions and
    asking for --layer N) when a convergence region comes before any exploration region or
    there is no exploration region; with `n_layers` (L), also when that region reaches layer L,
    whose readout is pi_theta without its final norm rather than an internal layer.
    """
    listing = format_regions(regions) or "none"
    choose = "choose the trained layer with --layer N"
    if n_layers is not None:
        choose += f" (1..{n_layers - 1})"
    for region in regions:
        if region.kind == "convergence":
            break
        if region.kind != "exploration":
            continue
        if n_layers is not None and region.end >= n_layers:
            raise NoBoundaryLayerError(
                f"the first exploration region of dH_mlp reaches the last layer {n_layers} "
                f"(regions {listing}), so there is no internal boundary layer k; {choose}"
            )
        return region.end
    raise NoBoundaryLayerError(
        f"dH_mlp has no exploration region before convergence (regions {listing}), so there is "
        f"no boundary layer k; {choose}"
    )


def format_regions(regions: list[Region]) -> str:
    """Regions as a compact string, e.g. `E1-6 I7-26 C27-36`."""
    return " ".join(str(region) for region in regions)


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
    return {key: None if _is_nan(stats[key]) else stats[key] for key in SHAPE_COLUMNS}


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


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _consecutive_layers(*series: pd.Series) -> np.ndarray:
    """Sorted common layer index of `series`; ValueError unless identical and consecutive."""
    layers = series[0].index.sort_values()
    if any(not s.index.sort_values().equals(layers) for s in series[1:]):
        raise ValueError("dh_mean, ci_low and ci_high must share one layer index")
    values = layers.to_numpy()
    if len(values) == 0 or np.any(np.diff(values) != 1):
        raise ValueError(f"layers must be consecutive integers, got {list(values)}")
    return values


def _absorb_short(regions: list[Region], min_length: int) -> list[Region]:
    """Merge each inner region shorter than `min_length` into equal-kind neighbours (see eic)."""
    regions = list(regions)
    while True:
        short = [
            i
            for i in range(1, len(regions) - 1)
            if _length(regions[i]) < min_length and regions[i - 1].kind == regions[i + 1].kind
        ]
        if not short:
            return regions
        i = min(short, key=lambda j: (_length(regions[j]), j))
        merged = Region(regions[i - 1].kind, regions[i - 1].start, regions[i + 1].end)
        regions[i - 1 : i + 2] = [merged]


def _length(region: Region) -> int:
    return region.end - region.start + 1


def _runs(layers: np.ndarray, kinds: np.ndarray) -> list[Region]:
    """Maximal runs of equal kind over consecutive layers."""
    starts = [0, *(i for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1])]
    ends = [*(s - 1 for s in starts[1:]), len(kinds) - 1]
    return [
        Region(kinds[s], int(layers[s]), int(layers[e])) for s, e in zip(starts, ends, strict=True)
    ]
