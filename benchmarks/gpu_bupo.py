"""A 1-GPU BuPO smoke run for benchmarks/gpu_check.py: both phases with bf16 autocast over float32
master weights, rollouts from vLLM (colocate) where it is installed, in a subprocess with a time
limit. Reports seconds per rollout of each phase, peak GPU memory and the phase-1 gradient reach
(the blocks with a gradient must be exactly blocks 1..k; the final norm none).

    .venv/bin/python benchmarks/gpu_bupo.py MODEL_DIR [--layer K] [--device cpu]

prints one JSON line (`--device cpu`: a dry run of the same code on a tiny model, no vLLM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerpolicy.readout.unembed import find_final_norm  # noqa: E402

TIME_LIMIT_S = 240
ROLLOUTS = 4  # 2 in phase 1, 2 in phase 2
Row = tuple[str, str, str, str]


def bupo_smoke_rows(
    location: str, layer: int = 4, time_limit: int = TIME_LIMIT_S, device: str = "cuda"
) -> list[Row]:
    """gpu_check's rows of one smoke run of `location` (a model directory), run in a subprocess
    killed after `time_limit` seconds."""
    command = [sys.executable, str(Path(__file__)), location, "--layer", str(layer)]
    command += ["--device", device]
    setting = f"{Path(location).name}, k = {layer}, {ROLLOUTS} rollouts, bf16 autocast"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=time_limit)
    except subprocess.TimeoutExpired:
        return [("BuPO smoke run", setting, f"killed after {time_limit} s", "FAIL")]
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return [("BuPO smoke run", setting, f"exit {done.returncode}: {tail[0]}", "FAIL")]
    got = json.loads(lines[-1])
    reach_ok = got["blocks_with_gradient"] == list(range(1, layer + 1)) and not got["final_norm"]
    return [
        (
            "BuPO smoke run",
            f"{setting}, rollouts from {got['rollouts_from']}",
            f"s/rollout phase 1 {got['seconds_phase1']:.2f}, phase 2 {got['seconds_phase2']:.2f}; "
            f"peak {got['peak_gib']:.1f} GiB",
            "ok",
        ),
        (
            "BuPO phase-1 gradient reach",
            f"{got['n_layers']} blocks, k = {layer}",
            f"blocks with gradient {_span(got['blocks_with_gradient'])}; final norm "
            f"{'has one' if got['final_norm'] else 'none'}",
            "ok" if reach_ok else "FAIL",
        ),
    ]


def _span(blocks: list[int]) -> str:
    return f"{blocks[0]}..{blocks[-1]}" if blocks else "none"


def smoke(location: str, layer: int, device: str) -> dict:
    """Train ROLLOUTS rollouts (the first half phase 1) and measure them."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig

    from layerpolicy.bupo.engine import training_precision
    from layerpolicy.bupo.trainer import BupoTrainer

    cuda = device == "cuda"
    vllm = cuda and importlib.util.find_spec("vllm") is not None
    precision = training_precision("bfloat16")
    args = GRPOConfig(
        output_dir=str(Path("/tmp") / "gpu_bupo"), use_cpu=not cuda, bf16=precision["bf16"],
        model_init_kwargs={"dtype": precision["load_dtype"], "attn_implementation": "sdpa"},
        per_device_train_batch_size=8, num_generations=8, steps_per_generation=2,
        max_completion_length=128, max_steps=2 * ROLLOUTS, learning_rate=1e-6, beta=0.0,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=2,
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
    )  # fmt: skip
    prompts = [{"prompt": f"What is {i} + {i + 3}? Answer with a number."} for i in range(16)]
    ends: list[tuple[float, str]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            ends.append((time.perf_counter(), trainer.buffer_phase))

    trainer = BupoTrainer(
        model=location, args=args, train_dataset=Dataset.from_list(prompts),
        reward_funcs=[lambda completions, **_: [float(len(str(c)) % 2) for c in completions]],
        processing_class=AutoTokenizer.from_pretrained(location), callbacks=[Clock()],
        layer=layer, inter_rollouts=ROLLOUTS // 2,
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = {"inter": [], "full": []}
    previous = start
    for index, (end, phase) in enumerate(ends):
        if index % 2 == 1:  # two optimizer steps per rollout
            seconds[phase].append(end - previous)
            previous = end
    return {
        **_gradient_reach(trainer, layer),
        "rollouts_from": "vLLM colocate" if vllm else "transformers generate",
        "seconds_phase1": _later_mean(seconds["inter"]),
        "seconds_phase2": _later_mean(seconds["full"]),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }


def _later_mean(values: list[float]) -> float:
    """Mean seconds per rollout without the first of a phase (warm-up) where there are more."""
    kept = values[1:] or values
    return sum(kept) / len(kept) if kept else float("nan")


def _gradient_reach(trainer, layer: int) -> dict:
    """1-based blocks, and whether the final norm, get a gradient from one phase-1 loss."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(3, min(1000, vocab), (2, 32), device=model.device)
    trainer.buffer_phase = "inter"
    with trainer.autocast_smart_context_manager():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, torch.ones_like(ids), 16
        )
    (-logps.sum()).backward()
    blocks = model.get_decoder().layers
    reached = [
        index + 1
        for index, block in enumerate(blocks)
        if any(p.grad is not None and p.grad.any() for p in block.parameters())
    ]
    norm = find_final_norm(model)
    final_norm = any(p.grad is not None and p.grad.any() for p in norm.parameters())
    return {"blocks_with_gradient": reached, "final_norm": final_norm, "n_layers": len(blocks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", help="a model directory")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    print(json.dumps(smoke(args.location, args.layer, args.device)))


if __name__ == "__main__":
    main()
