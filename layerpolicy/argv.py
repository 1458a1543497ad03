"""The command line of a run's settings: each config field's flag, and the flags of a config.

The fields of ModelConfig, PromptConfig and AnalysisConfig name their flag in their metadata
(`layerpolicy.config.setting`); TrainConfig's flags are `--field-name` except those in TRAIN_FLAGS.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import LayerpolicyError

# TrainConfig field -> its `layerpolicy train` flag where that is not --field-name (None: none)
TRAIN_FLAGS: dict[str, str | None] = {
    "lora_rank": "--lora",
    "screen_samples": "--screen",
    "layer_stats": "--no-layer-stats",
    "weight_decay": None,
    "clip_eps": None,
    "dual_clip": None,
    "grad_clip": None,
    "keep_checkpoints": None,
    "grpo": "--grpo",
}
# Flags of the prompt and model settings that `layerpolicy train` takes
TRAIN_MODEL_FLAGS = ("--model", "--dtype", "--device", "--device-map", "--max-memory", "--offline")
TRAIN_PROMPT_FLAGS = ("--prompts", "--limit")


def config_flags(config: Any, *, allowed: tuple[str, ...] | None = None) -> list[str]:
    """The flags of `config`'s fields away from their defaults (a TrainConfig's by TRAIN_FLAGS,
    the others' by their metadata); raises for a field that has no flag (or none in `allowed`)."""
    own = all("flag" in f.metadata for f in dataclasses.fields(config))
    return _flags(config, _own_flag if own else _train_flag, allowed)


def _own_flag(f: dataclasses.Field) -> str | None:
    flag = f.metadata["flag"]
    return flag if flag != "" else "--" + f.name.replace("_", "-")


def _train_flag(f: dataclasses.Field) -> str | None:
    return TRAIN_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))


def _flags(config: Any, flag_of: Any, allowed: tuple[str, ...] | None = None) -> list[str]:
    """The flags of `config`'s fields away from their defaults."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), _default(f)
        if value == default or (value is None and f.name == "offline"):
            continue
        flag = flag_of(f)
        if flag is None or (allowed is not None and flag not in allowed):
            raise LayerpolicyError(
                f"{f.name} = {value!r} has no `layerpolicy` flag here; run this spec from Python"
            )
        argv += _flag_value(flag, value)
    return argv


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _flag_value(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag] if value != flag.startswith("--no-") else []
    if flag == "--grpo":
        return [part for k, v in value.items() for part in (flag, f"{k}={json.dumps(v)}")]
    if isinstance(value, Mapping):  # max_memory {0: "20GiB", "cpu": "64GiB"}
        return [flag, ",".join(f"{k}={v}" for k, v in value.items())]
    if not isinstance(value, (str, Path, int, float)):
        raise LayerpolicyError(
            f"{flag} cannot be given a {type(value).__name__} on the command line; pass a file "
            "or a named prompt set, or run this spec from Python"
        )
    return [flag, str(value)]
