"""A sampled run of the tiny model on three problems with answers, shared by the response tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from layerpolicy.analysis import AnalysisResult, analyse
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.spec import RunSpec

PROBLEMS = [("What is 1 + 2?", "3"), ("What is 2 * 3?", "6"), ("What is 10 - 4?", "6")]


def sample_problems(
    model_dir: Path, root: Path, config: AnalysisConfig, *, generate: int, out: str
) -> tuple[AnalysisResult, RunSpec]:
    """A --generate run (at most `generate` tokens, 2 responses per problem) of PROBLEMS into
    root/out, scored on one thread (float32 sums follow the thread count), and its spec."""
    prompts = root / "problems.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    spec = RunSpec(
        ModelConfig(str(model_dir), device="cpu"),
        PromptConfig(str(prompts), generate=generate, samples=2),
        config,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return analyse(spec, out=root / out, progress=False), spec
    finally:
        torch.set_num_threads(threads)
