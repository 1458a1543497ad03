"""Batched against one-at-a-time sampling: seconds, tokens per second, and whether the ids agree.

Needs no network: it writes a random model with SmolLM2-135M's shapes (30 layers, d 576, vocab
49152) to a temporary directory and samples `--prompts` random prompts of different lengths
(left padding) for `--tokens` new tokens each, once in batches of `--batch` and once one prompt
per `generate` call. Responses are seeded per prompt, so both ways should give the same ids.

    .venv/bin/python benchmarks/bench_sampling.py --prompts 8 --tokens 32 --threads 1
    .venv/bin/python benchmarks/bench_sampling.py --device cuda --prompts 64 --tokens 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerpolicy.models import load_model  # noqa: E402
from layerpolicy.models.tiny import build_tiny_tokenizer  # noqa: E402
from layerpolicy.sampling import SamplingConfig, sample  # noqa: E402


def smollm_shaped(directory: Path) -> Path:
    """A random Llama with SmolLM2-135M's shapes, and the tiny tokenizer for its special ids."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def timed(model, prompts, config: SamplingConfig) -> tuple[float, dict[str, tuple[int, ...]]]:
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    samples = sample(model, prompts, config)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, {s.prompt_id: s.response_ids for s in samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per response")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(str(smollm_shaped(Path(tmp) / "smol")), device=args.device)
        generator = torch.Generator().manual_seed(1)
        prompts = [
            (f"p{i}", tuple(torch.randint(0, 49152, (24 + 7 * i,), generator=generator).tolist()))
            for i in range(args.prompts)
        ]
        warm = SamplingConfig(max_new_tokens=2, batch_size=args.batch)
        sample(model, prompts[:2], warm)
        rows = []
        for label, batch in (("batched", args.batch), ("one at a time", 1)):
            config = SamplingConfig(max_new_tokens=args.tokens, batch_size=batch)
            seconds, ids = timed(model, prompts, config)
            tokens = sum(len(r) for r in ids.values())
            rows.append((label, batch, seconds, tokens / seconds, ids))
    print(
        f"{args.prompts} prompts x {args.tokens} new tokens, {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'sampling':<14} {'batch':>5} {'seconds':>8} {'tokens/s':>9}")
    for label, batch, seconds, rate, _ in rows:
        print(f"{label:<14} {batch:>5} {seconds:>8.2f} {rate:>9.1f}")
    same = rows[0][4] == rows[1][4]
    print(f"speed-up {rows[1][2] / rows[0][2]:.2f}x; same ids both ways: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
