"""BuPO under DeepSpeed ZeRO-3: 2 CPU processes on gloo (torchrun, DeepSpeed's CPU accelerator),
a tiny Qwen2 (k = 2 of 4), every parameter sharded (tests/deepspeed_worker.py).

accelerate never selects DeepSpeed with `use_cpu`, so the worker calls `deepspeed.initialize`
itself and drives BupoTrainer's log-probs through the engine: in phase 1 (TRL's fused LM head
gathering the sharded head) and phase 2 the log-probs equal the single-process ones on the
gathered weights and the gradients agree to float32 rounding; the blocks above k and the final
norm get no gradient, and every parameter is still a released ZeRO-3 shard after both phases;
the layer statistics (a plain forward calling the LM head module, then the head gathered), run
before each step as in a run, equal the single-process ones and leave that step's backward
working (the head registered as an external parameter of the causal LM).
ZeRO-3's optimizer steps flat partitions, so it would decay a parameter without a gradient; the
trainer's own optimizer keeps the decayed parameters above k in groups of their own, which the
trainer, entering phase 1 through the ZeRO-3 optimizer's param groups, steps without decay: with
weight decay off or on the phase-1 step leaves exactly the blocks above k and the final norm
bitwise unchanged, and the phase-2 step decays and changes them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.launch import free_port, run_launch

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("deepspeed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def run_zero3(location: Path, out: Path, weight_decay: float) -> dict:
    """The worker's figures from a 2-process ZeRO-3 run (fails with the tail of its output)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env |= {
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_port", str(free_port())]
    done = run_launch([*launcher, str(WORKER), str(location), str(out), str(weight_decay)], env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((out / "deepspeed.json").read_text())


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_zero3_phase_one_log_probs_grads_and_frozen_blocks(weight_decay, tiny_dirs, tmp_path):
    figures = run_zero3(tiny_dirs["qwen2"], tmp_path, weight_decay)
    for phase in ("phase1", "phase2"):
        assert figures[phase]["max_logp_difference"] <= 1e-6
        assert figures[phase]["max_relative_grad_difference"] <= 1e-5
    # phase 1 reaches blocks 1..k, the embedding and the LM head; phase 2 everything
    assert figures["phase1"]["params_with_grad"] < figures["phase2"]["params_with_grad"]
    assert figures["max_stats_difference"] <= 1e-5
    above_k = set(figures["above_k"])
    assert above_k and set(figures["unchanged_by_phase1"]) == above_k
    decayed_above_k = above_k & set(figures["decay_names"])
    assert decayed_above_k <= set(figures["changed_by_phase2"])
    check_groups(figures["groups"], above_k, set(figures["decay_names"]), weight_decay)
    # the inner torch optimizer steps each group's flat partition once a step, the marked ones
    # without decay in phase 1 and every group with its own in phase 2
    for phase, marked_decay in (("phase1", 0.0), ("phase2", weight_decay)):
        expected = [
            [marked_decay if group["marked"] else group["weight_decay"], group["marked"]]
            for group in figures["groups"]
        ]
        assert sorted(figures["step_decays"][phase]) == sorted(expected)


def check_groups(groups: list[dict], above_k: set, decay_names: set, weight_decay: float) -> None:
    """transformers' decay / no-decay split, each decayed group split at k: every parameter in
    one group with its decay, the decayed ones above k (and only they) in marked groups."""
    names = [name for group in groups for name in group["names"]]
    assert len(names) == len(set(names)) and decay_names < set(names)
    for group in groups:
        decayed = set(group["names"]) <= decay_names
        assert decayed or not set(group["names"]) & decay_names
        assert group["weight_decay"] == (weight_decay if decayed else 0.0)
        assert group["marked"] == (decayed and weight_decay > 0 and set(group["names"]) <= above_k)
    marked = {name for group in groups if group["marked"] for name in group["names"]}
    assert marked == (above_k & decay_names if weight_decay else set())
