"""One rank of the DeepSpeed ZeRO-3 test (tests/test_deepspeed.py), started 2x by torchrun on CPU.

    DS_ACCELERATOR=cpu python -m torch.distributed.run --nproc_per_node 2 \
        tests/deepspeed_worker.py MODEL OUT WEIGHT_DECAY

`deepspeed.initialize` wraps a tiny model in a ZeRO stage-3 engine (every parameter sharded over
the 2 ranks, a plain torch AdamW, DeepSpeed's CPU accelerator on gloo) and BupoTrainer's phase-1
log-probs are driven through it, as tests/distributed_worker.py does for DDP and FSDP2: a
phase-1 step, then a phase-2 step, each rank on its own half of the batch. transformers' ZeRO-3
flag is on around the engine's forward and backward (accelerate sets it under a ZeRO-3 launch),
so TRL's fused LM head gathers the sharded head. Rank 0 writes OUT/deepspeed.json: per phase
the log-prob and gradient differences to a single-process run on the gathered weights, the
difference of the layer statistics (`layer_token_stats`, run before each step as in a run), the
trainer's own optimizer (`BupoTrainer.create_optimizer`: transformers' AdamW at lr 1e-3 with
WEIGHT_DECAY, its decayed parameters above k in a group of their own) by group, the weight decay
each group had in each step of the inner torch optimizer (the trainer enters each phase through
the ZeRO-3 optimizer's param groups, as accelerate hands them to it), the parameters that the
phase-1 step left bitwise unchanged and those that the phase-2 step changed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_grad
from transformers import AutoModelForCausalLM
from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config
from trl.trainer.utils import add_fused_lm_head

from layerpolicy.bupo.trainer import ABOVE_K, BupoTrainer
from layerpolicy.readout.layer_policy import layer_token_stats
from tests.distributed_worker import COMPLETION, ROWS, K, above_k, batch, build_trainer

HALF = ROWS // 2
LR = 1e-3


def zero3_config() -> dict:
    """ZeRO stage 3 in float32 with no size threshold: every parameter, however small, sharded."""
    return {
        "train_micro_batch_size_per_gpu": HALF,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_model_persistence_threshold": 0,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


@contextmanager
def zero3_flag(config: dict) -> Iterator[None]:
    """transformers' global ZeRO-3 flag on, which TRL's fused LM head reads to gather the head."""
    keep = HfDeepSpeedConfig(config)  # noqa: F841 (transformers holds only a weak reference)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the full (gathered) parameters of a ZeRO-3 model, by name."""
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: param.detach().clone() for name, param in params.items()}


def logps_of(trainer: BupoTrainer, model, phase: str, rows: slice) -> torch.Tensor:
    """Per-token log-probs [rows, C] of the batch's `rows` in `phase` (BupoTrainer's own code)."""
    ids, mask, _ = batch()
    trainer.buffer_phase = phase
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, ids[rows], mask[rows], COMPLETION
    )
    return logps


def loss_from(logps: torch.Tensor, rows: slice) -> torch.Tensor:
    """-(advantage x log-prob) summed over the rows' completion tokens."""
    return -(logps * batch()[2][rows]).sum()


def reference(trainer, weights, location, phase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Single-process log-probs [ROWS, C] and gradients of the mean of both ranks' losses, on a
    plain model holding `weights` (transformers' ZeRO-3 flag off)."""
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    with torch.no_grad():
        for name, param in plain.named_parameters():
            param.copy_(weights[name])
    add_fused_lm_head(plain, temperature=trainer.temperature, outputs=("log_probs", "entropy"))
    halves = [slice(r * HALF, (r + 1) * HALF) for r in (0, 1)]
    logps = [logps_of(trainer, plain, phase, rows) for rows in halves]
    (sum(loss_from(lp, rows) for lp, rows in zip(logps, halves, strict=True)) / 2).backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    return torch.cat(logps).detach(), grads


def stats_difference(engine, weights: dict[str, torch.Tensor], location: str) -> float:
    """Largest difference (nats) of the trainer's layer statistics (`layer_token_stats`: a plain
    forward calling the LM head module, then the head gathered by GatheredParameters) under
    ZeRO-3, transformers' flag on as in a run, from those of a plain model of `weights`."""
    ids, mask, _ = batch()
    with zero3_flag(zero3_config()):
        sharded = layer_token_stats(engine.module, ids, mask, K, COMPLETION)
    check_sharded(engine.module)
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    plain.load_state_dict(weights)
    expected = layer_token_stats(plain, ids, mask, K, COMPLETION)
    return max((sharded[name] - expected[name]).abs().max().item() for name in expected)


def check_sharded(model: torch.nn.Module) -> None:
    """Every parameter a released ZeRO-3 partition: no full data held, a shard of it local."""
    for name, param in model.named_parameters():
        assert param.numel() == 0, f"{name} holds its full data outside a forward"
        assert 0 < param.ds_tensor.numel() < param.ds_numel, f"{name} is not sharded"


def step(trainer, engine, location, phase, rank) -> dict[str, float]:
    """One backward of `phase` on this rank's half through the engine; checks its log-probs and
    gradients against the single-process ones and returns the largest differences."""
    expected_logps, expected = reference(trainer, gathered(engine.module), location, phase)
    rows = slice(rank * HALF, (rank + 1) * HALF)
    trainer._enter_phase(phase)  # as at the start of a rollout buffer
    with zero3_flag(zero3_config()):
        logps = logps_of(trainer, engine, phase, rows)
        engine.backward(loss_from(logps, rows))
    logp_difference = (logps.detach() - expected_logps[rows]).abs().max().item()
    assert logp_difference <= 1e-6, f"{phase}: log-probs differ by {logp_difference}"
    worst = 0.0
    for name, param in engine.module.named_parameters():
        grad = safe_get_full_grad(param)
        if name not in expected:
            assert grad is None or not grad.any(), f"{phase}: {name} got a gradient"
            continue
        scale = expected[name].abs().max().item()
        relative = (grad - expected[name]).abs().max().item() / scale
        assert relative <= 1e-5, f"{phase}: {name} gradient differs by {relative} of its max"
        worst = max(worst, relative)
    return {
        "max_logp_difference": logp_difference,
        "max_relative_grad_difference": worst,
        "params_with_grad": len(expected),
    }


def trainer_optimizer(trainer, model, weight_decay) -> tuple[torch.optim.Optimizer, list[dict]]:
    """The trainer's own optimizer at lr LR with `weight_decay`, and its param groups by name:
    the names, the weight decay and whether the group carries BuPO's above-k mark."""
    trainer.args.learning_rate, trainer.args.weight_decay = LR, weight_decay
    optimizer = trainer.create_optimizer()
    names = {id(param): name for name, param in model.named_parameters()}
    groups = [
        {
            "names": [names[id(param)] for param in group["params"]],
            "weight_decay": group["weight_decay"],
            "marked": ABOVE_K in group,
        }
        for group in optimizer.param_groups
    ]
    return optimizer, groups


def log_step_decays(optimizer: torch.optim.Optimizer, log: list) -> None:
    """Append (weight decay, above-k mark) of every group that each step of `optimizer` updates
    (ZeRO-3 steps it once per flat partition, the other groups' params emptied)."""

    def record(stepped: torch.optim.Optimizer, *_: object) -> None:
        log.extend([g["weight_decay"], ABOVE_K in g] for g in stepped.param_groups if g["params"])

    optimizer.register_step_pre_hook(record)


def main(location: str, out: Path, weight_decay: float) -> None:
    deepspeed.init_distributed("gloo", timeout=timedelta(seconds=120))  # a stuck rank errors
    assert get_accelerator().communication_backend_name() == "gloo"
    rank = dist.get_rank()
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    trainer = build_trainer(plain, location, out)  # TRL patches the plain model's forward
    optimizer, groups = trainer_optimizer(trainer, plain, weight_decay)
    decay_names = trainer.get_decay_parameter_names(plain)
    decays: list = []
    log_step_decays(optimizer, decays)
    engine, *_ = deepspeed.initialize(model=plain, optimizer=optimizer, config=zero3_config())
    trainer.optimizer = engine.optimizer  # the ZeRO-3 optimizer around the trainer's
    check_sharded(engine.module)
    before = gathered(engine.module)
    # as in a run, each rollout's layer statistics come before its steps' forwards and backwards
    stats = [stats_difference(engine, before, location)]
    figures = {"phase1": step(trainer, engine, location, "inter", rank)}
    engine.step()
    phase1_steps = len(decays)
    after = gathered(engine.module)
    unchanged = sorted(name for name in before if torch.equal(before[name], after[name]))
    check_sharded(engine.module)
    stats.append(stats_difference(engine, after, location))
    figures["phase2"] = step(trainer, engine, location, "full", rank)
    engine.step()
    final = gathered(engine.module)
    check_sharded(engine.module)
    assert max(stats) <= 1e-5, f"layer statistics differ by {max(stats)} nats"
    figures["max_stats_difference"] = max(stats)
    figures["unchanged_by_phase1"] = unchanged
    figures["changed_by_phase2"] = sorted(n for n in after if not torch.equal(after[n], final[n]))
    figures["groups"], figures["decay_names"] = groups, sorted(decay_names)
    figures["step_decays"] = {"phase1": decays[:phase1_steps], "phase2": decays[phase1_steps:]}
    figures["above_k"] = sorted(name for name in before if above_k(name))
    figures["all_zero"] = sorted(name for name, value in before.items() if not value.any())
    dist.barrier()
    if rank == 0:
        (out / "deepspeed.json").write_text(json.dumps(figures))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]))
