"""`layerpolicy view RUN` of a training run: its dynamics figures in one self-contained page."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..errors import LayerpolicyError
from ..runs import RunDirectory
from .callback import DYNAMICS_NAME


def is_training_run(path: str | Path) -> bool:
    """True for a directory that holds a training run's dynamics (or its before/after runs)."""
    path = Path(path)
    return (path / DYNAMICS_NAME).is_file() or all(
        (path / part / "run.json").is_file() for part in ("before", "after")
    )


def training_view(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw RUN/figures/dynamics{,_heatmap}.{png,svg} and write the page that shows them
    (default RUN/view.html); returns the page's path."""
    from ..plots.dynamics import dynamics_figure

    run = Path(run)
    table_path = run / DYNAMICS_NAME
    if not table_path.is_file():
        raise LayerpolicyError(
            f"{run} holds no {DYNAMICS_NAME}; train with --monitor-every N (N > 0) to record "
            f"the internal policies during training, or view {run / 'before'} or {run / 'after'}"
        )
    table = RunDirectory(run).read_table(table_path)
    paths = dynamics_figure(table, run / "figures", title=run.name)
    target = Path(out) if out is not None else run
    target = target / "view.html" if target.is_dir() else target
    svgs = [p.read_text(encoding="utf-8") for p in paths if p.suffix == ".svg"]
    target.write_text(_page(run.name, table, svgs), encoding="utf-8")
    return target


def _page(name: str, table: pd.DataFrame, svgs: list[str]) -> str:
    steps = sorted(table["step"].unique())
    latest = table[table["step"] == steps[-1]].drop(columns=["score_s"])
    figures = "\n".join(f"<figure>{svg}</figure>" for svg in svgs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}: training dynamics</title>"
        "<style>body{font-family:sans-serif;margin:2em}svg{max-width:100%;height:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px}</style></head>"
        f"<body><h1>{html.escape(name)}: the internal policies during training</h1>"
        f"<p>{len(steps)} scorings of the probe, optimizer steps {steps[0]} to {steps[-1]}; "
        "means over probe responses with 95% bootstrap intervals.</p>"
        f"{figures}<h2>step {steps[-1]}</h2>{latest.to_html(index=False, float_format='%.4f')}"
        "</body></html>"
    )
