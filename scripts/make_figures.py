"""Regenerate the README's figures, their tables and its generated blocks (`make figures`).

From the real packaged models, offline: the `qwen` and `llama` aliases resolve to
Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct (Llama architecture), dequantised from
their GGUF files. Under the paper's protocol (`protocol()`): each model's own response to each of
the first `--limit` MATH-500 problems, sampled at T = 1 with nothing but the temperature,
no-thinking template, response tokens scored; the raw readout at every site and the logit lens on
the residual stream, through `layerpolicy.comparison` and its run cache, so a finished run is
loaded, not recomputed. The BuPO figures come from the run in `--bupo-run` (runs/bupo-smollm2),
trained here as BUPO_SPEC says when it is missing and resumed when it is unfinished.

Writes into `--out` (figures/): PNGs (`layerpolicy.report.figures`), the tables and record.json
(scripts/figures_record.py), the Quick tour's outputs (scripts/tour.py) and README.md
(scripts/findings_files.py); then rewrites the generated blocks of `--readme`
(scripts/readme_blocks.py), rendered from `--out` alone. Seeds are fixed, so a rerun on finished
runs writes the same numbers (the compare command's own timing aside).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

import pandas as pd

import layerpolicy as lp
from layerpolicy.bupo.log import LOG_NAME
from layerpolicy.comparison import CompareResult, compare
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.report.figures import bupo_figures, family_figures
from layerpolicy.runs import atomic_path, read_json, write_json
from layerpolicy.spec import RunSpec, check_settings

from .figures_correctness import correctness_facts
from .figures_record import BupoRun, bupo_facts, run_record, write_tables
from .findings_files import render_figures_readme
from .findings_format import RECORD
from .readme_blocks import check_markers, update_readme
from .tour import REPO, quick_tour, shown

FAMILIES = ("qwen", "llama")
SEED = 0
LIMIT = 24  # MATH-500 problems per model
GENERATE = 192  # most response tokens per problem
BATCH = 16  # problems per sampling call and per scored batch
# The short BuPO run behind the README (runs/bupo-smollm2/run.json records its settings;
# `bupo_record` refuses a finished run trained with others).
BUPO_SPEC = RunSpec(
    ModelConfig("smollm2-135m-instruct", dtype="float32"),
    PromptConfig("builtin", limit=48),
    train=lp.TrainConfig(
        steps=20,
        inter_steps=4,
        # SmolLM2 has no exploration region of ΔH_mlp under the raw readout, so the
        # boundary-layer rule gives no k: it is given.
        layer=4,
        group_size=8,
        prompts_per_step=2,
        mini_batches=4,
        max_new_tokens=96,
        lr=1e-5,
        seed=SEED,
        save_every=2,
        analyse=True,
        analysis_prompts=8,
        screen_samples=8,  # the screen keeps the builtin problems SmolLM2 solves sometimes
        eval_samples=8,
    ),
)


def main(argv: list[str] | None = None) -> None:
    """Analyse (or load) both families and the BuPO run, then write figures, tables, record,
    the Quick tour's outputs, figures/README.md and the README's generated blocks."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    check_markers(args.readme.read_text())  # a missing marker stops here, before any run
    bupo_record(args.bupo_run)  # so does a finished BuPO run with other settings
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw, lens = family_runs(args)
    tour = quick_tour(raw, analysis_specs(args)["raw"], args.runs, out, FAMILIES)
    bupo = bupo_run(args.bupo_run, args.device)

    vocab_sizes = raw.comparison.set_index("model")["vocab_size"].astype(int).to_dict()
    written = family_figures(FAMILIES, raw.summaries, lens.summaries, vocab_sizes, out)
    written += bupo_figures(bupo.record, bupo.log, bupo.before, bupo.after, out)
    write_tables(raw, lens, bupo, out)
    facts = bupo_facts(bupo, shlex.join(train_argv(bupo.path)))
    by_correct = correctness_facts(dict(zip(FAMILIES, raw.runs.values(), strict=True)), out)
    record = {**run_record(FAMILIES, raw, lens, facts, written), "quick_tour": tour}
    record["by_correct"] = by_correct
    write_json(record, out / RECORD)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(render_figures_readme(record))
    text = update_readme(args.readme.read_text(), out)
    with atomic_path(args.readme) as tmp:
        tmp.write_text(text)
    print(
        f"{len(written)} figures, their tables and the generated blocks of {args.readme} from "
        f"{out} ({time.perf_counter() - started:.0f} s)"
    )


def protocol(args: argparse.Namespace) -> lp.PromptConfig:
    """The paper's protocol: each model's own response to each problem, sampled at T = 1 with
    nothing but the temperature, no-thinking chat template, response tokens scored."""
    return lp.PromptConfig(
        args.prompts, limit=args.limit, generate=args.generate, temperature=1.0, thinking=False
    )


def analysis_specs(args: argparse.Namespace) -> dict[str, RunSpec]:
    """The README's analyses under the protocol, by readout: the raw readout at every site and
    the logit lens on the residual stream (the model: each family's alias, offline)."""
    model = ModelConfig(offline=True, device=args.device)
    raw = RunSpec(model, protocol(args), AnalysisConfig(seed=SEED, batch_size=BATCH))
    return {"raw": raw, "logit-lens": raw.replace(readout="logit-lens", sites="resid")}


def family_runs(args: argparse.Namespace) -> tuple[CompareResult, CompareResult]:
    """Both families under each of `analysis_specs`, through the run cache in `--runs`."""
    specs = analysis_specs(args)
    raw, lens = (compare(FAMILIES, specs[r], cache=args.runs / "cache") for r in specs)
    return raw, lens


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.make_figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--prompts",
        default="math500",
        help="prompt source (default: the named set math500; LAYERPOLICY_DATA may hold a copy)",
    )
    parser.add_argument(
        "--limit", type=int, default=LIMIT, help=f"problems per model (default {LIMIT})"
    )
    parser.add_argument(
        "--generate",
        type=int,
        default=GENERATE,
        help=f"most response tokens sampled and scored per problem (default {GENERATE})",
    )
    parser.add_argument("--out", type=Path, default=REPO / "figures", help="output directory")
    parser.add_argument(
        "--runs", type=Path, default=REPO / "runs", help="run directories (cache/ inside)"
    )
    parser.add_argument(
        "--bupo-run", type=Path, default=REPO / "runs" / "bupo-smollm2", help="BuPO run directory"
    )
    parser.add_argument(
        "--readme", type=Path, default=REPO / "README.md", help="README whose blocks to rewrite"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return parser


def bupo_run(path: Path, device: str) -> BupoRun:
    """Load the finished BuPO run at `path` (trained as BUPO_SPEC says), or train it on `device`
    (resuming an unfinished one)."""
    record = bupo_record(path)
    if record.get("status") != "complete":
        lp.train(BUPO_SPEC.replace(device=device), out=path, resume=bool(record))
        record = read_json(path / "run.json")
    return BupoRun(
        path=path,
        record=record,
        log=pd.read_parquet(path / f"{LOG_NAME}.parquet"),
        before=lp.load_run(path / "before").summary,
        after=lp.load_run(path / "after").summary,
    )


def bupo_record(path: Path) -> dict[str, Any]:
    """run.json of the BuPO run at `path` ({} when there is none); raises when a finished run
    was trained with other settings than BUPO_SPEC's (an unfinished one is checked on resume)."""
    record_path = path / "run.json"
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get("status") == "complete":
        check_settings(
            record.get("settings", {}),
            BUPO_SPEC.settings(BUPO_SPEC.prompts.load().sha256),
            where=f"{shown(str(path))} holds a finished BuPO run",
            fix="delete or move it to train one with make_figures' BUPO_SPEC",
        )
    return record


def train_argv(out: Path) -> list[str]:
    """The `layerpolicy train` command line that trains BUPO_SPEC into `out`."""
    return [*BUPO_SPEC.to_argv(), "--out", shown(str(out))]


if __name__ == "__main__":
    main()
