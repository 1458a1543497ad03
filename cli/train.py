"""`layerpolicy train`: Bottom-up Policy Optimization (GRPO that first trains layer k's policy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.table import Table

from layerpolicy.errors import LayerpolicyError

from . import options
from .console import console

if TYPE_CHECKING:
    from layerpolicy.spec import RunSpec

# (log column, header, format, width) of the live per-rollout table; act = share of groups with
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
# CLI parameter -> RunSpec field (RunSpec.of), where the names differ
_FIELDS = {"lora": "lora_rank", "screen": "screen_samples"}
_NOT_SETTINGS = ("preset", "resume", "out")


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    ctx: typer.Context,
    model: str = options.Model,
    preset: str = typer.Option(
        None, "--preset", help="A shipped run's settings, e.g. paper-qwen3-4b (flags override)."
    ),
    prompts: str = typer.Option(
        None,
        "--prompts",
        "-p",
        help="builtin arithmetic (default), a named set, or a file with answers, e.g. the BuPO "
        "parquet layout (prompt, reward_model.ground_truth).",
    ),
    limit: int = options.Limit,
    steps: int = typer.Option(100, "--steps", min=1, help="Rollouts (training steps)."),
    inter_steps: int = typer.Option(
        None,
        "--inter-steps",
        min=0,
        help="Rollouts 1..S train pi^k (default: steps/10, the paper's 30 of 300); 0 = GRPO.",
    ),
    layer: str = typer.Option(
        "auto", "--layer", help="auto (boundary-layer rule) or a 1-based layer K < L."
    ),
    group_size: int = typer.Option(8, "--group-size", "-g", help="Responses per prompt (>= 2)."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step", min=1, help="Prompts per step."),
    mini_batches: int = typer.Option(
        4, "--mini-batches", min=1, help="Optimizer steps per rollout (mini-batches)."
    ),
    grad_accum: int = typer.Option(
        1, "--grad-accum", min=1, help="Micro-batches accumulated into one optimizer step."
    ),
    num_iterations: int = typer.Option(
        1, "--num-iterations", min=1, help="Passes over each rollout (PPO epochs)."
    ),
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", min=1, help="Response budget per rollout."
    ),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Rollout temperature."),
    lr: float = typer.Option(1e-6, "--lr", min=0.0, help="AdamW learning rate (constant)."),
    beta: float = typer.Option(0.0, "--beta", min=0.0, help="KL coefficient (GRPO only)."),
    seed: int = options.Seed,
    save_every: int = typer.Option(10, "--save-every", min=1, help="Checkpoint every N rollouts."),
    analyse: bool = typer.Option(
        False, "--analyse", help="Entropy analysis before and after training (RUN/before, after)."
    ),
    analysis_prompts: int = typer.Option(
        8, "--analysis-prompts", min=1, help="Prompts for the entropy analyses."
    ),
    screen: int = typer.Option(
        0,
        "--screen",
        min=0,
        help="Sample N responses per prompt from the base model first and train only on the "
        "prompts it solves sometimes (RUN/screen.csv); 0 = off.",
    ),
    eval_samples: int = typer.Option(
        0,
        "--eval-samples",
        min=0,
        help="After training, N responses per trained prompt from the base and the final "
        "model: reward before and after with 95% CIs (RUN/reward_*.csv); 0 = off.",
    ),
    thinking: bool = options.Thinking,
    use_vllm: bool = typer.Option(False, "--use-vllm", help="Sample rollouts with vLLM."),
    lora: int = typer.Option(0, "--lora", min=0, help="Train a LoRA adapter of this rank."),
    report_to: str = typer.Option(
        "none", "--report-to", help="Experiment tracker: none | wandb | tensorboard | trackio."
    ),
    layer_stats: bool = typer.Option(
        True, "--layer-stats/--no-layer-stats", help="Log H(pi^k) and KL(pi||pi^k) per rollout."
    ),
    monitor_every: int = typer.Option(
        None,
        "--monitor-every",
        min=0,
        help="Score a fixed probe every N optimizer steps into RUN/dynamics.parquet (per-layer "
        "entropy, KL(pi^k||pi^j), cos(H^k, H^j), perplexity); default every 5 rollouts; 0 = off.",
    ),
    grpo: list[str] = typer.Option(
        None, "--grpo", help="Any other GRPOConfig field, KEY=VALUE (JSON values); repeatable."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    device: str = options.Device,
    dtype: options.DType = options.DTypeOption,
    device_map: options.DeviceMap | None = options.DeviceMapOption,
    max_memory: str = options.MaxMemory,
    offline: bool = options.Offline,
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/train-MODEL)."),
) -> None:
    """Train with BuPO: GRPO whose first rollouts optimise the internal policy of layer k."""
    options.check_out(out)
    from layerpolicy.bupo import train as run_training
    from layerpolicy.bupo.record import reward_lines

    spec = train_spec(ctx, preset)
    config, model = spec.train, spec.model.spec
    assert config is not None
    run_dir = options.out_dir(out, "train", Path(model).name or model)
    console.print(
        f"training {model} for {config.steps} rollouts ({config.s_inter} on pi^k), "
        f"run directory {run_dir}",
        highlight=False,
    )
    result = run_training(spec, out=run_dir, resume=resume, on_step=_row_printer())
    console.print(f"layer k = {result.layer}: {result.layer_reason}", highlight=False)
    for line in reward_lines(result.record):
        console.print(line, highlight=False)
    console.print(
        f"results in [bold]{result.path}[/] (train_log.parquet/.csv, run.json, figures/); "
        f"final model {result.checkpoint}",
        highlight=False,
    )
    if result.after is not None:
        console.print(f"compare with: layerpolicy compare {run_dir}/before {run_dir}/after")


def train_spec(ctx: typer.Context, preset: str | None) -> RunSpec:
    """The RunSpec of the command line: a preset's, with the flags given overriding it, or the
    flags' own. Flags that are not settings (--preset, --resume, --out) are left out."""
    from layerpolicy.bupo.layer import parse_layer
    from layerpolicy.spec import RunSpec

    fields: dict[str, Any] = {}
    for name, value in ctx.params.items():
        if name in _NOT_SETTINGS or (preset and _is_default(ctx, name)):
            continue
        if name == "layer":
            value = parse_layer(value)
        elif name == "grpo":
            value = parse_grpo(value or [])
        elif name == "offline":
            value = value or None
        fields[_FIELDS.get(name, name)] = value
    if preset:
        return RunSpec.from_preset(preset, **fields)
    return RunSpec.of(train=True, **fields)


def parse_grpo(pairs: list[str]) -> dict[str, Any]:
    """--grpo KEY=VALUE pairs as GRPOConfig fields (values parsed as JSON, else kept as text)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LayerpolicyError(f"--grpo takes KEY=VALUE, got {pair!r}")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def _is_default(ctx: typer.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
    )


def _row_printer() -> Callable[[dict[str, Any]], None]:
    """Prints each rollout's log row as one row of a table (header before the first)."""
    first = [True]

    def show(row: dict[str, Any]) -> None:
        table = Table(box=None, show_header=first[0], padding=(0, 0, 0, 1), pad_edge=False)
        for _, header, _, width in _COLUMNS:
            table.add_column(header, justify="right", width=width, no_wrap=True)
        table.add_row(*(fmt.format(row[key]) for key, _, fmt, _ in _COLUMNS))
        console.print(table, highlight=False)
        first[0] = False

    return show
