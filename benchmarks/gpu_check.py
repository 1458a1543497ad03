"""The one prepared GPU check: CUDA against CPU, the engine against the matmul floor, the readout
precisions (speed and error, benchmarks/gpu_precision.py), batched sampling, a BuPO smoke run
(both phases, bf16 autocast, vLLM colocate where installed: benchmarks/gpu_bupo.py) and a
2-process run, printed as one table.

    .venv/bin/python benchmarks/gpu_check.py               # one GPU: about 3-5 minutes
    .venv/bin/python benchmarks/gpu_check.py --tokens 4096

Needs no network. A packaged model is used for throughput and sampling when it is already in the
layerpolicy cache (`layerpolicy models pull NAME`); otherwise a random model with Qwen2.5-0.5B's
shapes, written to a temporary directory. Agreement and the 2-process run use tiny random models.
Exits 1 when a checked row fails, 0 with a message where no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_bupo import bupo_smoke_rows  # noqa: E402  (benchmarks/gpu_bupo.py)
from gpu_precision import readout_precisions  # noqa: E402  (benchmarks/gpu_precision.py)

from layerpolicy.engine import EngineConfig, engine_chunk, score_batch  # noqa: E402
from layerpolicy.models import load_model  # noqa: E402
from layerpolicy.models.packaged import cached_model_dir  # noqa: E402
from layerpolicy.models.tiny import build_tiny_tokenizer, save_tiny_model  # noqa: E402
from layerpolicy.prompts import EncodedPrompt  # noqa: E402
from layerpolicy.readout.capture import capture, make_batch  # noqa: E402
from layerpolicy.readout.sites import Site, captured_sites, readout_order  # noqa: E402
from layerpolicy.readout.unembed import Unembedding  # noqa: E402
from layerpolicy.sampling import SamplingConfig, sample  # noqa: E402

METRICS = ("entropy", "kl_to_final", "target_logprob")
TOLERANCE = 2e-3  # nats, plus 1e-4 relative: float32 GPU vs float32 CPU, or vs float64
DEADLINE_S = 7 * 60  # later sections are skipped (and say so) past this
CLI_DEVICE = "cuda"  # the device of the 2-process and 1-process CLI runs
PACKAGED = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
Row = tuple[str, str, str, str]  # check, setting, result, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of the throughput prompt")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible, nothing to check (run it on a machine with one)")
        return 0
    started = time.perf_counter()
    devices = f"{torch.cuda.get_device_name()} x {torch.cuda.device_count()}"
    print(f"device: {devices}, torch {torch.__version__}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        sections: list[Callable[[], list[Row]]] = [
            lambda: agreement(Path(tmp)),
            lambda: throughput(large_model(Path(tmp)), args.tokens),
            lambda: readout_precisions(large_model(Path(tmp)), args.tokens),
            lambda: sampling(large_model(Path(tmp))),
            lambda: bupo_smoke_rows(model_directory(large_model(Path(tmp)))),
            lambda: two_processes(Path(tmp)),
        ]
        for section in sections:
            if time.perf_counter() - started > DEADLINE_S:
                rows.append(("(remaining checks)", "", "skipped: past the time limit", "skip"))
                break
            rows += section()
            torch.cuda.empty_cache()
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 1 if any(verdict == "FAIL" for *_, verdict in rows) else 0


def print_table(rows: list[Row]) -> None:
    header = ("check", "setting", "result", "verdict")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


def random_prompts(n_tokens: int, vocab: int, n_prompts: int, seed: int = 0) -> list[EncodedPrompt]:
    """Random token prompts of different lengths (so batches are padded)."""
    generator = np.random.default_rng(seed)
    prompts = []
    for i in range(n_prompts):
        n = max(2, n_tokens - 7 * i)
        ids = tuple(int(t) for t in generator.integers(3, vocab, n))
        prompts.append(EncodedPrompt(f"p{i}", ids, (True,) * n, None, False))
    return prompts


def by_row(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns sorted by (row, site, layer, position)."""
    order = np.lexsort((columns["position"], columns["layer"], columns["site"], columns["row"]))
    return {name: np.asarray(values)[order] for name, values in columns.items()}


def columns(model, prompts, readout: str) -> dict[str, np.ndarray]:
    """score_batch columns with top-3 ids."""
    return by_row(score_batch(model, prompts, EngineConfig(readout=readout, top_k=3)))


def float64_columns(model, prompts, readout: str) -> dict[str, np.ndarray]:
    """The same metrics in float64 from full logits of the model's own captured vectors."""
    batch = make_batch(prompts, 0, model.device)
    order = readout_order(model.n_layers, "paper")
    vectors = capture(model, batch, captured_sites(order, model.n_layers))
    unembed = Unembedding(model.hf_model)
    weight = unembed.weight32.double()
    with torch.inference_mode():
        last = vectors[Site("resid", model.n_layers)]
        final_logp = torch.log_softmax(unembed.cap(unembed.normed(last).double() @ weight.T), -1)
        targets = batch.targets.clamp(min=0).unsqueeze(-1)
        parts: dict[str, list[np.ndarray]] = {}
        for site in order:
            if site.name == "final":
                logp = final_logp
            else:
                logits = unembed.prepared(vectors[site], readout).double() @ weight.T
                logp = torch.log_softmax(logits, -1)
            values = {
                "row": batch.rows.cpu().numpy(),
                "position": batch.positions.cpu().numpy(),
                "site": np.full(len(batch.rows), site.name, dtype=object),
                "layer": np.full(len(batch.rows), site.layer),
                "entropy": -(logp.exp() * logp).sum(-1).cpu().numpy(),
                "kl_to_final": (final_logp.exp() * (final_logp - logp)).sum(-1).cpu().numpy(),
                "target_logprob": torch.where(
                    batch.targets >= 0, logp.gather(-1, targets).squeeze(-1), torch.nan
                )
                .cpu()
                .numpy(),
            }
            for name, value in values.items():
                parts.setdefault(name, []).append(value)
    return by_row({name: np.concatenate(p) for name, p in parts.items()})


def worst(got: dict, want: dict) -> float:
    return max(
        float(np.nanmax(np.abs(got[m] - want[m]) / (1 + 1e-4 * np.abs(want[m])))) for m in METRICS
    )


def agreement(tmp: Path) -> list[Row]:
    """Tiny models: CUDA float32 = CPU float32; a bf16 forward's float32 readouts = float64 ones
    of the same bf16 vectors."""
    rows = []
    for arch in ("qwen2", "llama"):
        directory = save_tiny_model(tmp / f"tiny-{arch}", arch)
        cpu = load_model(str(directory), device="cpu", progress=False)
        gpu = load_model(str(directory), device="cuda", progress=False)
        half = load_model(str(directory), device="cuda", dtype=torch.bfloat16, progress=False)
        prompts = random_prompts(40, cpu.info.vocab_size, 3)
        for readout in ("raw", "logit-lens"):
            want, got = columns(cpu, prompts, readout), columns(gpu, prompts, readout)
            diff = worst(got, want)
            same_top = np.mean(
                [np.array_equal(a, b) for a, b in zip(got["top_ids"], want["top_ids"], strict=True)]
            )
            rows.append(
                (
                    "CUDA vs CPU",
                    f"tiny {arch}, {readout}, float32, paper set",
                    f"max |diff| {diff:.1e} nats; top-3 ids equal on {same_top:.1%} of rows",
                    "ok" if diff <= TOLERANCE else "FAIL",
                )
            )
            diff = worst(columns(half, prompts, readout), float64_columns(half, prompts, readout))
            rows.append(
                (
                    "bf16 forward, fp32 readouts",
                    f"tiny {arch}, {readout}, vs float64 of the same vectors",
                    f"max |diff| {diff:.1e} nats",
                    "ok" if diff <= TOLERANCE else "FAIL",
                )
            )
        del gpu, half
        torch.cuda.empty_cache()
    return rows


def large_model(tmp: Path) -> str:
    """A cached packaged model's directory, else a random Qwen2.5-0.5B-shaped model (once)."""
    for name in PACKAGED:
        if cached_model_dir(name) is not None:
            return name
    directory = tmp / "qwen-shaped"
    if directory.is_dir():
        return str(directory)
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    del model
    return str(directory)


def model_directory(spec: str) -> str:
    """The directory of `large_model`'s choice (a packaged name or a directory already)."""
    return str(cached_model_dir(spec) or spec)


def timed(work: Callable[[], object], repeat: int = 2) -> float:
    """The fastest of `repeat` synchronised runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        work()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - begin)
    return best


def throughput(spec: str, n_tokens: int) -> list[Row]:
    """Engine time against its floor: the same hooked forward plus one float32 [tokens, d] x
    [d, vocab] matmul per readout (in the engine's chunks), nothing else."""
    model = load_model(spec, device="cuda", dtype=torch.bfloat16, progress=False)
    name = Path(spec).name
    unembed = Unembedding(model.hf_model)
    vocab, d = unembed.vocab_size, model.info.d_model
    prompts = random_prompts(n_tokens, vocab, 1)
    batch = make_batch(prompts, 0, model.device)
    size = engine_chunk(vocab, model.unembed_device, None)
    x = torch.randn(n_tokens, d, device=model.unembed_device)
    out = torch.empty(size, vocab, device=model.unembed_device)

    def one_readout() -> None:
        for start in range(0, n_tokens, size):
            piece = x[start : start + size]
            unembed.block(piece, 0, vocab, out[: len(piece)])

    matmul_s = timed(one_readout, repeat=3)
    tflops = 2 * n_tokens * d * vocab / matmul_s / 1e12
    rows = []
    for sites in ("resid", "paper"):
        order = readout_order(model.n_layers, sites)
        config = EngineConfig(readout="raw", sites=sites)
        score_batch(model, random_prompts(64, vocab, 1), config)  # warm up
        engine_s = timed(lambda config=config: score_batch(model, prompts, config))
        hooked = captured_sites(order, model.n_layers)
        forward_s = timed(lambda hooked=hooked: capture(model, batch, hooked))
        floor_s = forward_s + len(order) * matmul_s
        rows.append(
            (
                "engine / matmul floor",
                f"{name}, bf16 forward, fp32 raw readouts, {sites} set "
                f"({len(order)} readouts), {n_tokens} tokens",
                f"{engine_s / floor_s:.2f} (engine {engine_s:.2f} s, floor {floor_s:.2f} s = "
                f"forward {forward_s:.2f} + {len(order)} x {matmul_s * 1e3:.1f} ms at "
                f"{tflops:.0f} TFLOP/s); {len(order) * n_tokens / engine_s / 1e6:.1f} M "
                "readout-tokens/s",
                "report",
            )
        )
    return rows


def sampling(spec: str, n_prompts: int = 8, new_tokens: int = 64) -> list[Row]:
    """One generate call for all prompts against one per prompt (same seeds)."""
    model = load_model(spec, device="cuda", dtype=torch.bfloat16, progress=False)
    prompts = [(p.prompt_id, p.input_ids) for p in random_prompts(32, 300, n_prompts, seed=1)]
    results = {}
    for batch_size in (n_prompts, 1):
        config = SamplingConfig(max_new_tokens=new_tokens, batch_size=batch_size, seed=3)
        sample(model, prompts[:1], SamplingConfig(max_new_tokens=4, batch_size=1))  # warm up
        torch.cuda.synchronize()
        begin = time.perf_counter()
        results[batch_size] = (sample(model, prompts, config), time.perf_counter() - begin)
    (batched, batched_s), (single, single_s) = results[n_prompts], results[1]
    same = sum(a.response_ids == b.response_ids for a, b in zip(batched, single, strict=True))
    tokens = sum(len(s.response_ids) for s in batched)
    del model
    torch.cuda.empty_cache()
    return [
        (
            "batched vs one-at-a-time sampling",
            f"{Path(spec).name}, bf16, {n_prompts} prompts x {new_tokens} new tokens, T = 1",
            f"{single_s / batched_s:.1f}x faster batched ({batched_s:.2f} s vs {single_s:.2f} s, "
            f"{tokens / batched_s:.0f} tokens/s); same ids for {same}/{n_prompts} prompts",
            "report",
        )
    ]


def two_processes(tmp: Path) -> list[Row]:
    """`accelerate launch` with 2 processes equals 1 process (tiny model, builtin prompts)."""
    if torch.cuda.device_count() < 2:
        return [("2-process run", "accelerate launch, 2 GPUs", "skipped: 1 GPU visible", "skip")]
    import pandas as pd

    cli = shutil.which("layerpolicy") or str(Path(sys.executable).with_name("layerpolicy"))
    common = ["entropy", "--model", "tiny-qwen2", "--limit", "8", "--device", CLI_DEVICE]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    env = {**os.environ, "LAYERPOLICY_CACHE": str(tmp / "cache")}
    for out, prefix in (
        ("one", [sys.executable, cli]),
        ("two", [*launch, "--num_processes", "2", cli]),
    ):
        done = subprocess.run(
            [*prefix, *common, "--out", str(tmp / out)], capture_output=True, text=True, env=env
        )
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return [
                (
                    "2-process run",
                    f"{out} process(es)",
                    f"exit {done.returncode}: {tail[0]}",
                    "FAIL",
                )
            ]
    key = ["prompt_id", "site", "layer", "position"]
    one, two = (
        pd.read_parquet(tmp / out / "tokens.parquet").sort_values(key).reset_index(drop=True)
        for out in ("one", "two")
    )
    same_rows = one[key].equals(two[key])
    diff = float(np.nanmax(np.abs(one.entropy - two.entropy))) if same_rows else float("nan")
    return [
        (
            "2-process run",
            "accelerate launch --num_processes 2, tiny qwen2, 8 builtin prompts",
            f"same rows: {same_rows}; max entropy diff {diff:.1e}",
            "ok" if same_rows and diff <= 1e-5 else "FAIL",
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
