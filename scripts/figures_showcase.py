"""The data behind the README's BuPO-against-GRPO showcase: its tables in figures/ and its facts.

Two finished training runs of one base model on the same screened prompts, BuPO and plain GRPO
at equal budget. Tables: SHOWCASE_LOG (both training logs, one row per rollout), DIFFERENCE
(both after − before entropy tables) and SHOWCASE (each run's reward before, after and after −
before, and BuPO − GRPO after training paired by prompt), each with a `method` column. Rewards
are means over prompts of per-prompt solve rates with 95% bootstrap intervals over prompts
(`layerpolicy.bupo.evaluate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import layerpolicy as lp
from layerpolicy.bupo.evaluate import paired_difference, prompt_rates, read_rows
from layerpolicy.bupo.log import LOG_NAME
from layerpolicy.bupo.sampled import AFTER_FILE
from layerpolicy.dynamics import DYNAMICS_NAME
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models.registry import PACKAGED_MODELS
from layerpolicy.report.figures import TrainedTables
from layerpolicy.runs import read_json, write_csv
from layerpolicy.tables.difference import difference

from .figures_record import DIGITS
from .findings_format import SHOWCASE, SHOWCASE_DIFFERENCE, SHOWCASE_LOG
from .tour import shown

REWARD_STAGES = ("before", "after", "difference")  # run.json's reward entries, in table order
STAGE_NAMES = {"before": "before", "after": "after", "difference": "after − before"}


@dataclass(frozen=True)
class ShowcaseRun(TrainedTables):
    """A finished training run of the showcase: its tables and its directory."""

    path: Path

    @classmethod
    def load(cls, path: Path) -> ShowcaseRun:
        """The finished run at `path`: run.json, train_log, before/after summaries, dynamics."""
        return cls(
            record=read_json(path / "run.json"),
            log=pd.read_parquet(path / f"{LOG_NAME}.parquet"),
            before=lp.load_run(path / "before").summary,
            after=lp.load_run(path / "after").summary,
            dynamics=pd.read_parquet(path / DYNAMICS_NAME),
            path=path,
        )

    @property
    def method(self) -> str:
        return self.record["method"]


def write_showcase_tables(runs: Mapping[str, ShowcaseRun], out: Path) -> dict[str, Any]:
    """SHOWCASE_LOG, SHOWCASE_DIFFERENCE and SHOWCASE into `out`; returns BuPO − GRPO after
    training (`bupo_minus_grpo`), as SHOWCASE's last row holds it."""
    logs = [run.log.round(DIGITS).assign(method=run.method) for run in runs.values()]
    write_csv(_method_first(pd.concat(logs, ignore_index=True)), out / SHOWCASE_LOG)
    diffs = []
    for run in runs.values():
        diff = difference(run.before, run.after)
        diffs.append(
            diff[diff.metric.isin(["entropy", "entropy_change"])].assign(method=run.method)
        )
    write_csv(_method_first(pd.concat(diffs, ignore_index=True)), out / SHOWCASE_DIFFERENCE)
    paired = bupo_minus_grpo(runs["bupo"], runs["grpo"])
    write_csv(showcase_table(runs, paired), out / SHOWCASE)
    return paired


def bupo_minus_grpo(bupo: ShowcaseRun, grpo: ShowcaseRun) -> dict[str, Any]:
    """BuPO − GRPO of the mean over prompts of per-prompt solve rates after training, with a
    paired bootstrap interval over prompts (`paired_difference`). Both runs must have trained on
    the same prompts (both screen one base model with one seed): a one-line error otherwise."""
    after = {run.method: read_rows(run.path / AFTER_FILE) for run in (bupo, grpo)}
    kept = [set(prompt_rates(rows).index) for rows in after.values()]
    if kept[0] != kept[1]:
        raise LayerpolicyError(
            f"{shown(str(bupo.path))} and {shown(str(grpo.path))} trained on different prompts "
            f"(only in the first: {sorted(kept[0] - kept[1]) or 'none'}; only in the second: "
            f"{sorted(kept[1] - kept[0]) or 'none'}), so their rewards cannot be paired by "
            "prompt; train both from the same base model, prompts, --screen and --seed"
        )
    change = paired_difference(after[grpo.method], after[bupo.method])
    return {**change, "samples": bupo.record["reward"]["samples"], "file": AFTER_FILE}


def showcase_table(runs: Mapping[str, ShowcaseRun], paired: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run and reward stage (before, after, after − before) and the BuPO − GRPO
    row: method, stage, mean, ci_low, ci_high, n_prompts."""
    rows = []
    for run in runs.values():
        reward = run.record["reward"]
        for stage in REWARD_STAGES:
            entry = reward[stage]
            mean = entry["mean"] if stage == "difference" else entry["prompt_mean"]
            rows.append(
                (
                    run.method,
                    STAGE_NAMES[stage],
                    mean,
                    entry["ci_low"],
                    entry["ci_high"],
                    entry["n_prompts"],
                )
            )
    methods = f"{runs['bupo'].method} − {runs['grpo'].method}"
    rows.append(
        (methods, "after", paired["mean"], paired["ci_low"], paired["ci_high"], paired["n_prompts"])
    )
    columns = ["method", "stage", "mean", "ci_low", "ci_high", "n_prompts"]
    return pd.DataFrame(rows, columns=columns)


def showcase_facts(
    runs: Mapping[str, ShowcaseRun], paired: Mapping[str, Any], commands: Mapping[str, str]
) -> dict[str, Any]:
    """record.json's "showcase": each run's facts (`run_facts`, with the `commands` that train
    them) and BuPO − GRPO after training."""
    return {
        "runs": {label: run_facts(run, commands[label]) for label, run in runs.items()},
        "bupo_minus_grpo": dict(paired),
    }


def run_facts(run: ShowcaseRun, command: str) -> dict[str, Any]:
    """A run's settings, prompts, screen, layer k, reward and entropies at k, and the `command`
    that trains it."""
    record = run.record
    info = read_json(run.path / "before" / "run.json")["model"]  # with device, quantisation
    packaged = PACKAGED_MODELS.get(info["name"])
    analyses = {}
    for when, summary in (("before", run.before), ("after", run.after)):
        final = summary[(summary.site == "final") & (summary.metric == "entropy")].iloc[0]
        analyses[when] = {"n_prompts": int(final.n_prompts), "n_tokens": int(final.n_tokens)}
    return {
        "run": shown(str(run.path)),
        "method": record["method"],
        "model": {
            **{key: info.get(key) for key in ("name", "quantisation", "device", "n_layers")},
            "hub_id": packaged.hf_name if packaged else None,
        },
        **{key: record.get(key) for key in ("prompts", "screen", "settings", "layer", "reward")},
        "entropy_at_k": record.get("entropy_at_k"),
        "train_s": record["timings"]["train_s"],
        "analyses": analyses,
        "command": command,
    }


def _method_first(table: pd.DataFrame) -> pd.DataFrame:
    return table[["method", *(c for c in table.columns if c != "method")]]
