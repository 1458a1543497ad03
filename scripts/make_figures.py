"""Regenerate the README's figures, their tables and its generated blocks (`make figures`).

From the real packaged models, offline: the `qwen`, `llama` and `gemma` aliases resolve to
Qwen2.5-Coder-0.5B-Instruct, SmolLM2-135M-Instruct (Llama architecture) and Gemma-3-270m
(pretrained), dequantised from their GGUF files. Under the paper's protocol (`protocol()`): each
model's own response to each of the first `--limit` MATH-500 problems, sampled at T = 1 with
nothing but the temperature, no-thinking template, response tokens scored; the raw readout at every
site and the logit lens on the residual stream of the same responses (scripts/figures_families.py),
through `layerpolicy.comparison` and its run cache, so a finished run is loaded, not recomputed.
The graded part (profiles by correctness, three readouts) reads GRADED_FAMILIES. The BuPO-against-
GRPO showcase comes from two training runs in `--runs` (showcase-bupo/ and showcase-grpo/), trained
here as SHOWCASE says when missing and resumed when unfinished.

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

import layerpolicy as lp
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.report.figures import family_figures, showcase_figures
from layerpolicy.runs import atomic_path, read_json, write_json
from layerpolicy.spec import RunSpec, check_settings

from .figures_families import family_runs
from .figures_graded import correctness_record, graded_runs, readouts_record
from .figures_record import run_record, write_tables
from .figures_showcase import ShowcaseRun, showcase_facts, write_showcase_tables
from .findings_files import render_figures_readme
from .findings_format import RECORD
from .readme_blocks import check_markers, update_readme
from .tour import REPO, quick_tour, shown

FAMILIES = ("qwen", "llama", "gemma")  # the family comparison
# The graded part (profiles by correctness, three readouts) reads the two smaller families: a
# Gemma-3-270m graded run and lens would add about 3 CPU-hours here.
GRADED_FAMILIES = ("qwen", "llama")
SEED = 0
LIMIT = 24  # MATH-500 problems per model
GENERATE = 192  # most response tokens per problem
# The graded part (profiles by correctness, three readouts) samples the same problems again with
# room for most answers to end, so that they can be graded: at 192 tokens nearly all are cut.
GRADED_GENERATE = 320
BATCH = 16  # problems per sampling call and per scored batch
# The README's showcase: BuPO against plain GRPO at equal budget on the builtin problems that
# Qwen2.5-Coder-0.5B-Instruct solves sometimes (RUNS/showcase-*/run.json records the settings;
# `finished_record` refuses a finished run trained with others).
SHOWCASE_BUPO = RunSpec(
    ModelConfig("qwen2.5-coder-0.5b-instruct", device="cpu", offline=True),
    PromptConfig("builtin", limit=24),
    train=lp.TrainConfig(
        steps=10,
        inter_steps=3,
        # The boundary-layer rule on Qwen's raw readout gives k = 1, whose policy is nearly
        # uniform: k is given.
        layer=6,
        group_size=4,
        prompts_per_step=2,
        mini_batches=2,
        max_new_tokens=160,
        lr=1e-5,
        seed=SEED,
        save_every=2,
        analyse=True,
        analysis_prompts=4,
        screen_samples=4,  # keeps the builtin problems the base model solves sometimes
        eval_samples=4,
        monitor_every=6,
    ),
)
SHOWCASE = {  # label -> spec of the run in --runs/showcase-LABEL; BuPO first
    "bupo": SHOWCASE_BUPO,
    "grpo": SHOWCASE_BUPO.replace(inter_steps=0),  # the same budget, every rollout on π_θ
}


def main(argv: list[str] | None = None) -> None:
    """Analyse (or load) both families and the BuPO run, then write figures, tables, record,
    the Quick tour's outputs, figures/README.md and the README's generated blocks."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    check_markers(args.readme.read_text())  # a missing marker stops here, before any run
    for label, spec in SHOWCASE.items():  # so does a finished run with other settings
        finished_record(showcase_dir(args.runs, label), spec)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.part != "all":
        parts = {"showcase": showcase_part, "correctness": correctness_part}
        {**parts, "readouts": readouts_part}[args.part](args, out, started)
        return
    spec, cache = raw_spec(args), args.runs / "cache"
    raw, lens = family_runs(FAMILIES, spec, cache)
    tour = quick_tour(raw, spec, args.runs, out, FAMILIES)
    runs = showcase_runs(args.runs, args.device)

    vocab_sizes = raw.comparison.set_index("model")["vocab_size"].astype(int).to_dict()
    written = family_figures(FAMILIES, raw.summaries, lens.summaries, vocab_sizes, out)
    written += showcase_figures(runs, out)
    write_tables(raw, lens, out)
    paired = write_showcase_tables(runs, out)
    commands = {label: shlex.join(train_argv(SHOWCASE[label], runs[label].path)) for label in runs}
    facts = showcase_facts(runs, paired, commands)
    record = {**run_record(FAMILIES, raw, lens, facts, written), "quick_tour": tour}
    graded = graded_spec(args)
    runs_graded = graded_runs(GRADED_FAMILIES, graded, cache)
    record["by_correct"] = correctness_record(runs_graded, graded, out)
    record["readouts"], drawn = readouts_record(runs_graded, graded, cache, out)
    record["figures"] += [p.name for p in drawn]
    write_record_and_readme(record, args.readme, out, len(written + drawn), started)


def correctness_part(args: argparse.Namespace, out: Path, started: float) -> None:
    """`--part correctness`: the profiles by correctness from the graded runs; the rest of
    `out` is kept as it is."""
    record = kept_record(out, prefixes=())
    spec = graded_spec(args)
    runs = graded_runs(GRADED_FAMILIES, spec, args.runs / "cache")
    record["by_correct"] = correctness_record(runs, spec, out)
    write_record_and_readme(record, args.readme, out, 0, started)


def readouts_part(args: argparse.Namespace, out: Path, started: float) -> None:
    """`--part readouts`: the three readouts from the graded runs' responses; the rest of
    `out` is kept as it is."""
    record = kept_record(out, prefixes=("readouts_",))
    spec, cache = graded_spec(args), args.runs / "cache"
    readouts, drawn = readouts_record(graded_runs(GRADED_FAMILIES, spec, cache), spec, cache, out)
    record["readouts"] = readouts
    record["figures"] += [p.name for p in drawn]
    write_record_and_readme(record, args.readme, out, len(drawn), started)


def kept_record(out: Path, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """record.json of `out` without the figures named with `prefixes` (a part redraws them)."""
    record_path = out / RECORD
    if not record_path.is_file():
        raise SystemExit(f"{record_path} is missing; run make figures once without --part")
    record = read_json(record_path)
    record["figures"] = [name for name in record["figures"] if not name.startswith(prefixes)]
    return record


def showcase_part(args: argparse.Namespace, out: Path, started: float) -> None:
    """`--part showcase`: the training showcase's figures, tables and facts from its runs; the
    family analyses' facts, figures and tables already in `out` are kept as they are."""
    record = kept_record(out, prefixes=("bupo_", "showcase_"))
    runs = showcase_runs(args.runs, args.device)
    written = showcase_figures(runs, out)
    paired = write_showcase_tables(runs, out)
    commands = {label: shlex.join(train_argv(SHOWCASE[label], runs[label].path)) for label in runs}
    record["figures"] += [p.name for p in written]
    record["showcase"] = showcase_facts(runs, paired, commands)
    write_record_and_readme(record, args.readme, out, len(written), started)


def write_record_and_readme(
    record: dict[str, Any], readme: Path, out: Path, n_figures: int, started: float
) -> None:
    """record.json and figures/README.md into `out`, then the generated blocks of `readme`."""
    write_json(record, out / RECORD)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(render_figures_readme(record))
    text = update_readme(readme.read_text(), out)
    with atomic_path(readme) as tmp:
        tmp.write_text(text)
    print(
        f"{n_figures} figures, their tables and the generated blocks of {readme} from "
        f"{out} ({time.perf_counter() - started:.0f} s)"
    )


def protocol(args: argparse.Namespace) -> lp.PromptConfig:
    """The paper's protocol: each model's own response to each problem, sampled at T = 1 with
    nothing but the temperature, no-thinking chat template, response tokens scored."""
    return lp.PromptConfig(
        args.prompts, limit=args.limit, generate=args.generate, temperature=1.0, thinking=False
    )


def raw_spec(args: argparse.Namespace) -> RunSpec:
    """The README's raw-readout analysis under the protocol, at every site (the model: each
    family's alias, offline); the logit-lens runs score its responses (figures_families)."""
    model = ModelConfig(offline=True, device=args.device)
    return RunSpec(model, protocol(args), AnalysisConfig(seed=SEED, batch_size=BATCH))


def graded_spec(args: argparse.Namespace) -> RunSpec:
    """The raw-readout analysis of the graded part: the family protocol with up to
    `--graded-generate` response tokens."""
    return raw_spec(args).replace(generate=args.graded_generate)


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
    parser.add_argument(
        "--graded-generate",
        type=int,
        default=GRADED_GENERATE,
        help=f"most response tokens of the graded part's runs (default {GRADED_GENERATE})",
    )
    parser.add_argument(
        "--part",
        choices=("all", "showcase", "correctness", "readouts"),
        default="all",
        help="all (default), or only the training showcase, the profiles by correctness or the "
        "three readouts (each keeps the rest of --out)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "figures", help="output directory")
    parser.add_argument(
        "--runs",
        type=Path,
        default=REPO / "runs",
        help="run directories (cache/ and the training runs showcase-bupo/, showcase-grpo/ inside)",
    )
    parser.add_argument(
        "--readme", type=Path, default=REPO / "README.md", help="README whose blocks to rewrite"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | mps (the showcase runs train on the CPU unless given)",
    )
    return parser


def showcase_runs(runs: Path, device: str) -> dict[str, ShowcaseRun]:
    """Both showcase runs by label (bupo, grpo): `trained_run` of each of SHOWCASE in `runs`."""
    return {
        label: trained_run(showcase_dir(runs, label), spec, device)
        for label, spec in SHOWCASE.items()
    }


def showcase_dir(runs: Path, label: str) -> Path:
    """The directory of SHOWCASE's run `label` in `runs`."""
    return runs / f"showcase-{label}"


def trained_run(path: Path, spec: RunSpec, device: str) -> ShowcaseRun:
    """Load the finished run at `path` (trained as `spec` says), or train it (resuming an
    unfinished one), on `device` unless that is auto (then on the spec's)."""
    record = finished_record(path, spec)
    if record.get("status") != "complete":
        spec = spec if device == "auto" else spec.replace(device=device)
        lp.train(spec, out=path, resume=bool(record))
    return ShowcaseRun.load(path)


def finished_record(path: Path, spec: RunSpec) -> dict[str, Any]:
    """run.json of the training run at `path` ({} when there is none); raises when a finished
    run was trained with other settings than `spec`'s (an unfinished one is checked on resume)."""
    record_path = path / "run.json"
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get("status") == "complete":
        check_settings(
            record.get("settings", {}),
            spec.settings(spec.prompts.load().sha256),
            where=f"{shown(str(path))} holds a finished training run",
            fix="delete or move it to train one with make_figures' SHOWCASE spec",
        )
    return record


def train_argv(spec: RunSpec, out: Path) -> list[str]:
    """The `layerpolicy train` command line that trains `spec` into `out`."""
    return [*spec.to_argv(), "--out", shown(str(out))]


if __name__ == "__main__":
    main()
