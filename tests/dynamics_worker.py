"""One rank of the dynamics callback's 2-process test (tests/test_dynamics.py): TRL's own
GRPOTrainer under `accelerate launch --multi_gpu --num_processes 2` on CPU (DDP on gloo), the
callback scoring every step.

    accelerate launch --multi_gpu --num_processes 2 tests/dynamics_worker.py MODEL OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from layerpolicy.config import AnalysisConfig
from layerpolicy.dynamics import DynamicsCallback
from layerpolicy.prompts import PromptItem


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    items = [PromptItem(f"p{i}", None, f"What is {i} + {i}?") for i in range(3)]
    callback = DynamicsCallback(
        Path(out) / "run", items, every=1, layer=1, analysis=AnalysisConfig(top_k=0, n_boot=50)
    )
    args = GRPOConfig(
        output_dir=str(Path(out) / "trl"), per_device_train_batch_size=2, num_generations=2,
        max_completion_length=6, max_steps=2, learning_rate=0.05, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, seed=0,
    )  # fmt: skip
    prompts = Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(8)]})
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=lambda completions, **_: [float(len(c) % 2) for c in completions],
        args=args, train_dataset=prompts, callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes


if __name__ == "__main__":
    main(*sys.argv[1:3])
