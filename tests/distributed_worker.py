"""One rank of the process-group tests (tests/test_distributed.py), started 2x by torchrun on CPU.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py ENGINE MODEL OUT

ENGINE ddp | fsdp2 wraps a tiny model (torch's DDP with find_unused_parameters, or FSDP2's
`fully_shard` per decoder block and at the root, on a gloo group) and drives BupoTrainer's
phase-1 log-probs through it: a phase-1 step, then a phase-2 step, each rank on its own half
of the batch. Every check raises AssertionError on rank 0's and rank 1's own data; rank 0
writes OUT/ENGINE.json with the figures once all pass.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig
from trl.trainer.utils import add_fused_lm_head

from layerpolicy.bupo.trainer import BupoTrainer

K = 2  # the trained layer (1-based): blocks 0..K-1 (0-based) take part in phase 1
ROWS, PROMPT, COMPLETION = 4, 4, 5


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole batch (every rank builds the same): ids, attention mask [ROWS, P + C], and
    per-row advantages [ROWS, 1]."""
    ids = torch.randint(
        3, 300, (ROWS, PROMPT + COMPLETION), generator=torch.Generator().manual_seed(5)
    )
    weights = torch.tensor([[1.0], [-0.5], [0.3], [-0.8]])
    return ids, torch.ones_like(ids), weights


def build_trainer(model: torch.nn.Module, location: str, out: Path) -> BupoTrainer:
    """A BupoTrainer around `model` (TRL's own loss code reads the log-probs it returns)."""
    from datasets import Dataset

    args = GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, per_device_train_batch_size=2,
        num_generations=2, max_completion_length=COMPLETION, report_to="none", beta=0.0,
        disable_tqdm=True, bf16=False,
    )  # fmt: skip
    data = Dataset.from_list([{"prompt": "1 + 1 =", "answer": "2"}] * 4)
    trainer = BupoTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(location),
        layer=K, inter_rollouts=1, layer_stats=False,
    )  # fmt: skip
    return trainer


def loss_of(trainer: BupoTrainer, model: torch.nn.Module, phase: str, rows: slice) -> torch.Tensor:
    """-(advantage x log-prob) summed over the rows' completion tokens, in `phase`."""
    ids, mask, weights = batch()
    trainer.buffer_phase = phase
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, ids[rows], mask[rows], COMPLETION
    )
    return -(logps * weights[rows]).sum()


def reference_grads(
    trainer: BupoTrainer, inner: torch.nn.Module, location: str, phase: str
) -> dict[str, torch.Tensor]:
    """Single-process gradients of the mean of both ranks' losses, on a plain model holding
    the (gathered) current weights of `inner`."""
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    with torch.no_grad():
        for name, param in plain.named_parameters():
            param.copy_(full(dict(inner.named_parameters())[name]))
    add_fused_lm_head(plain, temperature=trainer.temperature, outputs=("log_probs", "entropy"))
    half = ROWS // 2
    losses = [loss_of(trainer, plain, phase, slice(r * half, (r + 1) * half)) for r in (0, 1)]
    (sum(losses) / 2).backward()
    return {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def above_k(name: str) -> bool:
    parts = name.split(".")
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) >= K
    return "norm" in parts and "layers" not in parts  # the final norm


def wrap(model: torch.nn.Module, engine: str) -> torch.nn.Module:
    if engine == "fsdp2":
        for block in model.model.layers:
            fully_shard(block)
        return fully_shard(model)
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def check_fsdp_tree(model: torch.nn.Module) -> None:
    """Every decoder block still a sharded, non-root FSDP module; the model the one root."""
    assert isinstance(model, FSDPModule) and model._get_fsdp_state()._is_root
    for index, block in enumerate(model.model.layers):
        assert isinstance(block, FSDPModule), f"block {index} is not an FSDP module"
        assert not block._get_fsdp_state()._is_root, f"block {index} became an FSDP root"
        for name, param in block.named_parameters():
            assert type(param).__name__ == "DTensor", f"block {index} {name} is not sharded"
            assert param.to_local().shape[0] < param.shape[0], f"block {index} {name} is whole"


def step(trainer, model, engine, location, phase, rank) -> dict[str, float]:
    """One optimizer step of `phase` on this rank's half; checks the gradients against the
    single-process ones and returns the largest difference."""
    half = ROWS // 2
    inner = model.module if engine == "ddp" else model
    expected = reference_grads(trainer, inner, location, phase)
    loss_of(trainer, model, phase, slice(rank * half, (rank + 1) * half)).backward()
    worst = 0.0
    for name, param in inner.named_parameters():
        if name not in expected:
            assert param.grad is None or not full(param.grad).any(), f"{name} got a gradient"
            continue
        difference = (full(param.grad) - expected[name]).abs().max().item()
        assert difference <= 1e-6, f"{phase}: {name} gradient differs by {difference}"
        worst = max(worst, difference)
    return {"max_grad_difference": worst, "params_with_grad": len(expected)}


class AdapterSnapshots(TrainerCallback):
    """The LoRA weights at the start and after the first optimizer step (a phase-1 rollout)."""

    def __init__(self) -> None:
        self.taken: list[dict[str, torch.Tensor]] = []

    def _take(self, model: torch.nn.Module) -> None:
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        self.taken.append(weights)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            self._take(model)


def lora_run(location: str, out: Path) -> None:
    """Under accelerate launch: a LoRA BupoTrainer trains one phase-1 and one phase-2 rollout
    (DDP, weight decay on), the adapters above k bitwise unchanged by the phase-1 step; it saves
    with `save_final_model` and rank 0 compares the saved model with the trained adapter merged
    in memory."""
    from peft import LoraConfig

    from layerpolicy.bupo.engine import engine_record, save_final_model

    args = GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, per_device_train_batch_size=2,
        num_generations=2, max_completion_length=COMPLETION, report_to="none", beta=0.0,
        disable_tqdm=True, bf16=False, max_steps=2, learning_rate=1e-2, save_strategy="no",
        ddp_find_unused_parameters=True, logging_steps=1, weight_decay=0.01,
    )  # fmt: skip
    from datasets import Dataset

    data = Dataset.from_list([{"prompt": f"{i} + 1 =", "answer": "2"} for i in range(8)])
    trainer = BupoTrainer(
        model=location, args=args, train_dataset=data,
        reward_funcs=[lambda completions, **_: [float(len(c) % 2) for c in completions]],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        layer=K, inter_rollouts=1, layer_stats=False,
    )  # fmt: skip
    snapshots = AdapterSnapshots()
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.rollouts == 2, trainer.rollouts
    start, after_phase1 = snapshots.taken
    for name, value in start.items():
        same = torch.equal(value, after_phase1[name])
        if above_k(name):
            assert same, f"{name} moved in the phase-1 update"
        elif "lora_B" in name:
            assert not same, f"{name} did not move in the phase-1 update"
    save_final_model(trainer, out / "model")
    if trainer.accelerator.is_main_process:
        saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
        base = AutoModelForCausalLM.from_pretrained(location).state_dict()
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().state_dict()
        figures = {
            "engine": engine_record(trainer.accelerator),
            "max_difference_to_merged": max(
                (saved[n] - merged[n]).abs().max().item() for n in merged
            ),
            "changed_by_training": sum(not torch.equal(saved[n], base[n]) for n in base),
        }
        (out / "lora.json").write_text(json.dumps(figures))
    trainer.accelerator.wait_for_everyone()


def main(engine: str, location: str, out: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))  # a stuck rank errors
    rank = dist.get_rank()
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    trainer = build_trainer(plain, location, out)  # TRL patches the plain model's forward
    model = wrap(plain, engine)
    inner = model.module if engine == "ddp" else model
    optimizer = torch.optim.AdamW(inner.parameters(), lr=1e-3, weight_decay=0.01)
    before = {n: full(p).detach().clone() for n, p in inner.named_parameters()}
    figures = {"phase1": step(trainer, model, engine, location, "inter", rank)}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for name, param in inner.named_parameters():
        same = torch.equal(full(param).detach(), before[name])
        assert same == above_k(name), f"{name}: changed {not same} after a phase-1 step"
    if engine == "fsdp2":
        check_fsdp_tree(model)
    figures["phase2"] = step(trainer, model, engine, location, "full", rank)
    if engine == "fsdp2":
        check_fsdp_tree(model)
    dist.barrier()
    if rank == 0:
        (out / f"{engine}.json").write_text(json.dumps(figures))
    dist.destroy_process_group()


def engine_check(out: Path) -> None:
    """Under accelerate launch: the engine accelerate runs, checked against the launch config
    (the error's line is written to OUT/engine_check.txt by rank 0, then re-raised)."""
    from accelerate import PartialState

    from layerpolicy.bupo.engine import check_engine
    from layerpolicy.errors import LayerpolicyError

    state = PartialState()
    try:
        check_engine(state)
    except LayerpolicyError as error:
        if state.is_main_process:
            (out / "engine_check.txt").write_text(str(error))
        raise


if __name__ == "__main__":
    if sys.argv[1] == "engine_check":
        engine_check(Path(sys.argv[3]))
    elif sys.argv[1] == "lora":
        lora_run(sys.argv[2], Path(sys.argv[3]))
    else:
        main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
