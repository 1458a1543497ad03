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
of the cached runs, scripts/tour.py) and README.md; then rewrites the generated blocks of
`--readme`, which scripts/findings.py ("What it finds") and scripts/tour.py (the Quick tour)
render from `--out` alone. Seeds are fixed, so a rerun on finished runs writes the same numbers
(the compare command's own timing aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from findings import RECORD, render_findings, replace_block, thinking_phrase
from matplotlib.figure import Figure
from tour import (
    COMPARE_OUTPUT,
    ENTROPY_OUTPUT,
    REPO,
    TERMINAL_WIDTH,
    quick_tour,
    render_compare_tour,
    render_entropy_tour,
    shown,
)

import layerpolicy as lp
from layerpolicy import plots
from layerpolicy.bupo.log import LOG_NAME
from layerpolicy.comparison import CompareResult, compare
from layerpolicy.errors import RunDirectoryError
from layerpolicy.models.registry import PACKAGED_MODELS
from layerpolicy.prompts import load_prompts
from layerpolicy.prompts.sources import NAMED_SETS
from layerpolicy.runs import RunDirectory, atomic_path, read_json, write_csv, write_json
from layerpolicy.tables.difference import difference

FAMILIES = ("qwen", "llama")
SEED = 0
LIMIT = 24  # MATH-500 problems per model
GENERATE = 192  # most response tokens per problem
BATCH = 16  # problems per sampling call and per scored batch
# The short BuPO run behind the README (runs/bupo-smollm2/run.json records the same settings;
# `bupo_record` refuses a finished run trained with others).
BUPO_MODEL = "smollm2-135m-instruct"
BUPO_PROMPTS = "builtin"
BUPO_LIMIT = 48
BUPO_DTYPE = "float32"
BUPO_CONFIG = lp.TrainConfig(
    steps=20,
    inter_steps=4,
    # SmolLM2 has no exploration region of ΔH_mlp under the raw readout, so the boundary-layer
    # rule gives no k: it is given.
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
)
BLOCKS = {  # README block -> its renderer, from the figures directory alone
    "findings": render_findings,
    "tour-entropy": render_entropy_tour,
    "tour-compare": render_compare_tour,
}
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
    bupo_record(args.bupo_run)  # so does a finished BuPO run with other settings
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw, lens = family_runs(args)
    tour = quick_tour(raw, args, out, FAMILIES, BATCH)  # checks its commands before BuPO
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


def update_readme(text: str, figures_dir: Path) -> str:
    """README text with every generated block rendered from `figures_dir`."""
    for name, render in BLOCKS.items():
        text = replace_block(text, name, render(figures_dir))
    return text


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
    """Load the finished BuPO run at `path` (trained with BUPO_*), or train it (resuming an
    unfinished one)."""
    record = bupo_record(path)
    if record.get("status") != "complete":
        lp.train(
            BUPO_MODEL,
            BUPO_PROMPTS,
            out=path,
            config=BUPO_CONFIG,
            limit=BUPO_LIMIT,
            resume=bool(record),
            device=device,
            dtype=BUPO_DTYPE,
        )
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
    was trained with other settings than BUPO_* give (an unfinished one is checked on resume)."""
    record_path = path / "run.json"
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get("status") == "complete":
        recorded, wanted = record.get("settings", {}), bupo_settings()
        changed = sorted(k for k in {*recorded, *wanted} if recorded.get(k) != wanted.get(k))
        if changed:
            raise RunDirectoryError(
                f"{shown(str(path))} holds a finished BuPO run with other settings than "
                f"make_figures' BUPO_* ({', '.join(changed)}); delete or move it to train one "
                "with these"
            )
    return record


def bupo_settings() -> dict[str, Any]:
    """The settings `lp.train` records (run.json "settings") for BUPO_MODEL, BUPO_PROMPTS,
    BUPO_LIMIT, BUPO_DTYPE and BUPO_CONFIG, as JSON holds them."""
    prompts = load_prompts(BUPO_PROMPTS, limit=BUPO_LIMIT)
    settings = {"model": BUPO_MODEL, "prompts_sha256": prompts.sha256, "dtype": BUPO_DTYPE}
    return json.loads(json.dumps({**settings, **BUPO_CONFIG.recorded()}))


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
        "runs": {"raw": shown(str(raw_run)), "logit-lens": shown(str(lens_run))},
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
        "run": shown(str(bupo.path)),
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
    return [*argv, "--out", shown(str(out))]


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
        "(scripts/findings.py, scripts/tour.py); `record.json` holds the run facts they quote.",
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


if __name__ == "__main__":
    main()
