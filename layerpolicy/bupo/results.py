"""A training run directory's bookkeeping: open or resume it, its figures, entropy at layer k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import AnalysisResult
from ..errors import RunDirectoryError
from ..report.train import train_figures
from ..runs import RunDirectory, read_json
from ..spec import RunSpec
from ..tables.schema import ENTROPY_CHANGE
from ..tables.shape import shape_statistics
from ..tables.stats import profile
from .trainer import STATE_FILE


def open_run(
    run: RunDirectory,
    settings: dict[str, Any],
    resume: bool,
    *,
    spec: RunSpec,
    check: bool = True,
) -> tuple[dict[str, Any] | None, Path | None]:
    """The previous record and newest checkpoint when resuming (the spec's settings must match
    the recorded `settings`, except the resumable ones); (None, None) for a new run. `check`:
    refuse an existing run unless resuming (the main process checks; the others only read)."""
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
    spec.check_against(
        record, resume=True, where=str(run.path), prompts_sha256=settings["prompts_sha256"]
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
    """Resid entropy and dH_mlp, dH_attn at layer k, and H(pi_theta), before and after training
    (nats; mean over prompts of per-prompt means, each with its 95% bootstrap interval as
    `NAME_ci` = [low, high])."""
    if before is None or after is None:
        return None
    out: dict[str, Any] = {}
    for name, result in (("before", before), ("after", after)):
        summary = result.summary
        shape = shape_statistics(summary)
        entry: dict[str, Any] = {}
        for key, metric, site in (
            ("entropy_resid", "entropy", "resid"),
            ("dh_mlp", ENTROPY_CHANGE, "mlp"),
            ("dh_attn", ENTROPY_CHANGE, "attn"),
        ):
            entry[key] = float(profile(summary, metric, site)[layer])
            entry[f"{key}_ci"] = _interval(summary, metric, site, layer)
        final = int(summary["n_layers"].iloc[0])
        entry["policy_entropy"] = shape["policy_entropy"]
        entry["policy_entropy_ci"] = _interval(summary, "entropy", "final", final)
        entry["eic_mlp"] = shape["eic_mlp"]
        out[name] = entry
    return out


def _interval(summary: pd.DataFrame, metric: str, site: str, layer: int) -> list[float]:
    """[ci_low, ci_high] of one summary row."""
    return [float(profile(summary, metric, site, bound)[layer]) for bound in ("ci_low", "ci_high")]
