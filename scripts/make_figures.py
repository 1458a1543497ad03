"""Regenerate the README's figures, their tables and its generated blocks (`make figures`).

From the real packaged models, offline: the `qwen` and `llama` aliases resolve to
Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct (Llama architecture), dequantised from
their GGUF files. Under the paper's protocol (`protocol()`): each model's own response to each of
the first `--limit` MATH-500 problems, sampled at T = 1 with nothing but the temperature,
no-thinking template, response tokens scored; the raw readout at every site and the logit lens on
the residual stream, through `layerpolicy.comparison` and its run cache, so a finished run is
loaded, not recomputed. The BuPO figures come from the run in `--bupo-run` (runs/bupo-smollm2),
trained here with BUPO_CONFIG when it is missing and resumed when it is unfinished.

Writes into `--out` (figures/): PNGs, summary.csv (the summary rows every figure draws),
comparison.csv, bupo_difference.csv, bupo_train_log.csv, record.json (the run facts the README
quotes), the Quick tour's outputs (entropy_output.txt, compare_output.txt: the CLI's own rendering
of the cached runs) and README.md; then rewrites the generated blocks of `--readme`, which
scripts/findings.py renders from `--out` alone. Seeds are fixed, so a rerun on finished runs
writes the same numbers (the compare command's own timing aside).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from findings import (
    BLOCKS,
    COMPARE_OUTPUT,
    ENTROPY_OUTPUT,
    RECORD,
    replace_block,
    thinking_phrase,
    update_readme,
)
from layerpolicy.cli import options
from layerpolicy.cli.app import app
from layerpolicy.cli.console import console, err_console
from layerpolicy.cli.entropy import print_summary
from matplotlib.figure import Figure
from typer.testing import CliRunner

import layerpolicy as lp
from layerpolicy import plots
from layerpolicy.bupo.log import LOG_NAME
from layerpolicy.comparison import CompareResult, cache_name, compare
from layerpolicy.config import recorded_settings
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models.registry import PACKAGED_MODELS
from layerpolicy.prompts.sources import NAMED_SETS
from layerpolicy.runs import RunDirectory, atomic_path, read_json, write_csv, write_json
from layerpolicy.tables.difference import difference

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("qwen", "llama")
SEED = 0
LIMIT = 24  # MATH-500 problems per model
GENERATE = 192  # most response tokens per problem
BATCH = 16  # problems per sampling call and per scored batch
# The short BuPO run behind the README (runs/bupo-smollm2/run.json records the same settings).
BUPO_MODEL = "smollm2-135m-instruct"
BUPO_PROMPTS = "builtin"
BUPO_LIMIT = 32
BUPO_CONFIG = lp.TrainConfig(
    steps=12,
    inter_steps=3,
    layer=4,  # SmolLM2 has no exploration region of dH_mlp, so no automatic k
    group_size=6,
    prompts_per_step=2,
    mini_batches=2,
    max_new_tokens=64,
    lr=1e-5,
    seed=SEED,
    save_every=6,
    analyse=True,
    analysis_prompts=4,
)
TOUR_FAMILY = "llama"  # the family whose raw run the Quick tour's entropy table shows
TERMINAL_WIDTH = 100  # columns of the terminal the Quick tour's outputs are rendered for
TRAIN_FLAGS = {"lora_rank": "--lora", "screen_samples": "--screen"}  # TrainConfig field -> flag
FIGURE_ROWS = {  # metric -> sites whose summary rows the figures draw
    "entropy": ("embed", "resid", "attn", "mlp", "final"),
    "entropy_change": ("attn", "mlp"),
    "rms_norm": ("embed", "resid", "attn", "mlp"),
}
DIGITS = 4
FIGURE_TEXT = {  # figure name -> what figures/README.md says it shows
    "entropy_profile_qwen": "Qwen entropy per layer (resid, attn, mlp; π_θ starred; ln|V| dashed) "
    "with the RMS norm of each readout below",
    "entropy_profile_llama": "the same for the Llama-architecture model",
    "entropy_change_qwen": "Qwen's ΔH_attn and ΔH_mlp per layer, coloured by sign",
    "entropy_change_llama": "the same for the Llama-architecture model",
    "compare_entropy": "residual entropy of both models on relative depth l/L (raw readout)",
    "compare_entropy_logit_lens": "the same with the logit lens (final norm applied first)",
    "compare_entropy_change": "ΔH_attn and ΔH_mlp of both models on relative depth",
    "bupo_training_log": "BuPO training log (reward, entropies of π_θ and π^k, KL, loss, "
    "clipping, gradient norm, response length); the IPA phase shaded",
    "bupo_difference": "after − before entropy per layer of the BuPO run (resid, attn, mlp); "
    "π_θ's change is in bupo_difference.csv (site final)",
}


@dataclass
class BupoRun:
    """The BuPO run's record, training log and before/after entropy summaries."""

    path: Path
    record: dict[str, Any]
    log: pd.DataFrame
    before: pd.DataFrame
    after: pd.DataFrame


def main(argv: list[str] | None = None) -> None:
    """Analyse (or load) both families and the BuPO run, then write figures, tables, record,
    the Quick tour's outputs, figures/README.md and the README's generated blocks."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    for name in BLOCKS:  # a missing marker stops here, before any run
        replace_block(args.readme.read_text(), name, "")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw, lens = family_runs(args)
    tour = quick_tour(raw, args, out)  # checks its commands before the BuPO run
    bupo = bupo_run(args.bupo_run, args.device)

    written = family_figures(raw, lens, out) + bupo_figures(bupo, out)
    write_tables(raw, lens, bupo, out)
    record = {**run_record(raw, lens, bupo, written), "quick_tour": tour}
    write_json(record, out / RECORD)
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(readme(record))
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


def family_runs(args: argparse.Namespace) -> tuple[CompareResult, CompareResult]:
    """Both families under the protocol: raw readout at every site, logit lens on the stream."""
    common = {"offline": True, "device": args.device, "cache": args.runs / "cache"}
    prompts = protocol(args)
    raw_config = lp.AnalysisConfig(seed=SEED, batch_size=BATCH)
    raw = compare(FAMILIES, prompts, config=raw_config, **common)
    lens_config = lp.AnalysisConfig(
        readout="logit-lens", sites="resid", seed=SEED, batch_size=BATCH
    )
    lens = compare(FAMILIES, prompts, config=lens_config, **common)
    return raw, lens


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    """Load the finished BuPO run at `path`, or train it (resuming an unfinished one)."""
    record_path = path / "run.json"
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get("status") != "complete":
        lp.train(
            BUPO_MODEL,
            BUPO_PROMPTS,
            out=path,
            config=BUPO_CONFIG,
            limit=BUPO_LIMIT,
            resume=bool(record),
            device=device,
        )
        record = read_json(record_path)
    return BupoRun(
        path=path,
        record=record,
        log=pd.read_parquet(path / f"{LOG_NAME}.parquet"),
        before=lp.load_run(path / "before").summary,
        after=lp.load_run(path / "after").summary,
    )


def family_figures(raw: CompareResult, lens: CompareResult, out: Path) -> list[Path]:
    """Per-model profiles and entropy changes; both models on relative depth, raw and logit lens."""
    drawn = {}
    for family, (name, summary) in zip(FAMILIES, raw.summaries.items(), strict=True):
        vocab = int(raw.comparison.set_index("model").loc[name, "vocab_size"])
        drawn[f"entropy_profile_{family}"] = plots.plot_entropy_profile(
            summary, vocab_size=vocab, show_norm=True
        )
        drawn[f"entropy_change_{family}"] = plots.plot_entropy_change(summary, color_by_sign=True)
    drawn["compare_entropy"] = plots.plot_compare(raw.summaries, x="rel_depth")
    drawn["compare_entropy_logit_lens"] = plots.plot_compare(lens.summaries, x="rel_depth")
    drawn["compare_entropy_change"] = plots.plot_compare_entropy_change(raw.summaries)
    return _save(drawn, out)


def bupo_figures(bupo: BupoRun, out: Path) -> list[Path]:
    """The training log and the after − before entropy profile of the BuPO run."""
    k = bupo.record["layer"]["k"]
    title = f"{bupo.record['method']} · {bupo.record['model']['name']} · k = {k}"
    drawn = {
        "bupo_training_log": plots.plot_training_log(bupo.log, title=title),
        "bupo_difference": plots.plot_difference(
            difference(bupo.before, bupo.after), title=f"entropy, after − before · {title}"
        ),
    }
    return _save(drawn, out)


def _save(drawn: dict[str, Figure], out: Path) -> list[Path]:
    """Each figure as `out/<name>.png`."""
    paths: list[Path] = []
    for name, fig in drawn.items():
        paths += plots.save_figure(fig, out / name, formats=("png",))
    return paths


def write_tables(raw: CompareResult, lens: CompareResult, bupo: BupoRun, out: Path) -> None:
    """summary.csv, comparison.csv, bupo_difference.csv and bupo_train_log.csv."""
    summaries = [*raw.summaries.values(), *lens.summaries.values()]
    rows = pd.concat(
        [
            s[(s.metric == m) & s.site.isin(sites)]
            for s in summaries
            for m, sites in FIGURE_ROWS.items()
        ],
        ignore_index=True,
    )
    write_csv(rows.round(DIGITS), out / "summary.csv")
    comparison = pd.concat([raw.comparison, lens.comparison], ignore_index=True)
    write_csv(comparison.drop(columns=["run"]), out / "comparison.csv")
    diff = difference(bupo.before, bupo.after)
    write_csv(diff[diff.metric.isin(["entropy", "entropy_change"])], out / "bupo_difference.csv")
    write_csv(bupo.log.round(DIGITS), out / "bupo_train_log.csv")


def run_record(
    raw: CompareResult, lens: CompareResult, bupo: BupoRun, written: list[Path]
) -> dict[str, Any]:
    """record.json: the facts of every run that the README's generated blocks quote."""
    first = read_json(next(iter(raw.runs.values())) / "run.json")
    prompts, named = first["prompts"], NAMED_SETS.get(first["prompts"]["source"])
    return {
        "families": list(FAMILIES),
        "prompts": {
            "source": prompts["source"],
            "title": named.hub.split("/")[-1] if named else prompts["source"],
            "dataset": named.hub if named else None,
            "split": named.split if named else None,
            "local_copy": not str(prompts.get("resolved", "")).startswith("hf:"),
            "sha256": prompts["sha256"],
            "n_problems": prompts["n_prompts"],
        },
        "sampling": first["sampling"],
        "statistics": {key: first["settings"][key] for key in ("n_boot", "seed", "max_tokens")},
        "models": {
            family: model_facts(raw.runs[name], lens.runs[name])
            for family, name in zip(FAMILIES, raw.runs, strict=True)
        },
        "figures": [p.name for p in written],
        "bupo": bupo_facts(bupo),
    }


def model_facts(raw_run: Path, lens_run: Path) -> dict[str, Any]:
    """One model's facts from its raw and logit-lens runs: what it is, what it scored, how long."""
    raw, lens = read_json(raw_run / "run.json"), read_json(lens_run / "run.json")
    model = raw["model"]
    means = pd.read_parquet(RunDirectory(raw_run).prompt_means_source())
    lengths = means[(means.site == "final") & (means.metric == "entropy")]["n_tokens"]
    packaged = PACKAGED_MODELS.get(model["name"])
    return {
        **{key: model[key] for key in ("name", "architecture", "n_layers", "vocab_size")},
        "hub_id": packaged.hf_name if packaged else None,
        **{key: model.get(key) for key in ("quantisation", "dtype", "device")},
        "thinking": raw["prompts"].get("thinking"),
        "responses": len(lengths),
        "response_tokens": int(lengths.sum()),
        "responses_at_cap": int((lengths >= raw["sampling"]["max_new_tokens"]).sum()),
        "truncated_prompts": raw.get("truncated_prompts", 0),
        "seconds": {"raw": raw["timings"]["score_s"], "logit-lens": lens["timings"]["score_s"]},
        "runs": {"raw": _shown(str(raw_run)), "logit-lens": _shown(str(lens_run))},
    }


def bupo_facts(bupo: BupoRun) -> dict[str, Any]:
    """The BuPO run's settings, prompts, screen, layer k, reward and entropies at k."""
    record = bupo.record
    info = read_json(bupo.path / "before" / "run.json")["model"]  # with device, quantisation
    packaged = PACKAGED_MODELS.get(info["name"])
    analyses = {}
    for when, summary in (("before", bupo.before), ("after", bupo.after)):
        final = summary[(summary.site == "final") & (summary.metric == "entropy")].iloc[0]
        analyses[when] = {"n_prompts": int(final.n_prompts), "n_tokens": int(final.n_tokens)}
    return {
        "run": _shown(str(bupo.path)),
        "method": record["method"],
        "model": {
            **{key: info.get(key) for key in ("name", "quantisation", "device", "n_layers")},
            "hub_id": packaged.hf_name if packaged else None,
        },
        **{key: record.get(key) for key in ("prompts", "screen", "settings", "layer", "reward")},
        "entropy_at_k": record.get("entropy_at_k"),
        "train_s": record["timings"]["train_s"],
        "analyses": analyses,
        "command": "layerpolicy " + shlex.join(train_argv(bupo.path)),
    }


def train_argv(out: Path) -> list[str]:
    """`layerpolicy train` arguments that train BUPO_CONFIG (a flag for every field off its
    default) on BUPO_MODEL, BUPO_PROMPTS and BUPO_LIMIT into `out`."""
    argv = ["train", "--model", BUPO_MODEL, "--prompts", BUPO_PROMPTS, "--limit", str(BUPO_LIMIT)]
    default = lp.TrainConfig()
    for field in dataclasses.fields(lp.TrainConfig):
        value = getattr(BUPO_CONFIG, field.name)
        if value == getattr(default, field.name):
            continue
        flag = TRAIN_FLAGS.get(field.name, "--" + field.name.replace("_", "-"))
        if field.name == "grpo":
            argv += [part for k, v in value.items() for part in (flag, f"{k}={json.dumps(v)}")]
        elif isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    return [*argv, "--out", _shown(str(out))]


# ------------------------------------------------------------------------------ Quick tour


def quick_tour(raw: CompareResult, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The Quick tour's two outputs, rendered by the CLI's own code on the cached runs, as the
    commands shown with them print them (checked to name these very runs first)."""
    run = raw.runs[list(raw.runs)[FAMILIES.index(TOUR_FAMILY)]]
    entropy = entropy_argv(args, read_json(run / "run.json")["model"]["name"])
    check_same_run(entropy, run)
    with _terminal(TERMINAL_WIDTH), console.capture() as captured:
        print_summary(lp.load_run(run))
    _write_text(out / ENTROPY_OUTPUT, captured.get())
    comparison = compare_argv(args)
    check_loads_cached(comparison, raw)
    with _terminal(TERMINAL_WIDTH), _working_directory(REPO):
        result = CliRunner().invoke(app, comparison)
    if result.exit_code != 0:
        raise LayerpolicyError(
            f"`layerpolicy {shlex.join(comparison)}` failed: {result.exception}"
        ) from result.exception
    _write_text(out / COMPARE_OUTPUT, result.stdout)
    return {
        "entropy": {"family": TOUR_FAMILY, "command": "layerpolicy " + shlex.join(entropy)},
        "compare": {
            "command": "layerpolicy " + shlex.join(comparison),
            "cache": _shown(str(args.runs / "cache")),
        },
    }


def entropy_argv(args: argparse.Namespace, model: str) -> list[str]:
    """`layerpolicy entropy` arguments of one model's run under the protocol."""
    return ["entropy", "--model", model, *_protocol_options(args)]


def compare_argv(args: argparse.Namespace) -> list[str]:
    """`layerpolicy compare` arguments that load `family_runs(args)` from the cache (run in the
    repository; --cache and --out only where `--runs` is not the repository's runs/)."""
    argv = ["compare", *FAMILIES, *_protocol_options(args), "--offline"]
    if args.runs.resolve() != (REPO / "runs").resolve():
        where = args.runs / f"compare-{'-'.join(FAMILIES)}"
        argv += ["--cache", _shown(str(args.runs / "cache")), "--out", _shown(str(where))]
    return argv


def _protocol_options(args: argparse.Namespace) -> list[str]:
    limit, generate = str(args.limit), str(args.generate)
    return ["--prompts", _shown(args.prompts), "--limit", limit, "--generate", generate,
            "--batch-size", str(BATCH)]  # fmt: skip


def cli_params(argv: list[str]) -> dict[str, Any]:
    """The parsed parameters of a `layerpolicy` command line (parsed by click, not run)."""
    group = typer.main.get_command(app)
    command = group.get_command(typer.Context(group), argv[0])
    if command is None:
        raise LayerpolicyError(f"no layerpolicy command {argv[0]!r}")
    return command.make_context(argv[0], list(argv[1:])).params


def check_same_run(argv: list[str], run: Path) -> None:
    """Raise unless the `layerpolicy entropy` command `argv` has the settings of `run`."""
    params = cli_params(argv)
    prompts, config = options.prompt_config(params), options.analysis_config(params)
    settings = {
        "model": options.model_config(params).resolve().name,
        "prompts_sha256": prompts.load().sha256,
        **recorded_settings(prompts, config),
    }
    if settings != read_json(run / "run.json")["settings"]:
        raise LayerpolicyError(
            f"`layerpolicy {shlex.join(argv)}` has other settings than {_shown(str(run))}; make "
            "entropy_argv() match family_runs()"
        )


def check_loads_cached(argv: list[str], result: CompareResult) -> None:
    """Raise unless the `layerpolicy compare` command `argv`, run in the repository, loads the
    runs of `result` from its cache (instead of analysing anything)."""
    params = cli_params(argv)
    prompts, config = options.prompt_config(params), options.analysis_config(params)
    sha256 = prompts.load().sha256
    cached = set()
    for spec in params["specs"]:
        source = options.model_config(params, spec=spec).resolve()
        name = cache_name(source.name, source.location, sha256, prompts, config)
        cached.add((REPO / params["cache"] / name).resolve())
    if cached != {Path(p).resolve() for p in result.runs.values()}:
        raise LayerpolicyError(
            f"`layerpolicy {shlex.join(argv)}` would not load the cached runs of "
            "family_runs(); make compare_argv() match it"
        )


@contextlib.contextmanager
def _terminal(width: int) -> Iterator[None]:
    """The CLI's consoles `width` columns wide, as on a terminal of that width."""
    saved = [(c, c._width) for c in (console, err_console)]
    for c, _ in saved:
        c.width = width
    try:
        yield
    finally:
        for c, before in saved:
            c._width = before


@contextlib.contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def _write_text(path: Path, text: str) -> None:
    """`text` as a terminal shows it (no escape codes, no trailing blanks), written atomically."""
    plain = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)", "", text)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(line.rstrip() for line in plain.splitlines()) + "\n")


# ------------------------------------------------------------------------------ figures/README.md


def readme(record: dict[str, Any]) -> str:
    """figures/README.md: what was run, on what, with which settings, and every file."""
    models = [record["models"][f] for f in record["families"]]
    prompts, sampling, stats = record["prompts"], record["sampling"], record["statistics"]
    bupo, train = record["bupo"], record["bupo"]["settings"]
    where = (
        f"{'a local copy of' if prompts['local_copy'] else 'read from'} `{prompts['dataset']}`, "
        f"{prompts['split']} split; "
        if prompts["dataset"]
        else ""
    )
    lines = [
        "# Figures",
        "",
        "Regenerate with `make figures` (`python scripts/make_figures.py --help` for options);",
        "finished runs under `runs/` are reused, so a rerun only redraws. Entropies in nats.",
        "The README's generated blocks are rendered from this directory alone",
        "(scripts/findings.py); `record.json` holds the run facts they quote.",
        "",
        "## Family comparison",
        "",
        f"- Models (offline aliases `{'`, `'.join(record['families'])}`): "
        + "; ".join(
            f"{m['name']} ({m['n_layers']} layers, |V| = {m['vocab_size']:,}, "
            f"{m['quantisation'] or 'original weights'})"
            for m in models
        ),
        f"- Problems: the first {prompts['n_problems']} of `{prompts['source']}` ({where}sha256 "
        f"{prompts['sha256'][:12]}…).",
        f"- Protocol: each model's own response to each problem, sampled at T = "
        f"{sampling['temperature']:g} ({sampling['distribution']}; {sampling['seeding']}; seed "
        f"{sampling['seed']}), at most {sampling['max_new_tokens']} tokens, "
        f"{thinking_phrase(models)}; only the response tokens are scored.",
        "- Scored response tokens: "
        + "; ".join(
            f"{m['name']} {m['response_tokens']:,} ({m['responses_at_cap']} of {m['responses']} "
            "responses reached the cap)"
            for m in models
        )
        + ".",
        "- Readouts: raw `softmax(x W_U)` at every site (`--sites paper`); logit lens "
        "`softmax(LN_final(x) W_U)` on the residual stream only (`--sites resid`).",
        f"- Statistics: per-prompt means (each problem's mean over its response tokens), then "
        f"their mean over problems with a 95% percentile bootstrap over problems "
        f"({stats['n_boot']} resamples, seed {stats['seed']}); `pooled_mean` in summary.csv is "
        "the mean over all scored tokens.",
        "- Compute: "
        + "; ".join(
            f"{m['name']} "
            + ", ".join(f"{r} {s / 60:.1f} min" for r, s in m["seconds"].items())
            + f" on {m['device']}"
            for m in models
        )
        + ".",
        f"- Same runs as `{record['quick_tour']['compare']['command']}`.",
        "",
        "## BuPO run",
        "",
        f"- {bupo['method']} on {bupo['model']['name']}, {train['steps']} rollouts "
        f"(s_inter = {train['inter_steps']} on π^k, then GRPO on π_θ), k = {bupo['layer']['k']} "
        f"({bupo['layer']['reason']}).",
        f"- Prompts: {bupo['prompts']['n_prompts']} of `{bupo['prompts']['source']}`; "
        + (
            f"screened with {bupo['screen']['samples']} samples each from the base model (seed "
            f"{bupo['screen']['seed']}), the {bupo['screen']['n_kept']} solved sometimes trained "
            "on (`screen.csv` in the run)."
            if bupo["screen"]
            else "not screened."
        ),
        f"- {train['prompts_per_step']} prompts per rollout × G = {train['group_size']} "
        f"responses of up to {train['max_new_tokens']} tokens, lr {train['lr']}, "
        f"{train['mini_batches']} optimizer steps per rollout, seed {train['seed']}; "
        f"{bupo['train_s'] / 60:.1f} min of training on {bupo['model']['device']}.",
        "- Reward before/after: "
        + (
            f"{bupo['reward']['samples']} samples per trained prompt from the base and the "
            f"trained model (seed {bupo['reward']['seed']}); mean over prompts of per-prompt "
            "solve rates with 95% bootstrap CIs, after − before paired by prompt."
            if "difference" in bupo["reward"]
            else "not evaluated (eval_samples = 0)."
        ),
        f"- Before/after profiles: each model's own sampled responses to the first "
        f"{bupo['analyses']['before']['n_prompts']} trained prompts, response tokens only (raw "
        "readout).",
        f"- Same run as `{bupo['command']}`.",
        "",
        "## Files",
        "",
        *[f"- `{name}`: {FIGURE_TEXT[Path(name).stem]}" for name in record["figures"]],
        "- `summary.csv`: the summary rows these figures draw (docs/tables.md layout, rounded).",
        "- `comparison.csv`: shape statistics per model and readout (docs/shape.md).",
        "- `bupo_difference.csv`: after − before entropy and entropy change per site and layer, "
        "approx. 95% CI.",
        "- `bupo_train_log.csv`: the BuPO training log, one row per rollout.",
        f"- `{RECORD}`: the facts of every run above (models, problems, sampling, scored tokens, "
        "timings, commands, the BuPO run's reward and entropies at k).",
        f"- `{ENTROPY_OUTPUT}`, `{COMPARE_OUTPUT}`: the README's Quick tour outputs, rendered by "
        f"the CLI's own code on the cached runs at {TERMINAL_WIDTH} columns.",
    ]
    return "\n".join(lines) + "\n"


def _shown(source: str) -> str:
    """A prompt source as a command takes it: a named set as is, a file relative to the repository
    when it lies in it."""
    path = Path(source)
    if not path.exists():
        return source
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else source


if __name__ == "__main__":
    main()
