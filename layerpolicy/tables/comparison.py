"""The comparison table (comparison.csv): one row of size, sample and shape per model; notes."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from layerpolicy.tables import shape
from layerpolicy.tables.difference import DIGITS
from layerpolicy.tables.results import RunTables
from layerpolicy.tables.schema import (
    COMPARISON_COLUMNS,
    COMPARISON_INT_COLUMNS,
    COMPARISON_TEXT_COLUMNS,
)


def run_readout(result: RunTables) -> str:
    """The readout mode a run used, as its run.json records it."""
    return str(result.record["settings"]["readout"])


def comparison_table(results: Mapping[str, RunTables]) -> pd.DataFrame:
    """One row per model label: size, readout, sample and shape statistics (docs/shape.md).

    Floats are rounded to 3 decimals; undefined statistics are empty (NaN / <NA>).
    """
    rows = [_comparison_row(label, result) for label, result in results.items()]
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for column in COMPARISON_COLUMNS:
        if column in COMPARISON_INT_COLUMNS:
            table[column] = table[column].astype("Int64")
        elif column not in COMPARISON_TEXT_COLUMNS:
            table[column] = table[column].astype(float).round(DIGITS)
    return table


def _comparison_row(label: str, result: RunTables) -> dict[str, object]:
    stats = shape.shape_statistics(result.summary)
    n_layers = int(stats["n_layers"])
    vocab = int(result.record["model"]["vocab_size"])
    final = result.summary[
        (result.summary["site"] == "final") & (result.summary["metric"] == "entropy")
    ]
    depth, k = stats["convergence_depth"], stats["boundary_layer"]
    return {
        **stats,
        "model": label,
        "vocab_size": vocab,
        "ln_vocab": math.log(vocab),
        "readout": run_readout(result),
        "n_prompts": int(final["n_prompts"].iloc[0]) if len(final) else None,
        "n_tokens": int(final["n_tokens"].iloc[0]) if len(final) else None,
        "convergence_layer": None if depth is None else round(float(depth) * n_layers),
        "boundary_rel_depth": None if k is None else int(k) / n_layers,
        "run": str(result.path) if result.path is not None else None,
    }


def comparison_notes(results: Mapping[str, RunTables]) -> list[str]:
    """Tokenizer and prompt mismatches between the runs: facts to state, not errors."""
    notes = []
    records = {label: r.record for label, r in results.items()}
    vocab = {label: r["model"]["vocab_size"] for label, r in records.items()}
    if len(set(vocab.values())) > 1:
        detail = ", ".join(f"{label} |V| = {v}" for label, v in vocab.items())
    elif _token_ids_differ(list(results.values())):
        detail = "one vocabulary size, but the same prompts become different token ids"
    else:
        detail = None
    if detail:
        notes.append(
            f"tokenizers differ ({detail}): every statistic is computed per model and the "
            "profiles are aligned on relative depth l/L"
        )
    prompts = {r["prompts"]["sha256"] for r in records.values()}
    if len(prompts) > 1:
        sources = ", ".join(f"{label}: {r['prompts']['source']}" for label, r in records.items())
        notes.append(f"the runs scored different prompt sets ({sources})")
    return notes


def _token_ids_differ(results: list[RunTables]) -> bool:
    """True when two runs of the same prompts scored different input token ids."""
    seen: dict[str, np.ndarray] = {}
    for result in results:
        tokens = result.tokens
        keys = [k for k in ("prompt_id", "sample", "position") if k in tokens.columns]
        final = tokens[tokens["site"] == "final"].sort_values(keys, kind="stable")
        ids = final["token_id"].to_numpy()
        sha = result.record["prompts"]["sha256"]
        if sha in seen and not np.array_equal(seen[sha], ids):
            return True
        seen.setdefault(sha, ids)
    return False
