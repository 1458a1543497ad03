"""BuPO settings (`TrainConfig`) and their mapping onto TRL's GRPOConfig (the shipped runs'
settings are presets of `layerpolicy.spec.RunSpec.from_preset`).

Units: a *step* is one rollout (generation round): `prompts_per_step` prompts x `group_size`
responses, then `mini_batches` optimizer steps on them (x `num_iterations` passes). s_inter
(`inter_steps`) counts rollouts too. docs/training.md maps every field to the paper's (verl's).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import LayerpolicyError
from .layer import check_beta

PAPER_INTER_SHARE = 30 / 300  # the paper's s_inter / total steps (Qwen3-4B)
MONITOR_ROLLOUTS = 5  # default dynamics interval in rollouts (benchmarks/bench_dynamics.py)
# Settings that may change on --resume without changing the trajectory so far.
RESUMABLE = (
    "steps", "save_every", "keep_checkpoints", "analyse", "analysis_prompts", "report_to",
    "eval_samples", "monitor_every",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """BuPO settings. inter_steps None: the paper's share, round(steps * 30 / 300).

    layer: "auto" (the boundary-layer rule on an entropy analysis) or a 1-based layer k < L.
    Defaults are the paper's where one machine allows (group size 8, clip 0.2, dual clip 10,
    lr 1e-6 constant, AdamW, grad clip 1.0, 4 optimizer steps per rollout, T = 1, no KL).
    lora_rank > 0 trains a LoRA adapter (PEFT) instead of all weights; grpo: any other
    GRPOConfig field by name (applied last).
    screen_samples N > 0 samples N responses per prompt from the base model before training
    (seed `seed`) and trains only on the prompts it solves sometimes (0 < mean reward < 1);
    eval_samples N > 0 samples N responses per trained prompt from the base and the final model
    (seed `seed + 1`) for the reward before and after training. 0 turns either off.
    monitor_every N > 0 scores a probe (the first `analysis_prompts` trained prompts, one
    response each from the base model) every N optimizer steps into RUN/dynamics.parquet
    (`layerpolicy.dynamics`); None: every MONITOR_ROLLOUTS rollouts; 0: off.
    """

    steps: int = 100
    inter_steps: int | None = None
    layer: int | str = "auto"
    group_size: int = 8
    prompts_per_step: int = 4
    mini_batches: int = 4
    grad_accum: int = 1
    num_iterations: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    lr: float = 1e-6
    weight_decay: float = 0.01
    clip_eps: float = 0.2
    dual_clip: float = 10.0
    grad_clip: float = 1.0
    beta: float = 0.0
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 1
    analyse: bool = False
    analysis_prompts: int = 8
    thinking: bool = False
    use_vllm: bool = False
    lora_rank: int = 0
    report_to: str = "none"
    layer_stats: bool = True
    screen_samples: int = 0
    eval_samples: int = 0
    monitor_every: int | None = None
    grpo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("steps", "prompts_per_step", "mini_batches", "grad_accum", "num_iterations")
        for name in (*positive, "max_new_tokens", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise LayerpolicyError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.analysis_prompts < 1 or self.lora_rank < 0:
            raise LayerpolicyError("analysis_prompts must be >= 1 and lora_rank >= 0")
        if self.screen_samples == 1 or self.screen_samples < 0:
            raise LayerpolicyError(
                f"screen_samples must be 0 (off) or at least 2 (one response per prompt is never "
                f"solved sometimes), got {self.screen_samples}"
            )
        if self.monitor_every is not None and self.monitor_every < 0:
            raise LayerpolicyError(
                f"monitor_every must be 0 (off) or positive, got {self.monitor_every}"
            )
        if self.eval_samples < 0:
            raise LayerpolicyError(
                f"eval_samples must be 0 (off) or positive, got {self.eval_samples}"
            )
        if not self.temperature > 0:
            raise LayerpolicyError(f"temperature must be positive, got {self.temperature}")
        if self.group_size < 2:
            raise LayerpolicyError(f"group_size must be at least 2 (GRPO), got {self.group_size}")
        if not 0 <= self.s_inter <= self.steps:
            raise LayerpolicyError(
                f"inter_steps must lie in 0..steps ({self.steps}), got {self.inter_steps}"
            )
        check_beta(self.beta, self.s_inter)
        if self.layer != "auto" and not (isinstance(self.layer, int) and self.layer >= 1):
            raise LayerpolicyError(f"layer must be 'auto' or a 1-based layer, got {self.layer!r}")
        if self.responses % (self.mini_batches * self.grad_accum):
            raise LayerpolicyError(
                f"{self.responses} responses per step do not split into {self.mini_batches} "
                f"mini-batches x {self.grad_accum} accumulation steps; change --mini-batches"
            )

    @property
    def s_inter(self) -> int:
        """Rollouts 1..s_inter train pi^k."""
        if self.inter_steps is not None:
            return self.inter_steps
        return round(self.steps * PAPER_INTER_SHARE)

    @property
    def responses(self) -> int:
        """Responses per rollout (the generation batch, all processes together)."""
        return self.prompts_per_step * self.group_size

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per rollout."""
        return self.mini_batches * self.num_iterations

    @property
    def monitor_steps(self) -> int:
        """Optimizer steps between two scorings of the dynamics probe (0: off)."""
        if self.monitor_every is None:
            return MONITOR_ROLLOUTS * self.updates_per_step
        return self.monitor_every

    def recorded(self) -> dict[str, Any]:
        return {**asdict(self), "inter_steps": self.s_inter}


def grpo_arguments(
    config: TrainConfig,
    output_dir: str,
    world_size: int,
    *,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GRPOConfig keyword arguments for `config` on `world_size` processes (checked first)."""
    per_device = _per_device_batch(config, world_size)
    check_grpo(config.grpo)
    updates = config.updates_per_step
    arguments: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=config.grad_accum,
        steps_per_generation=config.mini_batches * config.grad_accum,
        num_iterations=config.num_iterations,
        num_generations=config.group_size,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip,
        epsilon=config.clip_eps,
        delta=config.dual_clip,
        loss_type="dapo",
        mask_truncated_completions=False,  # as verl: truncated responses stay in the loss
        scale_rewards="group",
        beta=config.beta,
        max_steps=config.steps * updates,
        logging_steps=updates,
        save_strategy="steps",
        save_steps=config.save_every * updates,
        save_total_limit=config.keep_checkpoints,
        seed=config.seed,
        report_to=config.report_to,
        use_vllm=config.use_vllm,
        chat_template_kwargs=chat_template_kwargs or {},
        bf16=False,
        log_completions=False,
        disable_tqdm=True,
        save_only_model=False,
        ddp_find_unused_parameters=config.s_inter > 0,
    )
    fields = _grpo_fields()  # transformers 5.24 renamed gradient to activation checkpointing
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else ""
    arguments[checkpointing or "gradient_checkpointing"] = False
    return {**arguments, **config.grpo}


def _per_device_batch(config: TrainConfig, world_size: int) -> int:
    """Responses per process and micro-batch; one line when they do not divide evenly."""
    per_update = config.responses // config.mini_batches
    per_device, rest = divmod(per_update, config.grad_accum * world_size)
    if rest or per_device < 1:
        raise LayerpolicyError(
            f"{world_size} processes x {config.grad_accum} accumulation steps do not divide "
            f"the {per_update} responses of one mini-batch ({config.prompts_per_step} prompts x "
            f"{config.group_size} / {config.mini_batches}); change --num-processes, "
            "--prompts-per-step or --mini-batches"
        )
    return per_device


def check_grpo(values: dict[str, Any]) -> None:
    """One line naming the first --grpo key that is no GRPOConfig field, or whose value has
    the wrong type for its field."""
    from trl import GRPOConfig

    unknown = sorted(set(values) - _grpo_fields())
    if unknown:
        raise LayerpolicyError(
            f"--grpo names no GRPOConfig field: {', '.join(unknown)} (see GRPOConfig's docs)"
        )
    hints = typing.get_type_hints(GRPOConfig)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            raise LayerpolicyError(
                f"--grpo {key}={value!r}: {key} takes {_type_name(hints[key])}; "
                'give a JSON value of that type (e.g. 4, 0.5, true, null, "text")'
            )


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (parsed JSON) is of the type `hint`; classes it cannot judge pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) in (list, tuple):
        return isinstance(value, list)
    if (origin or hint) is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _grpo_fields() -> set[str]:
    from trl import GRPOConfig

    return {f.name for f in dataclasses.fields(GRPOConfig)}
