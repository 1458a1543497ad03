"""`layerpolicy train`: Bottom-up Policy Optimization (GRPO that first trains layer k's policy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from layerpolicy.errors import LayerpolicyError

from . import options
from .app import console

# (log column, header, format, width) of the live per-step table; act = share of groups with
# non-zero advantage, KL(pi||k) = KL(pi_theta || pi^k), s = seconds
_COLUMNS = (
    ("step", "step", "{:d}", 4),
    ("phase", "phase", "{}", 5),
    ("reward_mean", "reward", "{:.3f}", 6),
    ("groups_active", "act", "{:.2f}", 4),
    ("entropy_final", "H(pi)", "{:.3f}", 5),
    ("entropy_layer_k", "H(pi^k)", "{:.3f}", 7),
    ("kl_layer_k_final", "KL(pi||k)", "{:.3f}", 9),
    ("loss", "loss", "{:+.4f}", 7),
    ("clip_frac", "clip", "{:.3f}", 5),
    ("grad_norm", "|grad|", "{:.3g}", 6),
    ("response_len", "len", "{:.1f}", 5),
    ("seconds", "s", "{:.1f}", 5),
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    model: str = typer.Option(
        "smollm2-135m-instruct",
        "--model",
        "-m",
        help="Alias, hub id, local dir, .gguf file, or packaged name (trained as float32).",
    ),
    prompts: str = typer.Option(
        None,
        "--prompts",
        "-p",
        help="builtin arithmetic (default) or a file with answers, e.g. the BuPO parquet layout "
        "(prompt, reward_model.ground_truth).",
    ),
    limit: int = options.Limit,
    steps: int = typer.Option(100, "--steps", min=1, help="Training steps."),
    inter_steps: int = typer.Option(
        None,
        "--inter-steps",
        min=0,
        help="Steps 1..S train pi^k (default: steps/10, the paper's 30 of 300); 0 = plain GRPO.",
    ),
    layer: str = typer.Option(
        "auto", "--layer", help="auto (boundary-layer rule) or a 1-based layer K < L."
    ),
    group_size: int = typer.Option(8, "--group-size", "-g", min=2, help="Responses per prompt."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step", min=1, help="Prompts per step."),
    mini_batches: int = typer.Option(
        4, "--mini-batches", min=1, help="Optimiser updates per step (mini-batches)."
    ),
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", min=1, help="Response budget per rollout."
    ),
    lr: float = typer.Option(1e-6, "--lr", min=0.0, help="AdamW learning rate."),
    seed: int = options.Seed,
    save_every: int = typer.Option(10, "--save-every", min=1, help="Checkpoint every N steps."),
    analyse: bool = typer.Option(
        False, "--analyse", help="Entropy analysis before and after training (RUN/before, after)."
    ),
    analysis_prompts: int = typer.Option(
        8, "--analysis-prompts", min=1, help="Prompts for the entropy analyses."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    device: str = options.Device,
    offline: bool = options.Offline,
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/train-MODEL)."),
) -> None:
    """Train with BuPO: GRPO whose first steps optimise the internal policy of layer k."""
    from layerpolicy.bupo import TrainConfig
    from layerpolicy.bupo import train as run_training

    config = TrainConfig(
        steps=steps,
        inter_steps=inter_steps,
        layer=_parse_layer(layer),
        group_size=group_size,
        prompts_per_step=prompts_per_step,
        mini_batches=mini_batches,
        max_new_tokens=max_new_tokens,
        lr=lr,
        seed=seed,
        save_every=save_every,
        analyse=analyse,
        analysis_prompts=analysis_prompts,
    )
    run_dir = options.out_dir(out, "train", Path(model).name or model)
    console.print(
        f"training {model} for {steps} steps ({config.s_inter} on pi^k), run directory {run_dir}",
        highlight=False,
    )
    result = run_training(
        model,
        prompts,
        out=run_dir,
        config=config,
        limit=limit,
        resume=resume,
        device=device,
        offline=offline or None,
        on_step=_row_printer(),
    )
    console.print(f"layer k = {result.layer}: {result.layer_reason}", highlight=False)
    console.print(
        f"results in [bold]{result.path}[/] (train_log.parquet/.csv, run.json, figures/); "
        f"final model {result.checkpoint}",
        highlight=False,
    )
    if result.after is not None:
        console.print(f"compare with: layerpolicy compare {run_dir}/before {run_dir}/after")


def _parse_layer(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise LayerpolicyError(
            f"--layer must be 'auto' or a 1-based layer number, got {value!r}"
        ) from None


def _row_printer() -> Callable[[dict[str, Any]], None]:
    """Prints each step's log row as one row of a table (header before the first)."""
    first = [True]

    def show(row: dict[str, Any]) -> None:
        table = Table(box=None, show_header=first[0], padding=(0, 0, 0, 1), pad_edge=False)
        for _, header, _, width in _COLUMNS:
            table.add_column(header, justify="right", width=width, no_wrap=True)
        table.add_row(*(fmt.format(row[key]) for key, _, fmt, _ in _COLUMNS))
        console.print(table, highlight=False)
        first[0] = False

    return show
