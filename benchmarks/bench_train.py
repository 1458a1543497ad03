"""Seconds per rollout of BuPO's trainer against plain TRL GRPOTrainer on the same settings.

    .venv/bin/python benchmarks/bench_train.py                      # a tiny 8-layer Llama
    .venv/bin/python benchmarks/bench_train.py --model smollm2-135m-instruct --max-new-tokens 64

Every trainer starts from the same weights with learning rate 0, so every one samples exactly
the same rollouts (same seed, same weights) and the timings differ only by what each trainer
computes: plain GRPO; BuPO in phase 1 (the ratio on pi^k: the full forward, H^k fed to the LM
head) and in phase 2 (GRPO on pi_theta), each with and without the per-rollout layer statistics
(H(pi^k), KL(pi_theta || pi^k): one extra forward without gradients). Each trainer runs in its
own process, so its peak RSS is its own. The first rollout is a warm-up; the median of the
others is reported. `--repeat N` runs the kinds N times in turn (a busy machine's load then
spreads over all of them). Targets: BuPO's seconds per rollout at most 1.05x plain GRPO's, its
peak RSS at most 1.2x; the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from layerpolicy.bupo import TrainConfig
from layerpolicy.bupo.config import grpo_arguments
from layerpolicy.bupo.data import prepare, reward_function, training_dataset, training_prompts
from layerpolicy.bupo.engine import training_precision
from layerpolicy.bupo.reward import math_reward
from layerpolicy.config import ModelConfig


class RolloutTimer(TrainerCallback):
    """Wall seconds between consecutive logs (one log per rollout)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self._last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "reward" in logs:
            now = time.perf_counter()
            self.seconds.append(now - self._last)
            self._last = now


def run(kind: str, model_spec: str, config: TrainConfig, layer: int, out: Path) -> list[float]:
    """Seconds per rollout of one trainer kind: plain | inter | full (+ "-stats")."""
    from trl import GRPOConfig, GRPOTrainer

    from layerpolicy.bupo.trainer import BupoTrainer

    setup = prepare(ModelConfig(model_spec, device="cpu"), config)
    prompts = training_prompts(None, max(8, config.prompts_per_step), config.prompts_per_step)
    arguments = grpo_arguments(config, str(out), 1, chat_template_kwargs=setup.chat_template_kwargs)
    precision = training_precision(setup.source.init_kwargs["dtype"])
    arguments.update(use_cpu=True, save_strategy="no", bf16=precision["bf16"])
    arguments["model_init_kwargs"] = {**setup.source.init_kwargs, "dtype": precision["load_dtype"]}
    common = dict(
        model=setup.source.location,
        reward_funcs=[reward_function(math_reward)],
        args=GRPOConfig(**arguments),
        train_dataset=training_dataset(prompts, setup.tokenizer, config),
        processing_class=setup.tokenizer,
    )
    if kind == "plain":
        trainer = GRPOTrainer(**common)
    else:
        phase, _, stats = kind.partition("-")
        inter = config.steps if phase == "inter" else 0
        trainer = BupoTrainer(**common, layer=layer, inter_rollouts=inter, layer_stats=bool(stats))
    timer = RolloutTimer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    return timer.seconds


def run_apart(kind: str, spec: str, args: argparse.Namespace, out: Path) -> dict:
    """`run` in a process of its own: seconds per rollout and that process's peak RSS (MiB)."""
    command = [sys.executable, __file__, "--one", kind, "--model", spec, "--out", str(out)]
    for name in ("layer", "rollouts", "prompts", "group_size", "mini_batches", "max_new_tokens"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.rollouts,
        inter_steps=0,
        layer=args.layer,
        group_size=args.group_size,
        prompts_per_step=args.prompts,
        mini_batches=args.mini_batches,
        max_new_tokens=args.max_new_tokens,
        lr=0.0,
        weight_decay=0.0,
        save_every=args.rollouts,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: a tiny 8-layer Llama)")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=6)
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all kinds")
    parser.add_argument(
        "--kinds", default="plain,inter,inter-stats,full,full-stats", help="comma-separated"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one kind, JSON out
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        seconds = run(args.one, args.model, bench_config(args), args.layer, Path(args.out))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": seconds, "rss_mib": rss}))
        return
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    spec = args.model
    if spec is None:
        from layerpolicy.models.tiny import save_tiny_model

        spec = str(save_tiny_model(scratch / "tiny-llama8", "llama", n_layers=8, d_model=256))
    print(
        f"model {spec}; {args.prompts} prompts x {args.group_size} rollouts of <= "
        f"{args.max_new_tokens} tokens, {args.mini_batches} optimizer steps per rollout, "
        f"k = {args.layer}, {args.threads or torch.get_num_threads()} threads; "
        f"median of rollouts 2..{args.rollouts}"
    )
    kinds = args.kinds.split(",")
    timings: dict[str, list[float]] = {kind: [] for kind in kinds}
    rss: dict[str, float] = {kind: 0.0 for kind in kinds}
    for round_ in range(args.repeat):
        for kind in kinds:
            got = run_apart(kind, spec, args, scratch / f"{kind}-{round_}")
            seconds = got["seconds"]
            timings[kind] += seconds[1:] or seconds
            rss[kind] = max(rss[kind], got["rss_mib"])
            print(f"  {kind:12s} round {round_ + 1}: {', '.join(f'{s:.2f}' for s in seconds)} s")
    results = {kind: statistics.median(values) for kind, values in timings.items()}
    for kind, value in results.items():
        print(
            f"  {kind:12s} {value:8.3f} s/rollout (median of {len(timings[kind])}), "
            f"peak RSS {rss[kind]:7.0f} MiB"
        )
    if "plain" in results:
        for kind in results:
            print(
                f"  {kind:12s} time ratio {results[kind] / results['plain']:.3f}, "
                f"RSS ratio {rss[kind] / rss['plain']:.3f} vs plain GRPOTrainer"
            )


if __name__ == "__main__":
    main()
