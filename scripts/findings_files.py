"""figures/README.md, rendered from record.json: what was run, on what, with which settings, and
what every file of figures/ holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .findings_bupo_files import SHOWCASE_FIGURE_TEXT, showcase_files, showcase_section
from .findings_correctness import correctness_files
from .findings_format import (
    COMPARE_OUTPUT,
    ENTROPY_OUTPUT,
    RECORD,
    TERMINAL_WIDTH,
    lens_reads_raw_responses,
    thinking_phrase,
)
from .findings_readouts import figure_text, readout_files

FIGURE_TEXT = {  # figure name -> what figures/README.md says it shows
    "entropy_profile_qwen": "Qwen entropy per layer (resid, attn, mlp; π_θ starred; ln|V| dashed) "
    "with the RMS norm of each readout below",
    "entropy_profile_llama": "the same for the Llama-architecture model",
    "entropy_change_qwen": "Qwen's ΔH_attn and ΔH_mlp per layer, coloured by sign",
    "entropy_change_llama": "the same for the Llama-architecture model",
    "entropy_profile_gemma": "the same for Gemma 3 (module readouts at the post-norm outputs)",
    "entropy_change_gemma": "the same for Gemma 3",
    "compare_entropy": "residual entropy of every model on relative depth l/L (raw readout)",
    "compare_entropy_logit_lens": "the same with the logit lens (final norm applied first)",
    "compare_entropy_change": "ΔH_attn and ΔH_mlp of every model on relative depth",
    **SHOWCASE_FIGURE_TEXT,
}


def render_figures_readme(record: dict[str, Any]) -> str:
    """figures/README.md: what was run, on what, with which settings, and every file."""
    models = [record["models"][f] for f in record["families"]]
    prompts, sampling, stats = record["prompts"], record["sampling"], record["statistics"]
    where = (
        f"{'a local copy of' if prompts['local_copy'] else 'read from'} `{prompts['dataset']}`, "
        f"{prompts['split']} split; "
        if prompts["dataset"]
        else ""
    )
    lines = [
        "# Figures",
        "",
        "Regenerate with `make figures` (`python -m scripts.make_figures --help` for options);",
        "finished runs under `runs/` are reused, so a rerun only redraws. Entropies in nats.",
        "The README's generated blocks are rendered from this directory alone",
        "(scripts/findings*.py, scripts/tour.py); `record.json` holds the run facts they quote.",
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
        "`softmax(LN_final(x) W_U)` on the residual stream only (`--sites resid`)"
        + (
            ", scoring the responses the raw run saved (`--responses RUN`), so both read the "
            "same tokens."
            if lens_reads_raw_responses(models)
            else "."
        ),
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
        *showcase_section(record),
        "## Files",
        "",
        *[f"- `{name}`: {_figure_text(Path(name).stem)}" for name in record["figures"]],
        "- `summary.csv`: the summary rows these figures draw (docs/tables.md layout, rounded).",
        "- `comparison.csv`: shape statistics per model and readout (docs/shape.md).",
        *showcase_files(),
        *correctness_files(record),
        *readout_files(record),
        f"- `{RECORD}`: the facts of every run above (models, problems, sampling, scored tokens, "
        "timings, commands, the training runs' rewards and entropies at k).",
        f"- `{ENTROPY_OUTPUT}`, `{COMPARE_OUTPUT}`: the README's Quick tour outputs, rendered by "
        f"the CLI's own code on the cached runs at {TERMINAL_WIDTH} columns.",
    ]
    return "\n".join(lines) + "\n"


def _figure_text(stem: str) -> str:
    """What figures/README.md says the figure `stem` shows."""
    return figure_text(stem) or FIGURE_TEXT[stem]
