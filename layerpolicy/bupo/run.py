"""`train()`: a BuPO run directory from settings to final model, on TRL's GRPOTrainer.

Run directory: run.json (settings, layer k and why, status), train_log.parquet/.csv (one row per
rollout), checkpoints/checkpoint-N/ (Hugging Face directories with the trainer state; N counts
optimizer steps), model/ (the final model, LoRA merged), figures/, and with `analyse` (or
`layer="auto"`) the entropy runs before/ and after/ on the model's own sampled responses
(`layerpolicy compare RUN/before RUN/after`). Works the same under `accelerate launch`: every
process trains its share of each rollout; the main process holds the run directory's lock and
writes the files.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig

from ..analysis import AnalysisResult, analyse
from ..config import AnalysisConfig, ModelConfig, PromptConfig
from ..errors import LayerpolicyError, RunDirectoryError
from ..models import LoadedModel
from ..parallel import current_shard
from ..prompts import PromptSet
from ..runs import RunDirectory, read_json, versions, write_json
from .config import TrainConfig, grpo_arguments
from .data import (
    TrainingSetup,
    model_depth,
    prepare,
    reward_function,
    training_dataset,
    training_prompts,
)
from .layer import boundary_layer_from, check_layer
from .log import LOG_NAME, StepLog, previous_rows
from .results import entropy_at_k, figures, open_run
from .reward import RewardFn, math_reward
from .trainer import BupoTrainer


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
    model: str | LoadedModel,
    prompts: str | Path | PromptSet | None = None,
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
    """Train `model` with BuPO on `prompts` (they need ground-truth answers); results in `out`.

    A LoadedModel is trained in place (its plain view). `resume` continues from the newest
    checkpoint in `out` (optimizer, scheduler, RNG and the rollout counter of the phase);
    `on_step` receives each rollout's log row (main process).
    """
    config = config or TrainConfig()
    run = RunDirectory(out)
    if run.path.exists() and not run.path.is_dir():
        raise RunDirectoryError(f"--out {run.path} is a file; choose a directory")
    prompt_set = training_prompts(prompts, limit, config.prompts_per_step)
    _check_installed(config)
    shard = current_shard()
    grpo_arguments(config, str(run.path / "checkpoints"), shard.world)  # world size, --grpo
    spec = model.info.spec if isinstance(model, LoadedModel) else model
    if not isinstance(model, LoadedModel):
        ModelConfig(spec, device=device, dtype=dtype, offline=offline)  # validated, not loaded
    if isinstance(config.layer, int):
        check_layer(config.layer, *model_depth(model, offline=offline))
    settings = {"model": spec, "prompts_sha256": prompt_set.sha256, "dtype": dtype}
    settings.update(config.recorded())
    with run.lock(wait=False) if shard.is_main else nullcontext():
        previous, checkpoint = open_run(run, settings, resume, check=shard.is_main)
        setup = prepare(
            model, config, device=device, dtype=dtype, offline=offline, progress=progress
        )
        where = {"device": device, "dtype": dtype, "offline": offline, "progress": progress}
        items = PromptSet(prompt_set.items[: config.analysis_prompts], "training prompts", "")
        before = None
        if config.analyse or config.layer == "auto":
            analysed = model if isinstance(model, LoadedModel) else spec
            before = _analyse(analysed, items, config, run.path / "before", **where)
        if previous is not None:
            layer, reason = previous["layer"]["k"], previous["layer"]["reason"]
        elif config.layer == "auto":
            assert before is not None
            layer, reason = boundary_layer_from(before.summary, setup.n_layers)
        else:
            layer, reason = int(config.layer), f"given: --layer {config.layer}"
        record = previous or _record(setup, prompt_set, settings, layer, reason, config, reward_fn)
        if shard.is_main:
            write_json({**record, "settings": settings, "status": "running"}, run.record_path)
        trainer = build_trainer(
            setup, prompt_set, config, run.path, layer, reward_fn, checkpoint, on_step
        )
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        final = run.path / "model"
        _save_final(trainer, setup, final)
        after = None
        if before is not None and config.analyse:
            after = _analyse(str(final), items, config, run.path / "after", **where)
        log = pd.DataFrame(trainer.step_log.rows)
        if not shard.is_main:
            return TrainResult(run.path, log, layer, reason, final, read_json(run.record_path))
        title = f"{record['method']} · {spec} · k = {layer}"
        drawn = figures(run.path, log, before, after, title)
        record = {
            **record,
            "settings": settings,
            "status": "complete",
            "checkpoint": str(final),
            "figures": [str(p) for p in drawn],
            "timings": {"train_s": round(float(log["seconds"].sum()), 3) if len(log) else 0.0},
            "entropy_at_k": entropy_at_k(before, after, layer),
        }
        write_json(record, run.record_path)
    return TrainResult(run.path, log, layer, reason, final, record, before, after, drawn)


def _check_installed(config: TrainConfig) -> None:
    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise LayerpolicyError(
            "--use-vllm needs vLLM (pip install vllm, on a GPU machine); or drop --use-vllm"
        )
    if config.lora_rank and importlib.util.find_spec("peft") is None:
        raise LayerpolicyError("--lora needs PEFT: pip install 'layerpolicy[lora]'")


def _analyse(
    model: str | LoadedModel,
    items: PromptSet,
    config: TrainConfig,
    out: Path,
    **where: Any,
) -> AnalysisResult:
    """Entropy analysis of `model` on its own sampled responses to `items` (T, seeded per
    prompt, response positions only; the sampled ids are scored as sampled)."""
    prompts = PromptConfig(
        source=items,
        generate=config.max_new_tokens,
        temperature=config.temperature,
        thinking=config.thinking,
        max_tokens=None,
    )
    return analyse(model, prompts, config=AnalysisConfig(seed=config.seed), out=out, **where)


def build_trainer(
    setup: TrainingSetup,
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    layer: int,
    reward_fn: RewardFn = math_reward,
    checkpoint: Path | None = None,
    on_step: Any = None,
):
    """The BupoTrainer of a run (its StepLog callback as `.step_log`), not yet trained."""
    shard = current_shard()
    arguments = grpo_arguments(
        config, str(run_dir / "checkpoints"), shard.world,
        chat_template_kwargs=setup.chat_template_kwargs,
    )  # fmt: skip
    if setup.device == "cpu":
        arguments["use_cpu"] = True
    kept = 0 if checkpoint is None else _global_step(checkpoint) // config.updates_per_step
    step_log = StepLog(
        run_dir, layer, config.updates_per_step, previous_rows(run_dir, kept), on_step
    )
    trainer = BupoTrainer(
        model=setup.model,
        reward_funcs=[reward_function(reward_fn)],
        args=GRPOConfig(**arguments),
        train_dataset=training_dataset(prompt_set, setup.tokenizer, config),
        processing_class=setup.tokenizer,
        peft_config=_lora(config),
        callbacks=[step_log],
        layer=layer,
        inter_rollouts=config.s_inter,
        layer_stats=config.layer_stats,
    )
    trainer.step_log = step_log
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _lora(config: TrainConfig):
    if not config.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )  # fmt: skip


def _save_final(trainer: Any, setup: TrainingSetup, directory: Path) -> None:
    """The trained model as one Hugging Face directory (a LoRA adapter merged into it)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        if trainer.accelerator.is_main_process:
            model.merge_and_unload().save_pretrained(directory)
            setup.tokenizer.save_pretrained(directory)
    else:
        trainer.save_model(str(directory))
    trainer.accelerator.wait_for_everyone()


def _global_step(checkpoint: Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def _record(
    setup: TrainingSetup,
    prompt_set: PromptSet,
    settings: dict[str, Any],
    layer: int,
    reason: str,
    config: TrainConfig,
    reward_fn: RewardFn,
) -> dict[str, Any]:
    return {
        "kind": "train",
        "method": "BuPO" if config.s_inter > 0 else "GRPO",
        "model": setup.info,
        "prompts": {
            "source": prompt_set.source,
            "sha256": prompt_set.sha256,
            "n_prompts": len(prompt_set.items),
        },
        "settings": settings,
        "layer": {"k": layer, "requested": config.layer, "reason": reason},
        "internal_policy": "pi^k = softmax(H^k W_U / T), raw (no norm); k is 1-based",
        "kl_direction": "KL(pi_theta || pi^k)",
        "entropy_unit": "nats",
        "step_unit": "rollout (generation round); s_inter counts rollouts",
        "trainer": "trl.GRPOTrainer (layerpolicy.bupo.trainer.BupoTrainer)",
        "world_size": current_shard().world,
        "log": f"{LOG_NAME}.parquet",
        "reward": getattr(reward_fn, "__name__", repr(reward_fn)),
        "versions": {**versions(), **_trainer_versions()},
    }


def _trainer_versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("trl", "accelerate", "peft"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
