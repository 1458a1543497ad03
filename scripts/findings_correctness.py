"""The "Profiles by correctness" part of the README's "What it finds" block, from figures/ alone.

record.json's "by_correct" facts (scripts/figures_correctness.py: per model the counts of correct
and incorrect responses, whether the two were compared) and by_correct_<family>.csv (per site and
layer each group's mean with its 95% CI and correct − incorrect with its two-sample bootstrap CI).
A record without "by_correct" renders nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .findings_format import change_word, ci, img

CORRECT_WORDS = (
    "higher when correct",
    "lower when correct",
    "no measurable difference (CI includes 0)",
)
DEPTHS = (0.25, 0.5, 0.75)  # relative depths l/L of the table's rows, besides H(π_θ)
QUANTITIES = {  # (site, metric) -> row title
    ("resid", "entropy"): "H(resid)",
    ("mlp", "entropy_change"): "ΔH_mlp",
}


def render_correctness(record: dict[str, Any], figures_dir: Path) -> list[str]:
    """The section: how responses were graded and split, then per model its counts and, where
    both groups were large enough, the table, a sentence from the intervals and the figures."""
    facts = record.get("by_correct")
    if not facts:
        return []
    cap = record.get("sampling", {}).get("max_new_tokens")
    parts = ["### Profiles by correctness", _method(facts, record["prompts"]["title"], cap)]
    for family in record["families"]:
        model = facts["models"].get(family)
        if model is None:
            continue
        parts.append(_counts(model, facts["min_group"]))
        if model["compared"]:
            rows = pd.read_csv(figures_dir / model["table"])
            parts += ["\n".join(_table(rows, model["n_layers"])), _reading(rows)]
            parts.append(" ".join(img(name, "49%") for name in model["figures"]))
    return [p for p in parts if p]


def correctness_files(record: dict[str, Any]) -> list[str]:
    """figures/README.md's lines for the files the profiles by correctness wrote."""
    facts = record.get("by_correct") or {"models": {}}
    lines = []
    for model in facts["models"].values():
        if not model["compared"]:
            continue
        lines.append(
            f"- `{model['table']}`: {model['model']}'s correct against incorrect responses per "
            "layer (resid and π_θ entropy, ΔH_attn, ΔH_mlp), each group's mean with its 95% CI "
            f"and correct − incorrect with its two-sample bootstrap CI (`{model['command']}`)."
        )
        lines += [
            f"- `{name}`: the same, drawn per group with 95% bands." for name in model["figures"]
        ]
    return lines


def _method(facts: dict[str, Any], title: str, cap: int | None) -> str:
    first = next(iter(facts["models"].values()))
    verifier = first.get("verifier")
    grader = f"{verifier['name']} {verifier['version']}" if verifier else "the verifier"
    budget = facts.get("max_new_tokens")
    sampled = (
        f"The same {title} problems are sampled again under the protocol above but with room for "
        f"{budget} response tokens (the profiles above cut them at {cap or 'fewer'}), so that more "
        "answers reach their end, "
        "and the raw readout scores them at every site. Each response "
        if budget
        else f"Each {title} response of the raw-readout runs above "
    )
    return (
        f"{sampled}is graded by {grader} against the "
        "problem's answer (only the last `\\boxed{}` of a response counts: one without a box is "
        "incorrect; [docs/training.md](docs/training.md#reward)), and the profiles of correct "
        "and incorrect responses are compared as `layerpolicy compare RUN --by correct` compares "
        "them: the unit is a response, each group's mean over its responses with a 95% "
        f"percentile-bootstrap interval over them ({first['n_boot']} resamples), and correct − "
        "incorrect with a two-sample bootstrap interval (each group resampled on its own). A "
        f"group of fewer than {facts['min_group']} responses is not compared."
    )


def _counts(model: dict[str, Any], min_group: int) -> str:
    n = model["n_responses"]
    total = n["correct"] + n["incorrect"] + n.get("ungraded", 0)
    ungraded = f" ({n['ungraded']} ungraded)" if n.get("ungraded") else ""
    cut = f", {model['at_cap']} of them cut at the cap" if "at_cap" in model else ""
    text = (
        f"**{model['model']}**: {n['correct']} correct and {n['incorrect']} incorrect of "
        f"{total} responses{ungraded}{cut}"
    )
    if model["compared"]:
        return f"{text} (`{model['command']}`):"
    small = [g for g in ("correct", "incorrect") if n[g] < min_group]
    return (
        f"{text}: too few {' and too few '.join(small)} responses to compare (a group needs at "
        f"least {min_group}), so no profile by correctness is shown for it."
    )


def _table(rows: pd.DataFrame, n_layers: int) -> list[str]:
    """H(π_θ), then each of QUANTITIES at the layers nearest DEPTHS: both groups and the
    difference with their intervals, and what the difference's interval says."""
    shown = [("H(π_θ)", rows[(rows.site == "final") & (rows.metric == "entropy")])]
    for (site, metric), title in QUANTITIES.items():
        own = rows[(rows.site == site) & (rows.metric == metric)]
        if len(own):
            shown.append((title, own.loc[_nearest(own, n_layers)]))
    lines = [
        "| | layer (l/L) | correct [95% CI] | incorrect [95% CI] | "
        "correct − incorrect [95% CI] | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for title, found in shown:
        for r in found.itertuples():
            lines.append(
                f"| {title} | {r.layer} ({r.rel_depth:.3f}) | "
                f"{ci(r.correct, r.correct_low, r.correct_high)} | "
                f"{ci(r.incorrect, r.incorrect_low, r.incorrect_high)} | "
                f"{ci(r.difference, r.difference_low, r.difference_high, signed=True)} | "
                f"{_word(r.difference_low, r.difference_high)} |"
            )
    return lines


def _nearest(rows: pd.DataFrame, n_layers: int) -> list[Any]:
    """Index labels of the rows nearest each of DEPTHS, each once, in depth order."""
    depth = rows["layer"] / n_layers
    picked = [(depth - d).abs().idxmin() for d in DEPTHS]
    return sorted(set(picked), key=lambda i: rows.at[i, "layer"])


def _word(low: float, high: float) -> str:
    return change_word(low, high, CORRECT_WORDS)


def _reading(rows: pd.DataFrame) -> str:
    """Where, over all layers of each of QUANTITIES, correct − incorrect's interval excludes 0."""
    said = []
    for (site, metric), title in QUANTITIES.items():
        own = rows[(rows.site == site) & (rows.metric == metric)]
        if not len(own):
            continue
        above = own[own.difference_low > 0].layer.tolist()
        below = own[own.difference_high < 0].layer.tolist()
        said.append(f"for {title} it " + _where(above, below, len(own)))
    first = rows.iloc[0]
    return (
        "Over every layer, the interval of correct − incorrect: "
        + "; ".join(said)
        + f". The groups are {first.n_correct} and {first.n_incorrect} responses, the intervals "
        "are over these responses only, and no correction is made for reading many layers at "
        "once."
    )


def _where(above: list[int], below: list[int], n: int) -> str:
    """Where an interval lies above 0, below 0, and includes 0, of `n` layers."""
    if not above and not below:
        return f"includes 0 at all {n} layers"
    parts = [f"lies above 0 (correct higher) at {_layers(above)}"] if above else []
    parts += [f"lies below 0 (correct lower) at {_layers(below)}"] if below else []
    rest = n - len(above) - len(below)
    return f"{' and '.join(parts)}, and includes 0 at the other {rest} of {n} layers"


def _layers(layers: list[int]) -> str:
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))
