"""A training run's record (run.json) and its report stage: the reward tables' summaries,
entropy at layer k, the figures, the final status."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import AnalysisResult
from ..parallel import current_shard
from ..prompts import PromptSet
from ..runs import write_json
from .config import TrainConfig
from .data import TrainingModel
from .evaluate import paired_difference, reward_summary
from .log import LOG_NAME
from .results import entropy_at_k, figures
from .reward import RewardFn, math_reward, verifier_record
from .sampled import AFTER_FILE, BEFORE_FILE, SCREEN_FILE, Screened


@dataclass(frozen=True)
class Outcome:
    """What the stages produced, for the report: the analyses and reward tables (None: off)."""

    log: pd.DataFrame
    model_dir: Path
    before: AnalysisResult | None
    after: AnalysisResult | None
    reward_before: pd.DataFrame | None
    reward_after: pd.DataFrame | None


def base_record(
    header: dict[str, Any],
    setup: TrainingModel,
    prompt_set: PromptSet,
    layer: tuple[int, str],
    config: TrainConfig,
    reward_fn: RewardFn,
) -> dict[str, Any]:
    """run.json of a run about to train: the spec's header (format, kind, settings, command
    line, versions), model, prompts, layer k and why, units."""
    return {
        **header,
        "method": "BuPO" if config.s_inter > 0 else "GRPO",
        "model": setup.info(),
        "prompts": {
            "source": prompt_set.source,
            "sha256": prompt_set.sha256,
            "n_prompts": len(prompt_set.items),
        },
        "layer": {"k": layer[0], "requested": config.layer, "reason": layer[1]},
        "internal_policy": "pi^k = softmax(H^k W_U / T), raw (no norm); k is 1-based",
        "kl_direction": "KL(pi_theta || pi^k)",
        "entropy_unit": "nats",
        "step_unit": "rollout (generation round); s_inter counts rollouts",
        "trainer": "trl.GRPOTrainer (layerpolicy.bupo.trainer.BupoTrainer)",
        "world_size": current_shard().world,
        "log": f"{LOG_NAME}.parquet",
        "reward": {"function": reward_name(reward_fn)},
        "versions": {**header["versions"], **_trainer_versions()},
    }


def screen_record(screened: Screened, config: TrainConfig) -> dict[str, Any]:
    """run.json's screen entry: the file, samples, seed and what was kept."""
    assert screened.rows is not None
    return {
        "file": SCREEN_FILE,
        "samples": config.screen_samples,
        "seed": config.seed,
        "kept": "prompts solved sometimes (0 < mean reward < 1)",
        "n_kept": len(screened.kept.items),
        "kept_sha256": screened.kept.sha256,
        "summary": reward_summary(screened.rows),
    }


def report_stage(
    run_dir: Path,
    record: dict[str, Any],
    outcome: Outcome,
    config: TrainConfig,
    reward_fn: RewardFn,
) -> tuple[dict[str, Any], list[Path]]:
    """The figures and the complete record (written to run.json), from the stages' outputs."""
    k = record["layer"]["k"]
    title = f"{record['method']} · {record['settings']['model']} · k = {k}"
    drawn = figures(run_dir, outcome.log, outcome.before, outcome.after, title)
    reward: dict[str, Any] = {"function": reward_name(reward_fn)}
    if reward_fn is math_reward:
        reward["verifier"] = verifier_record()
    if outcome.reward_before is not None and outcome.reward_after is not None:
        reward.update(reward_evaluation(outcome.reward_before, outcome.reward_after, config))
    seconds = float(outcome.log["seconds"].sum()) if len(outcome.log) else 0.0
    record = {
        **record,
        "status": "complete",
        "checkpoint": str(outcome.model_dir),
        "figures": [str(p) for p in drawn],
        "timings": {"train_s": round(seconds, 3)},
        "entropy_at_k": entropy_at_k(outcome.before, outcome.after, k),
        "reward": reward,
    }
    write_json(record, Path(run_dir) / "run.json")
    return record, drawn


def reward_evaluation(
    before: pd.DataFrame, after: pd.DataFrame, config: TrainConfig
) -> dict[str, Any]:
    """run.json's reward entry: before, after and after - before on the trained prompts."""
    return {
        "before": reward_summary(before),
        "after": reward_summary(after),
        "difference": paired_difference(before, after),
        "prompts": "trained prompts",
        "samples": config.eval_samples,
        "seed": config.seed + 1,
        "files": [BEFORE_FILE, AFTER_FILE],
    }


def reward_lines(record: dict[str, Any]) -> list[str]:
    """The screen's kept prompts and the reward before/after training, from a run's record."""
    lines = []
    if "screen" in record:
        screen, summary = record["screen"], record["screen"]["summary"]
        lines.append(
            f"screen: trained on {screen['n_kept']} of {summary['n_prompts']} prompts, solved "
            f"sometimes in {screen['samples']} samples (never {summary['never']:.0%}, always "
            f"{summary['always']:.0%})"
        )
    reward = record.get("reward", {})
    if "difference" in reward:
        before, after, change = reward["before"], reward["after"], reward["difference"]
        lines.append(
            f"reward, mean over {before['n_prompts']} trained prompts x {reward['samples']} "
            f"samples [95% CI]: before {_interval(before)}, after {_interval(after)}, "
            f"after - before {_interval(change, '+.3f')}"
        )
    return lines


def reward_name(reward_fn: RewardFn) -> str:
    return getattr(reward_fn, "__name__", repr(reward_fn))


def _interval(entry: dict[str, Any], fmt: str = ".3f") -> str:
    mean = entry.get("prompt_mean", entry["mean"])
    return f"{mean:{fmt}} [{entry['ci_low']:{fmt}}, {entry['ci_high']:{fmt}}]"


def _trainer_versions() -> dict[str, str]:
    found = {}
    for name in ("trl", "accelerate", "peft"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
