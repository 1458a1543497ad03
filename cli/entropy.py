"""`layerpolicy entropy`: internal-policy entropy profile of one model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from layerpolicy.parallel import current_shard
from layerpolicy.tables import stats

from . import options
from .console import console, note


def register(app: typer.Typer) -> None:
    app.command("entropy")(entropy)


def entropy(
    ctx: typer.Context,
    model: str = options.Model,
    prompts: str = options.Prompts,
    column: str = options.Column,
    response_column: str = options.ResponseColumn,
    readout: options.ReadoutMode = options.Readout,
    sites: options.SiteSet = options.Sites,
    top_k: int = options.TopK,
    generate: int = options.Generate,
    temperature: float = options.Temperature,
    sampler: options.Sampler = options.SamplerOption,
    thinking: bool = options.Thinking,
    limit: int = options.Limit,
    batch_size: int = options.BatchSize,
    max_tokens: int = options.MaxTokens,
    chunk_tokens: int = options.ChunkTokens,
    device: str = options.Device,
    dtype: options.DType = options.DTypeOption,
    device_map: options.DeviceMap | None = options.DeviceMapOption,
    max_memory: str = options.MaxMemory,
    seed: int = options.Seed,
    no_chat_template: bool = options.NoChatTemplate,
    offline: bool = options.Offline,
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (default runs/entropy-MODEL-READOUT)."
    ),
    force: bool = options.Force,
) -> None:
    """Entropy, entropy change, KL to final, target rank of every internal policy of a model."""
    options.check_out_dir(out)
    model_config = options.model_config(ctx.params)
    prompt_config = options.prompt_config(ctx.params)
    config = options.analysis_config(ctx.params)
    from layerpolicy.analysis import analyse

    if out is None:
        out = options.out_dir(None, "entropy", model_config.resolve().name, readout)
    result = analyse(model_config, prompt_config, config=config, out=out, force=force)
    if not current_shard().is_main:  # every rank holds the merged run; the main one reports it
        return
    if result.record["model"].get("note"):
        note(result.record["model"]["note"])
    print_summary(result)
    console.print(
        f"results in [bold]{result.path}[/] (tokens.parquet, summary.csv, run.json, figures/)"
    )


def print_summary(result) -> None:
    """A compact per-layer table: resid entropy with CI, module entropy change, KL to final."""
    summary = result.summary
    table = Table(title=f"{result.model} · readout {result.record['settings']['readout']} · nats")
    for column in ("layer", "H(resid) [95% CI]", "dH attn", "dH mlp", "KL(pi||resid)"):
        table.add_column(column, justify="right")
    entropy = _profile(summary, "entropy", ("embed", "resid"), "mean", "ci_low", "ci_high")
    d_attn = _profile(summary, "entropy_change", ("attn",), "mean")
    d_mlp = _profile(summary, "entropy_change", ("mlp",), "mean")
    kl = _profile(summary, "kl_to_final", ("embed", "resid"), "mean")
    n_layers = int(summary.n_layers.max())
    for layer in range(0, n_layers + 1):
        table.add_row(
            str(layer),
            _with_ci(entropy, layer),
            _signed(d_attn, layer),
            _signed(d_mlp, layer),
            _cell(kl, layer, "{:.2f}"),
        )
    final = _profile(summary, "entropy", ("final",), "mean", "ci_low", "ci_high")
    table.add_row("final (pi_theta)", _with_ci(final, n_layers), "", "", "0")
    console.print(table)


def _profile(summary: pd.DataFrame, metric: str, sites: tuple[str, ...], *values: str):
    """`values` of `metric` by layer over `sites` (absent sites are skipped), one frame."""
    present = set(summary.loc[summary.metric == metric, "site"])
    frames = [
        pd.concat([stats.profile(summary, metric, site, v).rename(v) for v in values], axis=1)
        for site in sites
        if site in present
    ]
    return pd.concat(frames) if frames else pd.DataFrame(columns=list(values))


def _cell(frame: pd.DataFrame, layer: int, fmt: str) -> str:
    return fmt.format(frame.at[layer, "mean"]) if layer in frame.index else "-"


def _signed(frame: pd.DataFrame, layer: int) -> str:
    return _cell(frame, layer, "{:+.2f}")


def _with_ci(frame: pd.DataFrame, layer: int) -> str:
    if layer not in frame.index:
        return "-"
    row = frame.loc[layer]
    return f"{row['mean']:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
