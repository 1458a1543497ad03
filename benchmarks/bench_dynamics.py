"""The dynamics monitor's cost as a share of BuPO training time.

    .venv/bin/python benchmarks/bench_dynamics.py                # smollm2-135m-instruct, 2 rollouts
    .venv/bin/python benchmarks/bench_dynamics.py --rollouts 20  # the README's whole run

Two BuPO runs of the README's settings (smollm2-135m-instruct, layer 4, 2 prompts x 8 responses
per rollout, 96 new tokens, 4 optimizer steps per rollout), stages before and after training
off: one without the monitor, one that scores the probe (the first 8 trained prompts, one
response each) after every rollout so that each rollout's cost and each scoring's cost are
measured. Prints seconds per rollout (from the run without the monitor), seconds per scoring
(the first one includes loading the scoring bridge and sampling the probe) and the share of
training time the monitor costs at its default interval over a README run of 20 rollouts:

    share = (first scoring + later scorings x their seconds) / (20 x seconds per rollout)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.bupo.config import MONITOR_ROLLOUTS
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.spec import RunSpec

README = dict(layer=4, prompts_per_step=2, max_new_tokens=96, lr=1e-5, group_size=8)
README_ROLLOUTS = 20


def run(model: str, rollouts: int, monitor_every: int, out: Path) -> tuple[float, pd.DataFrame]:
    """Wall seconds of one run's training and its log; dynamics rows under out/dynamics.parquet."""
    config = TrainConfig(
        **README, steps=rollouts, inter_steps=min(rollouts, 1), monitor_every=monitor_every,
        save_every=1000,
    )  # fmt: skip
    spec = RunSpec(ModelConfig(model, device="cpu"), PromptConfig(None, limit=8), train=config)
    started = time.perf_counter()
    result = train(spec, out=out, progress=False)
    return time.perf_counter() - started, result.log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rollouts", type=int, default=2)
    args = parser.parse_args()
    config = TrainConfig(**README)
    every = config.updates_per_step  # one scoring per rollout, to time each
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        plain_s, plain_log = run(args.model, args.rollouts, 0, root / "plain")
        monitored_s, _ = run(args.model, args.rollouts, every, root / "monitored")
        dynamics = pd.read_parquet(root / "monitored" / "dynamics.parquet")
    scorings = dynamics.drop_duplicates("step").sort_values("step")["score_s"].to_numpy()
    rollout_s = float(plain_log["seconds"].median())
    first, later = float(scorings[0]), float(pd.Series(scorings[1:]).median())
    default_steps = MONITOR_ROLLOUTS * config.updates_per_step
    n_later = README_ROLLOUTS * config.updates_per_step // default_steps
    share = (first + n_later * later) / (README_ROLLOUTS * rollout_s)
    print(f"model {args.model}, {args.rollouts} rollouts per run, CPU")
    print(
        f"run wall seconds: without monitor {plain_s:.1f}, scoring every rollout {monitored_s:.1f}"
    )
    print(f"seconds per rollout (median, without monitor): {rollout_s:.1f}")
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
