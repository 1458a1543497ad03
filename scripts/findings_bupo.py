"""The "BuPO against GRPO" part of the README's "What it finds" block, from figures/ alone.

record.json's "showcase" facts (scripts/figures_showcase.py: per run its settings, prompts,
screen, layer k, reward and entropies at k, command; BuPO − GRPO after training paired by prompt),
SHOWCASE_DIFFERENCE (after − before per run, site and layer, with approximate 95% CIs) and, for
why k is given, comparison.csv and summary.csv of the family comparison. Every outcome is worded
from its 95% interval alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .findings_format import (
    COMPARISON,
    SHOWCASE_DIFFERENCE,
    SUMMARY,
    change_word,
    ci,
    device_phrase,
    duration,
    img,
    missing,
    read_comparison,
)

SIDES = ("before", "after")
UNIFORM_SHARE = 0.9  # H(π^k) / ln|V| above which a readout's policy is called nearly uniform


def render_showcase(record: dict[str, Any], figures_dir: Path) -> list[str]:
    """The section: settings once, prompts and screen, layer k and why, the before/after table
    of both runs, BuPO − GRPO after training, the outcome, the figures and the commands."""
    showcase = record["showcase"]
    bupo, grpo = showcase["runs"]["bupo"], showcase["runs"]["grpo"]
    diff = pd.read_csv(figures_dir / SHOWCASE_DIFFERENCE)
    rows = _rows(bupo, grpo, diff)
    parts = [
        "### BuPO against GRPO",
        _settings(bupo, grpo),
        f"{_trained_prompts(bupo)} {_layer_why(bupo, figures_dir, record['prompts']['title'])}",
        _evaluation(bupo, grpo),
        "\n".join(_table(rows, bupo["method"], grpo["method"])),
        _paired(showcase["bupo_minus_grpo"], bupo["method"], grpo["method"]),
        _outcome(rows, bupo["method"], grpo["method"]),
        "Mean reward of each rollout's samples, both runs on one axis (BuPO's IPA rollouts "
        "shaded):",
        img("showcase_reward.png", "70%"),
        f"After − before entropy per layer, {bupo['method']} left, {grpo['method']} right:",
        _side_by_side("showcase_difference"),
        _dynamics_caption(bupo, grpo),
        _side_by_side("showcase_dynamics"),
        f"The same runs:\n\n```bash\n{bupo['command']}\n{grpo['command']}\n```",
    ]
    return [p for p in parts if p]


def _settings(bupo: dict[str, Any], grpo: dict[str, Any]) -> str:
    s, model = bupo["settings"], bupo["model"]
    weights = (
        f", whose weights here are the packaged GGUF file, {model['quantisation']}, not the "
        "original checkpoint"
        if model["quantisation"]
        else ""
    )
    both = s.keys() | grpo["settings"].keys()
    other = sorted(k for k in both if k != "inter_steps" and s.get(k) != grpo["settings"].get(k))
    budget = f"differ in {', '.join(other)} besides s_inter" if other else "differ in s_inter only"
    return (
        f"{bupo['method']} against plain {grpo['method']} at equal budget, both from "
        f"{model['name']}{weights}. Both runs take {s['steps']} rollouts with the same settings "
        f"and seed ({s['seed']}) and {budget}: {bupo['method']} trains the internal policy π^k "
        f"of layer k in its first s_inter = {s['inter_steps']} rollouts (IPA), then π_θ; "
        f"{grpo['method']} (s_inter = {grpo['settings']['inter_steps']}) trains π_θ in all of "
        f"them. Each rollout samples {s['prompts_per_step']} prompts × G = {s['group_size']} "
        f"responses of at most {s['max_new_tokens']} tokens at T = {s['temperature']:g}, then "
        f"takes {s['mini_batches']} optimizer steps (lr {s['lr']:g}); training took "
        f"{duration(bupo['train_s'])} and {duration(grpo['train_s'])} on "
        f"{device_phrase(model['device'])}. {_grader(bupo['reward'])}"
    )


def _grader(reward: dict[str, Any]) -> str:
    """What the reward is: the verifier's grading, or the name of another reward function."""
    verifier = reward.get("verifier")
    if verifier is None:
        return f"Reward: `{reward['function']}` (no verifier)."
    return (
        "Reward: 1 when the last `\\boxed{}` of a response holds the answer, by "
        f"{verifier['name']} {verifier['version']}, else 0, in training and in every evaluation "
        "([docs/training.md](docs/training.md#reward))."
    )


def _trained_prompts(run: dict[str, Any]) -> str:
    prompts, screen = run["prompts"], run["screen"]
    source = (
        "the built-in arithmetic and word problems (generated, with exact answers)"
        if prompts["source"] == "builtin"
        else f"`{prompts['source']}`"
    )
    share = screen["summary"]
    return (
        f"Prompts: {prompts['n_prompts']} of {source}, screened with {screen['samples']} "
        f"samples each from the base model (seed {screen['seed']}, the same screen for both "
        f"runs): the {screen['n_kept']} it solves sometimes (0 < solve rate < 1; never "
        f"{share['never']:.0%}, always {share['always']:.0%} of the prompts) are trained on."
    )


def _layer_why(run: dict[str, Any], figures_dir: Path, title: str) -> str:
    """Layer k and why: what the boundary-layer rule gives on the family comparison's raw
    readout of the same model, and how close to uniform that layer's policy is."""
    model, layer = run["model"], run["layer"]
    text = f"Layer k = {layer['k']} of {model['n_layers']} ({layer['reason']})"
    comparison = read_comparison(figures_dir / COMPARISON)
    raw = comparison[(comparison.model == model["name"]) & (comparison.readout == "raw")]
    if len(raw) and not missing(raw.iloc[0].eic_mlp):
        row = raw.iloc[0]
        text += f": on the {title} responses above, its ΔH_mlp regions are {row.eic_mlp} and"
        if missing(row.boundary_layer):
            text += " the boundary-layer rule gives no k"
        else:
            text += f" the boundary-layer rule gives k = {row.boundary_layer}"
            text += _uniformity(figures_dir, model["name"], int(row.boundary_layer), row.ln_vocab)
    before = (run.get("entropy_at_k") or {}).get("before", {})
    if before.get("eic_mlp"):
        text += (
            f"; on its own responses to the trained prompts before training they are "
            f"{before['eic_mlp']}"
        )
    return text + "."


def _uniformity(figures_dir: Path, name: str, layer: int, ln_vocab: float) -> str:
    """How close the raw readout's policy at `layer` is to uniform (its entropy against ln|V|)."""
    summary = pd.read_csv(figures_dir / SUMMARY)
    found = summary[
        (summary.model == name)
        & (summary.readout == "raw")
        & (summary.site == "resid")
        & (summary.metric == "entropy")
        & (summary.layer == layer)
    ]
    if found.empty:
        return ""
    entropy = float(found.iloc[0]["mean"])
    near = "nearly uniform: " if entropy >= UNIFORM_SHARE * ln_vocab else ""
    return (
        f", whose raw-readout policy is {near}H = {entropy:.3f} nats against ln|V| = "
        f"{ln_vocab:.3f} for the uniform one"
    )


def _evaluation(run: dict[str, Any], other: dict[str, Any]) -> str:
    reward, analyses = run["reward"], run["analyses"]
    same = (
        "; the same base model, prompts and seeds, so both runs' before columns agree"
        if reward["before"] == other["reward"]["before"]
        else ""
    )
    return (
        f"Reward: {reward['samples']} responses per trained prompt from the base and from each "
        f"trained model (seed {reward['seed']}){same}; each prompt's solve rate, the mean over "
        "prompts with a 95% bootstrap interval over prompts, and after − before paired by prompt. "
        f"Entropies: each model's own sampled responses to the first "
        f"{analyses['before']['n_prompts']} trained prompts, raw readout; their after − before "
        "intervals combine the two intervals as if independent ([docs/shape.md](docs/shape.md))."
    )


def _rows(bupo: dict[str, Any], grpo: dict[str, Any], diff: pd.DataFrame) -> list[tuple]:
    """(title, short name, [(before, after, change) per run]) per quantity: before and after as
    (mean, low, high), change as a mapping with mean, ci_low, ci_high."""
    k, n_layers = bupo["layer"]["k"], bupo["model"]["n_layers"]
    runs = (bupo, grpo)
    rows = [("reward (mean of per-prompt solve rates)", "the reward", [_reward(r) for r in runs])]
    for key, title, short, site, metric, layer in (
        ("policy_entropy", "H(π_θ)", "H(π_θ)", "final", "entropy", n_layers),
        ("entropy_resid", f"H(π^k), resid entropy at k = {k}", "H(π^k)", "resid", "entropy", k),
        ("dh_mlp", f"ΔH_mlp at k = {k}", "ΔH_mlp", "mlp", "entropy_change", k),
        ("dh_attn", f"ΔH_attn at k = {k}", "ΔH_attn", "attn", "entropy_change", k),
    ):
        cells = []
        for run in runs:
            at_k = run["entropy_at_k"]
            found = diff[
                (diff.method == run["method"])
                & (diff.site == site)
                & (diff.metric == metric)
                & (diff.layer == layer)
            ]
            sides = [(at_k[w][key], *at_k[w][f"{key}_ci"]) for w in SIDES]
            cells.append((*sides, found.iloc[0]))
        rows.append((title, short, cells))
    return rows


def _reward(run: dict[str, Any]) -> tuple:
    reward = run["reward"]
    sides = [(reward[w]["prompt_mean"], reward[w]["ci_low"], reward[w]["ci_high"]) for w in SIDES]
    return (*sides, reward["difference"])


def _table(rows: list[tuple], *methods: str) -> list[str]:
    heads = [f"{m} {w}" for m in methods for w in ("before", "after", "after − before")]
    lines = ["| | " + " | ".join(heads) + " |", "| --- " * (len(heads) + 1) + "|"]
    for title, _, cells in rows:
        texts = []
        for before, after, change in cells:
            texts += [ci(*before), ci(*after)]
            texts.append(ci(change["mean"], change["ci_low"], change["ci_high"], signed=True))
        lines.append(f"| {title} | " + " | ".join(texts) + " |")
    return lines


def _paired(change: dict[str, Any], first: str, second: str) -> str:
    low, high = change["ci_low"], change["ci_high"]
    word = "not measurably different (CI includes 0)"
    if low > 0 or high < 0:
        word = f"higher after {first if low > 0 else second}"
    return (
        f"{first} − {second} after training, paired by prompt over the {change['n_prompts']} "
        f"trained prompts ({change['samples']} responses each from each trained model): "
        f"{ci(change['mean'], low, high, signed=True)}; the reward is {word}."
    )


def _outcome(rows: list[tuple], first: str, second: str) -> str:
    """Each quantity's after − before, worded from its interval alone, per run."""
    said = [
        f"{short} {_word(cells[0])} under {first} and {_word(cells[1])} under {second}"
        for _, short, cells in rows
    ]
    return (
        "After − before, from the 95% intervals alone (a change is named only where its "
        "interval excludes 0): " + "; ".join(said) + "."
    )


def _word(cell: tuple) -> str:
    low, high = cell[2]["ci_low"], cell[2]["ci_high"]
    return "did not change measurably" if low <= 0 <= high else change_word(low, high)


def _dynamics_caption(bupo: dict[str, Any], grpo: dict[str, Any]) -> str:
    s, k = bupo["settings"], bupo["layer"]["k"]
    return (
        f"The internal policy of layer k = {k} during training, {bupo['method']} left, "
        f"{grpo['method']} right (H(π^k), KL(π^k ‖ π^j) and cos(H^k, H^j) for every later layer "
        "j, the perplexity of π_θ), on a fixed probe of base-model responses to the first "
        f"{s['analysis_prompts']} trained prompts scored every {s['monitor_every']} optimizer "
        "steps; the dashed line marks where BuPO's GRPO phase starts:"
    )


def _side_by_side(figure: str) -> str:
    return " ".join(img(f"{figure}_{run}.png", "49%") for run in ("bupo", "grpo"))
