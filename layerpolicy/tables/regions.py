"""EIC regions of a module's per-layer entropy change and BuPO's boundary layer.

Layer l of a dH profile (nats, layers 1..L, with its bootstrap interval) is exploration,
integration or convergence (docs/shape.md); consecutive layers of one kind form a region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from layerpolicy.errors import LayerpolicyError
from layerpolicy.tables.schema import ENTROPY_CHANGE
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
