"""Scoring prompts batch by batch: encode (or sample) a batch, run the engine, hand on the rows."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
from rich.progress import Progress

from .config import AnalysisConfig, PromptConfig
from .engine import Engine
from .errors import LayerpolicyError
from .models import LoadedModel
from .prompts import EncodedPrompt, PromptItem, encode_prompt
from .sampling import SamplingConfig, sample_encoded
from .tables.tokens import batch_frame


def score_prompts(
    model: LoadedModel,
    items: Sequence[PromptItem],
    prompts: PromptConfig,
    config: AnalysisConfig,
    sink: Callable[[pd.DataFrame], object],
    *,
    progress: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Score `items` batch by batch with one engine, handing each batch's rows to `sink`.

    Returns how many prompts were truncated and the engine's record of its readout checks (the
    linearity shortcut, checked on the first batch)."""
    truncated = 0
    engine = Engine(model, config.engine())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"scoring {model.info.name}", total=len(items))
        for batch in _batches(items, config.batch_size):
            encoded = _encode_batch(model, batch, prompts, config)
            truncated += sum(e.truncated for e in encoded)
            columns = engine.score(encoded)
            sink(batch_frame(model, encoded, columns, config.readout))
            bar.advance(task, len(batch))
    if truncated:
        warnings.warn(
            f"{truncated} prompt(s) were longer than max_tokens={prompts.max_tokens} and were "
            "truncated; raise --max-tokens to score them whole",
            stacklevel=2,
        )
    return truncated, engine.record


def _encode_batch(
    model: LoadedModel, batch: Sequence[PromptItem], prompts: PromptConfig, config: AnalysisConfig
) -> list[EncodedPrompt]:
    """The batch's token ids: as given, or each prompt plus its sampled response (one call)."""
    options = {"chat_template": prompts.chat_template, "thinking": prompts.thinking}
    if not prompts.generate:
        encoded = [
            encode_prompt(item, model.tokenizer, max_tokens=prompts.max_tokens, **options)
            for item in batch
        ]
    else:
        sampling = sampling_config(prompts, config)
        encoded = sample_encoded(model, batch, sampling, max_tokens=prompts.max_tokens, **options)
    for item, row in zip(batch, encoded, strict=True):
        if not any(row.score_mask):
            raise LayerpolicyError(
                f"prompt {item.id!r} has no position to score (empty text or response, or "
                "truncated before the response); raise --max-tokens or drop it"
            )
    return encoded


def sampling_config(prompts: PromptConfig, config: AnalysisConfig) -> SamplingConfig:
    """How --generate samples: T, seed and sampler from the configs, one batch per call."""
    return SamplingConfig(
        max_new_tokens=prompts.generate,
        temperature=prompts.temperature,
        seed=config.seed,
        batch_size=config.batch_size,
        sampler=prompts.sampler,
    )


def _batches(items: Sequence[PromptItem], size: int) -> Iterator[Sequence[PromptItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
