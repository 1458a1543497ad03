"""Scoring prompts batch by batch: encode, sample or read a batch, run the engine, pass on rows."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
from rich.progress import Progress

from .config import AnalysisConfig, ModelConfig, PromptConfig
from .engine import Engine
from .errors import LayerpolicyError
from .models import LoadedModel, load_tokenizer
from .models.load import local_directory
from .prompts import EncodedPrompt, PromptItem, encode_ids, encode_prompt
from .responses import check_tokenizer, responses_table, saved_prompts, verifier
from .sampling import SamplingConfig, sample_items, stop_token_ids
from .tables.schema import CORRECT_COLUMN, SAMPLE_COLUMN
from .tables.tokens import batch_frame


def score_prompts(
    model: LoadedModel,
    items: Sequence[PromptItem],
    prompts: PromptConfig,
    config: AnalysisConfig,
    sink: Callable[[pd.DataFrame], object],
    *,
    responses_sink: Callable[[pd.DataFrame], object] | None = None,
    progress: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Score `items` batch by batch with one engine, handing each batch's rows to `sink`.

    A run with responses (sampled, or saved ones under `prompts.responses`) hands each batch's
    responses.parquet rows to `responses_sink` first, and its token rows carry `sample` and
    `correct`. Returns how many prompts were truncated and the engine's record of its readout
    checks (the linearity shortcut, checked on the first batch)."""
    truncated = 0
    engine = Engine(model, config.engine())
    saved = saved_prompts(prompts.responses, prompts.limit)[1] if prompts.responses else None
    with Progress(disable=not progress, transient=True) as bar:
        # a sampled run shows its two phases: each batch is sampled (minutes on a CPU), then scored
        shown = bool(prompts.generate)
        drawn = bar.add_task(f"sampling {model.info.name}", total=len(items), visible=shown)
        task = bar.add_task(f"scoring {model.info.name}", total=len(items))
        for batch in _batches(items, config.batch_size):
            encoded, responses = _encode_batch(model, batch, prompts, config, saved)
            bar.advance(drawn, len(batch))
            truncated += sum(e.truncated for e in encoded)
            columns = engine.score(encoded)
            frame = batch_frame(model, encoded, columns, config.readout)
            if responses is not None:
                frame = _with_grades(frame, responses)
                if responses_sink is not None:
                    responses_sink(responses)
            sink(frame)
            bar.advance(task, len(batch))
    if truncated:
        warnings.warn(
            f"{truncated} response(s) or prompt(s) were longer than max_tokens="
            f"{prompts.max_tokens} and were truncated; raise --max-tokens to score them whole",
            stacklevel=2,
        )
    return truncated, engine.record


def responses_record(prompts: PromptConfig, items: Sequence[PromptItem]) -> dict[str, Any] | None:
    """What run.json records about a run's responses: where they come from and, when some
    prompt has an answer, the verifier that grades them (None for a run without responses)."""
    if not prompts.generate and prompts.responses is None:
        return None
    source = "sampled" if prompts.generate else str(prompts.responses)
    graded = any(item.answer is not None for item in items)
    return {"source": source, "verifier": verifier() if graded else None}


def check_saved_tokenizer(model: ModelConfig, prompts: PromptConfig, loaded: Any = None) -> None:
    """Before the weights load: refuse (one line) saved responses of another tokenizer than
    `model`'s (`loaded`: a LoadedModel given instead, whose tokenizer is compared)."""
    if prompts.responses is None:
        return
    frame = saved_prompts(prompts.responses, prompts.limit)[1]
    if loaded is not None:
        check_tokenizer(frame, loaded.tokenizer, loaded.info.name, str(prompts.responses))
        return
    source = model.resolve()
    tokenizer = load_tokenizer(local_directory(source, progress=False))
    check_tokenizer(frame, tokenizer, source.name, str(prompts.responses))


def _encode_batch(
    model: LoadedModel,
    batch: Sequence[PromptItem],
    prompts: PromptConfig,
    config: AnalysisConfig,
    saved: pd.DataFrame | None,
) -> tuple[list[EncodedPrompt], pd.DataFrame | None]:
    """The batch's token ids: as given, each prompt plus its sampled responses (one call), or
    its saved responses; with the batch's responses.parquet rows (None for given text)."""
    options = {"chat_template": prompts.chat_template, "thinking": prompts.thinking}
    responses = None
    if saved is not None:
        responses = saved[saved["prompt_id"].isin({item.id for item in batch})]
        encoded = [
            encode_ids(
                r.prompt_id,
                r.prompt_ids,
                r.response_ids,
                max_tokens=prompts.max_tokens,
                sample=int(r.sample),
            )
            for r in responses.itertuples(index=False)
        ]
    elif prompts.generate:
        samples = sample_items(model, batch, sampling_config(prompts, config), **options)
        encoded = [
            encode_ids(
                s.prompt_id,
                s.prompt_ids,
                s.response_ids,
                max_tokens=prompts.max_tokens,
                sample=s.index,
            )
            for s in samples
        ]
        answers = {item.id: item.answer for item in batch}
        stops = stop_token_ids(model.tokenizer, model.plain)
        responses = responses_table(samples, model.tokenizer, answers, stops)
    else:
        encoded = [
            encode_prompt(item, model.tokenizer, max_tokens=prompts.max_tokens, **options)
            for item in batch
        ]
    for row in encoded:
        if not any(row.score_mask):
            raise LayerpolicyError(
                f"prompt {row.prompt_id!r} has no position to score (empty text or response, or "
                "truncated before the response); raise --max-tokens or drop it"
            )
    return encoded, responses


def _with_grades(frame: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Token rows with their response's grade (`correct`, NA where ungraded)."""
    grades = responses[["prompt_id", SAMPLE_COLUMN, CORRECT_COLUMN]]
    graded = frame.merge(grades, on=["prompt_id", SAMPLE_COLUMN], how="left", validate="m:1")
    graded[CORRECT_COLUMN] = graded[CORRECT_COLUMN].astype("boolean")
    return graded


def sampling_config(prompts: PromptConfig, config: AnalysisConfig) -> SamplingConfig:
    """How --generate samples: T, seed, sampler and responses per prompt from the configs."""
    return SamplingConfig(
        max_new_tokens=prompts.generate,
        temperature=prompts.temperature,
        seed=config.seed,
        batch_size=config.batch_size,
        n=prompts.samples,
        sampler=prompts.sampler,
    )


def _batches(items: Sequence[PromptItem], size: int) -> Iterator[Sequence[PromptItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
