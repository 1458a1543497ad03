"""figures/README.md, rendered from record.json: what was run, on what, with which settings, and
what every file of figures/ holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .findings_correctness import correctness_files
from .findings_format import COMPARE_OUTPUT, ENTROPY_OUTPUT, RECORD, TERMINAL_WIDTH, thinking_phrase

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


def render_figures_readme(record: dict[str, Any]) -> str:
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
        *correctness_files(record),
        f"- `{RECORD}`: the facts of every run above (models, problems, sampling, scored tokens, "
        "timings, commands, the BuPO run's reward and entropies at k).",
        f"- `{ENTROPY_OUTPUT}`, `{COMPARE_OUTPUT}`: the README's Quick tour outputs, rendered by "
        f"the CLI's own code on the cached runs at {TERMINAL_WIDTH} columns.",
    ]
    return "\n".join(lines) + "\n"
