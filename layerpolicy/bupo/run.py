"""`train()`: a BuPO run directory from settings to final model, on TRL's GRPOTrainer.

Run directory: run.json (settings, layer k and why, status), train_log.parquet/.csv (one row per
rollout), checkpoints/checkpoint-N/ (Hugging Face directories with the trainer state; N counts
optimizer steps), model/ (the final model, LoRA merged), figures/, and with `analyse` (or
`layer="auto"`) the entropy runs before/ and after/ on the model's own sampled responses
(`layerpolicy compare RUN/before RUN/after`); with `screen_samples` screen.csv (the base model's
solve rates on every prompt), with `eval_samples` reward_before.csv and reward_after.csv (rows
tables of `layerpolicy.bupo.evaluate`, on the trained prompts). Works the same under
`accelerate launch`: every process trains its share of each rollout; the main process holds the
run directory's lock and writes the files. Every process samples the screen and the before
evaluation itself (seeded per response, so all keep the same prompts); the main process alone
samples the after evaluation, once the others are done.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib.util
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig

from ..analysis import AnalysisResult, analyse
from ..config import AnalysisConfig, ModelConfig, PromptConfig
from ..errors import LayerpolicyError, PromptSourceError, RunDirectoryError
from ..models import LoadedModel, load_model
from ..parallel import current_shard
from ..prompts import PromptSet, prompts_sha256
from ..runs import RunDirectory, read_json, versions, write_csv, write_json
from .config import TrainConfig, grpo_arguments
from .data import (
    TrainingSetup,
    model_depth,
    prepare,
    reward_function,
    training_dataset,
    training_prompts,
)
from .evaluate import (
    paired_difference,
    read_rows,
    reward_summary,
    solve_rates,
    sometimes_solved,
)
from .layer import boundary_layer_from, check_layer
from .log import LOG_NAME, StepLog, previous_rows
from .results import entropy_at_k, figures, open_run
from .reward import RewardFn, math_reward
from .trainer import BupoTrainer

SCREEN_FILE = "screen.csv"
BEFORE_FILE = "reward_before.csv"
AFTER_FILE = "reward_after.csv"


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
    checkpoint in `out` (optimizer, scheduler, RNG and the rollout counter of the phase) and
    reads screen.csv (and reward_before.csv, when it has the same samples) instead of sampling
    again; `on_step` receives each rollout's log row (main process). The base model's screen
    and before evaluation are sampled before training (the model given, or one loaded from the
    same spec, device and dtype, freed before training starts); the after evaluation loads
    RUN/model.
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
        where = {"device": device, "dtype": dtype, "offline": offline, "progress": progress}
        load = _load_options(model, shard.device(device), dtype, offline, progress)
        trained, screen, reward_before = _base_rewards(
            model, load, prompt_set, config, run.path, reward_fn, resume=resume,
            write=shard.is_main,
        )  # fmt: skip
        setup = prepare(
            model, config, device=device, dtype=dtype, offline=offline, progress=progress
        )
        items = PromptSet(trained.items[: config.analysis_prompts], "training prompts", "")
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
        if screen is not None:
            record = {**record, "screen": _screen_record(screen, trained, config)}
        if shard.is_main:
            write_json({**record, "settings": settings, "status": "running"}, run.record_path)
        trainer = build_trainer(
            setup, trained, config, run.path, layer, reward_fn, checkpoint, on_step
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
        reward = {"function": getattr(reward_fn, "__name__", repr(reward_fn))}
        if reward_before is not None:
            final_model = load_model(str(final), **load)
            reward_after = _sample_rewards(
                final_model, trained, config, reward_fn, progress=progress
            )
            write_csv(reward_after, run.path / AFTER_FILE)
            reward.update(_reward_evaluation(reward_before, reward_after, config))
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
            "reward": reward,
        }
        write_json(record, run.record_path)
    return TrainResult(run.path, log, layer, reason, final, record, before, after, drawn)


def _load_options(
    model: str | LoadedModel, device: str, dtype: str, offline: bool | None, progress: bool
) -> dict[str, Any]:
    """load_model options for the evaluated models: a LoadedModel's own device and dtype."""
    if isinstance(model, LoadedModel):
        device, dtype = model.info.device, model.info.dtype
    return {"device": device, "dtype": dtype, "offline": offline, "progress": progress}


def _base_rewards(
    model: str | LoadedModel,
    load: dict[str, Any],
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    reward_fn: RewardFn,
    *,
    resume: bool,
    write: bool,
) -> tuple[PromptSet, pd.DataFrame | None, pd.DataFrame | None]:
    """The prompts to train on, the screen's rows and the before evaluation's rows (None when
    off), sampled from the base model (loaded once, only if something is sampled, and freed
    on return). A resumed run reads screen.csv, and reward_before.csv when it has the same
    samples; `write`: write what was sampled."""
    given = isinstance(model, LoadedModel)
    base = functools.cache(lambda: model if given else load_model(model, **load))
    trained, screen = prompt_set, None
    if config.screen_samples:
        path = run_dir / SCREEN_FILE
        screen = _reusable(path, prompt_set, config.screen_samples) if resume else None
        if screen is None:
            screen = _sample_rewards(
                base(), prompt_set, config, reward_fn, progress=load["progress"],
                samples=config.screen_samples, seed=config.seed,
            )  # fmt: skip
            if write:
                write_csv(screen, path)
        trained = _kept(prompt_set, screen, config, path)
    before = None
    if config.eval_samples:
        path = run_dir / BEFORE_FILE
        before = _reusable(path, trained, config.eval_samples) if resume else None
        if before is None:
            before = _sample_rewards(base(), trained, config, reward_fn, progress=load["progress"])
            if write:
                write_csv(before, path)
    del base
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the training model (or vLLM) gets the base model's memory
    return trained, screen, before


def _sample_rewards(
    model: LoadedModel,
    prompts: PromptSet,
    config: TrainConfig,
    reward_fn: RewardFn,
    *,
    progress: bool,
    samples: int | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Rows of `samples` (default eval_samples) responses per prompt at the training's budget,
    temperature and thinking mode, seeded with `seed` (default seed + 1, the evaluation's)."""
    return solve_rates(
        model,
        prompts,
        samples=config.eval_samples if samples is None else samples,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed + 1 if seed is None else seed,
        thinking=config.thinking,
        reward_fn=reward_fn,
        progress=progress,
    )


def _kept(
    prompt_set: PromptSet, screen: pd.DataFrame, config: TrainConfig, path: Path
) -> PromptSet:
    """The prompts solved sometimes in the screen; fewer than one step's is a one-line error."""
    kept = set(sometimes_solved(screen))
    items = tuple(item for item in prompt_set.items if item.id in kept)
    if len(items) < config.prompts_per_step:
        raise PromptSourceError(
            f"the screen kept {len(items)} of {len(prompt_set.items)} prompts (solved sometimes "
            f"in {config.screen_samples} samples; rates in {path}), fewer than the "
            f"{config.prompts_per_step} prompts of a step; raise --limit or --screen, or lower "
            "--prompts-per-step"
        )
    return dataclasses.replace(prompt_set, items=items, sha256=prompts_sha256(items))


def _reusable(path: Path, prompts: PromptSet, samples: int) -> pd.DataFrame | None:
    """The rows table at `path` when it holds exactly `samples` samples of each prompt."""
    if not path.is_file():
        return None
    rows = read_rows(path)
    expected = [(item.id, index) for item in prompts.items for index in range(samples)]
    return rows if list(zip(rows["prompt_id"], rows["sample"], strict=True)) == expected else None


def _reward_evaluation(
    before: pd.DataFrame, after: pd.DataFrame, config: TrainConfig
) -> dict[str, Any]:
    """run.json's reward entry: before, after and after - before on the trained prompts."""
    return {
        "before": reward_summary(before),
        "after": reward_summary(after),
        "difference": paired_difference(before, after),
        "prompts": "trained prompts",
        "samples": config.eval_samples,
        "seed": config.seed + 1,
        "files": [BEFORE_FILE, AFTER_FILE],
    }


def _screen_record(screen: pd.DataFrame, trained: PromptSet, config: TrainConfig) -> dict[str, Any]:
    return {
        "file": SCREEN_FILE,
        "samples": config.screen_samples,
        "seed": config.seed,
        "kept": "prompts solved sometimes (0 < mean reward < 1)",
        "n_kept": len(trained.items),
        "kept_sha256": trained.sha256,
        "summary": reward_summary(screen),
    }


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
        "reward": {"function": getattr(reward_fn, "__name__", repr(reward_fn))},
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
