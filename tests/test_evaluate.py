"""Reward evaluation: sampled rows against the sampler itself, summaries and paired differences
against hand computations, and the screen's "solved sometimes" selection."""

from __future__ import annotations

import pandas as pd
import pytest

from layerpolicy.bupo.evaluate import (
    ROW_COLUMNS,
    paired_difference,
    read_rows,
    reward_summary,
    solve_rates,
    sometimes_solved,
)
from layerpolicy.errors import LayerpolicyError, PromptSourceError
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptItem, PromptSet, load_prompts
from layerpolicy.runs import write_csv
from layerpolicy.sampling import SamplingConfig, sample_items

pytestmark = pytest.mark.usefixtures("one_thread")

STOPS = list(range(3, 30))  # many stop tokens, so that tiny random models stop early too


def parity(response: str, truth: str) -> float:
    return float(len(response) % 2)


def rows_of(rewards: dict[str, list[float]]) -> pd.DataFrame:
    """A rows table from per-prompt rewards (in the dict's order)."""
    rows = [
        (prompt, index, reward, 3 + index, index % 2 == 0)
        for prompt, values in rewards.items()
        for index, reward in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


@pytest.fixture(scope="module")
def stopping_model(tiny_dirs):
    """A tiny Qwen3 whose generation config stops at many token ids."""
    model = load_model(str(tiny_dirs["qwen3"]), device="cpu")
    model.plain.generation_config.eos_token_id = STOPS
    return model


def test_solve_rates_rows_are_the_samplers_responses_decoded_and_rewarded(stopping_model):
    prompts = load_prompts(None, limit=3)
    options = dict(samples=4, max_new_tokens=8, seed=3, reward_fn=parity, progress=False)
    rows = solve_rates(stopping_model, prompts, batch_size=5, **options)
    assert list(rows.columns) == list(ROW_COLUMNS) and len(rows) == 12
    reference = sample_items(
        stopping_model, prompts.items, SamplingConfig(max_new_tokens=8, seed=3, n=4)
    )
    tokenizer = stopping_model.tokenizer
    expected = pd.DataFrame(
        [
            (
                s.prompt_id,
                s.index,
                float(len(tokenizer.decode(s.response_ids, skip_special_tokens=True)) % 2),
                len(s.response_ids),
                s.response_ids[-1] in STOPS,
            )
            for s in reference
        ],
        columns=list(ROW_COLUMNS),
    )
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert rows["stopped"].any() and not rows["stopped"].all()
    assert (rows.loc[~rows["stopped"], "response_tokens"] == 8).all()
    assert 0 < rows["reward"].mean() < 1
    again = solve_rates(stopping_model, prompts, batch_size=5, **options)
    pd.testing.assert_frame_equal(again, rows)
    other = solve_rates(stopping_model, prompts, batch_size=5, **{**options, "seed": 4})
    assert not other.equals(rows)


def test_rows_round_trip_through_csv_with_text_ids(tmp_path):
    rows = rows_of({"007": [1.0, 0.0], "NA": [1.0]})
    write_csv(rows, tmp_path / "rows.csv")
    back = read_rows(tmp_path / "rows.csv")
    assert list(back["prompt_id"]) == ["007", "007", "NA"]
    assert list(back["stopped"]) == [True, False, True]
    assert back["reward"].tolist() == [1.0, 0.0, 1.0]


def test_prompts_without_an_answer_are_refused_before_sampling(stopping_model):
    prompts = PromptSet((PromptItem("q1", None, "What is 1 + 1?"),), "inline", "x")
    with pytest.raises(PromptSourceError, match=r"1 of 1 prompts .* no answer \(first: q1\)"):
        solve_rates(stopping_model, prompts, samples=2, max_new_tokens=2, progress=False)


def test_reward_summary_by_hand():
    rows = rows_of({"a": [1.0, 1.0, 1.0, 0.0], "b": [0.0, 0.0], "c": [1.0]})
    summary = reward_summary(rows)
    assert summary["mean"] == pytest.approx(4 / 7)  # every sample counts once
    assert summary["prompt_mean"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)  # every prompt once
    assert (summary["n_prompts"], summary["n_samples"]) == (3, 7)
    assert (summary["never"], summary["sometimes"], summary["always"]) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3)
    )
    assert summary["response_tokens"] == pytest.approx((3 + 4 + 5 + 6 + 3 + 4 + 3) / 7)
    assert summary["stopped"] == pytest.approx(4 / 7)
    assert 0.0 <= summary["ci_low"] < summary["prompt_mean"] < summary["ci_high"] <= 1.0
    flat = reward_summary(rows_of({"a": [0.5, 0.5], "b": [0.5]}))
    assert (flat["ci_low"], flat["ci_high"]) == (0.5, 0.5)  # no spread, no interval


def test_paired_difference_is_after_minus_before_per_prompt():
    before = rows_of({"a": [1.0, 0.0], "b": [0.0, 0.0], "c": [1.0, 1.0]})
    after = rows_of({"c": [1.0, 1.0], "a": [1.0, 1.0], "b": [1.0, 0.0]})  # any row order
    up = paired_difference(before, after)
    assert up["mean"] == pytest.approx((0.5 + 0.5 + 0.0) / 3) and up["n_prompts"] == 3
    assert 0.0 <= up["ci_low"] <= up["mean"] <= up["ci_high"] <= 0.5
    down = paired_difference(after, before)
    assert down["mean"] == pytest.approx(-up["mean"])
    assert (down["ci_low"], down["ci_high"]) == pytest.approx((-up["ci_high"], -up["ci_low"]))
    shifted = rows_of({"a": [1.0, 0.0], "b": [1.0, 1.0]})
    same = paired_difference(rows_of({"a": [0.0, 0.0], "b": [0.5, 0.5]}), shifted)
    assert (same["mean"], same["ci_low"], same["ci_high"]) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(LayerpolicyError, match="different \\(prompt, sample\\) pairs"):
        paired_difference(before, rows_of({"a": [1.0], "b": [1.0, 0.0], "c": [1.0, 1.0]}))


def test_sometimes_solved_keeps_mixed_prompts_in_prompt_order():
    rows = rows_of({"z": [1.0, 0.0], "a": [1.0, 1.0], "m": [0.0, 1.0, 1.0], "b": [0.0, 0.0]})
    assert sometimes_solved(rows) == ["z", "m"]
    assert sometimes_solved(rows_of({"a": [1.0], "b": [0.0]})) == []
