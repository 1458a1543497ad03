"""`train()`: a BuPO run directory from settings to final model, as stages on TRL's GRPOTrainer.

Stages, in order (`layerpolicy.bupo.stages`, `.sampled`, `.training`, `.record`): the screen
(screen.csv: the base model's solve rates; training keeps the prompts solved sometimes), the
reward before (reward_before.csv), the entropy analysis before (before/), the layer choice, the
training (checkpoints/checkpoint-N/, train_log.parquet/.csv, the final model in model/, LoRA
merged), the entropy analysis after (after/), the reward after (reward_after.csv) and the report
(figures/, run.json complete). Each stage is resumable: `resume` reads a finished stage's files
and continues training from the newest checkpoint. A process holds at most one copy of the
weights at any time: the base model for the stages before training, freed before the trainer
loads the policy; the final model for the stages after, loaded once the trainer is freed.
Under `accelerate launch` every process trains its share of each rollout and samples its share
of the screen and the evaluations; the main process holds the run directory's lock and writes.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import AnalysisResult
from ..config import ModelConfig, PromptConfig
from ..errors import LayerpolicyError
from ..models.causal_lm import model_depth
from ..parallel import current_shard
from ..prompts import PromptSet
from ..runs import RunDirectory, read_json, write_json
from ..spec import RunSpec
from .config import TrainConfig, grpo_arguments
from .data import prepare, training_prompts
from .engine import check_launch
from .layer import boundary_layer_from, check_layer
from .record import Outcome, base_record, report_stage, screen_record
from .results import open_run
from .reward import RewardFn, math_reward
from .stages import BeforeTraining, after_training, before_training, final_model
from .training import read_trained, train_stage

TRAINED = "trained"  # run.json's stages entry once the final model is saved


@dataclass
class TrainResult:
    """A finished run: its directory, per-rollout log, layer k and why, final model directory."""

    path: Path
    log: pd.DataFrame
    layer: int
    layer_reason: str
    checkpoint: Path
    record: dict[str, Any]
    before: AnalysisResult | None = None
    after: AnalysisResult | None = None
    figures: list[Path] = field(default_factory=list)


def train(
    spec: RunSpec | str | ModelConfig,
    prompts: str | Path | PromptSet | PromptConfig | None = None,
    *,
    out: str | Path,
    config: TrainConfig | None = None,
    limit: int | None = None,
    reward_fn: RewardFn = math_reward,
    resume: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    offline: bool | None = None,
    progress: bool = True,
    on_step: Any = None,
) -> TrainResult:
    """Train with BuPO as `spec` says (a RunSpec with train settings, e.g.
    `RunSpec.from_preset("paper-qwen3-4b")`); results in `out`. The prompts need answers.

    The short form names the parts: a model spec (with `device`, `dtype`, `offline`) or a
    ModelConfig, `prompts` (and `limit`), `config`. `resume` continues a run stage by stage (see
    the module docs); `on_step` receives each rollout's log row (main process). Every check
    runs before any weights load.
    """
    spec = training_spec(spec, prompts, config, limit, device, dtype, offline)
    config = spec.train
    assert config is not None
    run = RunDirectory(out)
    run.check_not_file("--out")
    prompt_set = training_prompts(spec.prompts, per_step=config.prompts_per_step)
    _check_installed(config)
    check_launch()  # an FSDP / DeepSpeed launch this machine cannot run: one line, no work
    grpo_arguments(config, str(run.path / "checkpoints"), current_shard().world)
    n_layers, name = model_depth(spec.model)
    if isinstance(config.layer, int):
        check_layer(config.layer, n_layers, name)
    settings = spec.settings(prompt_set.sha256)
    job = _Job(spec, config, prompt_set, run, settings, n_layers, reward_fn, resume, progress)
    with run.lock(wait=False) if current_shard().is_main else nullcontext():
        return _stages(job, on_step)


def training_spec(
    spec: RunSpec | str | ModelConfig,
    prompts: str | Path | PromptSet | PromptConfig | None,
    config: TrainConfig | None,
    limit: int | None,
    device: str,
    dtype: str,
    offline: bool | None,
) -> RunSpec:
    """The RunSpec of `train`'s arguments (a RunSpec as it is: its parts are not given twice)."""
    if isinstance(spec, RunSpec):
        if spec.train is None:
            raise LayerpolicyError("the RunSpec has no training settings; give it train=...")
        if prompts is not None or config is not None or limit is not None:
            raise LayerpolicyError(
                "prompts, config and limit are given twice; set them in the spec"
            )
        return spec
    if not isinstance(spec, ModelConfig):
        spec = ModelConfig(spec, device=device, dtype=dtype, offline=offline)
    return RunSpec(spec, PromptConfig.of(prompts, limit), train=config or TrainConfig())


@dataclass(frozen=True)
class _Job:
    """A checked run: its spec, the prompts, the settings recorded, the run directory."""

    spec: RunSpec
    config: TrainConfig
    prompt_set: PromptSet
    run: RunDirectory
    settings: dict[str, Any]
    n_layers: int
    reward_fn: RewardFn
    resume: bool
    progress: bool


def _stages(job: _Job, on_step: Any) -> TrainResult:
    """The stages of a run, in order, under the run directory's lock (main process)."""
    config, run, reward_fn = job.config, job.run, job.reward_fn
    main = current_shard().is_main
    previous, checkpoint = open_run(run, job.settings, job.resume, check=main, spec=job.spec)
    options = {"resume": job.resume, "progress": job.progress}
    model = job.spec.model
    before = before_training(model, job.prompt_set, config, run.path, reward_fn, **options)
    layer = _layer(previous, config, before, job.n_layers)
    setup = prepare(model, config, progress=job.progress)
    header = job.spec.header(job.prompt_set.sha256)
    if previous is None:
        record = base_record(header, setup, job.prompt_set, layer, config, reward_fn)
    else:  # the settings and command line of this resumption
        record = {**previous, "settings": header["settings"], "argv": header["argv"]}
    if before.screened.rows is not None:
        record["screen"] = screen_record(before.screened, config)
    done = _finished_training(previous, config)
    record = _write(run, {**record, "status": "running", "stages": done})
    if done:
        trained = read_trained(run.path, record.get("engine"))
    else:
        kept = before.trained_prompts
        trained = train_stage(
            setup, kept, config, run.path, layer[0], reward_fn, checkpoint, on_step
        )
        record = _write(run, {**record, "engine": trained.engine, "stages": [TRAINED]})
    final = final_model(model, trained.model_dir)
    options["resume"] = bool(done)  # a new final model: sample and analyse it afresh
    after = after_training(final, before.trained_prompts, config, run.path, reward_fn, **options)
    if not main:
        record = read_json(run.record_path)
        return TrainResult(run.path, trained.log, *layer, trained.model_dir, record)
    outcome = Outcome(
        trained.log, trained.model_dir, before.analysis, after.analysis,
        before.reward, after.reward,
    )  # fmt: skip
    record, drawn = report_stage(run.path, record, outcome, config, reward_fn)
    return TrainResult(
        run.path, trained.log, *layer, trained.model_dir, record, before.analysis,
        after.analysis, drawn,
    )  # fmt: skip


def _finished_training(previous: dict[str, Any] | None, config: TrainConfig) -> list[str]:
    """[TRAINED] when the resumed run saved its final model after as many rollouts as asked."""
    if previous is None or TRAINED not in previous.get("stages", []):
        return []
    return [TRAINED] if previous["settings"].get("steps") == config.steps else []


def _layer(
    previous: dict[str, Any] | None, config: TrainConfig, before: BeforeTraining, n_layers: int
) -> tuple[int, str]:
    """Layer k and why: the resumed run's, the given one, or the boundary-layer rule's."""
    if previous is not None:
        return previous["layer"]["k"], previous["layer"]["reason"]
    if config.layer == "auto":
        assert before.analysis is not None
        return boundary_layer_from(before.analysis.summary, n_layers)
    return int(config.layer), f"given: --layer {config.layer}"


def _write(run: RunDirectory, record: dict[str, Any]) -> dict[str, Any]:
    """`record` as run.json (main process only); returned for chaining."""
    if current_shard().is_main:
        write_json(record, run.record_path)
    return record


def _check_installed(config: TrainConfig) -> None:
    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise LayerpolicyError(
            "--use-vllm needs vLLM (pip install vllm, on a GPU machine); or drop --use-vllm"
        )
    if config.lora_rank and importlib.util.find_spec("peft") is None:
        raise LayerpolicyError("--lora needs PEFT: pip install 'layerpolicy[lora]'")
