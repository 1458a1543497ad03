"""A training run directory's bookkeeping: open or resume it, its figures, entropy at layer k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import AnalysisResult
from ..errors import RunDirectoryError
from ..report.train import train_figures
from ..runs import RunDirectory, read_json
from ..tables.schema import ENTROPY_CHANGE
from ..tables.shape import shape_statistics
from ..tables.stats import profile
from .config import RESUMABLE
from .trainer import STATE_FILE


def open_run(
    run: RunDirectory, settings: dict[str, Any], resume: bool, *, check: bool = True
) -> tuple[dict[str, Any] | None, Path | None]:
    """The previous record and newest checkpoint when resuming (settings must match, except
    the RESUMABLE ones); (None, None) for a new run. `check`: refuse an existing run unless
    resuming (the main process checks; the others only read)."""
    if not resume:
        if check and run.exists():
            raise RunDirectoryError(
                f"{run.path} already holds a training run; pass --resume to continue it or "
                "choose another --out"
            )
        return None, None
    if not run.exists():
        raise RunDirectoryError(f"{run.path} holds no training run to resume; drop --resume")
    record = read_json(run.record_path)
    previous = record.get("settings", {})
    changed = sorted(
        key
        for key in {*previous, *settings}
        if key not in RESUMABLE and previous.get(key) != settings.get(key)
    )
    if changed:
        raise RunDirectoryError(
            f"{run.path} was trained with other settings ({', '.join(changed)}); resume with the "
            "same ones or choose another --out"
        )
    return record, latest_checkpoint(run.path)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (checkpoints/checkpoint-N with the BuPO state file)."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1])) if found else None


def figures(
    run_dir: Path,
    log: pd.DataFrame,
    before: AnalysisResult | None,
    after: AnalysisResult | None,
    title: str,
) -> list[Path]:
    """The training-log figure and, with both analyses, the after - before entropy figure."""
    if log.empty:
        return []
    return train_figures(
        Path(run_dir) / "figures",
        log,
        before=None if before is None else before.summary,
        after=None if after is None else after.summary,
        title=title,
    )


def entropy_at_k(
    before: AnalysisResult | None, after: AnalysisResult | None, layer: int
) -> dict[str, Any] | None:
    """Resid entropy and dH_mlp, dH_attn at layer k before and after training (nats)."""
    if before is None or after is None:
        return None
    out: dict[str, Any] = {}
    for name, result in (("before", before), ("after", after)):
        summary = result.summary
        shape = shape_statistics(summary)
        out[name] = {
            "entropy_resid": float(profile(summary, "entropy", "resid")[layer]),
            "dh_mlp": float(profile(summary, ENTROPY_CHANGE, "mlp")[layer]),
            "dh_attn": float(profile(summary, ENTROPY_CHANGE, "attn")[layer]),
            "policy_entropy": shape["policy_entropy"],
            "eic_mlp": shape["eic_mlp"],
        }
    return out
