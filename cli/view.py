"""`layerpolicy view`: the interactive HTML report of a finished entropy run."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import console


def register(app: typer.Typer) -> None:
    app.command("view")(view)


def view(
    run: Path = typer.Argument(
        ..., help="A finished `layerpolicy entropy` run, or a training run (its dynamics)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file (default RUN/view.html)."),
    max_prompts: int = typer.Option(
        20, "--max-prompts", help="Token x layer heatmaps for this many prompts (the first ones)."
    ),
) -> None:
    """Self-contained HTML report: profiles with CIs, entropy change, token x layer heatmaps."""
    from layerpolicy.analysis import load_run
    from layerpolicy.dynamics.view import is_training_run, training_view
    from layerpolicy.report.view import build_report

    if is_training_run(run):  # the internal policies during training (dynamics.parquet)
        page = training_view(run, out)
        console.print(f"training dynamics in [bold]{page}[/] (figures in {run / 'figures'})")
        return
    report = build_report(load_run(run), max_prompts=max_prompts)
    out = run if out is None else out
    path = report.save(out / "view.html" if out.is_dir() else out)
    console.print(f"report in [bold]{path}[/] (open it in a browser; works offline)")
