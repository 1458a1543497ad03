"""BuPO: GRPO whose first s_inter steps optimise the internal layer policy pi^k (METHOD.md s. 4).

One training step:
  1. take `prompts_per_step` prompts, sample `group_size` responses to each from the full model
     (T = 1, KV cache) and reward them 0/1;
  2. group advantages; one forward without gradients gives the old log-probs of the step's policy
     and the logged entropies of pi_theta and pi^k and KL(pi_theta || pi^k);
  3. `mini_batches` AdamW updates (grad-norm clip) of the dual-clip PPO surrogate, on pi^k
     (phase "inter", steps 1..s_inter: forward through blocks 1..k only) or pi_theta ("full").

Run directory: run.json (settings, layer k and why, status), train_log.parquet/.csv (one row per
step), checkpoints/step-N/ (Hugging Face directories + trainer_state.pt), figures/, and with
`analyse` the entropy runs before/ and after/ (`layerpolicy compare RUN/before RUN/after`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import plots
from ..analysis import AnalysisConfig, AnalysisResult, analyse, load_run
from ..errors import LayerpolicyError, PromptSourceError, RunDirectoryError
from ..models import LoadedModel, load_model
from ..models.plain import plain_view
from ..prompts import (
    ANSWER_COLUMNS,
    PromptItem,
    PromptSet,
    encode_generation_prompt,
    load_prompts,
    prompts_sha256,
    with_response,
)
from ..runs import RunDirectory, read_json, versions, write_csv, write_json, write_parquet
from ..sampling import prompt_seed
from ..tables.shape import shape_statistics
from ..tables.stats import ENTROPY_CHANGE, profile
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .objective import clipped_surrogate, group_advantages, policy_log_probs, rollout_token_stats
from .reward import RewardFn, math_reward
from .rollout import Rollouts, collect_rollouts, sample_group, step_prompts

PAPER_INTER_SHARE = 30 / 300  # the paper's s_inter / total steps (Qwen3-4B)
LOG_NAME = "train_log"
# Settings that may change on --resume without changing the trajectory so far.
_RESUMABLE = ("steps", "save_every", "keep_checkpoints", "analyse", "analysis_prompts")


@dataclass(frozen=True)
class TrainConfig:
    """BuPO settings. inter_steps None: the paper's share, round(steps * 30 / 300).

    layer: "auto" (boundary-layer rule on an entropy analysis) or a 1-based layer k < L.
    Paper values (METHOD.md s. 4) where one machine allows: G 8, eps 0.2, dual clip 10,
    lr 1e-6, AdamW, grad clip 1.0, 4 updates per step, T = 1.
    """

    steps: int = 100
    inter_steps: int | None = None
    layer: int | str = "auto"
    group_size: int = 8
    prompts_per_step: int = 4
    mini_batches: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    lr: float = 1e-6
    weight_decay: float = 0.01
    clip_eps: float = 0.2
    dual_clip: float = 10.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 1
    analyse: bool = False
    analysis_prompts: int = 8

    def __post_init__(self) -> None:
        positive = ("steps", "prompts_per_step", "mini_batches", "max_new_tokens", "save_every")
        for name in (*positive, "keep_checkpoints", "analysis_prompts"):
            if getattr(self, name) < 1:
                raise LayerpolicyError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise LayerpolicyError(f"temperature must be positive, got {self.temperature}")
        if self.group_size < 2:
            raise LayerpolicyError(f"group_size must be at least 2 (GRPO), got {self.group_size}")
        if not 0 <= self.s_inter <= self.steps:
            raise LayerpolicyError(
                f"inter_steps must lie in 0..steps ({self.steps}), got {self.inter_steps}"
            )
        if self.mini_batches > self.prompts_per_step * self.group_size:
            raise LayerpolicyError(
                f"mini_batches ({self.mini_batches}) exceeds the responses per step "
                f"({self.prompts_per_step * self.group_size}); lower it"
            )
        if self.layer != "auto" and not (isinstance(self.layer, int) and self.layer >= 1):
            raise LayerpolicyError(f"layer must be 'auto' or a 1-based layer, got {self.layer!r}")

    @property
    def s_inter(self) -> int:
        """Steps 1..s_inter train pi^k."""
        if self.inter_steps is not None:
            return self.inter_steps
        return round(self.steps * PAPER_INTER_SHARE)

    def phase(self, step: int) -> str:
        """ "inter" (IPA on pi^k) for steps 1..s_inter, then "full" (GRPO on pi_theta)."""
        return "inter" if step <= self.s_inter else "full"

    def recorded(self) -> dict[str, Any]:
        return {**asdict(self), "inter_steps": self.s_inter}


@dataclass
class TrainResult:
    """A finished run: its directory, per-step log, layer k and why, final checkpoint."""

    path: Path
    log: pd.DataFrame
    layer: int
    layer_reason: str
    checkpoint: Path
    record: dict[str, Any]
    before: AnalysisResult | None = None
    after: AnalysisResult | None = None
    figures: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class UpdateStats:
    """One optimiser update; ratio_dev = max |ratio - 1| over its tokens (0 before any update)."""

    loss: float
    clip_frac: float
    dual_clip_frac: float
    grad_norm: float
    ratio_dev: float


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
    offline: bool | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` with BuPO on `prompts` (they need ground-truth answers); results in `out`.

    A LoadedModel is trained in place. `resume` continues from the newest checkpoint in `out`
    (same step counter, optimiser state and RNG); `on_step` receives each step's log row.
    """
    config = config or TrainConfig()
    run_dir = Path(out)
    prompt_set = training_prompts(prompts, limit)
    spec = model.info.spec if isinstance(model, LoadedModel) else model
    settings = {"model": spec, "prompts_sha256": prompt_set.sha256, **config.recorded()}
    record, checkpoint = _open_run(run_dir, settings, resume)
    state = load_trainer_state(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        loaded = load_model(str(checkpoint), device=device, offline=True, progress=progress)
    elif isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(model, device=device, offline=offline, progress=progress)
    if config.layer != "auto":
        check_layer(loaded, int(config.layer))  # before any analysis
    generator = plain_view(loaded.hf_model)
    analysis_items = prompt_set.items[: config.analysis_prompts]
    where = {"device": device, "offline": offline, "progress": progress}
    before = None
    if config.analyse:
        start = loaded if checkpoint is None else spec
        before = _analyse(start, analysis_items, config, run_dir / "before", **where)
    if record is None:
        layer, reason = choose_layer(loaded, config, before, analysis_items, progress=progress)
        record = _record(loaded, prompt_set, settings, layer, reason, config, reward_fn)
    layer, reason = record["layer"]["k"], record["layer"]["reason"]
    write_json({**record, "settings": settings, "status": "running"}, run_dir / "run.json")

    optimizer = torch.optim.AdamW(
        loaded.hf_model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    rows = _previous_rows(run_dir, state)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
    first = state["step"] + 1 if state is not None else 1
    for step in range(first, config.steps + 1):
        items = step_prompts(prompt_set.items, step, config.prompts_per_step, config.seed)
        row = train_step(loaded, generator, optimizer, items, step, layer, config, reward_fn)
        rows.append(row)
        _write_log(run_dir, rows)
        if on_step is not None:
            on_step(row)
        if step % config.save_every == 0 or step == config.steps:
            trainer_state = {
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "layer": layer,
            }
            keep = config.keep_checkpoints
            save_checkpoint(run_dir, step, generator, loaded.tokenizer, trainer_state, keep=keep)
    final = latest_checkpoint(run_dir)
    assert final is not None  # the last step always saves
    log = pd.DataFrame(rows)
    after = None
    if before is not None:
        after = _analyse(str(final), analysis_items, config, run_dir / "after", **where)
    figures = _figures(run_dir, log, before, after, f"{record['method']} · {spec} · k = {layer}")
    record = {
        **record,
        "settings": settings,
        "status": "complete",
        "checkpoint": str(final),
        "figures": [str(p) for p in figures],
        "timings": {"train_s": round(float(log["seconds"].sum()), 3)},
        "entropy_at_k": _entropy_at_k(before, after, layer),
    }
    write_json(record, run_dir / "run.json")
    return TrainResult(run_dir, log, layer, reason, final, record, before, after, figures)


def training_prompts(prompts: str | Path | PromptSet | None, limit: int | None) -> PromptSet:
    """Load prompts and check that every one has a ground-truth answer for the reward."""
    prompt_set = prompts if isinstance(prompts, PromptSet) else load_prompts(prompts, limit=limit)
    if isinstance(prompts, PromptSet) and limit is not None:
        items = prompt_set.items[:limit]
        prompt_set = dataclasses.replace(prompt_set, items=items, sha256=prompts_sha256(items))
    missing = [item.id for item in prompt_set.items if not item.answer]
    if missing:
        raise PromptSourceError(
            f"{len(missing)} of {len(prompt_set.items)} prompts in {prompt_set.source} have no "
            f"answer (first: {missing[0]}); training needs a ground-truth column "
            f"({', '.join(ANSWER_COLUMNS)})"
        )
    return prompt_set


def train_step(
    model: LoadedModel,
    generator: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    items: Sequence[PromptItem],
    step: int,
    layer: int,
    config: TrainConfig,
    reward_fn: RewardFn,
) -> dict[str, Any]:
    """Rollouts, advantages, old log-probs, `mini_batches` updates; returns the step's log row."""
    started = time.perf_counter()
    phase = config.phase(step)
    rollouts = collect_rollouts(
        model,
        generator,
        items,
        step=step,
        group_size=config.group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        reward_fn=reward_fn,
    )
    grouped = rollouts.rewards.view(rollouts.n_prompts, config.group_size)
    advantages = group_advantages(grouped).view(-1)
    stats = token_stats(model, rollouts, layer, config.mini_batches)
    old_logp = torch.zeros(rollouts.targets.shape, device=rollouts.mask.device)
    old_logp[rollouts.mask] = stats["logp_layer" if phase == "inter" else "logp_final"]
    updates = policy_updates(
        model,
        optimizer,
        rollouts,
        old_logp,
        advantages,
        layer if phase == "inter" else None,
        config,
        step,
    )
    return {
        "step": step,
        "phase": phase,
        "layer": layer,
        "reward_mean": float(rollouts.rewards.mean()),
        "groups_active": float((grouped.std(dim=-1) > 0).float().mean()),
        "entropy_final": float(stats["entropy_final"].mean()),
        "entropy_layer_k": float(stats["entropy_layer"].mean()),
        "kl_layer_k_final": float(stats["kl_layer_final"].mean()),
        "loss": _mean(u.loss for u in updates),
        "clip_frac": _mean(u.clip_frac for u in updates),
        "dual_clip_frac": _mean(u.dual_clip_frac for u in updates),
        "grad_norm": _mean(u.grad_norm for u in updates),
        "response_len": float(rollouts.response_len.float().mean()),
        "seconds": round(time.perf_counter() - started, 3),
    }


def token_stats(
    model: LoadedModel, rollouts: Rollouts, layer: int, chunks: int
) -> dict[str, torch.Tensor]:
    """`rollout_token_stats` over row chunks; [n_response_tokens] tensors in mask order."""
    parts: dict[str, list[torch.Tensor]] = {}
    for rows in torch.arange(rollouts.input_ids.shape[0]).tensor_split(chunks):
        ids, targets, mask = _trimmed(rollouts, rows)
        for name, value in rollout_token_stats(model, ids, targets, mask, layer).items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def policy_updates(
    model: LoadedModel,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    policy_layer: int | None,
    config: TrainConfig,
    step: int,
) -> list[UpdateStats]:
    """One AdamW update per mini-batch (a seeded shuffle of the responses) on the clipped
    surrogate of pi^policy_layer (pi_theta when None). old_logp [N, T-1], advantages [N]."""
    shuffle = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    order = torch.randperm(rollouts.input_ids.shape[0], generator=shuffle)
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    updates = []
    for rows in order.tensor_split(config.mini_batches):
        ids, targets, mask = _trimmed(rollouts, rows)
        logp = policy_log_probs(model, ids, targets, mask, policy_layer)
        surrogate = clipped_surrogate(
            logp,
            old_logp[rows, : targets.shape[1]],
            advantages[rows],
            mask,
            eps=config.clip_eps,
            dual_clip=config.dual_clip,
        )
        optimizer.zero_grad(set_to_none=True)
        surrogate.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        ratio_dev = (surrogate.ratio.detach() - 1.0).abs()[mask].max()
        updates.append(
            UpdateStats(
                float(surrogate.loss.detach()),
                surrogate.clip_frac,
                surrogate.dual_clip_frac,
                float(grad_norm),
                float(ratio_dev),
            )
        )
    optimizer.zero_grad(set_to_none=True)
    return updates


def choose_layer(
    model: LoadedModel,
    config: TrainConfig,
    before: AnalysisResult | None,
    items: Sequence[PromptItem],
    *,
    progress: bool = True,
) -> tuple[int, str]:
    """The trained layer k (1-based, k < L) and why it was chosen; "auto" analyses `model` on
    `items` unless the `before` analysis is given."""
    if config.layer != "auto":
        return check_layer(model, int(config.layer)), f"given: --layer {config.layer}"
    result = before or _analyse(model, items, config, None, progress=progress)
    return boundary_layer_from(result.summary, model.n_layers)


def check_layer(model: LoadedModel, layer: int) -> int:
    """`layer` if it is a trainable internal layer of `model` (1..L-1), else a one-line error."""
    n_layers = model.n_layers
    if not 1 <= layer < n_layers:
        raise LayerpolicyError(
            f"--layer must lie in 1..{n_layers - 1} for {model.info.name} ({n_layers} layers; "
            f"layer {n_layers} is pi_theta without its final norm), got {layer}"
        )
    return layer


def boundary_layer_from(summary: pd.DataFrame, n_layers: int) -> tuple[int, str]:
    """k by the boundary-layer rule on dH_mlp regions; fallback: the largest dH_mlp below L."""
    shape = shape_statistics(summary)
    regions = shape["eic_mlp"]
    k = shape["boundary_layer"]
    if k is not None and k < n_layers:
        return int(k), (
            f"boundary layer: last layer of the first exploration region of dH_mlp "
            f"(regions {regions})"
        )
    why = "it reaches the last layer" if k is not None else "there is none before convergence"
    dh = profile(summary, ENTROPY_CHANGE, "mlp").sort_index()
    dh = dh[(dh.index >= 1) & (dh.index < n_layers)]
    k = int(dh.idxmax())
    return k, (
        f"fallback: no usable exploration region of dH_mlp (regions {regions}; {why}); "
        f"k = layer with the largest dH_mlp ({dh[k]:+.3f} nats)"
    )


def _analyse(
    model: str | LoadedModel,
    items: Sequence[PromptItem],
    config: TrainConfig,
    out: Path | None,
    *,
    device: str = "auto",
    offline: bool | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Entropy analysis of `model` on its own sampled responses to `items` (METHOD.md s. 2).

    Responses are sampled here (T = config.temperature, max_new_tokens, seeded per prompt) with
    the plain model view, then scored response-only. A finished `out` is loaded, not redone.
    """
    if out is not None and RunDirectory(out).is_complete():
        return load_run(out)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=device, offline=offline, progress=progress)
    )
    generator = plain_view(loaded.hf_model)
    scored = []
    for item in items:
        (response,) = sample_group(
            generator,
            loaded.tokenizer,
            encode_generation_prompt(item, loaded.tokenizer),
            group_size=1,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=prompt_seed(config.seed, item.id),
        )
        text = loaded.tokenizer.decode(response, skip_special_tokens=False)
        scored.append(with_response(item, text))
    prompt_set = PromptSet(
        tuple(scored), "training prompts + own responses", prompts_sha256(scored)
    )
    return analyse(
        loaded, prompt_set, config=AnalysisConfig(seed=config.seed), out=out, progress=progress
    )


def _open_run(
    run_dir: Path, settings: dict[str, Any], resume: bool
) -> tuple[dict[str, Any] | None, Path | None]:
    """The previous record and newest checkpoint when resuming; checks settings match."""
    record_path = run_dir / "run.json"
    if not resume:
        if record_path.exists():
            raise RunDirectoryError(
                f"{run_dir} already holds a training run; pass --resume to continue it or "
                "choose another --out"
            )
        return None, None
    if not record_path.exists():
        raise RunDirectoryError(f"{run_dir} holds no training run to resume; drop --resume")
    record = read_json(record_path)
    previous = record.get("settings", {})
    changed = sorted(
        key
        for key in {*previous, *settings}
        if key not in _RESUMABLE and previous.get(key) != settings.get(key)
    )
    if changed:
        raise RunDirectoryError(
            f"{run_dir} was trained with other settings ({', '.join(changed)}); resume with the "
            "same ones or choose another --out"
        )
    return record, latest_checkpoint(run_dir)


def _record(
    model: LoadedModel,
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
        "model": model.info.to_dict(),
        "prompts": {
            "source": prompt_set.source,
            "sha256": prompt_set.sha256,
            "n_prompts": len(prompt_set.items),
        },
        "settings": settings,
        "layer": {"k": layer, "requested": config.layer, "reason": reason},
        "internal_policy": "pi^k = softmax(H^k W_U), raw (no norm); k is 1-based",
        "kl_direction": "KL(pi_theta || pi^k)",
        "entropy_unit": "nats",
        "reward": getattr(reward_fn, "__name__", repr(reward_fn)),
        "versions": versions(),
    }


def _trimmed(
    rollouts: Rollouts, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the rollouts cut to the columns they need: ids [n, w+1], targets/mask [n, w]."""
    mask = rollouts.mask[rows]
    width = int(mask.any(dim=0).nonzero().max()) + 1
    return rollouts.input_ids[rows, : width + 1], rollouts.targets[rows, :width], mask[:, :width]


def _previous_rows(run_dir: Path, state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Log rows of the steps a resumed run keeps (those up to its checkpoint)."""
    path = run_dir / f"{LOG_NAME}.parquet"
    if state is None or not path.is_file():
        return []
    log = pd.read_parquet(path)
    return log[log["step"] <= state["step"]].to_dict("records")


def _write_log(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    log = pd.DataFrame(rows)
    write_parquet(log, run_dir / f"{LOG_NAME}.parquet")
    write_csv(log, run_dir / f"{LOG_NAME}.csv")


def _entropy_at_k(
    before: AnalysisResult | None, after: AnalysisResult | None, layer: int
) -> dict[str, Any] | None:
    """Resid entropy and dH_mlp, dH_attn at layer k before and after training (nats)."""
    if before is None or after is None:
        return None
    out: dict[str, Any] = {}
    for name, result in (("before", before), ("after", after)):
        summary = result.summary
        out[name] = {
            "entropy_resid": float(profile(summary, "entropy", "resid")[layer]),
            "dh_mlp": float(profile(summary, ENTROPY_CHANGE, "mlp")[layer]),
            "dh_attn": float(profile(summary, ENTROPY_CHANGE, "attn")[layer]),
            "policy_entropy": shape_statistics(summary)["policy_entropy"],
            "eic_mlp": shape_statistics(summary)["eic_mlp"],
        }
    return out


def _figures(
    run_dir: Path,
    log: pd.DataFrame,
    before: AnalysisResult | None,
    after: AnalysisResult | None,
    title: str,
) -> list[Path]:
    """The training-log figure and, with both analyses, the after - before entropy figure."""
    figures = run_dir / "figures"
    paths = plots.save_figure(plots.plot_training_log(log, title=title), figures / "training_log")
    if before is not None and after is not None:
        difference = plots.plot_difference(
            before.summary, after.summary, title=f"after - before · {title}"
        )
        paths += plots.save_figure(difference, figures / "entropy_difference")
    return paths


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan
