"""Data-parallel throughput: prompts per second of `layerpolicy entropy` with 1 and N processes.

Every process runs on the CPU with one thread (OMP_NUM_THREADS=1); N > 1 goes through
`accelerate launch --multi_gpu --num_processes N` (torchrun underneath; no GPU is needed). Each
run gets a fresh run directory. Reported, not asserted:

    scoring   prompts / score_s, where score_s (run.json `timings`) is the slowest shard's time
              from its first encoded prompt to its last written part;
    end-to-end  prompts / wall time of the whole command (start-up, model load, merge, figures).

    .venv/bin/python benchmarks/bench_parallel.py                     # tiny-qwen2, 32 prompts
    .venv/bin/python benchmarks/bench_parallel.py --model smollm2-135m-instruct --prompts 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-qwen2", help="any model spec layerpolicy takes")
    parser.add_argument("--prompts", type=int, default=32, help="builtin prompts to score")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"model {args.model}, {args.prompts} prompts, batch {args.batch_size}, 1 thread each")
    header = ("processes", "score_s", "wall_s", "scoring p/s", "end-to-end p/s", "speed-up")
    print("  ".join(header))
    base = None
    for n in args.processes:
        score_s, wall_s = run(args.model, args.prompts, args.batch_size, n)
        rate = args.prompts / score_s
        base = base or rate
        end_to_end = args.prompts / wall_s
        cells = (n, f"{score_s:.2f}", f"{wall_s:.1f}", f"{rate:.2f}", f"{end_to_end:.2f}")
        cells += (f"x{rate / base:.2f}",)
        print("  ".join(f"{c:>{len(h)}}" for c, h in zip(cells, header, strict=True)))


def run(model: str, prompts: int, batch_size: int, processes: int) -> tuple[float, float]:
    """(score_s, wall_s) of one `layerpolicy entropy` run with `processes` processes."""
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as scratch:
        out = Path(scratch) / "run"
        entropy = [
            str(BIN / "layerpolicy"),
            "entropy",
            "--model",
            model,
            "--limit",
            str(prompts),
            "--batch-size",
            str(batch_size),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
        launch = [
            str(BIN / "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        command = entropy if processes == 1 else launch + entropy
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall_s = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        record = json.loads((out / "run.json").read_text())
        return float(record["timings"]["score_s"]), wall_s


if __name__ == "__main__":
    main()
