"""`layerpolicy lens fit`: fit a Jacobian lens for a model offline, cached beside the model."""

from __future__ import annotations

import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import options
from .console import console

lens_app = typer.Typer(help="Jacobian lenses for --readout jacobian-lens.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(lens_app, name="lens")


@lens_app.command("fit")
def fit(
    model: str = options.Model,
    prompts: str = options.Prompts,
    column: str = options.Column,
    limit: int = typer.Option(
        64, "--limit", "-n", min=1, help="Prompts to fit on (the published lenses use 100-1000)."
    ),
    max_seq_len: int = typer.Option(128, "--max-seq-len", min=2, help="Tokens kept per prompt."),
    skip_first_positions: int = typer.Option(
        16, "--skip-first-positions", min=0, help="Leading positions left out of the average."
    ),
    dim_batch: int = typer.Option(
        8, "--dim-batch", min=1, help="Output dimensions per backward pass (memory vs speed)."
    ),
    device: str = options.Device,
    offline: bool = options.Offline,
) -> None:
    """Fit J_l = E[d h_final / d h_l] with TransformerLens's JacobianLens (float32, raw
    weights) on the prompts' plain text, one prompt at a time: an interrupted fit resumes where
    it stopped. Slow on a CPU: one forward and ceil(d_model / dim-batch) backward passes per
    prompt (benchmarks/bench_lens_fit.py measures it)."""
    from layerpolicy.config import ModelConfig, PromptConfig
    from layerpolicy.readout.jacobian_fit import FitSettings, fit_lens, prompt_text

    model_config = ModelConfig(model, device=device, offline=offline or None)
    prompt_set = PromptConfig(prompts, limit=limit, column=column).load()
    texts = [prompt_text(item) for item in prompt_set.items]
    settings = FitSettings(
        prompts=str(prompts or "builtin"),
        prompts_sha256=prompt_set.sha256,
        n_prompts=len(texts),
        max_seq_len=max_seq_len,
        skip_first_positions=skip_first_positions,
        dim_batch=dim_batch,
    )
    loaded = model_config.load()
    columns = (TextColumn("fitting lens"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("fit", total=len(texts))
        path = fit_lens(
            loaded, texts, settings, advance=lambda done: bar.update(task, completed=done)
        )
    seconds = time.perf_counter() - started
    console.print(f"lens for {loaded.info.name} in [bold]{path}[/] ({seconds:.0f} s)")
    console.print(f"read through it: layerpolicy entropy --model {model} --readout jacobian-lens")
