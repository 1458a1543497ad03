"""BuPO on real process groups: 2 CPU processes on gloo (torchrun), a tiny Qwen2 (k = 2 of 4).

DDP and FSDP2 (torch's `fully_shard` per block and at the root: accelerate runs an FSDP config as
DDP without GPUs) drive BupoTrainer's log-probs through a phase-1 step and a phase-2 step
(tests/distributed_worker.py): the gradients equal the single-process ones, the blocks above k
and the final norm are bitwise unchanged by the phase-1 update, and under FSDP2 every block is
still a sharded, non-root FSDP module after both phases. A 2-process LoRA run through accelerate
launch trains both phases (its adapters above k bitwise unchanged by the phase-1 step, weight decay
on), saves, and its saved model equals the trained adapter merged in memory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.launch import free_port, run_launch

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def two_processes(*argv: str, launcher: list[str] | None = None, code: int = 0) -> None:
    """Run WORKER argv on 2 CPU processes; fail with the tail of their output unless it exits
    with `code` (0: success; 1: any failure)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    port = str(free_port())
    if launcher is None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launcher += ["--master_port", port]
    else:
        launcher = [*launcher, "--main_process_port", port]
    done = run_launch([*launcher, str(WORKER), *argv], env)
    assert (done.returncode != 0) == bool(code), (done.stdout + done.stderr)[-4000:]


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_phase_one_keeps_sharding_grads_and_frozen_blocks(engine, tiny_dirs, tmp_path):
    two_processes(engine, str(tiny_dirs["qwen2"]), str(tmp_path))
    figures = json.loads((tmp_path / f"{engine}.json").read_text())
    # phase 1 reaches blocks 1..k, the embedding and the LM head; phase 2 everything
    assert figures["phase1"]["params_with_grad"] < figures["phase2"]["params_with_grad"]
    assert figures["phase1"]["max_grad_difference"] <= 1e-6


def test_lora_run_on_two_processes_saves_the_merged_model(tiny_dirs, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2"]
    two_processes("lora", str(tiny_dirs["qwen2"]), str(tmp_path), launcher=launcher)
    figures = json.loads((tmp_path / "lora.json").read_text())
    assert figures["engine"]["distributed_type"] == "MULTI_CPU"
    assert figures["engine"]["num_processes"] == 2
    assert figures["max_difference_to_merged"] == 0.0
    assert figures["changed_by_training"] > 0
    assert not (tmp_path / "model.adapter").exists()


def test_an_fsdp_config_without_gpus_stops_instead_of_running_ddp(tiny_dirs, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    config = ROOT / "configs" / "accelerate" / "fsdp2.yaml"
    launcher = [str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2"]
    two_processes("engine_check", "-", str(tmp_path), launcher=launcher, code=1)
    message = (tmp_path / "engine_check.txt").read_text()
    assert message.startswith("the launch config asks for FSDP but accelerate runs ")
    assert "runs FSDP" not in message  # NO here: each process alone, not even DDP
    assert "\n" not in message
