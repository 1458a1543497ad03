"""Reward of a model on a prompt set: sampled solve rates, their summary, a paired difference.

A *rows* table has one row per (prompt_id, sample): `reward` (float, what the reward function
gave the decoded response), `response_tokens` (sampled tokens, the stop token included) and
`stopped` (the response ended with a stop token rather than at the token budget). A prompt's
*rate* is its mean reward over its samples (for 0/1 rewards: the share of samples solved).
Intervals are 95% percentile bootstraps over prompts (`layerpolicy.tables.stats.bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from ..errors import LayerpolicyError
from ..models import LoadedModel
from ..prompts import PromptItem, PromptSet
from ..responses import responses_table
from ..sampling import SamplingConfig, sample_items, stop_token_ids
from ..tables.stats import bootstrap_ci
from .data import require_answers
from .reward import RewardFn, math_reward

ROW_COLUMNS = ("prompt_id", "sample", "reward", "response_tokens", "stopped")


def solve_rates(
    model: LoadedModel,
    prompt_set: PromptSet,
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    thinking: bool = False,
    batch_size: int = 32,
    reward_fn: RewardFn = math_reward,
    sampler: str = "hf",
    progress: bool = True,
    responses: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """`samples` responses per prompt from pi_theta at `temperature`, rewarded: the rows table.
    With `responses`, each chunk's responses.parquet rows (`layerpolicy.responses`) are appended.

    Sampling is the project's sampler (`sampler` hf or vllm; pure softmax(z / T), seeded per
    response from `seed`, the prompt id and the sample index); responses are decoded without
    special tokens, as TRL hands completions to the reward during training. Rows come in prompt
    order, then sample index.
    """
    require_answers(prompt_set, "the reward")
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        n=samples,
        sampler=sampler,
    )
    truths = {item.id: item.answer or "" for item in prompt_set.items}
    stops = set(stop_token_ids(model.tokenizer, model.plain))
    rows: list[tuple[str, int, float, int, bool]] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"sampling {model.info.name}", total=len(prompt_set.items) * samples)
        for chunk in _chunks(prompt_set.items, max(1, batch_size // samples)):
            drawn = sample_items(model, chunk, config, thinking=thinking)
            if responses is not None:
                responses.append(responses_table(drawn, model.tokenizer, truths, stops))
            for s in drawn:
                text = model.tokenizer.decode(s.response_ids, skip_special_tokens=True)
                reward = float(reward_fn(text, truths[s.prompt_id]))
                ended = bool(s.response_ids) and s.response_ids[-1] in stops
                rows.append((s.prompt_id, s.index, reward, len(s.response_ids), ended))
            bar.advance(task, len(chunk) * samples)
    return _typed(pd.DataFrame(rows, columns=list(ROW_COLUMNS)))


def read_rows(path: Path) -> pd.DataFrame:
    """A rows table written with `write_csv` (prompt ids stay text)."""
    frame = pd.read_csv(path, dtype={"prompt_id": str}, keep_default_na=False)
    return _typed(frame[list(ROW_COLUMNS)])


def prompt_rates(rows: pd.DataFrame) -> pd.Series:
    """Mean reward per prompt, indexed by prompt_id in the rows' prompt order."""
    return rows.groupby("prompt_id", sort=False)["reward"].mean()


def reward_summary(rows: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean reward of a rows table: over all samples (`mean`) and over prompts of per-prompt
    means (`prompt_mean`, with its bootstrap interval `ci_low`, `ci_high`); the shares of prompts
    with rate 0 (`never`), between 0 and 1 (`sometimes`) and 1 (`always`); the mean response
    length in tokens and the share of responses that stopped before the budget."""
    rates = prompt_rates(rows).to_numpy(np.float64)
    low, high = bootstrap_ci(rates, n_boot=n_boot, seed=seed)
    return {
        "mean": float(rows["reward"].mean()),
        "prompt_mean": float(rates.mean()),
        "ci_low": low,
        "ci_high": high,
        "n_prompts": len(rates),
        "n_samples": len(rows),
        "never": float(np.mean(rates == 0)),
        "sometimes": float(np.mean((rates > 0) & (rates < 1))),
        "always": float(np.mean(rates == 1)),
        "response_tokens": float(rows["response_tokens"].mean()),
        "stopped": float(rows["stopped"].mean()),
    }


def paired_difference(
    before: pd.DataFrame, after: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """after - before of the mean over prompts of per-prompt mean reward, with a paired
    bootstrap interval (prompts resampled, each keeping its own before and after).

    Both tables must hold the same (prompt_id, sample) pairs: the same prompts and seeds."""
    pairs = [set(zip(t["prompt_id"], t["sample"], strict=True)) for t in (before, after)]
    if pairs[0] != pairs[1]:
        raise LayerpolicyError(
            "before and after rows cover different (prompt, sample) pairs; sample both on the "
            "same prompts with the same number of samples and seed"
        )
    rates = prompt_rates(before)
    change = prompt_rates(after).reindex(rates.index) - rates
    low, high = bootstrap_ci(change.to_numpy(np.float64), n_boot=n_boot, seed=seed)
    return {
        "mean": float(change.mean()),
        "ci_low": low,
        "ci_high": high,
        "n_prompts": len(change),
    }


def sometimes_solved(rows: pd.DataFrame) -> list[str]:
    """Prompt ids with 0 < rate < 1, in the rows' prompt order."""
    rates = prompt_rates(rows)
    return [str(p) for p in rates.index[(rates > 0) & (rates < 1)]]


def _chunks(items: Sequence[PromptItem], size: int) -> list[Sequence[PromptItem]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(
        {
            "prompt_id": str,
            "sample": "int64",
            "reward": "float64",
            "response_tokens": "int64",
            "stopped": bool,
        }
    )
