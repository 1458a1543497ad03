"""The run specification: model + prompts + analysis or training settings, and a format version.

`RunSpec` is the one place that turns settings into the record of a run: the settings run.json
holds (`settings`), the cache key (`key`), the check of a run directory's settings (on resume,
the keys a resumed run may change are allowed), the run.json header and the command line that
reproduces the run (`to_argv`). The fields of each config declare whether they change results
and their command-line flag (`layerpolicy.config.setting`); this module walks them.

    spec = RunSpec(ModelConfig("qwen3-8b"), PromptConfig("math500", limit=100))
    spec.to_argv()          # ['layerpolicy', 'entropy', '--model', 'qwen3-8b', ...]
    RunSpec.from_preset("paper-qwen3-4b", steps=10)    # a training run
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .argv import TRAIN_FLAGS, TRAIN_MODEL_FLAGS, TRAIN_PROMPT_FLAGS, config_flags
from .config import AnalysisConfig, ModelConfig, PromptConfig
from .errors import LayerpolicyError
from .run_format import FORMAT_VERSION, check_format, check_settings, versions

__all__ = [
    "FORMAT_VERSION", "PRESETS", "TRAIN_FLAGS", "RunSpec", "check_format", "check_settings",
    "versions",
]  # fmt: skip

if TYPE_CHECKING:
    from .bupo.config import TrainConfig

# A preset: the model and the TrainConfig fields of a shipped run. The paper's Qwen3-4B run
# (docs/method.md section 4): 300 rollouts of 128 prompts x 8, k = 6, s_inter = 30. The response
# budget is not part of the paper's table; 4096 tokens is ours.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-qwen3-4b": {
        "model": "Qwen/Qwen3-4B",
        "train": dict(
            steps=300,
            inter_steps=30,
            layer=6,
            group_size=8,
            prompts_per_step=128,
            mini_batches=4,
            max_new_tokens=4096,
            lr=1e-6,
            save_every=10,
        ),
    },
}


@dataclass(frozen=True)
class RunSpec:
    """One run's settings. `train` None: an entropy analysis; a TrainConfig: a BuPO run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    train: TrainConfig | None = None

    @property
    def kind(self) -> str:
        return "entropy" if self.train is None else "train"

    # ------------------------------------------------------------------ the settings record

    def settings(
        self, prompts_sha256: str | None = None, *, model_name: str | None = None
    ) -> dict[str, Any]:
        """Every setting that changes results, as run.json records it (JSON values).

        `model_name`: the resolved model's name in place of the spec as given; `prompts_sha256`:
        the prompts' hash (the prompts are recorded by their content, not their source)."""
        settings: dict[str, Any] = {"format_version": FORMAT_VERSION}
        settings.update(_recorded(self.model))
        if model_name is not None:
            settings["model"] = model_name
        if prompts_sha256 is not None:
            settings["prompts_sha256"] = prompts_sha256
        if self.train is None:
            settings.update(_recorded(self.analysis))
            settings.update(_recorded(self.prompts))
        else:
            settings.update(self.train.recorded())
        return json.loads(json.dumps(settings, default=str))

    def key(
        self,
        prompts_sha256: str | None = None,
        *,
        model_name: str | None = None,
        location: str | None = None,
    ) -> str:
        """The cache key: sha256 (hex) of the settings (and the model's location, if given)."""
        identity = self.settings(prompts_sha256, model_name=model_name)
        if location is not None:
            identity["location"] = location
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def resumable(self) -> tuple[str, ...]:
        """The settings a resumed run may change (a training run's steps, checkpointing, ...)."""
        if self.train is None:
            return ()
        from .bupo.config import RESUMABLE

        return RESUMABLE

    def check_against(
        self,
        recorded: Mapping[str, Any],
        *,
        resume: bool = False,
        where: str = "the run directory",
        prompts_sha256: str | None = None,
        model_name: str | None = None,
    ) -> None:
        """Raise one line unless `recorded` (a run's settings, or its whole run.json) holds these
        settings; on `resume` the `resumable` ones may differ. A run of another format is refused
        first, with the fix."""
        check_settings(
            recorded.get("settings", recorded),
            self.settings(prompts_sha256, model_name=model_name),
            where=f"{where} holds a run",
            allowed=self.resumable() if resume else (),
            fix="resume with the same ones or choose another --out"
            if self.train is not None
            else "use another --out or --force to overwrite it",
        )

    def header(
        self, prompts_sha256: str | None = None, *, model_name: str | None = None
    ) -> dict[str, Any]:
        """The start of run.json: format version, kind, settings, the command line (None where
        the spec has settings no flag takes, e.g. prompts given as loaded items), versions."""
        try:
            argv: list[str] | None = self.to_argv()
        except LayerpolicyError:
            argv = None
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "settings": self.settings(prompts_sha256, model_name=model_name),
            "argv": argv,
            "versions": versions(),
        }

    # ------------------------------------------------------------------ the command line

    def to_argv(self) -> list[str]:
        """The `layerpolicy` command that reproduces this spec (without --out); settings away
        from their defaults only. Raises for a setting that has no flag or a prompt set given
        as loaded items (those are reproducible from Python only)."""
        argv = ["layerpolicy", self.kind]
        if self.train is None:
            for config in (self.model, self.prompts, self.analysis):
                argv += config_flags(config)
            return argv
        argv += config_flags(self.model, allowed=TRAIN_MODEL_FLAGS)
        argv += config_flags(self.prompts, allowed=TRAIN_PROMPT_FLAGS)
        return argv + config_flags(self.train)

    # ------------------------------------------------------------------ building specs

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RunSpec:
        """A shipped run's spec (see PRESETS), with `overrides` by field name (`model` for the
        model spec, `prompts` for the prompt source; others by their config field)."""
        if name not in PRESETS:
            raise LayerpolicyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        chosen = PRESETS[name]
        fields = {"model": chosen["model"], **chosen.get("train", {}), **overrides}
        return cls.of(train="train" in chosen, **fields)

    @classmethod
    def of(cls, *, train: bool = False, **fields: Any) -> RunSpec:
        """A spec from field names of any of its configs (`model`: the model spec, `prompts`:
        the prompt source). A name two configs share (temperature, thinking, seed) goes to the
        training settings of a training spec, else to the prompts' or the analysis'."""
        from .bupo.config import TrainConfig

        fields = dict(fields)
        named = {"spec": fields.pop("model", None), "source": fields.pop("prompts", None)}
        fields.update({k: v for k, v in named.items() if v is not None})
        parts: dict[str, dict[str, Any]] = {}
        order = [TrainConfig] if train else []
        order += [ModelConfig, PromptConfig, AnalysisConfig]
        for name, value in fields.items():
            owner = next((c for c in order if name in _field_names(c)), None)
            if owner is None:
                raise LayerpolicyError(f"{name!r} is no setting of a run; see RunSpec's configs")
            parts.setdefault(owner.__name__, {})[name] = value
        return cls(
            model=ModelConfig(**parts.get("ModelConfig", {})),
            prompts=PromptConfig(**parts.get("PromptConfig", {})),
            analysis=AnalysisConfig(**parts.get("AnalysisConfig", {})),
            train=TrainConfig(**parts.get("TrainConfig", {})) if train else None,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunSpec:
        """The spec a run.json (or its settings) records; the prompt source from its "prompts"
        entry where there is one (else the builtin prompts; compare prompts_sha256)."""
        settings = dict(record.get("settings", record))
        check_format(settings, "the record is one")
        kind = record.get("kind", "train" if "steps" in settings else "entropy")
        for key in ("format_version", "prompts_sha256"):
            settings.pop(key, None)
        source = (record.get("prompts") or {}).get("source")
        if source not in (None, "builtin"):
            settings["prompts"] = source
        return cls.of(train=kind == "train", **settings)

    def replace(self, **changes: Any) -> RunSpec:
        """This spec with some settings changed, by field name as in `of` (or whole configs:
        model=ModelConfig(...), prompts=PromptConfig(...), analysis=..., train=...)."""
        whole = {
            k: changes.pop(k)
            for k in ("model", "prompts", "analysis", "train")
            if k in changes and (changes[k] is None or dataclasses.is_dataclass(changes[k]))
        }
        spec = dataclasses.replace(self, **whole)
        if not changes:
            return spec
        configs = {"model": spec.model, "prompts": spec.prompts, "analysis": spec.analysis}
        if spec.train is not None:
            configs = {"train": spec.train, **configs}
        named = {"spec": changes.pop("model", None), "source": changes.pop("prompts", None)}
        changes.update({k: v for k, v in named.items() if v is not None})
        updated: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            part = next((p for p, c in configs.items() if name in _field_names(type(c))), None)
            if part is None:
                raise LayerpolicyError(f"{name!r} is no setting of a run; see RunSpec's configs")
            updated.setdefault(part, {})[name] = value
        return dataclasses.replace(
            spec, **{p: dataclasses.replace(configs[p], **f) for p, f in updated.items()}
        )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _recorded(config: Any) -> dict[str, Any]:
    """The result-changing fields of a config (ModelConfig, PromptConfig, AnalysisConfig)."""
    return {
        f.metadata["key"] or f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata["recorded"]
    }
