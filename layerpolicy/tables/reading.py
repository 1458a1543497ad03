"""A plain-language paragraph, and a markdown table, built from a comparison's numbers only."""

from __future__ import annotations

import pandas as pd

from .values import is_missing

_REGION_WORDS = {"E": "exploration", "I": "integration", "C": "convergence"}


def reading(
    comparison: pd.DataFrame,
    diff: pd.DataFrame | None = None,
    pair: tuple[str, str] | None = None,
) -> str:
    """One plain-language paragraph built from the comparison's numbers (quoted as rounded)."""
    rows = list(comparison.itertuples(index=False))
    sentences = []
    for row in rows:
        sentences.append(_profile_sentence(row))
        if _defined(row.eic_mlp):
            sentences.append(_module_sentence(row))
    if len(rows) > 1:
        sentences += _contrasts(comparison)
    if diff is not None and pair is not None:
        sentences.append(_difference_sentence(diff, pair))
    return " ".join(s for s in sentences if s)


def _fmt(value: object) -> str:
    """A number as comparison.csv writes it (floats are already rounded)."""
    return str(value)


def _defined(value: object) -> bool:
    return not is_missing(value)


def _profile_sentence(row) -> str:
    name, n_layers = row.model, row.n_layers
    if _defined(row.convergence_depth):
        head = (
            f"{name} ({n_layers} layers, {row.readout} readout) has its residual-stream entropy "
            f"fall below the midpoint of its range for good at relative depth "
            f"{_fmt(row.convergence_depth)} (layer {row.convergence_layer} of {n_layers})"
        )
    else:
        head = (
            f"{name} ({n_layers} layers, {row.readout} readout) never settles below the midpoint "
            "of its residual-stream entropy range"
        )
    policy = (
        f", and its final policy has {_fmt(row.policy_entropy)} nats of entropy"
        if _defined(row.policy_entropy)
        else ""
    )
    return f"{head}{_drop_clause(row)}{policy}."


def _drop_clause(row) -> str:
    """How the entropy drop is distributed: mostly at the top, mostly in one layer, or spread."""
    if not _defined(row.abruptness):
        return "; its entropy never drops"
    share, abrupt = _fmt(row.largest_drop_share), _fmt(row.abruptness)
    if row.abruptness >= 0.5:
        where = "most of its entropy drop comes in the last 10% of layers"
    elif row.largest_drop_share >= 0.5:
        where = "most of its entropy drop happens in a single layer"
    else:
        where = "its entropy drop is spread over several layers"
    return f"; {where} (largest-drop share {share}, abruptness {abrupt})"


def _regions_text(code: str) -> str:
    """`E1-6 I7-26 C27-36` -> "exploration in layers 1-6, integration in 7-26, ..."."""
    parts = []
    for i, region in enumerate(code.split()):
        layers = region[1:]
        where = f"layer{'s' if '-' in layers else ''} {layers}" if i == 0 else layers
        parts.append(f"{_REGION_WORDS[region[0]]} in {where}")
    return ", ".join(parts)


def _module_sentence(row) -> str:
    text = f"In {row.model}, the MLP entropy change shows {_regions_text(row.eic_mlp)}"
    text += f" ({row.eic_mlp})"
    if _defined(row.boundary_layer):
        text += (
            f", so its boundary layer is k = {row.boundary_layer} (0-based index "
            f"{row.boundary_layer_index}, relative depth {_fmt(row.boundary_rel_depth)})"
        )
    else:
        text += (
            ", so it has no boundary layer k (no exploration region before the first "
            "convergence region)"
        )
    if _defined(row.eic_attn):
        text += f"; attention shows {_regions_text(row.eic_attn)} ({row.eic_attn})"
    return f"{text}."


def _extremes(comparison: pd.DataFrame, column: str) -> tuple[object, object] | None:
    """Rows with the smallest and largest defined `column`, or None with fewer than two."""
    rows = comparison[comparison[column].notna()].sort_values(column, kind="stable")
    if len(rows) < 2:
        return None
    return rows.iloc[0], rows.iloc[-1]


def _contrasts(comparison: pd.DataFrame) -> list[str]:
    sentences = []
    ends = _extremes(comparison, "convergence_depth")
    if ends is not None:
        low, high = ends
        if high.convergence_depth - low.convergence_depth < 0.05:
            sentences.append(
                f"On relative depth the models converge at about the same point "
                f"({_fmt(low.convergence_depth)} to {_fmt(high.convergence_depth)})."
            )
        else:
            sentences.append(
                f"On relative depth {low.model} converges earliest ({_fmt(low.convergence_depth)}) "
                f"and {high.model} latest ({_fmt(high.convergence_depth)})."
            )
    ends = _extremes(comparison, "abruptness")
    if ends is not None and ends[0].abruptness != ends[1].abruptness:
        low, high = ends
        sentences.append(
            f"A larger share of the entropy drop falls in the last 10% of layers in {high.model} "
            f"(abruptness {_fmt(high.abruptness)}) than in {low.model} ({_fmt(low.abruptness)})."
        )
    ends = _extremes(comparison, "mean_abs_dh_mlp")
    if ends is not None and ends[0].mean_abs_dh_mlp != ends[1].mean_abs_dh_mlp:
        low, high = ends
        sentences.append(
            f"Per-layer MLP entropy changes are largest in {high.model} (mean |ΔH| "
            f"{_fmt(high.mean_abs_dh_mlp)} nats) and smallest in {low.model} "
            f"({_fmt(low.mean_abs_dh_mlp)} nats)."
        )
    if comparison["ln_vocab"].nunique() > 1:
        ceilings = ", ".join(
            f"{_fmt(r.ln_vocab)} for {r.model}" for r in comparison.itertuples(index=False)
        )
        sentences.append(
            f"The entropy ceilings ln|V| differ ({ceilings}), so compare the shapes of the "
            "profiles rather than their levels."
        )
    return sentences


def _difference_sentence(diff: pd.DataFrame, pair: tuple[str, str]) -> str:
    entropy = diff[diff["metric"] == "entropy"]
    final = entropy[entropy["site"] == "final"]
    stream = entropy[entropy["site"].isin(["embed", "resid"])]
    text = f"From {pair[0]} to {pair[1]}"
    if len(final):
        f = final.iloc[0]
        text += (
            f", the final policy's entropy changes by {_fmt(f['mean'])} nats "
            f"({_fmt(f['before'])} to {_fmt(f['after'])})"
        )
    if len(stream):
        top = stream.loc[stream["mean"].abs().idxmax()]
        excludes = top["ci_low"] > 0 or top["ci_high"] < 0
        text += (
            f"; the largest residual-entropy change is at layer {top['layer']} "
            f"({_fmt(top['mean'])} nats, approx. 95% CI {_fmt(top['ci_low'])} to "
            f"{_fmt(top['ci_high'])}, which {'excludes' if excludes else 'includes'} zero)"
        )
    return text + "."


def markdown_table(frame: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = [
        "| " + " | ".join("" if not _defined(v) else _fmt(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return [header, rule, *body]
