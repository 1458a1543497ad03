"""The training stage: TRL's trainer loads the policy under the engine, trains it, saves it, and
lets it go before anything else loads weights. Precision, the engine check and record, and the
final save are `layerpolicy.bupo.engine`'s.

The trainer is given the model's directory and `model_init_kwargs` (as TRL takes a model id), so
the policy is created after the accelerate state exists and DeepSpeed's zero3_init_flag and
FSDP's cpu_ram_efficient_loading apply to it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig

from ..config import AnalysisConfig
from ..dynamics import DynamicsCallback
from ..parallel import current_shard
from ..prompts import PromptSet
from ..sampling import SamplingConfig
from .config import TrainConfig, grpo_arguments
from .data import TrainingModel, reward_function, training_dataset
from .engine import check_engine, engine_record, save_final_model, training_precision
from .log import LOG_NAME, StepLog, previous_rows
from .reward import RewardFn, math_reward
from .trainer import BupoTrainer

FINAL_DIR = "model"


@dataclass(frozen=True)
class Trained:
    """The training stage's output: one log row per rollout and the final model's directory."""

    log: pd.DataFrame
    model_dir: Path
    engine: dict[str, Any] | None = None


def train_stage(
    setup: TrainingModel,
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    layer: int,
    reward_fn: RewardFn,
    checkpoint: Path | None,
    on_step: Any = None,
) -> Trained:
    """Train from `checkpoint` (None: from the start), save RUN/model, free the trainer."""
    trainer = build_trainer(
        setup, prompt_set, config, run_dir, layer, reward_fn, checkpoint, on_step
    )
    check_engine(trainer.accelerator)
    engine = engine_record(trainer.accelerator)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final = Path(run_dir) / FINAL_DIR
    save_final_model(trainer, final)
    log = pd.DataFrame(trainer.step_log.rows)
    trainer.accelerator.free_memory()  # the accelerator's own references to model and optimizer
    del trainer
    release_memory()
    return Trained(log, final, engine)


def read_trained(run_dir: Path, engine: dict[str, Any] | None = None) -> Trained:
    """A finished training stage, from its files (a resumed run past training)."""
    log = pd.read_parquet(Path(run_dir) / f"{LOG_NAME}.parquet")
    return Trained(log, Path(run_dir) / FINAL_DIR, engine)


def build_trainer(
    setup: TrainingModel,
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    layer: int,
    reward_fn: RewardFn = math_reward,
    checkpoint: Path | None = None,
    on_step: Any = None,
) -> BupoTrainer:
    """The BupoTrainer of a run (its StepLog callback as `.step_log`), the policy loaded by
    TRL from `setup.source` once the GRPOConfig (and with it the accelerate state) exists."""
    arguments = grpo_arguments(
        config, str(Path(run_dir) / "checkpoints"), current_shard().world,
        chat_template_kwargs=setup.chat_template_kwargs,
    )  # fmt: skip
    precision = training_precision(setup.source.init_kwargs["dtype"])
    for flag in ("bf16", "fp16"):
        arguments[flag] = config.grpo.get(flag, precision[flag])
    arguments["model_init_kwargs"] = {**setup.source.init_kwargs, "dtype": precision["load_dtype"]}
    if setup.source.device == "cpu":
        arguments["use_cpu"] = True
    kept = 0 if checkpoint is None else _global_step(checkpoint) // config.updates_per_step
    step_log = StepLog(
        run_dir, layer, config.updates_per_step, previous_rows(run_dir, kept), on_step
    )
    trainer = BupoTrainer(
        model=setup.source.location,
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
    if config.monitor_steps:
        dynamics_monitor(config, prompt_set, run_dir, setup.source.location).attach(trainer)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def dynamics_monitor(
    config: TrainConfig, prompt_set: PromptSet, run_dir: Path, location: str
) -> DynamicsCallback:
    """The dynamics monitor of a run: resid readouts of the first `analysis_prompts` trained
    prompts, one response each from the base model at the rollout temperature (RUN/probe.parquet);
    one readout per layer where the paper's sites read five (benchmarks/bench_dynamics.py)."""
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed
    )
    return DynamicsCallback(
        run_dir, prompt_set.items[: config.analysis_prompts], every=config.monitor_steps,
        sampling=sampling, analysis=AnalysisConfig(sites="resid", seed=config.seed, top_k=0),
        model_location=location, thinking=config.thinking,
    )  # fmt: skip


def release_memory() -> None:
    """Return freed model memory (the next stage loads weights of its own)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _lora(config: TrainConfig):
    if not config.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )  # fmt: skip


def _global_step(checkpoint: Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])
