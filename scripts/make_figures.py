"""Regenerate the README's figures and the small tables behind them (`make figures`).

From the real packaged models, offline: the `qwen` and `llama` aliases resolve to
Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct (Llama architecture). Both score the first
`--limit` MATH-500 prompts with the raw readout (every site) and the logit lens (residual stream
only), through `layerpolicy.comparison` and its run cache, so a finished run is loaded, not
recomputed.
The BuPO figures come from the short training run in `--bupo-run` (runs/bupo-smollm2), trained here
with the same settings when it is missing and resumed when it is unfinished.

Writes into `--out` (figures/): PNGs, summary.csv (the summary rows every figure draws),
comparison.csv, bupo_difference.csv, bupo_train_log.csv and README.md (models, prompts, tokens,
settings, command). Seeds are fixed, so a rerun on finished runs rewrites identical files.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import layerpolicy as lp
from layerpolicy import plots
from layerpolicy.bupo.log import LOG_NAME
from layerpolicy.comparison import CompareResult, compare
from layerpolicy.prompts import PromptSet
from layerpolicy.runs import read_json, write_csv
from layerpolicy.tables.difference import difference

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("qwen", "llama")
SEED = 0
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
    """Analyse (or load) both families and the BuPO run, then write figures, tables, README."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = args.runs / "cache"
    common = {
        "limit": args.limit,
        "offline": True,
        "device": args.device,
        "cache": cache,
        "progress": True,
    }
    prompts = lp.load_prompts(args.prompts, limit=args.limit)
    raw = compare(FAMILIES, prompts, config=lp.AnalysisConfig(seed=SEED), **common)
    lens_config = lp.AnalysisConfig(readout="logit-lens", sites="resid", seed=SEED)
    lens = compare(FAMILIES, prompts, config=lens_config, **common)
    bupo = bupo_run(args.bupo_run, args.device)

    written = family_figures(raw, lens, out) + bupo_figures(bupo, out)
    write_tables(raw, lens, bupo, out)
    (out / "README.md").write_text(readme(raw, lens, prompts, bupo, written, args))
    print(
        f"{len(written)} figures and their tables in {out} ({time.perf_counter() - started:.0f} s)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts",
        default="math500",
        help="prompt source (default: the named set math500; LAYERPOLICY_DATA may hold a copy)",
    )
    parser.add_argument("--limit", type=int, default=16, help="prompts per model (default 16)")
    parser.add_argument("--out", type=Path, default=REPO / "figures", help="output directory")
    parser.add_argument(
        "--runs", type=Path, default=REPO / "runs", help="run directories (cache/ inside)"
    )
    parser.add_argument(
        "--bupo-run", type=Path, default=REPO / "runs" / "bupo-smollm2", help="BuPO run directory"
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


def readme(
    raw: CompareResult,
    lens: CompareResult,
    prompts: PromptSet,
    bupo: BupoRun,
    written: list[Path],
    args: argparse.Namespace,
) -> str:
    """figures/README.md: what was run, on what, with which settings, and every file."""
    table = raw.comparison.set_index("model")
    analysis = read_json(next(iter(raw.runs.values())) / "run.json")
    scored = ", ".join(f"{name}: {table.loc[name, 'n_tokens']:,}" for name in table.index)
    timings = f"{_timings(raw)}; {_timings(lens)}"
    train = bupo.record["settings"]
    before = read_json(bupo.path / "before" / "run.json")
    lines = [
        "# Figures",
        "",
        "Regenerate with `make figures` (`python scripts/make_figures.py --help` for options);",
        "finished runs under `runs/` are reused, so a rerun only redraws. Entropies in nats.",
        "",
        "## Family comparison",
        "",
        f"- Models (offline aliases `{'`, `'.join(FAMILIES)}`): "
        + "; ".join(
            f"{name} ({row.n_layers} layers, |V| = {row.vocab_size:,})"
            for name, row in table.iterrows()
        ),
        f"- Prompts: the first {len(prompts.items)} of `{_shown(args.prompts)}` (sha256 "
        f"{prompts.sha256[:12]}…), chat template, all positions scored (prompt text, no response).",
        f"- Scored tokens per model: {scored}.",
        "- Readouts: raw `softmax(x W_U)` at every site (`--sites paper`); logit lens "
        "`softmax(LN_final(x) W_U)` on the residual stream only (`--sites resid`).",
        f"- Statistics: mean over prompts of per-prompt means, 95% percentile bootstrap "
        f"({analysis['settings']['n_boot']} resamples, seed {analysis['settings']['seed']}); "
        f"max {analysis['settings']['max_tokens']} tokens per prompt.",
        f"- Compute: {timings}.",
        f"- Same runs as `layerpolicy compare {' '.join(FAMILIES)} --prompts "
        f"{_shown(args.prompts)} --limit {len(prompts.items)} --offline`.",
        "",
        "## BuPO run",
        "",
        f"- {bupo.record['method']} on {bupo.record['model']['name']}, {train['steps']} steps "
        f"(s_inter = {train['inter_steps']} on π^k, then GRPO), k = {bupo.record['layer']['k']} "
        f"({bupo.record['layer']['reason']}).",
        f"- {bupo.record['prompts']['n_prompts']} built-in arithmetic prompts, "
        f"{train['prompts_per_step']} per step × G = {train['group_size']} rollouts of up to "
        f"{train['max_new_tokens']} tokens, "
        f"lr {train['lr']}, {train['mini_batches']} updates per step, seed {train['seed']}; "
        f"{bupo.record['timings']['train_s'] / 60:.0f} min of training on "
        f"{bupo.record['model']['device']}.",
        f"- Before/after profiles: the model's own sampled responses to the first "
        f"{before['prompts']['n_prompts']} prompts, scored response-only (raw readout).",
        f"- Same run as `layerpolicy train --model {BUPO_MODEL} --limit {BUPO_LIMIT} "
        f"--steps {train['steps']} --inter-steps {train['inter_steps']} --layer {train['layer']} "
        f"--group-size {train['group_size']} --prompts-per-step {train['prompts_per_step']} "
        f"--mini-batches {train['mini_batches']} --max-new-tokens {train['max_new_tokens']} "
        f"--lr {train['lr']} --seed {train['seed']} --analyse --analysis-prompts "
        f"{train['analysis_prompts']} --save-every {train['save_every']} "
        f"--out {_shown(bupo.path)}`.",
        "",
        "## Files",
        "",
        *[f"- `{p.name}`: {FIGURE_TEXT[p.stem]}" for p in written],
        "- `summary.csv`: the summary rows these figures draw (docs/tables.md layout, rounded).",
        "- `comparison.csv`: shape statistics per model and readout (docs/shape.md).",
        "- `bupo_difference.csv`: after − before entropy and entropy change per site and layer, "
        "approx. 95% CI.",
        "- `bupo_train_log.csv`: the BuPO training log, one row per step.",
    ]
    return "\n".join(lines) + "\n"


def _timings(result: CompareResult) -> str:
    """`<readout>: <model> N min on <device>, ...` from the records of a comparison's runs."""
    records = {name: read_json(path / "run.json") for name, path in result.runs.items()}
    each = ", ".join(
        f"{name} {r['timings']['score_s'] / 60:.0f} min on {r['model']['device']}"
        for name, r in records.items()
    )
    return f"{result.comparison['readout'].iloc[0]}: {each}"


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
