"""The sampled stages: the screen and the reward evaluations before and after training.

Each samples a rows table (`layerpolicy.bupo.evaluate`) with the prompts split across the
processes of a launch (accelerate's `split_between_processes`, contiguous shares in prompt order)
and gathered into one table, which the main process writes, with the responses themselves
beside it (NAME_responses.parquet next to NAME.csv, in the layout of `layerpolicy.responses`).
Responses are seeded per (prompt, sample), so the table does not depend on the number of
processes. With `use_vllm` they are sampled by vLLM, as the rollouts are. A resumed run reads a
finished stage's file instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from accelerate import PartialState
from accelerate.utils import gather_object

from ..errors import PromptSourceError
from ..models import LoadedModel
from ..prompts import PromptSet, prompts_sha256
from ..responses import write_responses
from ..runs import write_csv
from .config import TrainConfig
from .evaluate import read_rows, solve_rates, sometimes_solved
from .reward import RewardFn

SCREEN_FILE = "screen.csv"
BEFORE_FILE = "reward_before.csv"
AFTER_FILE = "reward_after.csv"

ModelGetter = Callable[[], LoadedModel]  # loads the sampled model on first call


@dataclass(frozen=True)
class Screened:
    """The screen's output: its rows (None when off) and the prompts kept for training."""

    rows: pd.DataFrame | None
    kept: PromptSet


def screen_stage(
    model: ModelGetter,
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    reward_fn: RewardFn,
    *,
    resume: bool,
    progress: bool,
) -> Screened:
    """`screen_samples` responses per prompt from the base model; keeps those solved sometimes."""
    if not config.screen_samples:
        return Screened(None, prompt_set)
    path = Path(run_dir) / SCREEN_FILE
    rows = reusable(path, prompt_set, config.screen_samples) if resume else None
    if rows is None:
        rows, responses = sample_rewards(
            model(), prompt_set, config, reward_fn, samples=config.screen_samples,
            seed=config.seed, progress=progress,
        )  # fmt: skip
        _write_on_main(rows, responses, path)
    return Screened(rows, _kept(prompt_set, rows, config, path))


def reward_stage(
    model: ModelGetter,
    prompt_set: PromptSet,
    config: TrainConfig,
    path: Path,
    reward_fn: RewardFn,
    *,
    resume: bool,
    progress: bool,
) -> pd.DataFrame | None:
    """`eval_samples` responses per trained prompt (seed + 1) into `path`; None when off."""
    if not config.eval_samples:
        return None
    rows = reusable(path, prompt_set, config.eval_samples) if resume else None
    if rows is None:
        rows, responses = sample_rewards(
            model(), prompt_set, config, reward_fn, samples=config.eval_samples,
            seed=config.seed + 1, progress=progress,
        )  # fmt: skip
        _write_on_main(rows, responses, path)
    return rows


def sample_rewards(
    model: LoadedModel,
    prompt_set: PromptSet,
    config: TrainConfig,
    reward_fn: RewardFn,
    *,
    samples: int,
    seed: int,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows table and the responses table of `samples` responses per prompt at the
    training's budget, temperature and thinking mode: this process samples its share, every
    process returns the whole."""
    state = PartialState(cpu=model.device.type == "cpu")  # as the trainer's, with use_cpu
    drawn: list[pd.DataFrame] = []
    with state.split_between_processes(list(prompt_set.items)) as share:
        rows = solve_rates(
            model,
            dataclasses.replace(prompt_set, items=tuple(share)),
            samples=samples,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=seed,
            thinking=config.thinking,
            reward_fn=reward_fn,
            sampler="vllm" if config.use_vllm else "hf",
            progress=progress and state.is_main_process,
            responses=drawn,
        )
    mine = (rows, pd.concat(drawn, ignore_index=True) if drawn else None)
    shares = gather_object([mine]) if state.num_processes > 1 else [mine]
    responses = [frame for _, frame in shares if frame is not None]
    return (
        pd.concat([rows for rows, _ in shares], ignore_index=True),
        pd.concat(responses, ignore_index=True),
    )


def responses_file(path: Path) -> Path:
    """Where the responses behind the rows table at `path` are written."""
    return path.with_name(f"{path.stem}_responses.parquet")


def reusable(path: Path, prompts: PromptSet, samples: int) -> pd.DataFrame | None:
    """The rows table at `path` when it holds exactly `samples` samples of each prompt."""
    if not path.is_file():
        return None
    rows = read_rows(path)
    expected = [(item.id, index) for item in prompts.items for index in range(samples)]
    return rows if list(zip(rows["prompt_id"], rows["sample"], strict=True)) == expected else None


def _kept(
    prompt_set: PromptSet, screen: pd.DataFrame, config: TrainConfig, path: Path
) -> PromptSet:
    """The prompts solved sometimes in the screen; fewer than one step's is a one-line error."""
    kept = set(sometimes_solved(screen))
    items = tuple(item for item in prompt_set.items if item.id in kept)
    if len(items) < config.prompts_per_step:
        raise PromptSourceError(
            f"the screen kept {len(items)} of {len(prompt_set.items)} prompts (solved sometimes "
            f"in {config.screen_samples} samples; rates in {path}), fewer than the "
            f"{config.prompts_per_step} prompts of a step; raise --limit or --screen, or lower "
            "--prompts-per-step"
        )
    return dataclasses.replace(prompt_set, items=items, sha256=prompts_sha256(items))


def _write_on_main(rows: pd.DataFrame, responses: pd.DataFrame, path: Path) -> None:
    if PartialState().is_main_process:
        write_responses(responses, responses_file(path))
        write_csv(rows, path)
