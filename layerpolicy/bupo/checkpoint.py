"""Checkpoints as plain Hugging Face directories, plus the trainer state needed to resume.

Layout: RUN/checkpoints/step-NNNNNN/ holds config.json, generation_config.json,
model.safetensors, the tokenizer, and trainer_state.pt (step, optimiser state, torch and python
RNG states, the trained layer). A checkpoint is written into a temporary sibling and renamed, so
every step-* directory is complete; `layerpolicy entropy --model DIR` and
`AutoModelForCausalLM.from_pretrained(DIR)` load it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    plain: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    *,
    keep: int = 1,
) -> Path:
    """Write checkpoint `step` (model, tokenizer, `state` as trainer_state.pt); keep the newest
    `keep` checkpoints and delete older ones. Returns the checkpoint directory."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state saved with a checkpoint (tensors on the CPU)."""
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
