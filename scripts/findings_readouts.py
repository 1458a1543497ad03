"""The "Three readouts" part of the README's "What it finds" block, from figures/ alone.

record.json's "readouts" facts (scripts/figures_readouts.py: per model its Jacobian lens, the run
that read the raw run's responses through it, each readout's shape statistics) and readouts.csv
(per readout the entropy and KL(π_θ ‖ π^l) rows of the residual stream). A record without
"readouts" renders nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .findings_format import ci, duration, img, num

DEPTHS = (0.25, 0.5, 0.75)  # relative depths l/L of the table's columns
READOUT_TITLES = {"raw": "raw", "logit-lens": "logit lens", "jacobian-lens": "Jacobian lens"}
READOUT_FIGURE_TEXT = {  # figure name prefix -> what figures/README.md says it shows
    "readouts_entropy": "residual entropy per layer under the raw readout, the logit lens and "
    "the Jacobian lens, on the same responses",
    "readouts_kl_to_final": "KL(π_θ ‖ π^l) per layer under the three readouts",
}


def render_readouts(record: dict[str, Any], figures_dir: Path) -> list[str]:
    """The section: how the lenses were fitted, then per model a table at three depths, a
    sentence computed from it, and the two figures."""
    facts = record.get("readouts")
    if not facts:
        return []
    rows = pd.read_csv(figures_dir / facts["table"])
    parts = ["### Three readouts", _method(facts, record)]
    for family in record["families"]:
        model = facts["models"].get(family)
        if model is None:
            continue
        own = rows[rows.model == model["model"]]
        parts += [_lens(model), "\n".join(_table(own, model)), _reading(own, model)]
        parts.append(
            " ".join(img(f"readouts_{m}_{family}.png", "49%") for m in ("entropy", "kl_to_final"))
        )
    return [p for p in parts if p]


def readout_files(record: dict[str, Any]) -> list[str]:
    """figures/README.md's line for readouts.csv (the figures are listed with the others)."""
    facts = record.get("readouts")
    if not facts:
        return []
    return [
        f"- `{facts['table']}`: entropy and KL(π_θ ‖ π^l) per layer of the residual stream under "
        "the raw readout, the logit lens and the Jacobian lens, per model (docs/tables.md "
        "summary layout, rounded)."
    ]


def figure_text(stem: str) -> str | None:
    """figures/README.md's text for a readouts figure `<prefix>_<family>`; None for others."""
    for prefix, text in READOUT_FIGURE_TEXT.items():
        if stem.startswith(f"{prefix}_"):
            return f"{text} ({stem.removeprefix(prefix + '_')})"
    return None


def _method(facts: dict[str, Any], record: dict[str, Any]) -> str:
    runs = (
        f"the graded responses of the profiles by correctness, up to {facts['max_new_tokens']} "
        "tokens"
        if facts.get("max_new_tokens")
        else "the raw runs' responses"
    )
    return (
        f"The same response tokens ({runs}, scored again from their "
        "`responses.parquet`) read three ways on the residual stream: the raw readout "
        "`softmax(x W_U)`, the logit lens `softmax(LN_final(x) W_U)` and the Jacobian lens "
        "`softmax(LN_final(J_l x) W_U)`, where J_l is the mean Jacobian of the last layer's "
        "residual with respect to layer l's, fitted with TransformerLens's `JacobianLens` on "
        f"the first problems of `{facts['lens_prompts']}` (training problems, none of those "
        "analysed here) by `layerpolicy lens fit` ([docs/method.md](docs/method.md)). The lenses "
        "below are fitted on a few prompts only, as a CPU allows (the published lenses use "
        "100-1000), so read the Jacobian-lens rows as a first look; `||J_l − I|| / ||I||` says "
        "how far each lens moved from the logit lens (J_l = I)."
    )


def _lens(model: dict[str, Any]) -> str:
    lens, distance = model["lens"], model["lens"]["distance_from_identity"]
    return (
        f"**{model['model']}**: lens fitted on {lens['prompts_fitted']} {lens['prompts']} problems "
        f"({lens['max_seq_len']} tokens each at most, the first {lens['skip_first_positions']} "
        f"positions left out) in {duration(lens['fit_s'])} on the CPU (`{model['fit_command']}`); "
        f"`||J_l − I|| / ||I||` {distance['mean']:.3f} on average over layers (largest "
        f"{distance['max']:.3f}). Jacobian-lens run: `{model['command']}`"
        + (f" ({duration(model['score_s'])} scoring)." if model.get("score_s") else ".")
    )


def _table(rows: pd.DataFrame, model: dict[str, Any]) -> list[str]:
    """Per readout: H(π^l) and KL(π_θ ‖ π^l) at the layers nearest DEPTHS, the convergence depth."""
    layers = _layers(model["n_layers"])
    head = " | ".join(f"H, l = {layer}" for layer in layers)
    kl = " | ".join(f"KL, l = {layer}" for layer in layers)
    lines = [
        f"| readout | {head} | {kl} | convergence depth (layer) |",
        "| --- |" + " --- |" * (2 * len(layers) + 1),
    ]
    for readout, title in READOUT_TITLES.items():
        cells = [_cell(rows, readout, metric, layer) for metric in ("entropy", "kl_to_final")
                 for layer in layers]  # fmt: skip
        shape = model["shape"][readout]
        depth = num(shape["convergence_depth"], "none")
        if shape["convergence_layer"] is not None:
            depth += f" ({shape['convergence_layer']})"
        lines.append(f"| {title} | {' | '.join(cells)} | {depth} |")
    return lines


def _reading(rows: pd.DataFrame, model: dict[str, Any]) -> str:
    """Which readout is nearest π_θ at mid depth, and how the entropy there differs."""
    middle = max(1, round(model["n_layers"] / 2))
    kl = {r: _value(rows, r, "kl_to_final", middle) for r in READOUT_TITLES}
    entropy = {r: _value(rows, r, "entropy", middle) for r in READOUT_TITLES}
    nearest = min(kl, key=lambda r: kl[r])
    order = sorted(kl, key=lambda r: kl[r])
    said = ", ".join(f"{READOUT_TITLES[r]} {kl[r]:.3f}" for r in order)
    return (
        f"At layer {middle} of {model['n_layers']} the {READOUT_TITLES[nearest]} is nearest the "
        f"model's policy (mean KL(π_θ ‖ π^l): {said} nats); the entropy read there is "
        + ", ".join(f"{entropy[r]:.3f} ({READOUT_TITLES[r]})" for r in READOUT_TITLES)
        + " nats."
    )


def _layers(n_layers: int) -> list[int]:
    """The layers nearest DEPTHS (1-based, each once, at least 1)."""
    return sorted({max(1, round(d * n_layers)) for d in DEPTHS})


def _row(rows: pd.DataFrame, readout: str, metric: str, layer: int) -> pd.Series:
    found = rows[
        (rows.readout == readout) & (rows.metric == metric) & (rows.site == "resid")
        & (rows.layer == layer)
    ]  # fmt: skip
    if len(found) != 1:
        raise ValueError(f"readouts.csv has {len(found)} {readout} {metric} rows at layer {layer}")
    return found.iloc[0]


def _value(rows: pd.DataFrame, readout: str, metric: str, layer: int) -> float:
    return float(_row(rows, readout, metric, layer)["mean"])


def _cell(rows: pd.DataFrame, readout: str, metric: str, layer: int) -> str:
    row = _row(rows, readout, metric, layer)
    return ci(row["mean"], row["ci_low"], row["ci_high"])
