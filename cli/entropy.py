"""`layerpolicy entropy`: internal-policy entropy profile of one model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from layerpolicy.parallel import current_shard
from layerpolicy.tables.layers import layer_digest
from layerpolicy.tables.results import RunTables
from layerpolicy.tables.values import interval, is_missing

from . import options
from .console import console, note


def register(app: typer.Typer) -> None:
    app.command("entropy")(entropy)


def entropy(
    model: str = options.Model,
    prompts: str = options.Prompts,
    column: str = options.Column,
    response_column: str = options.ResponseColumn,
    readout: options.ReadoutMode = options.Readout,
    lens: str = options.Lens,
    sites: options.SiteSet = options.Sites,
    top_k: int = options.TopK,
    readout_precision: options.Precision | None = options.ReadoutPrecision,
    generate: int = options.Generate,
    temperature: float = options.Temperature,
    sampler: options.Sampler = options.SamplerOption,
    samples: int = options.Samples,
    responses: str = options.Responses,
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
    options.check_out(out)
    spec = options.analysis_spec(
        model=model, prompts=prompts, column=column, response_column=response_column,
        readout=readout, lens=lens, sites=sites, top_k=top_k, generate=generate,
        temperature=temperature,
        sampler=sampler, samples=samples, responses=responses, thinking=thinking, limit=limit,
        batch_size=batch_size,
        max_tokens=max_tokens, chunk_tokens=chunk_tokens, device=device, dtype=dtype,
        device_map=device_map, max_memory=max_memory, seed=seed,
        no_chat_template=no_chat_template, offline=offline,
        readout_precision=readout_precision,
    )  # fmt: skip
    from layerpolicy.analysis import analyse
    from layerpolicy.readout.jacobian import check_lens_choice
    from layerpolicy.report import run_figures

    check_lens_choice(spec)

    if out is None:
        out = options.out_dir(None, "entropy", spec.model.resolve().name, readout)
    result = analyse(spec, out=out, force=force)
    if not current_shard().is_main:  # every rank holds the merged run; the main one reports it
        return
    result.figures = run_figures(result)
    if result.record["model"].get("note"):
        note(result.record["model"]["note"])
    print_summary(result)
    console.print(
        f"results in [bold]{result.path}[/] (tokens.parquet, summary.csv, run.json, figures/)"
    )


def print_summary(result: RunTables) -> None:
    """A compact per-layer table: resid entropy with CI, module entropy change, KL to final."""
    digest = layer_digest(result.summary)
    table = Table(title=f"{result.record['model']['name']} · readout "
                  f"{result.record['settings']['readout']} · nats")  # fmt: skip
    for column in ("layer", "H(resid) [95% CI]", "dH attn", "dH mlp", "KL(pi||resid)"):
        table.add_column(column, justify="right")
    for layer, row in digest.iterrows():
        ci = "-" if is_missing(row.entropy) else interval(row.entropy, row.ci_low, row.ci_high)
        if layer == "final":
            table.add_row("final (pi_theta)", ci, "", "", "0")
            continue
        changes = ("-" if is_missing(v) else f"{v:+.2f}" for v in (row.d_attn, row.d_mlp))
        kl = "-" if is_missing(row.kl_to_final) else f"{row.kl_to_final:.2f}"
        table.add_row(str(layer), ci, *changes, kl)
    console.print(table)
