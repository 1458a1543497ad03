"""The "BuPO before and after" part of the README's "What it finds" block, from figures/ alone.

record.json's "bupo" facts (settings, prompts, screen, layer k, reward, entropies at k) and
bupo_difference.csv (after − before per site and layer, with approximate 95% CIs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .findings_format import (
    BUPO_DIFFERENCE,
    change_word,
    ci,
    device_phrase,
    duration,
    img,
    missing,
)


def render_bupo(
    bupo: dict[str, Any], comparison: pd.DataFrame, figures_dir: Path, title: str
) -> list[str]:
    """The BuPO run: settings, prompts, layer k and why, before -> after with intervals."""
    s, model, k = bupo["settings"], bupo["model"], bupo["layer"]["k"]
    label = model["name"]
    quantised = f", GGUF {model['quantisation']}" if model["quantisation"] else ""
    parts = [
        f"{bupo['method']} on {label}{quantised}: {s['steps']} rollouts, the first "
        f"s_inter = {s['inter_steps']} on the internal policy π^k of layer k (IPA), the rest on "
        f"π_θ (GRPO). Each rollout samples {s['prompts_per_step']} prompts × G = "
        f"{s['group_size']} responses of at most {s['max_new_tokens']} tokens at "
        f"T = {s['temperature']:g}, then takes {s['mini_batches']} optimizer steps (lr "
        f"{s['lr']:g}); {duration(bupo['train_s'])} of training on "
        f"{device_phrase(model['device'])}.",
        f"{_trained_prompts(bupo)} {_layer_why(bupo, comparison, title)}",
        _evaluation(bupo),
    ]
    table = _bupo_table(bupo, pd.read_csv(figures_dir / BUPO_DIFFERENCE), k)
    if table:
        parts.append("\n".join(table))
    parts.append(_reward_sentence(bupo))
    parts.append(_grader_note(bupo))
    parts += [
        f"{img('bupo_training_log.png', '49%')} {img('bupo_difference.png', '49%')}",
        f"The same run:\n\n```bash\n{bupo['command']}\n```",
    ]
    return [p for p in parts if p]


def _trained_prompts(bupo: dict[str, Any]) -> str:
    prompts, screen = bupo["prompts"], bupo.get("screen")
    source = (
        "the built-in arithmetic and word problems (generated, with exact answers)"
        if prompts["source"] == "builtin"
        else f"`{prompts['source']}`"
    )
    if not screen:
        return f"Prompts: the first {prompts['n_prompts']} of {source}, not screened."
    share = screen["summary"]
    return (
        f"Prompts: {prompts['n_prompts']} of {source}, screened with {screen['samples']} "
        f"samples each from the base model: the {screen['n_kept']} it solves sometimes "
        f"(0 < solve rate < 1; never {share['never']:.0%}, always {share['always']:.0%} of the "
        "prompts) are trained on."
    )


def _layer_why(bupo: dict[str, Any], comparison: pd.DataFrame, title: str) -> str:
    model, layer = bupo["model"], bupo["layer"]
    text = f"Layer k = {layer['k']} of {model['n_layers']} ({layer['reason']})"
    raw = comparison[(comparison.model == model["name"]) & (comparison.readout == "raw")]
    if len(raw) and not missing(raw.iloc[0].eic_mlp):
        row = raw.iloc[0]
        rule = "gives no k" if missing(row.boundary_layer) else f"gives k = {row.boundary_layer}"
        text += (
            f": on the {title} responses above, its ΔH_mlp regions are {row.eic_mlp} and the "
            f"boundary-layer rule {rule}"
        )
    before = (bupo.get("entropy_at_k") or {}).get("before", {})
    if before.get("eic_mlp"):
        text += (
            f"; on its own responses to the trained prompts before training they are "
            f"{before['eic_mlp']}"
        )
    return text + "."


def _evaluation(bupo: dict[str, Any]) -> str:
    reward, analyses = bupo["reward"], bupo.get("analyses")
    text = ""
    if "difference" in reward:
        text += (
            f"Reward: {reward['samples']} responses per trained prompt from the base and from "
            f"the trained model (seed {reward['seed']}); each prompt's solve rate, the mean over "
            "prompts with a 95% bootstrap interval over prompts, and after − before paired by "
            "prompt. "
        )
    if analyses:
        text += (
            f"Entropies: each model's own sampled responses to the first "
            f"{analyses['before']['n_prompts']} trained prompts "
            f"({analyses['before']['n_tokens']:,} and {analyses['after']['n_tokens']:,} response "
            "tokens), raw readout; their after − before intervals combine the two intervals as "
            "if independent ([docs/shape.md](docs/shape.md))."
        )
    return text.strip()


def _bupo_table(bupo: dict[str, Any], diff: pd.DataFrame, k: int) -> list[str]:
    rows = []
    reward = bupo["reward"]
    if "difference" in reward:
        before, after, change = reward["before"], reward["after"], reward["difference"]
        cells = [ci(r["prompt_mean"], r["ci_low"], r["ci_high"]) for r in (before, after)]
        rows.append(("reward (mean of per-prompt solve rates)", *cells, change))
    at_k = bupo.get("entropy_at_k")
    if at_k:
        n_layers = bupo["model"]["n_layers"]
        for key, title, site, metric, layer in (
            ("policy_entropy", "H(π_θ)", "final", "entropy", n_layers),
            ("entropy_resid", f"H(π^k), resid entropy at k = {k}", "resid", "entropy", k),
            ("dh_mlp", f"ΔH_mlp at k = {k}", "mlp", "entropy_change", k),
            ("dh_attn", f"ΔH_attn at k = {k}", "attn", "entropy_change", k),
        ):
            found = diff[(diff.site == site) & (diff.metric == metric) & (diff.layer == layer)]
            cells = [ci(at_k[w][key], *at_k[w][f"{key}_ci"]) for w in ("before", "after")]
            rows.append((title, *cells, found.iloc[0]))
    if not rows:
        return []
    lines = ["| | before | after | after − before [95% CI] | |", "| --- | --- | --- | --- | --- |"]
    for title, before, after, change in rows:
        delta = ci(change["mean"], change["ci_low"], change["ci_high"], signed=True)
        word = change_word(change["ci_low"], change["ci_high"])
        lines.append(f"| {title} | {before} | {after} | {delta} | {word} |")
    return lines


def _grader_note(bupo: dict[str, Any]) -> str:
    """What a run graded before the verifier reward existed means today ("" for a current run)."""
    if "verifier" in bupo["reward"]:
        return ""
    return (
        "This run was graded by the earlier reward, which read the last number of a response "
        "without `\\boxed{}`; the current reward (math-verify, the last `\\boxed{}` only, as the "
        "paper's scorer) gives such responses 0, so under it the same screen keeps no prompt and "
        "this command stops at the screen ([docs/training.md](docs/training.md#reward))."
    )


def _reward_sentence(bupo: dict[str, Any]) -> str:
    reward = bupo["reward"]
    if "difference" not in reward:
        return "The reward was not evaluated before and after (eval_samples = 0)."
    change = reward["difference"]
    return (
        f"Over the {change['n_prompts']} trained prompts the reward "
        f"{change_word(change['ci_low'], change['ci_high'])}: "
        f"{reward['before']['prompt_mean']:.3f} before, {reward['after']['prompt_mean']:.3f} "
        f"after, a paired difference of "
        f"{ci(change['mean'], change['ci_low'], change['ci_high'], signed=True)}."
    )
