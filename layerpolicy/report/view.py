"""The interactive HTML report of one analysis: profiles, entropy change, token x layer heatmaps.

The page is self-contained (plotly.js inline, no network) and is built from the run's tables
only (docs/tables.md). Hovering a heatmap cell shows the top tokens of that internal policy when
the token table holds `top_ids` / `top_logprobs`; decoded with the run's tokenizer when it loads
from local files, else shown as ids.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ..errors import LayerpolicyError
from ..plots import READOUT_LABELS, SITE_COLORS
from ..runs import atomic_path
from ..tables.results import RunTables
from .responses_view import describe_response, heatmap_units

MAX_PROMPTS = 20
TOP_SHOWN = 5
PROFILE_METRICS = {"entropy": "entropy (nats)", "kl_to_final": "KL(π_θ ‖ readout) (nats)"}
PROFILE_SITES = ("resid", "attn", "mlp", "final")
PROFILE_TITLES = ("entropy of each internal policy", "KL from the final policy π_θ")
HEATMAP_METRICS = {
    "entropy": "entropy (nats)",
    "kl_to_final": "KL(π_θ ‖ readout) (nats)",
    "target_rank": "log10 rank of next token",
}
NO_TOP_K = "no top-k tokens in this run; rerun `layerpolicy entropy` with --top-k 5 to see them"
NO_MODULES = "no entropy change of attention or MLP in this run; score it with --sites paper"
_NO_TOP_K_NOTE = f'<p class="note" id="lp-no-top">{html.escape(NO_TOP_K)}</p>'
_DASHES = {"raw": "solid", "logit-lens": "dash", "jacobian-lens": "dot"}
_CONFIG = {"displaylogo": False, "responsive": True}
_TEMPLATE = Template((resources.files(__package__) / "view.html").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Report:
    """A rendered report. `html` is one self-contained page; in Jupyter it shows in an iframe."""

    html: str

    def save(self, path: str | Path) -> Path:
        """Write the page to `path` (atomically) and return the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        page = html.escape(self.html, quote=True)
        return f'<iframe srcdoc="{page}" style="width:100%;height:1400px;border:0"></iframe>'


def build_report(result: RunTables, *, max_prompts: int = MAX_PROMPTS) -> Report:
    """The report of one finished analysis; heatmaps for its first `max_prompts` prompts."""
    if result.record.get("kind") != "entropy":
        raise LayerpolicyError(
            f"a report needs an entropy run, got a {result.record.get('kind')!r} run; "
            "pass a `layerpolicy entropy` run directory"
        )
    if max_prompts < 1:
        raise LayerpolicyError(f"--max-prompts must be at least 1, got {max_prompts}")
    tokens, summary = result.tokens, result.summary
    responses = getattr(result, "responses", None)
    payload = _heatmap_payload(tokens, result.record, max_prompts, responses)
    page = _TEMPLATE.substitute(
        title=html.escape(f"layerpolicy · {result.record['model']['name']}"),
        plotly=get_plotlyjs(),
        meta=_meta(result.record, summary, len(payload["prompts"])),
        profile=_div(_profile_figure(summary), "lp-profile"),
        change=_div(_change_figure(summary), "lp-change"),
        prompts="".join(
            f'<option value="{i}">{html.escape(p["id"])}</option>'
            for i, p in enumerate(payload["prompts"])
        ),
        metrics="".join(f'<option value="{m}">{m}</option>' for m in HEATMAP_METRICS),
        note=""
        if payload["has_top"]
        else f'<p class="note" id="lp-no-top">{html.escape(NO_TOP_K)}</p>',
        data=json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c"),
    )
    return Report(page)


def _meta(record: dict[str, Any], summary: pd.DataFrame, n_shown: int) -> str:
    readouts = ", ".join(READOUT_LABELS.get(r, r) for r in summary["readout"].unique())
    model, prompts = record["model"], record["prompts"]
    weights = f", weights {model['quantisation']}" if model.get("quantisation") else ""
    items = [
        f"model {model['name']} ({model['n_layers']} layers{weights})",
        f"readout: {readouts}",
        f"prompts: {prompts['source'] or 'built-in'}, {prompts['n_prompts']} scored, "
        f"{n_shown} in the heatmap",
        "entropies and KL in nats; KL(π_θ ‖ readout); 95% bootstrap CIs over prompts",
    ]
    return "<br>".join(html.escape(item) for item in items)


def _div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_CONFIG)


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _profile_figure(summary: pd.DataFrame) -> go.Figure:
    """Mean per layer with its CI band, per site and readout; pi_theta at layer L."""
    fig = make_subplots(rows=1, cols=len(PROFILE_METRICS), subplot_titles=PROFILE_TITLES)
    for col, metric in enumerate(PROFILE_METRICS, start=1):
        rows = summary[(summary.metric == metric) & summary.site.isin(PROFILE_SITES)]
        for (readout, site), part in rows.groupby(["readout", "site"], sort=False):
            traces = _profile_traces(part.sort_values("layer"), site, readout, col == 1)
            fig.add_traces(traces, rows=1, cols=col)
        fig.update_yaxes(title_text=PROFILE_METRICS[metric], row=1, col=col)
        fig.update_xaxes(title_text="layer l", row=1, col=col)
    fig.update_layout(height=420, margin={"t": 40}, template="plotly_white")
    return fig


def _profile_traces(rows: pd.DataFrame, site: str, readout: str, legend: bool) -> list:
    """One site's curve and CI band (or pi_theta's marker with its CI) for one readout."""
    color, name = SITE_COLORS[site], f"{'final π_θ' if site == 'final' else site} · {readout}"
    if site == "final":
        marker = {"color": color, "symbol": "star", "size": 12}
        return [
            go.Scatter(
                x=rows.layer, y=rows["mean"], mode="markers", marker=marker, name=name,
                error_y=_error_bars(rows), hovertemplate="π_θ: %{y:.3f}", showlegend=legend,
            )
        ]  # fmt: skip
    x = rows.layer.tolist()
    band = go.Scatter(
        x=x + x[::-1], y=rows.ci_high.tolist() + rows.ci_low.tolist()[::-1], fill="toself",
        fillcolor=_rgba(color, 0.18), line={"width": 0}, mode="lines", hoverinfo="skip",
        legendgroup=name, showlegend=False,
    )  # fmt: skip
    line = go.Scatter(
        x=x, y=rows["mean"], mode="lines+markers", name=name, legendgroup=name,
        line={"color": color, "dash": _DASHES.get(readout, "dot")}, showlegend=legend,
        customdata=np.c_[rows.ci_low, rows.ci_high],
        hovertemplate="layer %{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]",
    )  # fmt: skip
    return [band, line]


def _error_bars(rows: pd.DataFrame) -> dict[str, Any]:
    return {"array": rows.ci_high - rows["mean"], "arrayminus": rows["mean"] - rows.ci_low}


def _change_figure(summary: pd.DataFrame) -> go.Figure:
    """Entropy change ΔH of attention and MLP per layer, mean over prompts with 95% CI."""
    fig = go.Figure()
    rows = summary[(summary.metric == "entropy_change") & summary.site.isin(["attn", "mlp"])]
    if rows.empty:
        fig.add_annotation(
            text=NO_MODULES, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
    for (readout, site), part in rows.groupby(["readout", "site"], sort=False):
        part = part.sort_values("layer")
        fig.add_bar(
            x=part.layer,
            y=part["mean"],
            name=f"{site} · {readout}",
            marker_color=SITE_COLORS[site],
            error_y=_error_bars(part),
            hovertemplate="layer %{x}: ΔH %{y:.3f} nats",
        )
    fig.update_layout(
        barmode="group",
        height=360,
        margin={"t": 20},
        template="plotly_white",
        xaxis_title="layer l",
        yaxis_title="entropy change ΔH (nats)",
    )
    return fig


def _heatmap_payload(
    tokens: pd.DataFrame, record: dict[str, Any], max_prompts: int, responses: Any = None
) -> dict[str, Any]:
    """Per prompt (or response): the (layer rows x positions) grids the page draws, the response
    text and grade where the run saved them, plus the shown vocabulary.

    Rows are embed (0), resid 1..L and the final policy (L + 1); NaN cells become null. Top-k
    grids are (rows x positions x k): ids (-1 where a row holds none) and probabilities.
    """
    n_layers = int(tokens["n_layers"].iloc[0])
    stream = tokens[tokens.site.isin(["embed", "resid", "final"])]
    has_top = "top_ids" in stream.columns and any(
        ids is not None and len(ids) for ids in stream["top_ids"]
    )
    units = heatmap_units(stream, max_prompts)
    prompts = [describe_response(_prompt_grid(u, n_layers, has_top), u, responses) for u in units]
    ids: set[int] = set()
    for prompt in prompts:
        ids.update(prompt.pop("_ids"))
    return {
        "prompts": prompts,
        "layers": ["embed", *map(str, range(1, n_layers + 1)), "final π_θ"],
        "row_names": ["embed", *(f"resid layer {k}" for k in range(1, n_layers + 1)), "final π_θ"],
        "vocab": _vocabulary(ids, tokens, record),
        "has_top": bool(has_top),
        "no_top": NO_TOP_K,
        "labels": HEATMAP_METRICS,
    }


def _prompt_grid(rows: pd.DataFrame, n_layers: int, has_top: bool) -> dict[str, Any]:
    positions = np.sort(rows["position"].unique())
    column = np.searchsorted(positions, rows["position"].to_numpy())
    site = rows["site"].to_numpy()
    row = np.where(site == "embed", 0, np.where(site == "final", n_layers + 1, rows["layer"]))
    shape = (n_layers + 2, len(positions))

    def place(values: np.ndarray, at: np.ndarray | slice, fill: Any) -> np.ndarray:
        out = np.full(shape + values.shape[1:], fill)
        out[row[at], column[at]] = values
        return out

    def grid(values: np.ndarray, at: np.ndarray | slice = slice(None)) -> list:
        out = place(values, at, np.nan)
        return np.where(np.isnan(out), None, out.round(4)).tolist()

    first = rows.drop_duplicates("position").sort_values("position")
    grids: dict[str, Any] = {
        "id": str(rows["prompt_id"].iloc[0]),
        "positions": positions.tolist(),
        "tokens": first["token_id"].astype(int).tolist(),
        "targets": first["target_id"].astype(int).tolist(),
        "metrics": {m: grid(rows[m].to_numpy(np.float64)) for m in HEATMAP_METRICS},
        "_ids": set(first["token_id"].astype(int)) | set(first["target_id"].astype(int)),
    }
    if has_top:
        lists = rows["top_ids"].to_numpy()
        held = np.array([ids is not None and len(ids) > 0 for ids in lists])
        k = min([TOP_SHOWN, *(len(ids) for ids in lists[held])])
        ids = np.array([x[:k] for x in lists[held]], np.int64).reshape(-1, k)
        logprobs = rows["top_logprobs"].to_numpy()[held]
        probs = np.exp(np.array([x[:k] for x in logprobs], np.float64).reshape(-1, k))
        shown = np.array([_probability(p) for p in probs.ravel()], object).reshape(probs.shape)
        grids["top_ids"] = place(ids, held, -1).tolist()
        grids["top_probs"] = place(shown, held, None).tolist()
        grids["_ids"].update(ids.ravel().tolist())
    return grids


def _probability(p: float) -> str:
    """A probability as the hover shows it: 4 decimals, or 2 significant digits below 0.001."""
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


def _vocabulary(ids: set[int], tokens: pd.DataFrame, record: dict[str, Any]) -> dict[str, str]:
    """Hover text of each token id shown: quoted text with JSON escapes, or `#id` undecoded.

    Input tokens take their text from the table; the rest come from the run's tokenizer.
    """
    pairs = tokens[["token_id", "token"]].drop_duplicates("token_id")
    texts = dict(zip(pairs["token_id"].astype(int), pairs["token"], strict=True))
    wanted = sorted(i for i in ids if i >= 0)
    tokenizer = _local_tokenizer(record) if any(i not in texts for i in wanted) else None
    shown: dict[str, str] = {}
    for token_id in wanted:
        if token_id not in texts and tokenizer is None:
            shown[str(token_id)] = f"#{token_id}"
            continue
        text = texts[token_id] if token_id in texts else tokenizer.decode([token_id])
        quoted = "'" + json.dumps(str(text), ensure_ascii=False)[1:-1] + "'"
        shown[str(token_id)] = html.escape(quoted, quote=False)
    return shown


def _local_tokenizer(record: dict[str, Any]) -> Any | None:
    """The run's tokenizer when it loads from local files (never the network), else None."""
    location = record["model"]["location"]
    if Path(location).is_absolute() and not Path(location).is_dir():
        return None  # a local model that is gone
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        return None
