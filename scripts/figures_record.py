"""The data behind the README's figures: the tables written into figures/ and record.json's facts.

record.json holds the facts of every run that the README's generated blocks quote (models,
problems, sampling, scored tokens, timings, commands, and under "showcase" the training runs'
facts from scripts/figures_showcase.py); the tables are the rows the figures draw, rounded to
DIGITS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from layerpolicy.comparison import CompareResult
from layerpolicy.models.registry import PACKAGED_MODELS
from layerpolicy.prompts.sources import NAMED_SETS
from layerpolicy.runs import RunDirectory, read_json, write_csv

from .tour import shown

FIGURE_ROWS = {  # metric -> sites whose summary rows the figures draw
    "entropy": ("embed", "resid", "attn", "mlp", "final"),
    "entropy_change": ("attn", "mlp"),
    "rms_norm": ("embed", "resid", "attn", "mlp"),
}
DIGITS = 4  # decimals of the tables written


def write_tables(raw: CompareResult, lens: CompareResult, out: Path) -> None:
    """summary.csv and comparison.csv of the family comparison."""
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


def run_record(
    families: tuple[str, ...],
    raw: CompareResult,
    lens: CompareResult,
    showcase: dict[str, Any],
    written: list[Path],
) -> dict[str, Any]:
    """record.json: the facts of every run that the README's generated blocks quote (`showcase`:
    the training runs', from `showcase_facts`), the analyses of `raw` and `lens` labelled
    `families`."""
    first = read_json(next(iter(raw.runs.values())) / "run.json")
    prompts, named = first["prompts"], NAMED_SETS.get(first["prompts"]["source"])
    return {
        "families": list(families),
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
            for family, name in zip(families, raw.runs, strict=True)
        },
        "figures": [p.name for p in written],
        "showcase": showcase,
    }


def model_facts(raw_run: Path, lens_run: Path) -> dict[str, Any]:
    """One model's facts from its raw and logit-lens runs: what it is, what it scored, how long."""
    raw, lens = read_json(raw_run / "run.json"), read_json(lens_run / "run.json")
    model = raw["model"]
    means = pd.read_parquet(RunDirectory(raw_run).prompt_means_path)
    lengths = means[(means.site == "final") & (means.metric == "entropy")]["n_tokens"]
    packaged = PACKAGED_MODELS.get(model["name"])
    return {
        **{key: model[key] for key in ("name", "architecture", "n_layers", "vocab_size")},
        "hub_id": packaged.hf_name if packaged else None,
        **{key: model.get(key) for key in ("quantisation", "dtype", "device")},
        "thinking": raw["prompts"].get("thinking"),
        "chat_template": packaged.chat_template if packaged else None,
        "responses": len(lengths),
        "response_tokens": int(lengths.sum()),
        "responses_at_cap": int((lengths >= raw["sampling"]["max_new_tokens"]).sum()),
        "truncated_prompts": raw.get("truncated_prompts", 0),
        "seconds": {"raw": raw["timings"]["score_s"], "logit-lens": lens["timings"]["score_s"]},
        "runs": {"raw": shown(str(raw_run)), "logit-lens": shown(str(lens_run))},
        "lens_reads_raw_responses": _same_dir((lens.get("responses") or {}).get("source"), raw_run),
    }


def _same_dir(path: str | None, directory: Path) -> bool:
    """True when `path` names `directory`."""
    return path is not None and Path(path).resolve() == directory.resolve()
