"""Accuracy of each readout precision against float64: the largest |Delta H| per token, in nats.

For each packaged model, the first 96 tokens of the MATH-500 problems (the named set `math500`,
concatenated) go through one float32 forward; every residual readout (embed, resid 1..L, and the
model's own policy) is formed by `readout_matmul` under each precision and by a float64 matmul of
the same float32 vectors and W_U. Entropies of both are computed in float64, so the figure is the
matmul's error alone. On CPU the TF32 and bfloat16 formats are emulated by rounding the operands
(`layerpolicy.readout.precision`), which reproduces their accuracy, not their speed.

    LAYERPOLICY_DATA=/path/to/data .venv/bin/python benchmarks/bench_precision.py
    .venv/bin/python benchmarks/bench_precision.py --models smollm2-135m-instruct --tokens 32

Prints a table (model, readout, precision, max and median |Delta H| over tokens and layers) and
writes benchmarks/precision.csv. Needs the models in the layerpolicy cache
(`layerpolicy models pull NAME`).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerpolicy.models import load_model  # noqa: E402
from layerpolicy.prompts import EncodedPrompt, load_prompts  # noqa: E402
from layerpolicy.readout.capture import capture, make_batch  # noqa: E402
from layerpolicy.readout.precision import PRECISIONS, prepare_weight, readout_matmul  # noqa: E402
from layerpolicy.readout.sites import Site, captured_sites, readout_order  # noqa: E402
from layerpolicy.readout.unembed import Unembedding  # noqa: E402

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
READOUTS = ("raw", "logit-lens")  # the readouts that need nothing beyond the model
FIELDS = ("model", "readout", "precision", "tokens", "readouts", "max_abs_dH", "median_abs_dH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "precision.csv")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows += measure(name, args.tokens)
    print_table(rows)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


def math500_prompt(tokenizer, n: int) -> EncodedPrompt:
    """The first n tokens of the MATH-500 problems, concatenated, every position scored."""
    problems = load_prompts("math500").items
    text = "\n\n".join(str(item.messages[-1]["content"]) for item in problems)
    ids = tuple(tokenizer(text)["input_ids"][:n])
    return EncodedPrompt("math500", ids, (True,) * len(ids), None, False)


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [n] in nats of logits [n, vocab], computed in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy_errors(
    unembed: Unembedding, vectors: dict[Site, torch.Tensor], order: list[Site], n_layers: int
) -> dict[tuple[str, str], torch.Tensor]:
    """|H(precision) - H(float64)| (nats) of every token of every readout in `order`, per
    (readout mode, precision): the model's policy (final) from H^L, the rest from their vectors."""
    weights = {p: prepare_weight(unembed.weight32, p) for p in PRECISIONS}
    weight64 = unembed.weight32.double()
    errors = {(r, p): [] for r in READOUTS for p in PRECISIONS}
    for readout in READOUTS:
        for site in order:
            final = site.name == "final"
            vector = vectors[Site("resid", n_layers) if final else site]
            x = unembed.normed(vector) if final else unembed.prepared(vector, readout)
            cap = unembed.cap if final else (lambda z: z)
            want = entropy64(cap(x.double() @ weight64.T))
            for precision, weight in weights.items():
                got = entropy64(cap(readout_matmul(x, weight)))
                errors[readout, precision].append((got - want).abs())
    return {key: torch.cat(parts) for key, parts in errors.items()}


def measure(name: str, n_tokens: int) -> list[dict]:
    """One row per (readout, precision): |Delta H| over every token of every resid readout."""
    model = load_model(name, device="cpu", progress=False)
    unembed = Unembedding(model.hf_model)
    batch = make_batch([math500_prompt(model.tokenizer, n_tokens)], 0, model.device)
    order = readout_order(model.n_layers, "resid")
    with torch.inference_mode():
        vectors = capture(model, batch, captured_sites(order, model.n_layers))
        errors = entropy_errors(unembed, vectors, order, model.n_layers)
    return [
        {
            "model": name,
            "readout": readout,
            "precision": precision,
            "tokens": n_tokens,
            "readouts": len(order),
            "max_abs_dH": f"{float(diffs.max()):.2e}",
            "median_abs_dH": f"{float(diffs.median()):.2e}",
        }
        for (readout, precision), diffs in errors.items()
    ]


def print_table(rows: list[dict]) -> None:
    header = ("model", "readout", "precision", "max |dH| (nats)", "median |dH|")
    keys = ("model", "readout", "precision", "max_abs_dH", "median_abs_dH")
    table = [header, *[tuple(str(r[k]) for k in keys) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for i, line in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")


if __name__ == "__main__":
    main()
