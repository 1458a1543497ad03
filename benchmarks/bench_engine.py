"""Speed and memory of the analysis engine against the naive path, TransformerLens and the floor.

Every measurement runs in its own subprocess (so peak RSS is its own) on the same machine in one
run: load the model, warm up on 16 tokens, reset the kernel's peak-RSS mark, then time one call.

    forward  the model's decoder forward alone (no unembedding): the memory baseline
    floor    one hooked forward + one float32 matmul per readout (x W_U^T), nothing else
    engine   layerpolicy.engine.score_batch: every metric of every readout
    naive    run_with_cache + stack + unembed + log_softmax, all readouts at once (in groups of
             readouts when all at once would not fit the memory guard; the note says so)
    tl       TransformerLens's logit_lens (resid set) or logit_readout over the stacked
             vectors (paper set), top_k=1: entropy and top-1 only

Readout sets: `resid` = embed, resid 1..L, final; `paper` = embed and per layer attn_in, attn,
mlp_in, mlp, resid, then final. Inputs are MATH-500 problems concatenated and cut to N tokens.

    .venv/bin/python benchmarks/bench_engine.py                      # everything (about 75 min)
    .venv/bin/python benchmarks/bench_engine.py --models smollm2-135m-instruct --tokens 256
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
METHODS = ("forward", "floor", "engine", "naive", "tl")
REPEATED = ("forward", "floor", "engine")  # --repeat applies to these
NAIVE_BUDGET_GB = 6.0  # the naive path's logits may use at most this much (shared machine)
NAIVE_COPIES = 5  # [readouts, tokens, vocab] float32 tensors alive at its peak
WARMUP_TOKENS = 16
FIELDS = (
    "model",
    "n_layers",
    "vocab",
    "readout",
    "set",
    "readouts",
    "tokens",
    "method",
    "matmuls",
    "wall_s",
    "forward_s",
    "matmul_s",
    "peak_rss_gb",
    "start_rss_gb",
    "threads",
    "busy_before",
    "load_before",
    "load_after",
    "wall_runs",
    "note",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sets", nargs="+", default=["resid", "paper"], choices=["resid", "paper"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--readout", default="raw", choices=["raw", "logit-lens"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.csv")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per forward, floor and engine measurement (their ratios are close to the "
        "targets, so noise matters); the fastest is kept. naive and tl run once.",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.25,
        help="before each run, wait (up to --max-wait s) until other jobs use at most this "
        "fraction of the CPUs",
    )
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument(
        "--report", type=Path, metavar="CSV", help="print the tables of a results CSV and stop"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(**json.loads(args.child))), flush=True)
        return
    if args.report:
        print(report(read_csv(args.report)))
        return
    print(machine(), flush=True)
    rows = []
    for model in args.models:
        for site_set in args.sets:
            for tokens in args.tokens:
                for method in args.methods:
                    job = dict(
                        model=model,
                        site_set=site_set,
                        tokens=tokens,
                        method=method,
                        readout=args.readout,
                    )
                    repeat = args.repeat if method in REPEATED else 1
                    row = run_child(job, repeat, args.quiet, args.max_wait)
                    rows.append(row)
                    print(_line(row), flush=True)
                    write_csv(rows, args.out)
    print()
    print(report(rows))
    print(f"\nwritten to {args.out}")


def run_child(job: dict, repeat: int, quiet: float, max_wait: float) -> dict:
    """`repeat` measurements, each in a fresh interpreter started when the CPUs are quiet;
    the fastest row (wall_runs lists them all), or the failure."""
    rows = []
    for _ in range(max(1, repeat)):
        busy = wait_until_quiet(quiet, max_wait)
        command = [sys.executable, __file__, "--child", json.dumps(job)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not results:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {
                "model": job["model"],
                "set": job["site_set"],
                "tokens": job["tokens"],
                "method": job["method"],
                "readout": job["readout"],
                "note": f"failed (exit {done.returncode}): {' | '.join(tail)}",
            }
        rows.append({**json.loads(results[0][len("RESULT ") :]), "busy_before": busy})
    best = min(rows, key=lambda row: row["wall_s"])
    best["wall_runs"] = " ".join(str(row["wall_s"]) for row in rows)
    best["peak_rss_gb"] = max(row["peak_rss_gb"] for row in rows)
    return best


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over the next `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_until_quiet(quiet: float, max_wait: float) -> float:
    """Wait until other jobs leave the CPUs (busy fraction <= quiet) or max_wait passes."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > quiet and time.monotonic() < deadline:
        time.sleep(8.0)
        busy = cpu_busy()
    return round(busy, 2)


def measure(model: str, site_set: str, tokens: int, method: str, readout: str) -> dict:
    """Load, warm up, reset the peak-RSS mark, run `method` once; the CSV row."""
    import torch

    from layerpolicy.devices import use_physical_cores
    from layerpolicy.models import load_model
    from layerpolicy.readout.sites import readout_order

    threads = use_physical_cores()
    loaded = load_model(model, device="cpu", progress=False)
    order = readout_order(loaded.n_layers, site_set)
    ids = input_tokens(loaded.tokenizer, tokens)
    run = RUNNERS[method]
    paper = site_set == "paper"
    row = {
        "model": model,
        "n_layers": loaded.n_layers,
        "vocab": loaded.info.vocab_size,
        "readout": readout,
        "set": site_set,
        "readouts": len(order),
        "tokens": len(ids),
        "method": method,
        "threads": threads,
    }
    with torch.inference_mode():
        run(loaded, ids[:WARMUP_TOKENS], order, readout, paper)
    gc.collect()
    _malloc_trim()
    exact_peak = _reset_peak()
    row["start_rss_gb"] = _status_gb("VmRSS")
    row["load_before"] = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    with torch.inference_mode():
        extra = run(loaded, ids, order, readout, paper)
    row["wall_s"] = round(time.perf_counter() - started, 2)
    row["load_after"] = round(os.getloadavg()[0], 2)
    row["peak_rss_gb"] = _status_gb("VmHWM")
    if not exact_peak:
        extra["note"] = (extra.get("note", "") + " peak includes model load").strip()
    row.update(extra)
    return row


def input_tokens(tokenizer, n: int) -> list[int]:
    """The first n tokens of the MATH-500 problems (the named set `math500`), concatenated."""
    from layerpolicy.prompts import load_prompts

    problems = load_prompts("math500").items
    text = "\n\n".join(str(item.messages[-1]["content"]) for item in problems)
    ids = tokenizer(text)["input_ids"]
    if len(ids) < n:
        raise SystemExit(f"MATH-500 gives only {len(ids)} tokens, fewer than {n}")
    return ids[:n]


# The measured methods: each gets (model, token ids, readout order, readout mode, whether the
# set is the paper set) and returns extra CSV fields (matmuls, phase timings, notes).


def run_forward(model, ids, order, readout, paper) -> dict:
    import torch

    model.hf_model.base_model(input_ids=torch.tensor([ids]), use_cache=False)
    return {"matmuls": 0}


def run_floor(model, ids, order, readout, paper) -> dict:
    """One hooked forward (the engine's capture), then x W_U^T per readout and token chunk, in
    the engine's chunks and vocabulary blocks (blocked matmuls are this CPU's fastest)."""
    import torch

    from layerpolicy.engine import engine_chunk
    from layerpolicy.metrics import block_width
    from layerpolicy.readout.capture import capture
    from layerpolicy.readout.sites import Site, captured_sites
    from layerpolicy.readout.unembed import Unembedding

    started = time.perf_counter()
    batch = _batch(model, ids)
    vectors = capture(model, batch, captured_sites(order, model.n_layers))
    forward_s = time.perf_counter() - started
    unembed = Unembedding(model.hf_model)
    vocab = unembed.vocab_size
    size = min(len(ids), engine_chunk(vocab, torch.device("cpu"), None))
    width = block_width(vocab, size, torch.device("cpu"))
    out = torch.empty(size * width)
    last = Site("resid", model.n_layers)
    for site in order:
        x = vectors[last if site.name == "final" else site].float()
        if readout == "logit-lens" or site.name == "final":
            x = unembed.normed(x)
        for start in range(0, len(ids), size):
            piece = x[start : start + size]
            for first in range(0, vocab, width):
                stop = min(vocab, first + width)
                unembed.block(
                    piece, first, stop, out[: len(piece) * (stop - first)].view(len(piece), -1)
                )
    return {
        "matmuls": len(order),
        "forward_s": round(forward_s, 2),
        "matmul_s": round(time.perf_counter() - started - forward_s, 2),
    }


def run_engine(model, ids, order, readout, paper) -> dict:
    """score_batch; its matmuls: one per readout but none for raw resid readouts of the paper
    set (linearity), and the final row's is the reference every chunk needs anyway."""
    from layerpolicy.engine import EngineConfig, score_batch

    config = EngineConfig(readout=readout, sites="paper" if paper else "resid")
    score_batch(model, [_encoded(ids)], config)
    skipped = sum(site.name == "resid" for site in order) if paper and readout == "raw" else 0
    return {"matmuls": len(order) - skipped}


def run_naive(model, ids, order, readout, paper) -> dict:
    """Everything at once: cache every vector, stack, unembed, log_softmax, then the metrics."""
    import torch

    names = [site.hook_name() for site in order if site.name != "final"]
    logits, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=names)
    weight = model.hf_model.get_output_embeddings().weight
    final_logp = torch.log_softmax(logits[0].float(), dim=-1)
    final_p = final_logp.exp()
    final_top = final_logp.argmax(dim=-1)
    targets = torch.tensor([*ids[1:], 0]).view(1, -1, 1)
    vocab = weight.shape[0]
    group = len(names)
    budget = NAIVE_BUDGET_GB * 2**30 / (NAIVE_COPIES * 4 * len(ids) * vocab)
    if group > budget:
        group = max(1, int(budget))
    for start in range(0, len(names), group):
        stack = torch.stack([cache[name][0] for name in names[start : start + group]])
        if readout == "logit-lens":
            stack = _final_norm(model)(stack)
        z = stack @ weight.T
        logp = torch.log_softmax(z, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        kl = (final_p * (final_logp - logp)).sum(-1)
        target_logp = logp.gather(-1, targets.expand(len(stack), -1, -1))
        rank = (z > z.gather(-1, targets.expand(len(stack), -1, -1))).sum(-1) + 1
        top1 = z.argmax(-1) == final_top
        del z, logp, entropy, kl, target_logp, rank, top1, stack
    note = "" if group == len(names) else f"{group} readouts at a time (memory guard)"
    return {"matmuls": len(order), "note": note}


def run_tl(model, ids, order, readout, paper) -> dict:
    """TransformerLens 4: logit_lens on the residual stack, or logit_readout on all sites."""
    import torch
    from transformer_lens.tools.analysis.logit_lens import logit_lens, logit_readout

    tokens = torch.tensor([ids])
    apply_ln = readout == "logit-lens"
    if not paper:
        logit_lens(model.bridge, tokens, positions=None, top_k=1, apply_ln=apply_ln)
        return {"matmuls": model.n_layers + 1 + (1 if apply_ln else 0) + 1}
    names = [site.hook_name() for site in order if site.name != "final"]
    _, cache = model.bridge.run_with_cache(tokens, names_filter=names)
    stack = torch.stack([cache[name][0] for name in names])
    logit_readout(model.bridge, stack, apply_ln=apply_ln, top_k=1)
    return {"matmuls": len(names) + 1}


RUNNERS = {
    "forward": run_forward,
    "floor": run_floor,
    "engine": run_engine,
    "naive": run_naive,
    "tl": run_tl,
}


def _encoded(ids):
    from layerpolicy.prompts import EncodedPrompt

    return EncodedPrompt("bench", tuple(ids), (True,) * len(ids), None, False)


def _batch(model, ids):
    import torch

    from layerpolicy.readout.capture import make_batch

    return make_batch([_encoded(ids)], 0, torch.device("cpu"))


def _final_norm(model):
    from layerpolicy.readout.unembed import Unembedding

    return Unembedding(model.hf_model).final_norm


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 2**20, 3)
    raise RuntimeError(f"no {field} in /proc/self/status")


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows written by `write_csv`, numbers as numbers, empty cells left out."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: _number(value) for key, value in row.items() if value != ""} for row in rows]


def _number(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _line(row: dict) -> str:
    wall = row.get("wall_s")
    peak = row.get("peak_rss_gb")
    return (
        f"{row['model']:28s} {row['set']:5s} {row['tokens']:5} {row['method']:7s} "
        f"{'-' if wall is None else f'{wall:8.2f} s'} "
        f"{'-' if peak is None else f'{peak:6.2f} GB'} load {row.get('load_before', '-')}"
        f" {row.get('note', '')}"
    )


def report(rows: list[dict]) -> str:
    """Markdown table: time and peak RSS per method, then the target ratios."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["model"], row["set"], row["tokens"])
        by_case.setdefault(key, {})[row["method"]] = row
    head = (
        "| model | set | tokens | readouts | forward s / GB | floor s | engine s / GB | "
        "naive s / GB | TL s / GB | engine/floor | engine/floor same matmuls | engine/naive | "
        "engine/TL | engine - forward GB |"
    )
    lines = [head, _rule(head)]
    for (model, site_set, tokens), methods in by_case.items():
        readouts = next((r.get("readouts") for r in methods.values() if r.get("readouts")), "")
        engine = methods.get("engine", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    model,
                    site_set,
                    str(tokens),
                    str(readouts),
                    _time_mem(methods.get("forward")),
                    _fmt(methods.get("floor", {}).get("wall_s")),
                    _time_mem(engine),
                    _time_mem(methods.get("naive")),
                    _time_mem(methods.get("tl")),
                    _ratio(engine, methods.get("floor")),
                    _same_matmuls(engine, methods.get("floor")),
                    _ratio(engine, methods.get("naive")),
                    _ratio(engine, methods.get("tl")),
                    _mem_delta(engine, methods.get("forward")),
                ]
            )
            + " |"
        )
    notes = [
        f"- {r['model']} {r['set']} {r['tokens']} {r['method']}: {r['note']}"
        for r in rows
        if r.get("note")
    ]
    return "\n".join(lines + ["", scaling(by_case)] + (["", *notes] if notes else []))


def scaling(by_case: dict[tuple, dict[str, dict]]) -> str:
    """Markdown table: how the engine's time and working memory grow from the shortest input to
    the longest, per model and readout set (linear in tokens: time ratio = token ratio)."""
    head = (
        "| model | set | tokens | engine time ratio | floor time ratio | "
        "engine - forward GB (short -> long) |"
    )
    lines = [head, _rule(head)]
    groups: dict[tuple, list[int]] = {}
    for model, site_set, tokens in by_case:
        groups.setdefault((model, site_set), []).append(tokens)
    for (model, site_set), lengths in groups.items():
        short, long = min(lengths), max(lengths)
        if short == long:
            continue
        a, b = by_case[(model, site_set, short)], by_case[(model, site_set, long)]
        memory = f"{_mem_delta(a.get('engine'), a.get('forward'))} -> "
        memory += _mem_delta(b.get("engine"), b.get("forward"))
        lines.append(
            f"| {model} | {site_set} | {short} -> {long} ({long / short:g}x) | "
            f"{_ratio(b.get('engine'), a.get('engine'))} | "
            f"{_ratio(b.get('floor'), a.get('floor'))} | {memory} |"
        )
    return "\n".join(lines)


def _rule(head: str) -> str:
    return "|" + " --- |" * (head.count("|") - 1)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _time_mem(row: dict | None) -> str:
    if not row or row.get("wall_s") is None:
        return "-"
    return f"{row['wall_s']:.1f} / {row['peak_rss_gb']:.2f}"


def _ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("wall_s") is None or b.get("wall_s") is None:
        return "-"
    return f"{a['wall_s'] / b['wall_s']:.2f}"


def _same_matmuls(engine: dict | None, floor: dict | None) -> str:
    """engine / (floor's forward + its matmul time scaled to the engine's matmul count)."""
    if not engine or not floor or engine.get("wall_s") is None or floor.get("matmul_s") is None:
        return "-"
    share = engine["matmuls"] / floor["matmuls"]
    return f"{engine['wall_s'] / (floor['forward_s'] + floor['matmul_s'] * share):.2f}"


def _mem_delta(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("peak_rss_gb") is None or b.get("peak_rss_gb") is None:
        return "-"
    return f"{a['peak_rss_gb'] - b['peak_rss_gb']:+.2f}"


def machine() -> str:
    """One line describing the machine (for RESULTS.md)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {memory:.0f} GiB RAM, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
