"""Readout precisions on CUDA: each mode's readout matmul time against float32, and its entropy
error against float64, on one model (a section of benchmarks/gpu_check.py; also runs alone).

    .venv/bin/python benchmarks/gpu_precision.py --model smollm2-135m-instruct --tokens 4096

Speed: x W_U^T over `tokens` rows in the engine's chunks, the fastest of 3 synchronised runs; and
the engine (`score_batch`, resid set, raw readouts) on one prompt of `tokens` random token ids.
Error: the largest |Delta H| (nats) over every token of every residual readout (raw and logit
lens, embed .. final) of a float32 forward of random token ids, each mode against a float64
matmul of the same vectors. split fails the check beyond SPLIT_LIMIT.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_precision import entropy_errors  # noqa: E402

from layerpolicy.engine import EngineConfig, engine_chunk, score_batch  # noqa: E402
from layerpolicy.models import load_model  # noqa: E402
from layerpolicy.prompts import EncodedPrompt  # noqa: E402
from layerpolicy.readout.capture import capture, make_batch  # noqa: E402
from layerpolicy.readout.precision import (  # noqa: E402
    PRECISIONS,
    default_precision,
    prepare_weight,
    readout_matmul,
)
from layerpolicy.readout.sites import Site, captured_sites, readout_order  # noqa: E402
from layerpolicy.readout.unembed import Unembedding  # noqa: E402

SPLIT_LIMIT = 1e-4  # nats: the default's accuracy requirement
ERROR_TOKENS = 256
Row = tuple[str, str, str, str]  # check, setting, result, verdict


def readout_precisions(spec: str, n_tokens: int, device: str = "cuda") -> list[Row]:
    """One row per precision: speed-up over float32 and max |Delta H| against float64."""
    model = load_model(spec, device=device, progress=False)
    unembed = Unembedding(model.hf_model)
    vocab, name = unembed.vocab_size, Path(spec).name
    generator = torch.Generator().manual_seed(0)
    ids = tuple(int(t) for t in torch.randint(3, vocab, (ERROR_TOKENS,), generator=generator))
    prompt = EncodedPrompt("random", ids, (True,) * len(ids), None, False)
    batch = make_batch([prompt], 0, model.device)
    order = readout_order(model.n_layers, "resid")
    with torch.inference_mode():
        vectors = capture(model, batch, captured_sites(order, model.n_layers))
        diffs = entropy_errors(unembed, vectors, order, model.n_layers)
        errors = {
            p: max(float(d.max()) for (_, q), d in diffs.items() if q == p) for p in PRECISIONS
        }
        last = unembed.normed(vectors[Site("resid", model.n_layers)])
        x = last.repeat(-(-n_tokens // len(last)), 1)[:n_tokens].contiguous()
        seconds = {p: matmul_seconds(x, prepare_weight(unembed.weight32, p)) for p in PRECISIONS}
    engine = {p: engine_seconds(model, n_tokens, p) for p in PRECISIONS}
    flops = 2 * n_tokens * x.shape[1] * vocab
    rows = []
    for precision in PRECISIONS:
        s = seconds[precision]
        verdict = "report"
        if precision == "split":
            verdict = "ok" if errors[precision] <= SPLIT_LIMIT else "FAIL"
        rows.append(
            (
                "readout precision",
                f"{name}, {precision}, {n_tokens} tokens x vocab {vocab}"
                + (" (default here)" if precision == default_precision(x.device) else ""),
                f"{seconds['float32'] / s:.2f}x float32's speed ({s * 1e3:.1f} ms, "
                f"{flops / s / 1e12:.1f} TFLOP/s); max |dH| {errors[precision]:.1e} nats vs "
                f"float64 ({len(order)} resid readouts x {ERROR_TOKENS} tokens, raw and lens); "
                f"engine, resid set: {engine[precision]:.2f} s, "
                f"{engine['float32'] / engine[precision]:.2f}x float32's speed",
                verdict,
            )
        )
    return rows


def engine_seconds(model, n_tokens: int, precision: str) -> float:
    """The fastest of 2 `score_batch` runs, resid set, raw, one prompt of random token ids."""
    vocab = model.info.vocab_size
    ids = tuple(int(t) for t in torch.randint(3, vocab, (n_tokens,)))
    prompts = [EncodedPrompt("timing", ids, (True,) * len(ids), None, False)]
    config = EngineConfig(sites="resid", readout_precision=precision)
    score_batch(model, [EncodedPrompt("warm", ids[:64], (True,) * 64, None, False)], config)
    return fastest(lambda: score_batch(model, prompts, config), 2)


def matmul_seconds(x: torch.Tensor, weight, repeat: int = 3) -> float:
    """The fastest of `repeat` runs of x W^T in engine-sized chunks into one reused buffer."""
    vocab = weight.parts[0].shape[0]
    size = engine_chunk(vocab, x.device, None)
    out = torch.empty(size, vocab, device=x.device)

    def run() -> None:
        for start in range(0, len(x), size):
            piece = x[start : start + size]
            readout_matmul(piece, weight, out=out[: len(piece)])

    run()  # warm up
    return fastest(run, repeat)


def fastest(work: Callable[[], None], repeat: int) -> float:
    """Seconds of the fastest of `repeat` runs, synchronised on CUDA."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    best = float("inf")
    for _ in range(repeat):
        sync()
        begin = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - begin)
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--device", default="cuda", help="cpu runs the emulation (no speed-up)")
    args = parser.parse_args()
    for row in readout_precisions(args.model, args.tokens, args.device):
        print(" | ".join(row))
