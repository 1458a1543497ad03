"""Which vocabulary block size makes one readout cheapest on this CPU.

A readout of n tokens is x [n, d] W_U^T, computed block by block ([n, w] at a time) with the
metric pass (`layerpolicy.metrics.block_kernel`) run on each block while it is in cache. This
script times the matmul alone and matmul + metrics for several block sizes (bytes of one
[n, w] float32 block) on random weights of a model's shape, and prints seconds per readout and
GFLOP/s. `CPU_BLOCK_BYTES` in layerpolicy/metrics.py is chosen from its output.

    .venv/bin/python benchmarks/bench_blocks.py        # Qwen2.5-0.5B and SmolLM2 shapes
    .venv/bin/python benchmarks/bench_blocks.py --shape 4096 128256 --rows 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"qwen2.5-0.5b": (896, 151936), "smollm2-135m": (576, 49152)}
BLOCK_MIB = (0.5, 1, 2, 4, 8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=2, type=int, metavar=("D_MODEL", "VOCAB"))
    parser.add_argument("--rows", nargs="+", type=int, default=[256], help="tokens per chunk")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the fastest is kept")
    args = parser.parse_args()

    from layerpolicy.devices import use_physical_cores
    from layerpolicy.metrics import CPU_BLOCK_BYTES, block_width

    threads = use_physical_cores()
    shapes = {"custom": tuple(args.shape)} if args.shape else SHAPES
    print(f"torch {torch.__version__}, {threads} threads, CPU_BLOCK_BYTES = {CPU_BLOCK_BYTES}")
    print("| shape | rows | block MiB | width | matmul s | GFLOP/s | matmul + metrics s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (d_model, vocab) in shapes.items():
        weight = torch.randn(vocab, d_model) / d_model**0.5
        for rows in args.rows:
            x = torch.randn(rows, d_model)
            for mib in BLOCK_MIB:
                width = block_width(vocab, rows, x.device, block_bytes=int(mib * 2**20))
                matmul = best_time(readout, (x, weight, width, False), args.repeat)
                full = best_time(readout, (x, weight, width, True), args.repeat)
                gflops = 2 * rows * d_model * vocab / matmul / 1e9
                print(
                    f"| {name} | {rows} | {mib:g} | {width} | {matmul:.3f} | {gflops:.0f} | "
                    f"{full:.3f} |",
                    flush=True,
                )


def readout(x: torch.Tensor, weight: torch.Tensor, width: int, metrics: bool) -> None:
    """x W_U^T block by block, with the fused metric pass on each block when `metrics`."""
    from layerpolicy.metrics import block_kernel

    rows, vocab = x.shape[0], weight.shape[0]
    out = torch.empty(rows * width)
    threshold = torch.zeros(rows, 1)
    for start in range(0, vocab, width):
        stop = min(vocab, start + width)
        z = torch.mm(x, weight[start:stop].T, out=out[: rows * (stop - start)].view(rows, -1))
        if metrics:
            block_kernel(z)(z, threshold)


def best_time(step, args: tuple, repeat: int) -> float:
    """Fastest of `repeat` timed calls step(*args), after one untimed warm-up call."""
    with torch.inference_mode():
        step(*args)
        times = []
        for _ in range(max(1, repeat)):
            started = time.perf_counter()
            step(*args)
            times.append(time.perf_counter() - started)
    return min(times)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
