"""`layerpolicy compare`: several models, or one model before and after training, side by side."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from layerpolicy.config import DEFAULT_MODEL
from layerpolicy.errors import LayerpolicyError
from layerpolicy.parallel import current_shard
from layerpolicy.tables.values import interval, is_missing

from . import options
from .console import console, note

# a model's column in the shape table is as wide as its name (at least this): long cells such as
# EIC regions wrap under the name instead of widening it until the name itself is folded
CELL_WIDTH = 16
_SHOWN = {
    "n_layers": "L",
    "vocab_size": "|V|",
    "policy_entropy": "H(pi_theta)",
    "convergence_depth": "convergence depth",
    "convergence_layer": "convergence layer",
    "abruptness": "abruptness",
    "largest_drop_share": "largest-drop share",
    "eic_mlp": "EIC mlp",
    "eic_attn": "EIC attn",
    "boundary_layer": "boundary layer k",
    "boundary_layer_index": "k index (0-based)",
}


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    specs: list[str] = typer.Argument(
        ...,
        metavar="MODEL_OR_RUN",
        help="Models (alias, hub id, local dir, .gguf, packaged name) or run directories "
        "(`layerpolicy entropy` runs, or a training run with before/ and after/).",
    ),
    prompts: str = options.Prompts,
    readout: options.ReadoutMode = options.Readout,
    readouts: str = typer.Option(
        None,
        "--readouts",
        help="Overlay several readouts of each model, e.g. raw,logit-lens,jacobian-lens "
        "(one model is enough); replaces --readout.",
    ),
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
    x: str = typer.Option(
        "rel_depth", "--x", help="Depth axis of the figures: rel_depth (l/L) or layer (l)."
    ),
    allow_mixed_readouts: bool = typer.Option(
        False, "--allow-mixed-readouts", help="Compare runs made with different readouts."
    ),
    by: str = typer.Option(
        None,
        "--by",
        help="correct: the correct against the incorrect responses of one graded run (made "
        "with --generate on prompts with answers), per layer with 95% CIs.",
    ),
    cache: Path = typer.Option(
        Path("runs") / "cache", "--cache", help="Where analysed models are kept for reuse."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output directory (default runs/compare-A-B-...)."
    ),
    force: bool = options.Force,
) -> None:
    """Overlay entropy, module entropy change and KL to final; tabulate shape statistics."""
    options.check_out(out)
    options.check_out(cache, "--cache")
    if by is not None:
        compare_by(by, specs, out)
        return
    spec = options.analysis_spec(
        model=DEFAULT_MODEL, prompts=prompts, column=None, response_column=None,
        readout=readout, lens=lens, sites=sites, top_k=top_k, generate=generate,
        temperature=temperature,
        sampler=sampler, samples=samples, responses=responses, thinking=thinking, limit=limit,
        batch_size=batch_size,
        max_tokens=max_tokens, chunk_tokens=chunk_tokens, device=device, dtype=dtype,
        device_map=device_map, max_memory=max_memory, seed=seed,
        no_chat_template=no_chat_template, offline=offline,
        readout_precision=readout_precision,
    )  # fmt: skip
    from layerpolicy.comparison import compare as run_compare

    out_dir = options.out_dir(out, "compare", *(Path(s).name for s in specs))
    started = time.perf_counter()
    result = run_compare(
        specs,
        spec,
        out=out_dir,
        x=x,
        allow_mixed_readouts=allow_mixed_readouts,
        readouts=options.readout_list(readouts),
        force=force,
        cache=cache,
    )
    if not current_shard().is_main:  # every rank holds the comparison; the main one reports it
        return
    for line in result.notes:
        note(line)
    print_comparison(result.comparison)
    console.print(result.reading, highlight=False)
    console.print(
        f"results in [bold]{result.path}[/] (comparison.csv, comparison.md, figures/) "
        f"in {time.perf_counter() - started:.1f} s"
    )


def compare_by(by: str, specs: list[str], out: Path | None) -> None:
    """`compare RUN --by correct`: one graded run's correct against incorrect responses."""
    if by != "correct":
        raise LayerpolicyError(f"unknown --by {by!r}; choose correct")
    if len(specs) != 1 or not Path(specs[0]).is_dir():
        raise LayerpolicyError(
            "--by correct splits the responses of one run; pass one run directory"
        )
    from layerpolicy.correctness import by_correct

    found = by_correct(specs[0], out=options.out_dir(out, "compare", Path(specs[0]).name, by))
    n = found.record["n_responses"]
    table = Table(title=f"{found.record['model']} · H(resid) · nats · "
                  f"{n['correct']} correct, {n['incorrect']} incorrect responses")  # fmt: skip
    for column in ("layer", "correct [95% CI]", "incorrect [95% CI]", "difference [95% CI]"):
        table.add_column(column, justify="right")
    rows = found.by_correct
    for row in rows[(rows["site"] == "resid") & (rows["metric"] == "entropy")].itertuples():
        table.add_row(
            str(row.layer),
            interval(row.correct, row.correct_low, row.correct_high),
            interval(row.incorrect, row.incorrect_low, row.incorrect_high),
            interval(row.difference, row.difference_low, row.difference_high),
        )
    console.print(table)
    console.print(
        f"results in [bold]{found.path}[/] (by_correct.csv, by_correct_shape.csv, figures/)"
    )


def print_comparison(comparison) -> None:
    """Shape statistics, one column per model (entropies in nats; definitions in docs/shape.md)."""
    table = Table(title="shape statistics · nats · docs/shape.md")
    table.add_column("")
    for name in comparison["model"]:
        width = max(len(str(name)), CELL_WIDTH)
        table.add_column(str(name), justify="right", overflow="fold", max_width=width)
    for column, title in _SHOWN.items():
        cells = ("-" if is_missing(v) else str(v) for v in comparison[column])
        table.add_row(title, *cells)
    console.print(table)
