"""Per-prompt means, entropy change and bootstrap summaries on hand-built tables."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from layerpolicy.tables.stats import bootstrap_ci, profile, prompt_means, summarise

# Entropy (nats) per token and (site, layer) for a 2-layer model. p1 has two scored positions
# (position 1 is the last: no target), p2 one. Halves and quarters keep every mean exact.
ENTROPIES = {
    ("p1", 0): {
        ("embed", 0): 10.0,
        ("attn_in", 1): 9.0,
        ("attn", 1): 11.0,
        ("mlp_in", 1): 7.0,
        ("mlp", 1): 6.0,
        ("resid", 1): 8.0,
        ("attn_in", 2): 6.0,
        ("attn", 2): 6.5,
        ("mlp_in", 2): 4.0,
        ("mlp", 2): 2.0,
        ("resid", 2): 5.0,
        ("final", 2): 1.0,
    },
    ("p1", 1): {
        ("embed", 0): 10.0,
        ("attn_in", 1): 8.0,
        ("attn", 1): 10.0,
        ("mlp_in", 1): 5.0,
        ("mlp", 1): 5.0,
        ("resid", 1): 6.0,
        ("attn_in", 2): 4.0,
        ("attn", 2): 5.0,
        ("mlp_in", 2): 3.0,
        ("mlp", 2): 0.0,
        ("resid", 2): 3.0,
        ("final", 2): 0.5,
    },
    ("p2", 0): {
        ("embed", 0): 9.0,
        ("attn_in", 1): 7.0,
        ("attn", 1): 7.0,
        ("mlp_in", 1): 2.0,
        ("mlp", 1): 4.0,
        ("resid", 1): 9.0,
        ("attn_in", 2): 3.0,
        ("attn", 2): 1.0,
        ("mlp_in", 2): 2.0,
        ("mlp", 2): 3.0,
        ("resid", 2): 1.0,
        ("final", 2): 0.25,
    },
}
LAST = {("p1", 1)}  # positions without a next token


def make_tokens() -> pd.DataFrame:
    """tokens.parquet layout; target_logprob = -entropy / 2 where there is a target."""
    rows = []
    for (prompt, position), sites in ENTROPIES.items():
        has_target = (prompt, position) not in LAST
        for (site, layer), entropy in sites.items():
            rows.append(
                {
                    "prompt_id": prompt,
                    "position": position,
                    "token_id": 7,
                    "token": "x",
                    "target_id": 8 if has_target else -1,
                    "model": "m",
                    "readout": "raw",
                    "site": site,
                    "layer": layer,
                    "n_layers": 2,
                    "entropy": entropy,
                    "kl_to_final": math.nan,
                    "target_logprob": -entropy / 2 if has_target else math.nan,
                    "target_rank": 3.0 if has_target else math.nan,
                    "top1_agree": position == 0,
                }
            )
    tokens = pd.DataFrame(rows)
    dtypes = {"position": "int32", "layer": "int16", "n_layers": "int16"}
    return tokens.astype({**dtypes, "entropy": "float32", "target_logprob": "float32"})


def value_of(means: pd.DataFrame, prompt: str, site: str, layer: int, metric: str) -> pd.Series:
    row = means[
        (means["prompt_id"] == prompt)
        & (means["site"] == site)
        & (means["layer"] == layer)
        & (means["metric"] == metric)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_prompt_means_columns_and_skipped_metrics():
    means = prompt_means(make_tokens())
    assert list(means.columns) == [
        "prompt_id",
        "site",
        "layer",
        "n_layers",
        "metric",
        "value",
        "n_tokens",
    ]
    # kl_to_final is all-NaN and rms_norm absent: skipped.
    assert set(means["metric"]) == {
        "entropy",
        "target_logprob",
        "target_rank",
        "top1_agree",
        "entropy_change",
    }
    assert set(means.loc[means["metric"] == "entropy_change", "site"]) == {"resid", "attn", "mlp"}
    assert (means["n_layers"] == 2).all()


@pytest.mark.parametrize(
    ("prompt", "site", "layer", "metric", "value", "n_tokens"),
    [
        ("p1", "embed", 0, "entropy", 10.0, 2),
        ("p1", "resid", 1, "entropy", 7.0, 2),
        ("p1", "resid", 2, "entropy", 4.0, 2),
        ("p1", "final", 2, "entropy", 0.75, 2),
        ("p2", "mlp", 2, "entropy", 3.0, 1),
        # entropy change, per token then averaged
        ("p1", "resid", 1, "entropy_change", -3.0, 2),
        ("p1", "resid", 2, "entropy_change", -3.0, 2),
        ("p1", "attn", 1, "entropy_change", 2.0, 2),
        ("p1", "attn", 2, "entropy_change", 0.75, 2),
        ("p1", "mlp", 1, "entropy_change", -0.5, 2),
        ("p1", "mlp", 2, "entropy_change", -2.5, 2),
        ("p2", "resid", 1, "entropy_change", 0.0, 1),
        ("p2", "resid", 2, "entropy_change", -8.0, 1),
        ("p2", "attn", 1, "entropy_change", 0.0, 1),
        ("p2", "attn", 2, "entropy_change", -2.0, 1),
        ("p2", "mlp", 1, "entropy_change", 2.0, 1),
        ("p2", "mlp", 2, "entropy_change", 1.0, 1),
    ],
)
def test_prompt_means_exact_values(prompt, site, layer, metric, value, n_tokens):
    row = value_of(prompt_means(make_tokens()), prompt, site, layer, metric)
    assert row["value"] == value
    assert row["n_tokens"] == n_tokens


def test_top1_agree_is_a_share():
    row = value_of(prompt_means(make_tokens()), "p1", "resid", 1, "top1_agree")
    assert (row["value"], row["n_tokens"]) == (0.5, 2)  # True at position 0 only


def test_prompt_means_entropy_change_has_no_embed_or_final_rows():
    changes = prompt_means(make_tokens()).query("metric == 'entropy_change'")
    assert sorted(set(changes["layer"])) == [1, 2]


def test_nan_targets_average_over_tokens_that_have_them():
    means = prompt_means(make_tokens())
    row = value_of(means, "p1", "resid", 1, "target_logprob")
    assert (row["value"], row["n_tokens"]) == (-4.0, 1)  # only position 0 has a target
    assert value_of(means, "p1", "resid", 1, "entropy")["n_tokens"] == 2


def test_prompt_without_any_target_has_no_target_rows():
    tokens = make_tokens()
    tokens.loc[tokens["prompt_id"] == "p2", ["target_logprob", "target_rank"]] = math.nan
    means = prompt_means(tokens)
    p2 = means[means["prompt_id"] == "p2"]
    assert "target_logprob" not in set(p2["metric"])
    assert "entropy" in set(p2["metric"])


def test_missing_input_readout_fails_loudly():
    tokens = make_tokens()
    drop = (
        (tokens["prompt_id"] == "p1")
        & (tokens["position"] == 1)
        & (tokens["site"] == "mlp_in")
        & (tokens["layer"] == 2)
    )
    with pytest.raises(ValueError, match=r"site 'mlp'.*position 1 layer 2 has only its output"):
        prompt_means(tokens[~drop])


def test_missing_embed_readout_fails_for_resid_change():
    tokens = make_tokens()
    drop = (tokens["prompt_id"] == "p2") & (tokens["site"] == "embed")
    with pytest.raises(ValueError, match="site 'resid'"):
        prompt_means(tokens[~drop])


def test_absent_input_site_skips_that_entropy_change():
    tokens = make_tokens()
    means = prompt_means(tokens[~tokens["site"].isin(["attn_in", "mlp_in"])])
    assert set(means.loc[means["metric"] == "entropy_change", "site"]) == {"resid"}


def test_mixed_readouts_are_refused():
    tokens = make_tokens()
    other = tokens.assign(readout="logit-lens")
    with pytest.raises(ValueError, match="readouts"):
        prompt_means(pd.concat([tokens, other]))


def test_prompt_means_is_order_independent():
    tokens = make_tokens()
    shuffled = tokens.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(prompt_means(tokens), prompt_means(shuffled))


def means_table(values, n_tokens, metric="entropy", site="resid", layer=1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"q{i:03d}" for i in range(len(values))],
            "site": site,
            "layer": layer,
            "n_layers": 4,
            "metric": metric,
            "value": values,
            "n_tokens": n_tokens,
        }
    )


def test_summary_one_prompt_ci_collapses_to_mean():
    summary = summarise(
        prompt_means(make_tokens()).query("prompt_id == 'p2'"), model="m", readout="raw"
    )
    assert (summary["ci_low"] == summary["mean"]).all()
    assert (summary["ci_high"] == summary["mean"]).all()
    assert (summary["pooled_mean"] == summary["mean"]).all()
    assert (summary["n_prompts"] == 1).all()


def test_summary_known_data():
    summary = summarise(means_table([1.0, 2.0, 3.0, 10.0], [1, 1, 1, 7]), model="m", readout="raw")
    assert list(summary.columns) == [
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
    ]
    row = summary.iloc[0]
    assert row["mean"] == 4.0
    assert row["pooled_mean"] == pytest.approx(7.6, abs=1e-12)  # (1 + 2 + 3 + 70) / 10
    assert (row["n_prompts"], row["n_tokens"]) == (4, 10)
    assert row["rel_depth"] == 0.25
    assert (row["model"], row["readout"]) == ("m", "raw")
    assert 1.0 <= row["ci_low"] < row["mean"] < row["ci_high"] <= 10.0


def test_summary_from_hand_built_tokens():
    summary = summarise(prompt_means(make_tokens()), model="m", readout="raw")
    row = summary.query("site == 'mlp' and layer == 2 and metric == 'entropy_change'").iloc[0]
    assert row["mean"] == -0.75  # (-2.5 + 1) / 2
    assert row["pooled_mean"] == pytest.approx(-4.0 / 3.0)  # (-2 - 3 + 1) / 3 tokens
    assert (row["n_prompts"], row["n_tokens"]) == (2, 3)
    target = summary.query("site == 'resid' and layer == 1 and metric == 'target_logprob'")
    assert target.iloc[0]["n_tokens"] == 2  # p1 has one token with a target, p2 one


def test_bootstrap_matches_naive_resampling():
    values = np.random.default_rng(1).normal(size=30)
    draws = np.random.default_rng(5).integers(0, 30, size=(400, 30))
    expected = np.percentile(values[draws].mean(axis=1), [5.0, 95.0])
    low, high = bootstrap_ci(values, n_boot=400, seed=5, confidence=0.9)
    assert low == pytest.approx(expected[0], abs=1e-12)
    assert high == pytest.approx(expected[1], abs=1e-12)


def test_summary_ci_equals_bootstrap_ci_of_its_row_and_is_seeded():
    values = np.random.default_rng(2).normal(size=25)
    table = pd.concat(
        [
            means_table(values, 1),
            means_table(values * 2, 1, metric="rms_norm"),
        ]
    )
    summary = summarise(table, model="m", readout="raw", seed=7)
    row = summary.query("metric == 'entropy'").iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_ci(values, seed=7), rel=1e-12)
    doubled = summary.query("metric == 'rms_norm'").iloc[0]  # same draw for every row
    assert doubled["ci_low"] == pytest.approx(2 * row["ci_low"])
    assert doubled["ci_high"] == pytest.approx(2 * row["ci_high"])
    pd.testing.assert_frame_equal(summary, summarise(table, model="m", readout="raw", seed=7))
    other = summarise(table, model="m", readout="raw", seed=8)
    assert not np.allclose(other["ci_low"], summary["ci_low"])


def test_summary_row_missing_some_prompts():
    table = pd.concat(
        [
            means_table([1.0, 2.0, 3.0], [2, 2, 2]),
            means_table([5.0, 7.0], [1, 3], metric="target_logprob"),
        ]
    )
    row = summarise(table, model="m", readout="raw").query("metric == 'target_logprob'").iloc[0]
    assert (row["n_prompts"], row["n_tokens"], row["mean"]) == (2, 4, 6.0)
    assert row["pooled_mean"] == 6.5
    assert 5.0 <= row["ci_low"] <= row["ci_high"] <= 7.0


def test_profile_is_sorted_by_layer():
    table = pd.concat([means_table([float(layer)], [1], layer=layer) for layer in (3, 1, 2)])
    series = profile(summarise(table, model="m", readout="raw"), "entropy", "resid")
    assert list(series.index) == [1, 2, 3]
    assert list(series) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="no rows"):
        profile(summarise(table, model="m", readout="raw"), "entropy", "mlp")


def test_prompt_means_speed_on_a_million_rows():
    n_prompts, n_positions, n_layers = 200, 50, 16
    sites = [("embed", 0)] + [
        (site, layer)
        for layer in range(1, n_layers + 1)
        for site in ("attn_in", "attn", "mlp_in", "mlp", "resid")
    ]
    n = n_prompts * n_positions * len(sites)
    rng = np.random.default_rng(0)
    tokens = pd.DataFrame(
        {
            "prompt_id": np.repeat([f"p{i}" for i in range(n_prompts)], n_positions * len(sites)),
            "position": np.tile(np.repeat(np.arange(n_positions), len(sites)), n_prompts),
            "site": np.tile([s for s, _ in sites], n_prompts * n_positions),
            "layer": np.tile([layer for _, layer in sites], n_prompts * n_positions),
            "n_layers": n_layers,
            "entropy": rng.random(n, dtype=np.float32),
            "target_logprob": rng.random(n, dtype=np.float32),
        }
    )
    start = time.perf_counter()
    means = prompt_means(tokens)
    assert time.perf_counter() - start < 20.0
    assert len(means) == n_prompts * (len(sites) * 2 + 3 * n_layers)
