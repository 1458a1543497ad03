"""The analysis API: a run specification in; token table, per-prompt means and summary out.

Figures are drawn by the caller from the result (`layerpolicy.report.run_figures`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import AnalysisConfig, ModelConfig, PromptConfig
from .errors import LayerpolicyError, RunDirectoryError
from .models import LoadedModel
from .parallel import Shard, current_shard, parallel_record, run_sharded
from .prompt_scoring import check_saved_tokenizer, responses_record, sampling_config, score_prompts
from .prompts import PromptSet, thinking_mode
from .report.view import MAX_PROMPTS, Report, build_report
from .responses import RESPONSES_NAME, write_part
from .responses import finish as finish_responses
from .runs import RunDirectory, write_csv, write_parquet
from .spec import RunSpec, check_format
from .tables import shape, stats

__all__ = ["AnalysisConfig", "AnalysisResult", "RunSpec", "analyse", "load_run"]


@dataclass
class AnalysisResult:
    """Tables of one model's analysis (docs/tables.md) and its record."""

    tokens: pd.DataFrame
    prompt_means: pd.DataFrame
    summary: pd.DataFrame
    record: dict[str, Any]
    path: Path | None = None
    figures: list[Path] = field(default_factory=list)
    responses: pd.DataFrame | None = None  # responses.parquet of a run with responses

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
    """One analysis: its spec, the prompts it names, the model (given or to load), settings."""

    spec: RunSpec
    prompt_set: PromptSet
    settings: dict[str, Any]
    progress: bool
    loaded: LoadedModel | None = None

    def load(self) -> LoadedModel:
        check_saved_tokenizer(self.spec.model, self.spec.prompts, self.loaded)
        return self.loaded or self.spec.model.load(progress=self.progress)


def analyse(
    spec: RunSpec | str | ModelConfig | LoadedModel,
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
) -> AnalysisResult:
    """Score the prompts of `spec` with every internal policy of its model.

    `spec` is a RunSpec; a model (spec string, ModelConfig or LoadedModel) with `prompts`,
    `config`, `limit`, `device`, `dtype` and `offline` stands for the RunSpec they make (a
    LoadedModel is scored as it is). With `out`, results go to a resumable run directory held
    under an OS lock: rerunning continues from the finished prompts; a finished run is
    recognised (without loading the model) and loaded, unless `force`; a second process on the
    same `out` waits for the first and then loads its run. Under `accelerate launch
    --num_processes N` every process scores a contiguous shard of the prompts and the main
    process merges them (layerpolicy.parallel).
    """
    loaded = spec if isinstance(spec, LoadedModel) else None
    if not isinstance(spec, RunSpec):
        spec = _spec_of(spec, prompts, config, limit, device, dtype, offline)
    elif prompts is not None or config is not None or limit is not None:
        raise LayerpolicyError("a RunSpec holds its prompts and settings; pass it alone")
    prompt_set = spec.prompts.load()
    name = loaded.info.name if loaded is not None else spec.model.resolve().name
    settings = spec.settings(prompt_set.sha256, model_name=name)
    job = _Job(spec, prompt_set, settings, progress, loaded)
    if out is None:
        frames: list[pd.DataFrame] = []
        answered: list[pd.DataFrame] = []
        model = job.load()
        record = _record(model, job)
        truncated, checks = score_prompts(
            model, prompt_set.items, spec.prompts, spec.analysis, frames.append,
            responses_sink=answered.append, progress=progress,
        )  # fmt: skip
        result = _summarise(_concat(frames), record, spec.analysis)
        result.responses = pd.concat(answered, ignore_index=True) if answered else None
        result.record.update(truncated_prompts=truncated, readout_checks=checks)
        return result
    run = RunDirectory(out)
    run.ensure()
    shard = current_shard()
    if not force and run.is_complete():
        run.check_settings(settings)
        return load_run(run.path)
    if shard.parallel:
        return _analyse_shard(job, run, shard, force=force)
    with run.lock():
        if not force and run.is_complete():  # finished by the process this one waited for
            run.check_settings(settings)
            return load_run(run.path)
        if not force:
            run.check_settings(settings)
        model = job.load()
        record = _record(model, job)
        run.start(record, force=force)
        done = run.finished_prompt_ids()
        started = time.perf_counter()
        todo = [item for item in prompt_set.items if item.id not in done]
        truncated, checks = score_prompts(
            model, todo, spec.prompts, spec.analysis, run.write_part,
            responses_sink=functools.partial(write_part, run.path), progress=progress,
        )  # fmt: skip
        result = _summarise(run.merged_tokens(_ids(prompt_set)), record, spec.analysis)
        result.record["timings"] = {"score_s": round(time.perf_counter() - started, 3)}
        result.record.update(truncated_prompts=truncated, readout_checks=checks)
        _write_results(run, result)
    return result


def _spec_of(
    model: str | ModelConfig | LoadedModel,
    prompts: str | Path | PromptSet | PromptConfig | None,
    config: AnalysisConfig | None,
    limit: int | None,
    device: str,
    dtype: str | None,
    offline: bool | None,
) -> RunSpec:
    """The RunSpec the keyword form of `analyse` names."""
    if isinstance(model, LoadedModel):
        model = ModelConfig(model.info.spec, dtype=model.info.dtype)
    elif not isinstance(model, ModelConfig):
        model = ModelConfig(model, device=device, dtype=dtype or "float32", offline=offline)
    return RunSpec(model, PromptConfig.of(prompts, limit), config or AnalysisConfig())


def _analyse_shard(job: _Job, run: RunDirectory, shard: Shard, *, force: bool) -> AnalysisResult:
    """This rank's shard of a data-parallel launch; every rank returns the merged tables."""
    model = job.spec.model
    if job.loaded is None and model.device_map is None:
        on_shard = dataclasses.replace(model, device=shard.device(model.device))
        job = dataclasses.replace(job, spec=job.spec.replace(model=on_shard))
    held: dict[str, Any] = {}

    def score(todo: list[str], prefix: str) -> dict[str, Any]:
        held["model"] = loaded = job.load()
        held["record"] = _record(loaded, job)
        wanted = set(todo)
        items = [item for item in job.prompt_set.items if item.id in wanted]
        started = time.perf_counter()
        write = functools.partial(run.write_part, prefix=prefix)
        truncated, checks = score_prompts(
            loaded, items, job.spec.prompts, job.spec.analysis, write, progress=job.progress,
            responses_sink=functools.partial(write_part, run.path, prefix=prefix),
        )  # fmt: skip
        score_s = round(time.perf_counter() - started, 3)
        return {"truncated": truncated, "score_s": score_s, "readout_checks": checks}

    def merge(records: list[dict[str, Any]]) -> None:
        tokens = run.merged_tokens(_ids(job.prompt_set))
        result = _summarise(tokens, held["record"], job.spec.analysis)
        result.record["timings"] = {"score_s": max(r["score_s"] for r in records)}
        result.record["truncated_prompts"] = sum(r["truncated"] for r in records)
        result.record["readout_checks"] = _first_checked([r["readout_checks"] for r in records])
        result.record["parallel"] = parallel_record(records)
        _write_results(run, result)
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


def _record(model: LoadedModel, job: _Job) -> dict[str, Any]:
    prompts = job.spec.prompts
    thinking = thinking_mode(model.tokenizer, prompts.thinking, chat_template=prompts.chat_template)
    sampling = sampling_config(prompts, job.spec.analysis) if prompts.generate else None
    return {
        **job.spec.header(job.prompt_set.sha256, model_name=model.info.name),
        "model": model.info.to_dict(),
        "prompts": {**job.prompt_set.record(), "thinking": thinking},
        "sampling": sampling.record(thinking) if sampling is not None else None,
        "responses": responses_record(prompts, job.prompt_set.items),
        "kl_direction": "KL(pi_theta || readout)",
        "entropy_unit": "nats",
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


def _write_results(run: RunDirectory, result: AnalysisResult) -> None:
    has_responses = result.record.get("responses") is not None
    result.responses = finish_responses(run.path, result.tokens, has_responses)
    write_parquet(result.tokens, run.tokens_path)
    write_parquet(result.prompt_means, run.prompt_means_path)
    write_csv(result.summary, run.summary_path)
    result.path = run.path
    run.finish({**result.record, "shape": shape.shape_statistics(result.summary)})
    result.record = run.record()


def load_run(path: str | Path) -> AnalysisResult:
    """Load a finished run directory's tables (and the figures drawn into it). A run of another
    format, or one whose tables are missing or damaged, is one line naming the fix."""
    run = RunDirectory(path)
    if not run.path.is_dir():
        raise RunDirectoryError(
            f"run directory {run.path} does not exist; pass a finished `layerpolicy entropy` run"
        )
    if all((run.path / part / "run.json").is_file() for part in ("before", "after")):
        raise RunDirectoryError(
            f"{run.path} is a training run; pass one of its runs: {run.path / 'before'} or "
            f"{run.path / 'after'}"
        )
    if not run.is_complete():
        raise LayerpolicyError(
            f"{run.path} is not a finished layerpolicy run; rerun `layerpolicy entropy` with "
            "--out pointing at it to resume"
        )
    record = run.record()
    check_format(record, f"{run.path} holds a run")
    tokens = run.read_table(run.tokens_path)
    means = run.read_table(run.prompt_means_path)
    summary = run.read_table(run.summary_path)
    figures = sorted((run.path / "figures").glob("*.*"))
    saved = run.path / RESPONSES_NAME
    responses = run.read_table(saved) if saved.is_file() else None
    return AnalysisResult(tokens, means, summary, record, run.path, figures, responses)
