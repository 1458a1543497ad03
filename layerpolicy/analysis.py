"""The analysis API: a model and prompts in; token table, per-prompt means, summary, figures out."""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import AnalysisConfig, ModelConfig, PromptConfig, recorded_settings
from .errors import LayerpolicyError
from .models import LoadedModel
from .parallel import Shard, current_shard, parallel_record, run_sharded
from .prompt_scoring import sampling_config, score_prompts
from .prompts import PromptSet, thinking_mode
from .report import run_figures
from .report.view import MAX_PROMPTS, Report, build_report
from .runs import RunDirectory, versions, write_csv, write_parquet
from .tables import shape, stats

__all__ = ["AnalysisConfig", "AnalysisResult", "analyse", "load_run"]


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

    def profile(self, metric: str, site: str, value: str = "mean") -> pd.Series:
        """Column `value` of the summary for `metric` at `site`, indexed by layer."""
        return stats.profile(self.summary, metric, site, value)

    def shape(self) -> dict[str, object]:
        """Shape statistics of the profile (convergence depth, abruptness, EIC, boundary layer)."""
        return shape.shape_statistics(self.summary)

    def view(self, max_prompts: int = MAX_PROMPTS) -> Report:
        """The interactive report (as `layerpolicy view`); Jupyter displays it, `.save(path)`."""
        return build_report(self, max_prompts=max_prompts)


@dataclass(frozen=True)
class _Job:
    """One analysis: what to load, which prompts, how to read them out, and its settings."""

    model: ModelConfig | LoadedModel
    prompts: PromptConfig
    prompt_set: PromptSet
    config: AnalysisConfig
    settings: dict[str, Any]
    progress: bool

    def load(self) -> LoadedModel:
        if isinstance(self.model, LoadedModel):
            return self.model
        return self.model.load(progress=self.progress)


def analyse(
    model: str | ModelConfig | LoadedModel,
    prompts: str | Path | PromptSet | PromptConfig | None = None,
    *,
    config: AnalysisConfig | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    force: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
    figures: bool = True,
) -> AnalysisResult:
    """Score `prompts` with every internal policy of `model`.

    With `out`, results go to a resumable run directory held under an OS lock: rerunning
    continues from the finished prompts; a finished run is recognised (without loading the model)
    and loaded, unless `force`; a second process on the same `out` waits for the first and then
    loads its run. Under `accelerate launch --num_processes N` every process scores a contiguous
    shard of the prompts and the main process merges them (layerpolicy.parallel).
    """
    if not isinstance(model, (ModelConfig, LoadedModel)):
        model = ModelConfig(model, device=device, dtype=dtype or "float32", offline=offline)
    prompt_config = PromptConfig.of(prompts, limit)
    prompt_set = prompt_config.load()
    config = config or AnalysisConfig()
    name = model.info.name if isinstance(model, LoadedModel) else model.resolve().name
    settings = _settings(name, prompt_set, prompt_config, config)
    job = _Job(model, prompt_config, prompt_set, config, settings, progress)
    if out is None:
        frames: list[pd.DataFrame] = []
        loaded = job.load()
        record = _record(loaded, job)
        truncated, checks = score_prompts(
            loaded, prompt_set.items, prompt_config, config, frames.append, progress=progress
        )
        result = _summarise(_concat(frames), record, config)
        result.record.update(truncated_prompts=truncated, readout_checks=checks)
        return result
    run = RunDirectory(out)
    shard = current_shard()
    if not force and run.is_complete():
        run.check_settings(settings)
        return load_run(run.path)
    if shard.parallel:
        return _analyse_shard(job, run, shard, force=force, figures=figures)
    with run.lock():
        if not force and run.is_complete():  # finished by the process this one waited for
            run.check_settings(settings)
            return load_run(run.path)
        if not force:
            run.check_settings(settings)
        loaded = job.load()
        record = _record(loaded, job)
        run.start(record, force=force)
        done = run.finished_prompt_ids()
        started = time.perf_counter()
        todo = [item for item in prompt_set.items if item.id not in done]
        truncated, checks = score_prompts(
            loaded, todo, prompt_config, config, run.write_part, progress=progress
        )
        result = _summarise(run.merged_tokens(_ids(prompt_set)), record, config)
        result.record["timings"] = {"score_s": round(time.perf_counter() - started, 3)}
        result.record.update(truncated_prompts=truncated, readout_checks=checks)
        _write_results(run, result, figures, loaded.info.vocab_size)
    return result


def _analyse_shard(
    job: _Job, run: RunDirectory, shard: Shard, *, force: bool, figures: bool
) -> AnalysisResult:
    """This rank's shard of a data-parallel launch; every rank returns the merged tables."""
    if isinstance(job.model, ModelConfig) and job.model.device_map is None:
        job = dataclasses.replace(
            job, model=dataclasses.replace(job.model, device=shard.device(job.model.device))
        )
    held: dict[str, Any] = {}

    def score(todo: list[str], prefix: str) -> dict[str, Any]:
        held["model"] = loaded = job.load()
        held["record"] = _record(loaded, job)
        wanted = set(todo)
        items = [item for item in job.prompt_set.items if item.id in wanted]
        started = time.perf_counter()
        write = functools.partial(run.write_part, prefix=prefix)
        truncated, checks = score_prompts(
            loaded, items, job.prompts, job.config, write, progress=job.progress
        )
        score_s = round(time.perf_counter() - started, 3)
        return {"truncated": truncated, "score_s": score_s, "readout_checks": checks}

    def merge(records: list[dict[str, Any]]) -> None:
        tokens = run.merged_tokens(_ids(job.prompt_set))
        result = _summarise(tokens, held["record"], job.config)
        result.record["timings"] = {"score_s": max(r["score_s"] for r in records)}
        result.record["truncated_prompts"] = sum(r["truncated"] for r in records)
        result.record["readout_checks"] = _first_checked([r["readout_checks"] for r in records])
        result.record["parallel"] = parallel_record(records)
        _write_results(run, result, figures, held["model"].info.vocab_size)
        held["result"] = result

    run_sharded(
        run,
        shard,
        settings=job.settings,
        prompt_ids=_ids(job.prompt_set),
        force=force,
        score=score,
        merge=merge,
    )
    return held["result"] if "result" in held else load_run(run.path)


def _first_checked(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The readout checks of the first shard whose engine scored a batch (all agree on a model)."""
    return next((c for c in checks if c.get("linearity_shortcut") != "unchecked"), checks[0])


def _ids(prompt_set: PromptSet) -> list[str]:
    return [item.id for item in prompt_set.items]


def _settings(
    model_name: str, prompt_set: PromptSet, prompts: PromptConfig, config: AnalysisConfig
) -> dict[str, Any]:
    """What must match for a run directory to be resumed or reused."""
    return {
        "model": model_name,
        "prompts_sha256": prompt_set.sha256,
        **recorded_settings(prompts, config),
    }


def _record(model: LoadedModel, job: _Job) -> dict[str, Any]:
    thinking = thinking_mode(
        model.tokenizer, job.prompts.thinking, chat_template=job.prompts.chat_template
    )
    sampling = sampling_config(job.prompts, job.config) if job.prompts.generate else None
    return {
        "kind": "entropy",
        "model": model.info.to_dict(),
        "prompts": {**job.prompt_set.record(), "thinking": thinking},
        "sampling": sampling.record(thinking) if sampling is not None else None,
        "settings": job.settings,
        "kl_direction": "KL(pi_theta || readout)",
        "entropy_unit": "nats",
        "versions": versions(),
    }


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        raise LayerpolicyError("no prompts to score; check the prompt source and --limit")
    return pd.concat(frames, ignore_index=True)


def _summarise(
    tokens: pd.DataFrame, record: dict[str, Any], config: AnalysisConfig
) -> AnalysisResult:
    means = stats.prompt_means(tokens)
    summary = stats.summarise(
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
        result.figures = run_figures(result, run.path / "figures", vocab_size=vocab_size)
    shape_stats = shape.shape_statistics(result.summary)
    run.finish({**result.record, "shape": shape_stats, "figures": [str(p) for p in result.figures]})
    result.record = run.record()


def load_run(path: str | Path) -> AnalysisResult:
    """Load a finished run directory's tables (runs of any age: older ones named the per-prompt
    means prompts.parquet)."""
    run = RunDirectory(path)
    if not run.is_complete():
        raise LayerpolicyError(
            f"{run.path} is not a finished layerpolicy run; rerun `layerpolicy entropy` with "
            "--out pointing at it to resume"
        )
    tokens = pd.read_parquet(run.tokens_path)
    means = pd.read_parquet(run.prompt_means_source())
    summary = pd.read_csv(run.summary_path)
    record = run.record()
    figures = [Path(p) for p in record.get("figures", [])]
    return AnalysisResult(tokens, means, summary, record, run.path, figures)
