"""CUDA check of the analysis engine: correctness against CPU, then throughput.

Needs no network and no cached model: it writes a tiny random model (correctness) and a random
model with Qwen2.5-0.5B's shapes (throughput) to a temporary directory. Exits non-zero when a
CUDA result disagrees with the CPU one.

    .venv/bin/python benchmarks/gpu_check.py               # about 2-4 minutes on one GPU
    .venv/bin/python benchmarks/gpu_check.py --tokens 2048 --skip-throughput
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerpolicy.engine import EngineConfig, capture, make_batch, score_batch  # noqa: E402
from layerpolicy.models import load_model  # noqa: E402
from layerpolicy.models.tiny import build_tiny_tokenizer, save_tiny_model  # noqa: E402
from layerpolicy.prompts import EncodedPrompt  # noqa: E402
from layerpolicy.readout.sites import (  # noqa: E402
    Site,
    Unembedding,
    captured_sites,
    readout_order,
)

METRICS = ("entropy", "kl_to_final", "target_logprob")
TOLERANCE = 2e-3  # nats, plus 1e-4 relative: float32 GPU vs float32 CPU, or vs float64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible; nothing to check")
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        failures = correctness(Path(tmp))
        if not args.skip_throughput:
            throughput(Path(tmp), args.tokens)
    print("OK" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


def encoded(n_tokens: int, vocab: int, n_prompts: int = 3, seed: int = 0) -> list[EncodedPrompt]:
    """Random token prompts of different lengths (so batches are padded)."""
    generator = np.random.default_rng(seed)
    prompts = []
    for i in range(n_prompts):
        n = max(2, n_tokens - 7 * i)
        ids = tuple(int(t) for t in generator.integers(3, vocab, n))
        prompts.append(EncodedPrompt(f"p{i}", ids, (True,) * n, None, False))
    return prompts


def _sorted(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((columns["position"], columns["layer"], columns["site"], columns["row"]))
    return {name: np.asarray(values)[order] for name, values in columns.items()}


def table(model, prompts, readout: str) -> dict[str, np.ndarray]:
    """score_batch columns sorted by (row, site, layer, position)."""
    return _sorted(score_batch(model, prompts, EngineConfig(readout=readout)))


def direct(model, prompts, readout: str) -> dict[str, np.ndarray]:
    """The same metrics in float64 from full logits of the model's own captured vectors."""
    batch = make_batch(prompts, 0, model.device)
    order = readout_order(model.n_layers, "paper")
    vectors = capture(model, batch, captured_sites(order, model.n_layers))
    unembed = Unembedding(model.hf_model)
    weight = unembed.weight32.double()
    last = Site("resid", model.n_layers)
    with torch.inference_mode():
        final = unembed.cap(unembed.normed(vectors[last]).double() @ weight.T)
        final_logp = torch.log_softmax(final, -1)
        targets = batch.targets.clamp(min=0).unsqueeze(-1)
        columns: dict[str, list[np.ndarray]] = {}
        for site in order:
            if site.name == "final":
                logits = final
            else:
                logits = unembed.prepared(vectors[site], readout).double() @ weight.T
            logp = torch.log_softmax(logits, -1)
            values = {
                "row": batch.rows,
                "position": batch.positions,
                "site": np.full(len(batch.rows), site.name, dtype=object),
                "layer": np.full(len(batch.rows), site.layer),
                "entropy": -(logp.exp() * logp).sum(-1),
                "kl_to_final": (final_logp.exp() * (final_logp - logp)).sum(-1),
                "target_logprob": torch.where(
                    batch.targets >= 0, logp.gather(-1, targets).squeeze(-1), torch.nan
                ),
            }
            for name, value in values.items():
                array = value.cpu().numpy() if isinstance(value, torch.Tensor) else value
                columns.setdefault(name, []).append(array)
    return _sorted({name: np.concatenate(parts) for name, parts in columns.items()})


def compare(label: str, got: dict, want: dict, tolerance: float | None) -> bool:
    """Print the largest differences; True when within `tolerance` (None: report only)."""
    worst = {
        m: float(np.nanmax(np.abs(got[m] - want[m]) / (1 + 1e-4 * np.abs(want[m]))))
        for m in METRICS
    }
    median = float(np.nanmedian(np.abs(got["entropy"] - want["entropy"])))
    ok = tolerance is None or all(v <= tolerance for v in worst.values())
    verdict = "" if tolerance is None else ("ok" if ok else "MISMATCH")
    detail = ", ".join(f"{m} {v:.1e}" for m, v in worst.items())
    print(f"  {label:44s} max |diff| {detail}; median entropy diff {median:.1e} {verdict}")
    return ok


def correctness(tmp: Path) -> list[str]:
    """Tiny models. CUDA float32 must equal CPU float32; with a bf16/fp16 forward, the engine's
    float32 readouts must equal float64 ones of the same (half-precision) vectors, and the
    distance to the float32 model is reported (half precision moves the vectors themselves)."""
    failures = []
    for arch in ("qwen2", "llama"):
        directory = save_tiny_model(tmp / f"tiny-{arch}", arch)
        cpu = load_model(str(directory), device="cpu", progress=False)
        prompts = encoded(40, cpu.info.vocab_size)
        for readout in ("raw", "logit-lens"):
            print(f"{arch} {readout}")
            want = table(cpu, prompts, readout)
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                name = str(dtype).replace("torch.", "")
                gpu = load_model(str(directory), device="cuda", dtype=dtype, progress=False)
                if Unembedding(gpu.hf_model).weight32.dtype != torch.float32:
                    failures.append(f"{arch}/{name}: W_U readout copy is not float32")
                got = table(gpu, prompts, readout)
                if dtype == torch.float32:
                    checks = [("cuda float32 vs cpu float32", want, TOLERANCE)]
                else:
                    checks = [
                        (f"cuda {name} vs float64 of its vectors", None, TOLERANCE),
                        (f"cuda {name} vs cpu float32 (report)", want, None),
                    ]
                for label, reference, tolerance in checks:
                    reference = direct(gpu, prompts, readout) if reference is None else reference
                    if not compare(label, got, reference, tolerance):
                        failures.append(f"{arch}/{readout}/{label}")
                del gpu
                torch.cuda.empty_cache()
    return failures


def qwen_shaped(directory: Path) -> Path:
    """A random model with Qwen2.5-0.5B's shapes (24 layers, d 896, vocab 151936)."""
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
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def throughput(tmp: Path, n_tokens: int) -> None:
    """Engine time for one n-token prompt, per readout set and forward dtype."""
    directory = qwen_shaped(tmp / "qwen-shaped")
    print(f"\nthroughput: random Qwen2.5-0.5B-shaped model, 1 prompt x {n_tokens} tokens")
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(directory), device="cuda", dtype=dtype, progress=False)
        prompts = encoded(n_tokens, model.info.vocab_size, n_prompts=1)
        for sites in ("resid", "paper"):
            for readout in ("raw", "logit-lens"):
                config = EngineConfig(readout=readout, sites=sites)
                score_batch(model, encoded(64, model.info.vocab_size, n_prompts=1), config)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                columns = score_batch(model, prompts, config)
                torch.cuda.synchronize()
                wall = time.perf_counter() - started
                readouts = len(columns["entropy"])
                peak = torch.cuda.max_memory_allocated() / 2**30
                print(
                    f"  forward {str(dtype).replace('torch.', ''):8s} {sites:5s} {readout:10s} "
                    f"{wall:7.2f} s  {n_tokens / wall:8.0f} tokens/s  "
                    f"{readouts / wall / 1e3:7.1f} k readouts x tokens/s  peak {peak:.2f} GiB"
                )
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
