"""`layerpolicy entropy`: internal-policy entropy profile of one model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import options
from .app import console


def register(app: typer.Typer) -> None:
    app.command("entropy")(entropy)


def entropy(
    model: str = typer.Option(
        "smollm2-135m-instruct",
        "--model",
        "-m",
        help="Alias (qwen, llama, ...), hub id, local dir, .gguf file, or packaged name.",
    ),
    prompts: str = options.Prompts,
    column: str = options.Column,
    response_column: str = options.ResponseColumn,
    readout: str = options.Readout,
    sites: str = options.Sites,
    generate: int = options.Generate,
    temperature: float = options.Temperature,
    limit: int = options.Limit,
    batch_size: int = options.BatchSize,
    max_tokens: int = options.MaxTokens,
    chunk_tokens: int = options.ChunkTokens,
    device: str = options.Device,
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="Forward dtype: float32 | bfloat16 | float16 (half precision for GPUs; readouts "
        "and metrics stay float32).",
    ),
    seed: int = options.Seed,
    no_chat_template: bool = options.NoChatTemplate,
    offline: bool = options.Offline,
    out: Path = typer.Option(
        None, "--out", "-o", help="Run directory (default runs/entropy-MODEL-READOUT)."
    ),
    force: bool = options.Force,
) -> None:
    """Entropy, entropy change, KL to final, target rank of every internal policy of a model."""
    from layerpolicy.analysis import analyse
    from layerpolicy.models import load_model

    config = options.analysis_config(
        readout=readout,
        sites=sites,
        batch_size=batch_size,
        chunk_tokens=chunk_tokens,
        max_tokens=max_tokens,
        no_chat_template=no_chat_template,
        generate=generate,
        temperature=temperature,
        seed=seed,
    )
    prompt_set = options.prompt_set(prompts, limit, column, response_column)
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise typer.BadParameter(f"choose one of {', '.join(dtypes)}", param_hint="--dtype")
    loaded = load_model(model, device=device, dtype=dtypes[dtype], offline=offline or None)
    if loaded.info.note:
        console.print(f"[yellow]note:[/] {loaded.info.note}", highlight=False)
    run_dir = options.out_dir(out, "entropy", loaded.info.name, readout)
    result = analyse(loaded, prompt_set, config=config, out=run_dir, force=force)
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

    def value(metric: str, site: str, layer: int, ci: bool = False) -> str:
        row = summary[
            (summary.metric == metric) & (summary.site == site) & (summary.layer == layer)
        ]
        if row.empty:
            return "-"
        r = row.iloc[0]
        return f"{r['mean']:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" if ci else f"{r['mean']:+.2f}"

    n_layers = int(summary.n_layers.max())
    for layer in range(0, n_layers + 1):
        site = "embed" if layer == 0 else "resid"
        table.add_row(
            str(layer),
            value("entropy", site, layer, ci=True),
            value("entropy_change", "attn", layer),
            value("entropy_change", "mlp", layer),
            value("kl_to_final", site, layer).lstrip("+"),
        )
    final = value("entropy", "final", n_layers, ci=True)
    table.add_row("final (pi_theta)", final, "", "", "0")
    console.print(table)
