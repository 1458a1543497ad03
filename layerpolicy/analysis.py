"""The analysis API: a model and prompts in; token table, per-prompt means, summary, figures out."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import Progress

from . import plots
from .engine import EngineConfig, batch_frame, score_batch
from .errors import LayerpolicyError
from .models import LoadedModel, load_model, resolve_spec
from .prompts import (
    EncodedPrompt,
    PromptItem,
    PromptSet,
    encode_generation_prompt,
    encode_prompt,
    encode_with_response_ids,
    load_prompts,
)
from .runs import RunDirectory, versions, write_csv, write_parquet
from .sampling import prompt_seed, sample_response
from .tables import shape, stats


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of one analysis; all of them are recorded in run.json and decide resume/cache.

    generate: sample up to this many new tokens per prompt and score the response only.
    max_tokens: longer inputs are truncated (counted and warned about).
    """

    readout: str = "raw"
    sites: str = "paper"
    batch_size: int = 4
    chunk_tokens: int | None = None
    max_tokens: int | None = 1024
    chat_template: bool = True
    generate: int | None = None
    temperature: float = 1.0
    seed: int = 0
    n_boot: int = 1000

    def engine(self) -> EngineConfig:
        return EngineConfig(readout=self.readout, sites=self.sites, chunk_tokens=self.chunk_tokens)

    def recorded(self) -> dict[str, Any]:
        """The settings that change results (batch and chunk sizes do not)."""
        settings = asdict(self)
        for key in ("batch_size", "chunk_tokens"):
            settings.pop(key)
        return settings


@dataclass
class AnalysisResult:
    """Tables of one model's analysis (docs/tables.md) and its record."""

    tokens: pd.DataFrame
    prompt_means: pd.DataFrame
    summary: pd.DataFrame
    record: dict[str, Any]
    path: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.record["model"]["name"]

    def shape(self) -> dict[str, object]:
        """Shape statistics of the profile (convergence depth, abruptness, EIC, boundary layer)."""
        return shape.shape_statistics(self.summary)


def analyse(
    model: str | LoadedModel,
    prompts: str | Path | PromptSet | None = None,
    *,
    config: AnalysisConfig | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    force: bool = False,
    device: str = "auto",
    offline: bool | None = None,
    progress: bool = True,
    figures: bool = True,
) -> AnalysisResult:
    """Score `prompts` with every internal policy of `model`.

    With `out`, results go to a resumable run directory: rerunning continues from the finished
    prompts, and a finished run is loaded, not recomputed, unless `force`.
    """
    config = config or AnalysisConfig()
    run = RunDirectory(out) if out is not None else None
    prompt_set = prompts if isinstance(prompts, PromptSet) else load_prompts(prompts, limit=limit)
    if run is not None and run.is_complete() and not force:
        name = (
            model.info.name
            if isinstance(model, LoadedModel)
            else resolve_spec(model, offline=offline).name
        )
        run.check_settings(_settings(name, prompt_set, config))
        return load_run(run.path)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=device, offline=offline, progress=progress)
    )
    record = _record(loaded, prompt_set, config)
    started = time.perf_counter()
    if run is not None:
        run.start(record, force=force)
        done = run.finished_prompt_ids()
    else:
        done = set()
    todo = [item for item in prompt_set.items if item.id not in done]
    frames, truncated = _score_prompts(loaded, todo, config, run, progress)
    tokens = run.merged_tokens() if run is not None else _concat(frames)
    result = _summarise(tokens, record, config)
    result.record["timings"] = {"score_s": round(time.perf_counter() - started, 3)}
    result.record["truncated_prompts"] = truncated
    if run is not None:
        _write_results(run, result, figures, loaded.info.vocab_size)
    return result


def _settings(model_name: str, prompt_set: PromptSet, config: AnalysisConfig) -> dict[str, Any]:
    """What must match for a run directory to be resumed or reused."""
    return {"model": model_name, "prompts_sha256": prompt_set.sha256, **config.recorded()}


def _record(model: LoadedModel, prompt_set: PromptSet, config: AnalysisConfig) -> dict[str, Any]:
    return {
        "kind": "entropy",
        "model": model.info.to_dict(),
        "prompts": {
            "source": prompt_set.source,
            "sha256": prompt_set.sha256,
            "n_prompts": len(prompt_set.items),
        },
        "settings": _settings(model.info.name, prompt_set, config),
        "kl_direction": "KL(pi_theta || readout)",
        "entropy_unit": "nats",
        "versions": versions(),
    }


def _score_prompts(
    model: LoadedModel,
    items: Sequence[PromptItem],
    config: AnalysisConfig,
    run: RunDirectory | None,
    progress: bool,
) -> tuple[list[pd.DataFrame], int]:
    frames: list[pd.DataFrame] = []
    truncated = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"scoring {model.info.name}", total=len(items))
        for batch in _batches(items, config.batch_size):
            encoded = [_encode(model, item, config) for item in batch]
            truncated += sum(e.truncated for e in encoded)
            columns = score_batch(model, encoded, config.engine())
            frame = batch_frame(model, encoded, columns, config.readout)
            if run is not None:
                run.write_part(frame)
            else:
                frames.append(frame)
            bar.advance(task, len(batch))
    if truncated:
        warnings.warn(
            f"{truncated} prompt(s) were longer than max_tokens={config.max_tokens} and were "
            "truncated; raise --max-tokens to score them whole",
            stacklevel=2,
        )
    return frames, truncated


def _encode(model: LoadedModel, item: PromptItem, config: AnalysisConfig) -> EncodedPrompt:
    tokenizer = model.tokenizer
    if not config.generate:
        encoded = encode_prompt(
            item, tokenizer, chat_template=config.chat_template, max_tokens=config.max_tokens
        )
    else:
        prompt_ids = encode_generation_prompt(item, tokenizer, chat_template=config.chat_template)
        response = sample_response(
            model,
            prompt_ids,
            max_new_tokens=config.generate,
            temperature=config.temperature,
            seed=prompt_seed(config.seed, item.id),
        )
        encoded = encode_with_response_ids(
            item,
            tokenizer,
            response,
            chat_template=config.chat_template,
            max_tokens=config.max_tokens,
        )
    if not any(encoded.score_mask):
        raise LayerpolicyError(
            f"prompt {item.id!r} has no position to score (empty text or response, or truncated "
            "before the response); raise --max-tokens or drop it"
        )
    return encoded


def _batches(items: Sequence[PromptItem], size: int) -> Iterator[Sequence[PromptItem]]:
    if size < 1:
        raise LayerpolicyError(f"--batch-size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        raise LayerpolicyError("no prompts to score; check the prompt source and --limit")
    return pd.concat(frames, ignore_index=True)


def _summarise(
    tokens: pd.DataFrame, record: dict[str, Any], config: AnalysisConfig
) -> AnalysisResult:
    means = stats.prompt_means(tokens)
    summary = stats.summarize(
        means,
        model=record["model"]["name"],
        readout=config.readout,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    return AnalysisResult(tokens, means, summary, record)


def _write_results(
    run: RunDirectory, result: AnalysisResult, figures: bool, vocab_size: int
) -> None:
    write_parquet(result.tokens, run.tokens_path)
    write_parquet(result.prompt_means, run.prompt_means_path)
    write_csv(result.summary, run.summary_path)
    result.path = run.path
    if figures:
        result.figures = write_figures(result, run.path / "figures", vocab_size=vocab_size)
    shape_stats = shape.shape_statistics(result.summary)
    run.finish({**result.record, "shape": shape_stats, "figures": [str(p) for p in result.figures]})
    result.record = run.record()


def write_figures(result: AnalysisResult, directory: Path, *, vocab_size: int | None) -> list[Path]:
    """The standard figures of one analysis, PNG and SVG."""
    summary = result.summary
    present = set(summary.site)
    modules = tuple(site for site in ("resid", "attn", "mlp") if site in present)
    first_prompt = str(result.tokens["prompt_id"].iloc[0])
    drawn = {
        "entropy_profile": plots.plot_entropy_profile(
            summary, sites=modules, vocab_size=vocab_size, show_norm=True
        ),
        "kl_to_final": plots.plot_kl_to_final(summary, sites=modules),
        "heatmap_first_prompt": plots.plot_token_heatmap(result.tokens, first_prompt),
    }
    changes = tuple(
        site
        for site in ("attn", "mlp")
        if site in set(summary.loc[summary.metric == "entropy_change", "site"])
    )
    if changes:
        drawn["entropy_change"] = plots.plot_entropy_change(summary, sites=changes)
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, directory / name)
    return paths


def load_run(path: str | Path) -> AnalysisResult:
    """Load a finished run directory's tables."""
    run = RunDirectory(path)
    if not run.is_complete():
        raise LayerpolicyError(
            f"{run.path} is not a finished layerpolicy run; rerun `layerpolicy entropy` with "
            "--out pointing at it to resume"
        )
    tokens = pd.read_parquet(run.tokens_path)
    means = pd.read_parquet(run.prompt_means_path)
    summary = pd.read_csv(run.summary_path)
    record = run.record()
    figures = [Path(p) for p in record.get("figures", [])]
    return AnalysisResult(tokens, means, summary, record, run.path, figures)
