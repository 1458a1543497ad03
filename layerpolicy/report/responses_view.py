"""The report's responses: one heatmap per (prompt, sample), with the response text and grade."""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from ..tables.schema import SAMPLE_COLUMN


def heatmap_units(stream: pd.DataFrame, limit: int) -> list[pd.DataFrame]:
    """The token rows of each heatmap, in table order: one per prompt, or one per response
    (prompt, sample) when the table has a `sample` column; the first `limit` of them."""
    keys = ["prompt_id", SAMPLE_COLUMN] if SAMPLE_COLUMN in stream.columns else ["prompt_id"]
    groups = stream.groupby(keys, sort=False, observed=True)
    return [rows for _, rows in itertools.islice(groups, limit)]


def describe_response(
    entry: dict[str, Any], rows: pd.DataFrame, responses: pd.DataFrame | None
) -> dict[str, Any]:
    """A heatmap entry with its response (text, grade, how it ended) where the run saved it;
    the entry's label names the sample when the prompt has several."""
    if SAMPLE_COLUMN not in rows.columns or responses is None:
        return entry
    prompt_id, sample = str(rows["prompt_id"].iloc[0]), int(rows[SAMPLE_COLUMN].iloc[0])
    found = responses[(responses["prompt_id"] == prompt_id) & (responses["sample"] == sample)]
    if (responses["prompt_id"] == prompt_id).sum() > 1:
        entry["id"] = f"{prompt_id} · sample {sample}"
    if found.empty:
        return entry
    row = found.iloc[0]
    grade = "ungraded" if pd.isna(row["correct"]) else "correct" if row["correct"] else "incorrect"
    ended = "end of sequence" if row["finish_reason"] == "eos" else "token budget"
    entry.update(response=str(row["response_text"]), grade=grade, finish=ended)
    return entry
