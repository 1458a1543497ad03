"""Per-prompt means and across-prompt summaries of the token table (layouts in docs/tables.md).

Pure pandas/numpy. Entropies and entropy changes are in nats; layers are 1-based (`embed` is 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerpolicy.tables.schema import (
    ENTROPY_CHANGE,
    MEANS_COLUMNS,
    MODULE_INPUTS,
    SAMPLE_COLUMN,
    SUMMARY_COLUMNS,
    TOKEN_METRICS,
)

_GROUP = ["prompt_id", "site", "layer", "n_layers"]
_TOKEN_LAYER = ["prompt_id", "position", "layer"]
_ROW = ["site", "layer", "n_layers", "metric"]
_JOIN = "\x1f"  # joins a prompt id and a sample index into one response id


def prompt_means(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt means of every metric, plus the derived `entropy_change` rows.

    `tokens`: the tokens.parquet layout of ONE model and ONE readout (filter first otherwise).
    Returns one row per (prompt_id, site, layer, metric) with `value` (mean over the prompt's
    tokens that have the metric; nats for entropies) and `n_tokens` (how many tokens were used).
    Metrics absent from `tokens` or NaN everywhere are skipped. `entropy_change` is computed per
    token then averaged: resid H(H^l) - H(H^{l-1}) with H^0 = embed; attn H(attn) - H(attn_in);
    mlp H(mlp) - H(mlp_in). A unit is skipped when one of its sites is absent from the table, and
    a ValueError is raised when its sites are present but some token lacks one of the two readouts.
    With a `sample` column (several responses per prompt) a prompt's value is the mean of its
    responses' means (each sample weighs the same) and `n_tokens` their sum.
    """
    _require_single_run(tokens)
    if SAMPLE_COLUMN in tokens.columns:
        return _mean_over_samples(response_means(tokens))
    metrics = [m for m in TOKEN_METRICS if m in tokens.columns and tokens[m].notna().any()]
    parts = [_long_means(tokens, metrics)]
    if "entropy" in metrics:
        changes = _entropy_changes(tokens)
        if changes is not None:
            parts.append(_long_means(changes, [ENTROPY_CHANGE]))
    means = pd.concat(parts, ignore_index=True)
    means = means[means["n_tokens"] > 0]
    return means.sort_values(["site", "metric", "layer", "prompt_id"], ignore_index=True)[
        MEANS_COLUMNS
    ]


def response_means(tokens: pd.DataFrame) -> pd.DataFrame:
    """`prompt_means` of each response of a table with a `sample` column: the prompt_means
    layout plus `sample` (one row per prompt, sample, site, layer, metric)."""
    if SAMPLE_COLUMN not in tokens.columns:
        raise ValueError("the tokens hold no `sample` column; they are no responses")
    key = tokens["prompt_id"].astype(str) + _JOIN + tokens[SAMPLE_COLUMN].astype(str)
    means = prompt_means(tokens.drop(columns=SAMPLE_COLUMN).assign(prompt_id=key))
    split = means["prompt_id"].str.rsplit(_JOIN, n=1, expand=True)
    return means.assign(prompt_id=split[0], sample=split[1].astype(np.int32))


def _mean_over_samples(means: pd.DataFrame) -> pd.DataFrame:
    """Per-response means -> per-prompt means (mean over samples; tokens summed)."""
    keys = ["prompt_id", "site", "layer", "n_layers", "metric"]
    merged = means.groupby(keys, observed=True, sort=False).agg(
        value=("value", "mean"), n_tokens=("n_tokens", "sum")
    )
    merged = merged.reset_index()
    return merged.sort_values(["site", "metric", "layer", "prompt_id"], ignore_index=True)[
        MEANS_COLUMNS
    ]


def summarise(
    prompt_means: pd.DataFrame,
    *,
    model: str,
    readout: str,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Across-prompt summary (summary.csv layout): one row per (site, layer, metric).

    `mean` is the mean over prompts of per-prompt means; `ci_low`/`ci_high` its percentile
    bootstrap interval, resampling prompts with one (n_boot x n_prompts) draw shared by every row;
    `pooled_mean` the token-weighted mean (sum of value * n_tokens / sum of n_tokens);
    `n_prompts`/`n_tokens` the prompts and tokens behind the row; `rel_depth` = layer / n_layers.
    A row that lacks some prompts (e.g. a target metric of a prompt without targets) is resampled
    on the same draw with the missing prompts left out.
    """
    means = prompt_means[prompt_means["value"].notna()]
    wide = means.set_index([*_ROW, "prompt_id"])[["value", "n_tokens"]].unstack("prompt_id")
    values = wide["value"].to_numpy(dtype=np.float64)  # (rows, prompts), NaN = prompt absent
    present = ~np.isnan(values)
    n_tokens = np.where(present, wide["n_tokens"].to_numpy(dtype=np.float64), 0.0)
    low, high = _bootstrap_rows(values, n_boot=n_boot, seed=seed, confidence=confidence)
    total_tokens = n_tokens.sum(axis=1)
    summary = wide.index.to_frame(index=False)
    summary["layer"] = summary["layer"].astype(int)
    summary["n_layers"] = summary["n_layers"].astype(int)
    summary["model"] = model
    summary["readout"] = readout
    summary["rel_depth"] = summary["layer"] / summary["n_layers"]
    summary["n_prompts"] = present.sum(axis=1)
    summary["n_tokens"] = total_tokens.astype(np.int64)
    summary["mean"] = np.nanmean(values, axis=1)
    summary["ci_low"] = low
    summary["ci_high"] = high
    summary["pooled_mean"] = np.nansum(values * n_tokens, axis=1) / total_tokens
    return summary.sort_values(["site", "metric", "layer"], ignore_index=True)[SUMMARY_COLUMNS]


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of one vector (shape (n,), NaN = absent).

    Same draw as `summarise` for a table with n prompts: the interval matches its row.
    """
    vector = np.asarray(values, dtype=np.float64).reshape(1, -1)
    low, high = _bootstrap_rows(vector, n_boot=n_boot, seed=seed, confidence=confidence)
    return float(low[0]), float(high[0])


def profile(summary: pd.DataFrame, metric: str, site: str, value: str = "mean") -> pd.Series:
    """Column `value` of `summary` for one metric at one site, indexed by layer (sorted)."""
    rows = summary[(summary["metric"] == metric) & (summary["site"] == site)]
    if rows.empty:
        raise ValueError(f"summary has no rows for metric {metric!r} at site {site!r}")
    series = rows.set_index("layer")[value].sort_index()
    if not series.index.is_unique:
        raise ValueError(
            f"summary has several rows per layer for {metric!r} at {site!r}; "
            "pass the summary of a single model and readout"
        )
    series.name = metric
    return series


def two_sample_ci(
    first: np.ndarray,
    second: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample percentile bootstrap interval of mean(first) - mean(second) per row.

    `first` (rows, n1) and `second` (rows, n2), NaN = absent: each sample is resampled on its
    own draw (seeds `seed` and `seed + 1`), shared by every row."""
    tail = 50.0 * (1.0 - confidence)
    difference = _boot_means(first, n_boot, seed) - _boot_means(second, n_boot, seed + 1)
    low, high = np.nanpercentile(difference, [tail, 100.0 - tail], axis=1)
    return low, high


def _require_single_run(tokens: pd.DataFrame) -> None:
    """Raise unless `tokens` holds at most one model and one readout."""
    for column in ("model", "readout"):
        if column in tokens.columns and tokens[column].nunique() > 1:
            found = sorted(tokens[column].unique())
            raise ValueError(f"tokens mix several {column}s {found}; pass one {column} at a time")


def _long_means(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per-(prompt, site, layer) mean and non-NaN count of each metric, in long form."""
    values = frame[_GROUP].join(frame[metrics].astype(np.float64))
    grouped = values.groupby(_GROUP, observed=True, sort=False)[metrics]
    means = grouped.mean().melt(ignore_index=False, var_name="metric", value_name="value")
    counts = grouped.count().melt(ignore_index=False, var_name="metric", value_name="n_tokens")
    means["n_tokens"] = counts["n_tokens"].to_numpy()
    return means.reset_index()


def _entropy_changes(tokens: pd.DataFrame) -> pd.DataFrame | None:
    """Per-token entropy change (nats) of each unit whose sites are all present; None if none."""
    sites = set(tokens["site"].unique())
    pieces = []
    if {"embed", "resid"} <= sites:
        stream = tokens[tokens["site"].isin(["embed", "resid"])]
        inputs = stream[stream["layer"] < stream["n_layers"]]
        inputs = inputs.assign(layer=inputs["layer"] + 1)  # H^{l-1} is the input of layer l
        pieces.append(_paired_change(stream[stream["site"] == "resid"], inputs, "resid"))
    for site, input_site in MODULE_INPUTS.items():
        if {site, input_site} <= sites:
            outputs = tokens[tokens["site"] == site]
            pieces.append(_paired_change(outputs, tokens[tokens["site"] == input_site], site))
    return pd.concat(pieces, ignore_index=True) if pieces else None


def _paired_change(outputs: pd.DataFrame, inputs: pd.DataFrame, site: str) -> pd.DataFrame:
    """H(output) - H(input) per (prompt, position, layer); ValueError if a partner is missing."""
    paired = outputs[[*_TOKEN_LAYER, "n_layers", "entropy"]].merge(
        inputs[[*_TOKEN_LAYER, "entropy"]],
        on=_TOKEN_LAYER,
        how="outer",
        suffixes=("_out", "_in"),
        validate="one_to_one",
        indicator=True,
    )
    unpaired = paired[paired["_merge"] != "both"]
    if not unpaired.empty:
        first = unpaired.iloc[0]
        side = "output" if first["_merge"] == "left_only" else "input"
        raise ValueError(
            f"entropy_change at site {site!r}: {len(unpaired)} readouts have no partner, e.g. "
            f"prompt {first['prompt_id']!r} position {first['position']} layer {first['layer']} "
            f"has only its {side}; the tokens table is incomplete"
        )
    change = paired["entropy_out"].astype(np.float64) - paired["entropy_in"].astype(np.float64)
    return pd.DataFrame(
        {
            "prompt_id": paired["prompt_id"],
            "site": site,
            "layer": paired["layer"],
            "n_layers": paired["n_layers"],
            ENTROPY_CHANGE: change,
        }
    )


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities: row b counts how often each item is drawn in resample b."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _bootstrap_rows(
    values: np.ndarray, *, n_boot: int, seed: int, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of each row's mean; values (rows, n), NaN = absent."""
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < confidence < 1, got {n_boot}, {confidence}")
    boot = _boot_means(values, n_boot, seed)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.nanpercentile(boot, [tail, 100.0 - tail], axis=1)
    return low, high


def _boot_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(rows, n_boot) bootstrap means of each row of values (rows, n), NaN = absent."""
    if values.shape[1] == 0:
        raise ValueError("cannot bootstrap an empty sample")
    counts = _resample_counts(values.shape[1], n_boot, seed)
    present = ~np.isnan(values)
    sums = np.where(present, values, 0.0) @ counts.T  # (rows, n_boot)
    sizes = present.astype(np.float64) @ counts.T
    return np.divide(sums, sizes, out=np.full_like(sums, np.nan), where=sizes > 0)
