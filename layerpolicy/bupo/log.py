"""The step log: one row per rollout from TRL's logged metrics, written as train_log.parquet/.csv.

Columns: step (rollout, 1-based), phase (inter | full), layer (k), reward_mean, reward_std,
groups_active (share of groups whose rewards differ: only they carry an advantage),
entropy_final = H(pi_theta), entropy_layer_k = H(pi^k), kl_layer_k_final = KL(pi_theta || pi^k)
(nats, token means over every m-th response of the rollout, m = steps_per_generation, under
the weights that sampled it), entropy_ratio_policy (entropy of the
policy in the ratio during the updates), loss, clip_frac (share of tokens whose ratio is
clipped), clip_low_frac, clip_high_frac, grad_norm (before clipping), response_len (tokens),
lr, seconds (wall time of the rollout and its updates).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import TrainerCallback

from ..runs import write_csv, write_parquet

LOG_NAME = "train_log"

# log column -> TRL metric name (missing metrics give NaN)
_METRICS = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "entropy_final": "bupo/entropy_final",
    "entropy_layer_k": "bupo/entropy_layer_k",
    "kl_layer_k_final": "bupo/kl_layer_k_final",
    "entropy_ratio_policy": "entropy",
    "loss": "loss",
    "clip_frac": "clip_ratio/region_mean",
    "clip_low_frac": "clip_ratio/low_mean",
    "clip_high_frac": "clip_ratio/high_mean",
    "grad_norm": "grad_norm",
    "response_len": "completions/mean_length",
    "lr": "learning_rate",
}


class StepLog(TrainerCallback):
    """Collects one row per logging window (one rollout) and rewrites the log files each time.

    rows: the rows kept from before a resume; on_step receives each new row (main process only).
    """

    def __init__(
        self,
        run_dir: Path,
        layer: int,
        updates_per_step: int,
        rows: list[dict[str, Any]] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.layer = layer
        self.updates_per_step = updates_per_step
        self.rows = list(rows or [])
        self.on_step = on_step
        self._last = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs):
        if not logs or "reward" not in logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {
            "step": math.ceil(state.global_step / self.updates_per_step),
            "phase": "inter" if (logs.get("bupo/inter") or 0.0) > 0.5 else "full",
            "layer": self.layer,
        }
        for column, name in _METRICS.items():
            value = logs.get(name)
            row[column] = math.nan if value is None else float(value)
        zero_std = logs.get("frac_reward_zero_std")
        row["groups_active"] = math.nan if zero_std is None else 1.0 - float(zero_std)
        row["seconds"] = round(now - self._last, 3)
        self._last = now
        self.rows.append(row)
        write_log(self.run_dir, self.rows)
        if self.on_step is not None:
            self.on_step(row)


def write_log(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    log = pd.DataFrame(rows)
    write_parquet(log, Path(run_dir) / f"{LOG_NAME}.parquet")
    write_csv(log, Path(run_dir) / f"{LOG_NAME}.csv")


def previous_rows(run_dir: Path, last_step: int) -> list[dict[str, Any]]:
    """Log rows of the rollouts a resumed run keeps (steps 1..last_step)."""
    path = Path(run_dir) / f"{LOG_NAME}.parquet"
    if last_step < 1 or not path.is_file():
        return []
    log = pd.read_parquet(path)
    return log[log["step"] <= last_step].to_dict("records")
