"""The dynamics monitor's cost as a share of BuPO training time.

    .venv/bin/python benchmarks/bench_dynamics.py                   # smollm2-135m-instruct
    .venv/bin/python benchmarks/bench_dynamics.py --rollout-seconds 772   # reuse a timed rollout

Seconds per rollout: a BuPO run of the README's settings (smollm2-135m-instruct, layer 4,
2 prompts x 8 responses per rollout, 96 new tokens, 4 optimizer steps per rollout; stages before
and after training off, the monitor off), the median over `--rollouts` rollouts (or
`--rollout-seconds` measured before). Seconds per scoring: the monitor of such a run
(`layerpolicy.bupo.training`'s settings: the first 8 trained prompts, one response each, paper
sites) driven on the base model, `--scorings` times; the first includes loading the scoring
bridge and sampling the probe. A scoring's cost does not depend on the weights, so this is what
a monitored run pays. Printed: both, and the share of training time at the default interval
over a README run of 20 rollouts:

    share = (first scoring + later scorings x their seconds) / (20 x seconds per rollout)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.bupo.config import MONITOR_ROLLOUTS
from layerpolicy.bupo.data import training_prompts
from layerpolicy.bupo.training import dynamics_monitor
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.models import resolve_spec
from layerpolicy.models.load import local_directory
from layerpolicy.spec import RunSpec

README = dict(layer=4, prompts_per_step=2, max_new_tokens=96, lr=1e-5, group_size=8)
README_ROLLOUTS = 20


def rollout_seconds(model: str, rollouts: int, out: Path) -> float:
    """Median seconds per rollout of a BuPO run without the monitor."""
    config = TrainConfig(**README, steps=rollouts, inter_steps=1, monitor_every=0, save_every=1000)
    spec = RunSpec(ModelConfig(model, device="cpu"), PromptConfig(None, limit=8), train=config)
    return float(train(spec, out=out, progress=False).log["seconds"].median())


def scoring_seconds(model: str, scorings: int, out: Path) -> list[float]:
    """Seconds of each of `scorings` scorings by the monitor a README run builds."""
    config = TrainConfig(**README)
    location = local_directory(resolve_spec(model))
    prompts = training_prompts(PromptConfig(None, limit=8), per_step=config.prompts_per_step)
    monitor = dynamics_monitor(config, prompts, out, location)
    monitor.layer = config.layer
    monitor._trainer_model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    return [float(monitor.record(step)["score_s"].iloc[0]) for step in range(scorings)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--rollout-seconds", type=float, default=None)
    parser.add_argument("--scorings", type=int, default=3)
    args = parser.parse_args()
    config = TrainConfig(**README)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        per_rollout = args.rollout_seconds or rollout_seconds(
            args.model, args.rollouts, root / "run"
        )
        seconds = scoring_seconds(args.model, args.scorings, root / "monitor")
    first, later = seconds[0], sorted(seconds[1:])[len(seconds[1:]) // 2]
    default_steps = MONITOR_ROLLOUTS * config.updates_per_step
    n_later = README_ROLLOUTS * config.updates_per_step // default_steps
    share = (first + n_later * later) / (README_ROLLOUTS * per_rollout)
    print(f"model {args.model}, CPU threads {torch.get_num_threads()}")
    print(f"seconds per rollout: {per_rollout:.1f}")
    print(
        f"seconds per scoring: first {first:.1f} (bridge load + probe sampling), later {later:.1f}"
    )
    print(
        f"default interval {default_steps} optimizer steps ({MONITOR_ROLLOUTS} rollouts): "
        f"{1 + n_later} scorings in a {README_ROLLOUTS}-rollout README run, "
        f"share of training time {100 * share:.1f}% (target <= 10%)"
    )


if __name__ == "__main__":
    main()
