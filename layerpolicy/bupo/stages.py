"""The stages around training, each holding at most one copy of the weights.

Before training, the base model is loaded once (only if a stage has work left) for the screen,
the reward before and the entropy analysis before, and freed before the trainer loads the
policy. After training, the saved final model is loaded once (after the trainer is freed) for
the entropy analysis after and the reward after. Every stage reads its finished files on resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..analysis import AnalysisResult, analyse
from ..config import AnalysisConfig, ModelConfig, PromptConfig
from ..models import LoadedModel
from ..models.causal_lm import whole_copy_loading
from ..parallel import current_shard
from ..prompts import PromptSet
from ..runs import RunDirectory
from .config import TrainConfig
from .reward import RewardFn
from .sampled import AFTER_FILE, BEFORE_FILE, ModelGetter, Screened, reward_stage, screen_stage
from .training import release_memory


@dataclass(frozen=True)
class BeforeTraining:
    """The base model's stages: the screen, the reward before and the analysis before (None:
    off)."""

    screened: Screened
    reward: pd.DataFrame | None
    analysis: AnalysisResult | None

    @property
    def trained_prompts(self) -> PromptSet:
        return self.screened.kept


@dataclass(frozen=True)
class AfterTraining:
    """The final model's stages: the analysis after and the reward after (None: off)."""

    analysis: AnalysisResult | None
    reward: pd.DataFrame | None


def before_training(
    model: ModelConfig,
    prompt_set: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    reward_fn: RewardFn,
    *,
    resume: bool,
    progress: bool,
) -> BeforeTraining:
    """Screen, reward before and (with `analyse` or layer auto) the analysis before."""
    base = OneCopy(model, progress)
    options = {"resume": resume, "progress": progress}
    screened = screen_stage(base, prompt_set, config, run_dir, reward_fn, **options)
    trained = screened.kept
    reward = reward_stage(base, trained, config, run_dir / BEFORE_FILE, reward_fn, **options)
    analysis = None
    if config.analyse or config.layer == "auto":
        items = analysis_prompts(trained, config)
        analysis = analysis_stage(base, model, items, config, run_dir / "before", progress)
    base.free()  # the trainer gets the base model's memory
    return BeforeTraining(screened, reward, analysis)


def after_training(
    final: ModelConfig,
    trained: PromptSet,
    config: TrainConfig,
    run_dir: Path,
    reward_fn: RewardFn,
    *,
    resume: bool,
    progress: bool,
) -> AfterTraining:
    """The analysis after (with `analyse`) and the reward after, on the saved final model;
    `resume`: reuse them (the final model is the one they were made with)."""
    model = OneCopy(final, progress)
    analysis = None
    if config.analyse:
        items = analysis_prompts(trained, config)
        analysis = analysis_stage(
            model, final, items, config, run_dir / "after", progress, force=not resume
        )
    reward = reward_stage(
        model, trained, config, run_dir / AFTER_FILE, reward_fn, resume=resume, progress=progress
    )
    model.free()
    return AfterTraining(analysis, reward)


class OneCopy:
    """Loads `model` (a whole copy on every process) on its first call; `free()` lets it go."""

    def __init__(self, model: ModelConfig, progress: bool):
        self.model, self.progress = model, progress
        self._loaded: LoadedModel | None = None

    def __call__(self) -> LoadedModel:
        if self._loaded is None:
            model = self.model
            if model.device_map is None:  # auto: this process's own GPU under a launch
                model = dataclasses.replace(model, device=current_shard().device(model.device))
            with whole_copy_loading():
                self._loaded = model.load(progress=self.progress)
        return self._loaded

    def free(self) -> None:
        self._loaded = None
        release_memory()


def analysis_prompts(trained: PromptSet, config: TrainConfig) -> PromptSet:
    """The first `analysis_prompts` trained prompts."""
    items = trained.items[: config.analysis_prompts]
    return PromptSet(items, "training prompts", "")


def analysis_stage(
    model: ModelGetter,
    named: ModelConfig,
    items: PromptSet,
    config: TrainConfig,
    out: Path,
    progress: bool,
    *,
    force: bool = False,
) -> AnalysisResult:
    """Entropy analysis on the model's own sampled responses to `items` (T, seeded per prompt,
    response positions only; the sampled ids scored as sampled). A finished one is read back
    without loading the model, unless `force` (the model changed since)."""
    prompts = PromptConfig(
        source=items,
        generate=config.max_new_tokens,
        temperature=config.temperature,
        thinking=config.thinking,
        max_tokens=None,
    )
    finished = not force and RunDirectory(out).is_complete()
    analysed: ModelConfig | LoadedModel = named if finished else model()
    settings = AnalysisConfig(seed=config.seed)
    return analyse(analysed, prompts, config=settings, out=out, force=force, progress=progress)


def final_model(model: ModelConfig, model_dir: Path) -> ModelConfig:
    """The saved final model, on the base model's device, dtype and placement."""
    return dataclasses.replace(model, spec=str(model_dir), offline=True)
