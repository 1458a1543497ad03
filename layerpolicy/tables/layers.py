"""The per-layer digest of a summary: resid entropy with CI, module entropy change, KL to final."""

from __future__ import annotations

import pandas as pd

from .schema import ENTROPY_CHANGE
from .stats import profile

LAYER_COLUMNS = ("entropy", "ci_low", "ci_high", "d_attn", "d_mlp", "kl_to_final")


def layer_digest(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per layer 0..L (the embedding is layer 0) and a last row "final" (pi_theta).

    Columns (nats, means over prompts): entropy, ci_low, ci_high of the residual readout (the
    final policy's in the last row); d_attn, d_mlp: entropy change of the modules; kl_to_final:
    KL(pi_theta || resid). NaN where the summary has no such row. Index: the layer, or "final".
    """
    entropy = _by_layer(summary, "entropy", ("embed", "resid"), ("mean", "ci_low", "ci_high"))
    table = pd.DataFrame(index=pd.Index(range(int(summary.n_layers.max()) + 1), name="layer"))
    table[["entropy", "ci_low", "ci_high"]] = entropy.reindex(table.index).to_numpy()
    for column, site in (("d_attn", "attn"), ("d_mlp", "mlp")):
        table[column] = _by_layer(summary, ENTROPY_CHANGE, (site,), ("mean",))["mean"]
    table["kl_to_final"] = _by_layer(summary, "kl_to_final", ("embed", "resid"), ("mean",))["mean"]
    final = _by_layer(summary, "entropy", ("final",), ("mean", "ci_low", "ci_high"))
    last = final.iloc[-1] if len(final) else pd.Series(dtype=float)
    row = {
        "entropy": last.get("mean"),
        "ci_low": last.get("ci_low"),
        "ci_high": last.get("ci_high"),
        "kl_to_final": 0.0,
    }
    return pd.concat([table, pd.DataFrame([row], index=pd.Index(["final"], name="layer"))])


def _by_layer(
    summary: pd.DataFrame, metric: str, sites: tuple[str, ...], values: tuple[str, ...]
) -> pd.DataFrame:
    """`values` of `metric` by layer over `sites` (absent sites are skipped), one frame."""
    present = set(summary.loc[summary.metric == metric, "site"])
    frames = [
        pd.concat([profile(summary, metric, site, v).rename(v) for v in values], axis=1)
        for site in sites
        if site in present
    ]
    return pd.concat(frames) if frames else pd.DataFrame(columns=list(values), dtype=float)
