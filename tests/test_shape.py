"""Shape statistics on designed profiles with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from layerpolicy.errors import LayerpolicyError
from layerpolicy.tables.shape import (
    NoBoundaryLayerError,
    Region,
    abruptness,
    boundary_layer,
    change_scale,
    convergence_depth,
    default_tau,
    eic_regions,
    format_regions,
    largest_drop_share,
    module_regions,
    shape_statistics,
)

L = 36
LAYERS0 = np.arange(L + 1)  # embed at 0, then 1..L


def step_at_end() -> pd.Series:
    """10 nats through layer 35, 0 at layer 36."""
    return pd.Series(np.where(LAYERS0 < L, 10.0, 0.0), index=LAYERS0)


def linear_ramp() -> pd.Series:
    """h_l = L - l nats: one nat lost per layer."""
    return pd.Series((L - LAYERS0).astype(float), index=LAYERS0)


def test_convergence_depth_step_vs_ramp():
    assert convergence_depth(step_at_end()) == 1.0
    assert convergence_depth(linear_ramp()) == 0.5  # 18 <= 0 + 0.5 * 36 from layer 18 on
    assert convergence_depth(linear_ramp(), fraction=0.25) == 27 / 36
    mid_step = pd.Series(np.where(LAYERS0 < 12, 8.0, 1.0), index=LAYERS0)
    assert convergence_depth(mid_step) == 12 / 36


def test_convergence_depth_requires_staying_below():
    # Dips below the threshold at layer 2, comes back up, converges for good at layer 5.
    h = pd.Series([10.0, 9.0, 1.0, 9.0, 8.0, 2.0, 0.0], index=range(7))
    assert convergence_depth(h) == 5 / 6


def test_convergence_depth_undefined_cases():
    assert math.isnan(convergence_depth(pd.Series([3.0, 3.0, 3.0], index=[1, 2, 3])))
    rises_at_end = pd.Series([10.0, 0.0, 9.0], index=[0, 1, 2])
    assert math.isnan(convergence_depth(rises_at_end))


def test_convergence_depth_ignores_index_order():
    ramp = linear_ramp()
    assert convergence_depth(ramp.iloc[::-1]) == convergence_depth(ramp)


def test_abruptness_step_and_ramp():
    assert abruptness(step_at_end()) == 1.0
    assert abruptness(linear_ramp()) == pytest.approx(4 / 36)  # k = round(3.6) = 4 layers
    ramp100 = pd.Series(np.arange(100, -1, -1, dtype=float), index=np.arange(101))
    assert abruptness(ramp100) == pytest.approx(0.1)
    assert abruptness(linear_ramp(), last_fraction=0.5) == pytest.approx(0.5)


def test_abruptness_at_least_one_layer_and_early_step():
    assert abruptness(step_at_end(), last_fraction=0.0) == 1.0
    early_step = pd.Series(np.where(LAYERS0 < 5, 10.0, 0.0), index=LAYERS0)
    assert abruptness(early_step) == 0.0


def test_abruptness_ignores_rises():
    # Drops: 4 (into layer 1) and 6 (into layer 4); the rise into layer 3 is not a drop.
    h = pd.Series([10.0, 6.0, 6.0, 7.0, 1.0], index=range(5))
    assert abruptness(h, last_fraction=0.25) == 0.6
    assert largest_drop_share(h) == 0.6


def test_largest_drop_share():
    assert largest_drop_share(step_at_end()) == 1.0
    assert largest_drop_share(linear_ramp()) == pytest.approx(1 / 36)
    assert math.isnan(largest_drop_share(pd.Series([1.0, 2.0, 3.0], index=[1, 2, 3])))


def test_profile_validation():
    with pytest.raises(ValueError):
        abruptness(pd.Series([1.0], index=[1]))
    with pytest.raises(ValueError):
        convergence_depth(pd.Series([1.0, math.nan], index=[1, 2]))


def qwen_like_dh(noise: float = 0.05):
    """dH_mlp: +4 nats in layers 1-6, 0 in 7-26, -3 in 27-36, CI mean +/- noise."""
    layers = np.arange(1, L + 1)
    mean = pd.Series(np.select([layers <= 6, layers >= 27], [4.0, -3.0], 0.0), index=layers)
    return mean, mean - noise, mean + noise


def test_eic_regions_designed_pattern():
    regions = eic_regions(*qwen_like_dh())
    assert regions == [
        Region("exploration", 1, 6),
        Region("integration", 7, 26),
        Region("convergence", 27, 36),
    ]
    assert format_regions(regions) == "E1-6 I7-26 C27-36"
    assert boundary_layer(regions) == 6


def test_one_noisy_layer_does_not_split_a_run():
    mean, low, high = qwen_like_dh()
    low[3] = -1.0  # layer 3: mean 4 but the CI reaches below 0
    high[30] = 0.5  # layer 30: mean -3 but the CI reaches above 0
    unmerged = eic_regions(mean, low, high, min_length=1)
    assert format_regions(unmerged) == "E1-2 I3 E4-6 I7-26 C27-29 I30 C31-36"
    assert boundary_layer(unmerged) == 2
    regions = eic_regions(mean, low, high)
    assert format_regions(regions) == "E1-6 I7-26 C27-36"
    assert boundary_layer(regions) == 6  # the paper's rule on this shape


def test_eic_regions_ci_spanning_zero_is_integration():
    mean, low, high = qwen_like_dh()
    noisy = pd.Series(-8.0, index=mean.index)  # large |mean| everywhere, every CI spans 0
    assert eic_regions(noisy, noisy - 9.0, noisy + 9.0) == [Region("integration", 1, L)]
    low[[2, 3]] = -1.0  # two layers in a row with a CI below 0 are a region of their own
    assert format_regions(eic_regions(mean, low, high)) == "E1 I2-3 E4-6 I7-26 C27-36"


def packaged_qwen_like_dh(first: float = 6.8, noise: float = 0.02):
    """24 layers: layer 1 +`first` nats, 0.1 in layers 2-20, +2 in layers 21-24."""
    layers = np.arange(1, 25)
    mean = pd.Series(np.select([layers == 1, layers >= 21], [first, 2.0], 0.1), index=layers)
    return mean, mean - noise, mean + noise


def test_one_very_large_layer_does_not_set_the_band():
    mean, low, high = packaged_qwen_like_dh()
    old_tau = 0.1 * mean.abs().max()
    assert format_regions(eic_regions(mean, low, high, tau=old_tau)) == "E1 I2-20 E21-24"
    assert change_scale(mean) == 2.0  # the 90th percentile: layer 1 is left out
    assert default_tau(mean) == pytest.approx(0.3)
    for first in (3.0, 68.0, 6.8e3):  # the largest layer's size changes nothing
        bigger = packaged_qwen_like_dh(first)
        assert default_tau(bigger[0]) == default_tau(mean)
        assert format_regions(eic_regions(*bigger)) == "E1 I2-20 E21-24"
    assert boundary_layer(eic_regions(mean, low, high)) == 1


def test_one_very_large_layer_does_not_hide_the_exploration_after_it():
    layers = np.arange(1, 25)
    mean = pd.Series(np.select([layers == 1, layers <= 6, layers >= 21], [6.8, 0.5, -1.0], 0.0))
    mean.index = layers
    low, high = mean - 0.05, mean + 0.05
    old = eic_regions(mean, low, high, tau=0.1 * mean.abs().max(), min_length=1)
    assert format_regions(old) == "E1 I2-20 C21-24"  # 0.68 > the 0.5 of layers 2-6
    assert default_tau(mean) == pytest.approx(0.15)  # 0.15 x the 1.0 of layers 21-24
    regions = eic_regions(mean, low, high)
    assert format_regions(regions) == "E1-6 I7-20 C21-24"
    assert boundary_layer(regions, n_layers=24) == 6


def test_change_scale_is_one_layers_value():
    assert change_scale(pd.Series([1.0, -5.0], index=[1, 2])) == 1.0
    assert change_scale(pd.Series([0.3, -2.0, 9.0], index=[1, 2, 3])) == 2.0
    assert change_scale(pd.Series([math.nan, -4.0], index=[1, 2])) == 4.0
    assert change_scale(pd.Series([math.nan], index=[1])) == 0.0


def test_eic_regions_tau_band():
    mean, low, high = qwen_like_dh()
    mean[15], low[15], high[15] = 0.3, 0.2, 0.4  # tight CI but below tau
    mean[16], low[16], high[16] = 0.3, 0.2, 0.4
    assert default_tau(mean) == pytest.approx(0.6)  # 0.15 x 4, the 90th percentile of |dH|
    assert format_regions(eic_regions(mean, low, high)) == "E1-6 I7-26 C27-36"
    assert (
        format_regions(eic_regions(mean, low, high, tau=0.1)) == "E1-6 I7-14 E15-16 I17-26 C27-36"
    )
    assert format_regions(eic_regions(mean, low, high, tau_scale=0.0)) == (
        "E1-6 I7-14 E15-16 I17-26 C27-36"
    )


def test_eic_regions_min_length():
    mean, low, high = qwen_like_dh()
    mean[15], low[15], high[15] = 2.0, 1.5, 2.5  # a single expanding layer inside integration
    assert format_regions(eic_regions(mean, low, high)) == "E1-6 I7-26 C27-36"
    assert format_regions(eic_regions(mean, low, high, min_length=1)) == (
        "E1-6 I7-14 E15 I16-26 C27-36"
    )
    mean[16], low[16], high[16] = 2.0, 1.5, 2.5  # two layers are a region
    assert format_regions(eic_regions(mean, low, high)) == "E1-6 I7-14 E15-16 I17-26 C27-36"
    assert format_regions(eic_regions(mean, low, high, min_length=3)) == "E1-6 I7-26 C27-36"
    with pytest.raises(ValueError, match="min_length"):
        eic_regions(mean, low, high, min_length=0)


def test_short_regions_merge_shortest_then_leftmost():
    layers = np.arange(1, 10)
    # E1-3 I4 E5 I6 E7-9: the leftmost one-layer region goes first, and the run becomes one.
    mean = pd.Series([4.0, 4.0, 4.0, 0.0, 4.0, 0.0, 4.0, 4.0, 4.0], index=layers)
    assert format_regions(eic_regions(mean, mean - 0.1, mean + 0.1)) == "E1-9"
    # Regions at either end are kept: a one-layer exploration at layer 1 stays.
    edge = pd.Series([4.0, *[0.0] * 7, 4.0], index=layers)
    assert format_regions(eic_regions(edge, edge - 0.1, edge + 0.1)) == "E1 I2-8 E9"
    # A one-layer region between two different kinds stays too.
    mixed = pd.Series([4.0, 4.0, 0.0, -4.0, -4.0, 0.0, 0.0, 0.0, 0.0], index=layers)
    assert format_regions(eic_regions(mixed, mixed - 0.1, mixed + 0.1)) == "E1-2 I3 C4-5 I6-9"


def test_eic_regions_validates_index():
    mean, low, high = qwen_like_dh()
    with pytest.raises(ValueError, match="share one layer index"):
        eic_regions(mean, low.iloc[1:], high)
    with pytest.raises(ValueError, match="consecutive"):
        eic_regions(mean.drop(10), low.drop(10), high.drop(10))


def test_boundary_layer_rules():
    e, i, c = "exploration", "integration", "convergence"
    assert boundary_layer([Region(i, 1, 2), Region(e, 3, 6), Region(c, 7, 9)]) == 6
    assert boundary_layer([Region(e, 1, 3), Region(i, 4, 5), Region(e, 6, 8)]) == 3
    assert boundary_layer([Region(e, 1, 3), Region(i, 4, 9)], n_layers=9) == 3


@pytest.mark.parametrize(
    ("regions", "listing"),
    [
        ([Region("convergence", 1, 2), Region("exploration", 3, 6)], "C1-2 E3-6"),
        ([Region("integration", 1, 9)], "I1-9"),
        ([], "none"),
    ],
)
def test_boundary_layer_without_exploration_asks_for_a_layer(regions, listing):
    with pytest.raises(LayerpolicyError) as raised:
        boundary_layer(regions, n_layers=9)
    message = str(raised.value)
    assert "\n" not in message
    assert f"(regions {listing})" in message
    assert "--layer N (1..8)" in message


def test_boundary_layer_reaching_the_last_layer_asks_for_a_layer():
    regions = [Region("integration", 1, 2), Region("exploration", 3, 9)]
    assert boundary_layer(regions) == 9  # without L the region's end is k
    with pytest.raises(
        NoBoundaryLayerError, match=r"reaches the last layer 9 .*--layer N \(1..8\)"
    ):
        boundary_layer(regions, n_layers=9)


def all_convergence_summary(n_layers: int = 30) -> pd.DataFrame:
    """A SmolLM2-like model: every MLP lowers the entropy by 2.4 to 10.3 nats."""
    layers = np.arange(1, n_layers + 1)
    mean = pd.Series(np.linspace(-2.4, -10.3, n_layers), index=layers)
    return summary_rows("mlp", "entropy_change", mean, mean - 0.1, mean + 0.1, n_layers=n_layers)


def test_module_regions_of_an_all_convergence_model_give_no_boundary_layer():
    regions = module_regions(all_convergence_summary())
    assert format_regions(regions) == "C1-30"
    with pytest.raises(LayerpolicyError, match=r"\(regions C1-30\).*--layer N \(1..29\)"):
        boundary_layer(regions, n_layers=30)
    with pytest.raises(ValueError, match="no rows for metric 'entropy_change' at site 'attn'"):
        module_regions(all_convergence_summary(), site="attn")


def test_region_validation_and_str():
    assert str(Region("integration", 7, 7)) == "I7"
    with pytest.raises(ValueError):
        Region("explore", 1, 2)
    with pytest.raises(ValueError):
        Region("exploration", 3, 2)


def summary_rows(site, metric, mean, low=None, high=None, n_layers: int = L) -> pd.DataFrame:
    low = mean if low is None else low
    high = mean if high is None else high
    return pd.DataFrame(
        {
            "model": "m",
            "readout": "raw",
            "site": site,
            "layer": mean.index,
            "n_layers": n_layers,
            "metric": metric,
            "mean": mean.to_numpy(),
            "ci_low": np.asarray(low),
            "ci_high": np.asarray(high),
        }
    )


def qwen_like_summary() -> pd.DataFrame:
    ramp = linear_ramp()
    mean, low, high = qwen_like_dh()
    attn = pd.Series(1.0, index=mean.index)
    return pd.concat(
        [
            summary_rows("embed", "entropy", ramp.iloc[:1]),
            summary_rows("resid", "entropy", ramp.iloc[1:]),
            summary_rows("final", "entropy", pd.Series([0.5], index=[L])),
            summary_rows("mlp", "entropy_change", mean, low, high),
            summary_rows("attn", "entropy_change", attn, attn - 0.1, attn + 0.1),
        ],
        ignore_index=True,
    )


def test_shape_statistics_qwen_like():
    stats = shape_statistics(qwen_like_summary())
    assert stats["n_layers"] == L
    assert stats["last_layer_entropy"] == 0.0
    assert stats["policy_entropy"] == 0.5
    assert stats["convergence_depth"] == 0.5  # embed at layer 0 is part of the profile
    assert stats["abruptness"] == pytest.approx(4 / 36)
    assert stats["largest_drop_share"] == pytest.approx(1 / 36)
    assert stats["eic_mlp"] == "E1-6 I7-26 C27-36"
    assert stats["eic_attn"] == "E1-36"
    assert stats["boundary_layer"] == 6
    assert stats["boundary_layer_index"] == 5
    assert stats["tau_mlp"] == pytest.approx(0.6)
    assert stats["tau_attn"] == pytest.approx(0.15)
    assert stats["mean_abs_dh_mlp"] == pytest.approx((6 * 4 + 10 * 3) / 36)
    assert stats["mean_abs_dh_attn"] == 1.0


def test_shape_statistics_without_module_sites():
    summary = qwen_like_summary()
    summary = summary[summary["site"].isin(["resid"])]
    stats = shape_statistics(summary)
    assert stats["convergence_depth"] == pytest.approx(19 / 36)  # profile 1..36 without embed
    assert stats["eic_mlp"] is None and stats["eic_attn"] is None
    assert stats["boundary_layer"] is None and stats["boundary_layer_index"] is None
    assert stats["policy_entropy"] is None and stats["tau_mlp"] is None
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats


def test_shape_statistics_state_a_missing_boundary_layer_without_raising():
    ramp = pd.Series(np.linspace(10.0, 1.0, 30), index=np.arange(1, 31))
    summary = pd.concat(
        [summary_rows("resid", "entropy", ramp, n_layers=30), all_convergence_summary()],
        ignore_index=True,
    )
    stats = shape_statistics(summary)
    assert stats["eic_mlp"] == "C1-30"
    assert stats["boundary_layer"] is None and stats["boundary_layer_index"] is None
