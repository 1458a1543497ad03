"""The settings of a run, validated when built: which model, which prompts, which readouts.

The command line builds these from its options and the Python API takes them, so both refuse bad
input with the same one-line `LayerpolicyError` before anything heavy is loaded.

    ModelConfig     what to load and where: spec, device, dtype, hub access, device map
    PromptConfig    which prompts and how they become token ids (template, thinking, sampling)
    AnalysisConfig  which readouts and how they are summarised (readout, sites, top-k, bootstrap)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .devices import DTYPES, check_placement, choose_device, parse_max_memory
from .errors import LayerpolicyError
from .readout.precision import PRECISIONS
from .readout.sites import READOUT_MODES, SITE_SETS

if TYPE_CHECKING:
    import torch

    from .engine import EngineConfig
    from .models import LoadedModel, ModelSource
    from .prompts import PromptSet

DEFAULT_MODEL = "smollm2-135m-instruct"
SAMPLERS = ("hf", "vllm")
DEFAULT_TOP_K = 5


def setting(*, recorded: bool = True, flag: str | None = "", key: str = "") -> dict[str, Any]:
    """The metadata of a config field: how runs treat it (read by `layerpolicy.spec`).

    recorded: it changes results, so run.json records it and it is part of the cache key.
    flag: its command-line flag ("" = --field-name; None = none; for a bool, the flag that sets
    the non-default value). key: its name in the recorded settings ("" = the field's name)."""
    return {"recorded": recorded, "flag": flag, "key": key}


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise unless `value` is one of `choices` (the message names them all)."""
    options = tuple(choices)
    if value not in options:
        raise LayerpolicyError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")


def check_at_least(
    name: str, value: float | None, minimum: float, *, optional: bool = False
) -> None:
    """Raise unless `value` >= `minimum` (None passes when `optional`)."""
    if value is None and optional:
        return
    if value is None or value < minimum:
        raise LayerpolicyError(f"{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """What to load and where.

    spec: alias, hub id, local directory, .gguf file or packaged name. device: auto | cpu | cuda |
    cuda:N | mps. dtype: the forward's dtype, float32 | bfloat16 | float16 | auto (readouts and
    metrics stay float32). offline: never contact the hub (None: only when it cannot be reached).
    device_map: auto | balanced | sequential spreads the layers over the visible GPUs (then
    `device` stays auto); max_memory caps each device, e.g. "0=20GiB,cpu=64GiB" or
    {0: "20GiB", "cpu": "64GiB"}. Devices are checked against this machine's.
    """

    spec: str = field(default=DEFAULT_MODEL, metadata=setting(flag="--model", key="model"))
    device: str = field(default="auto", metadata=setting(recorded=False))
    dtype: str | torch.dtype = field(default="float32", metadata=setting())
    offline: bool | None = field(default=None, metadata=setting(recorded=False))
    device_map: str | Mapping[str, Any] | None = field(
        default=None, metadata=setting(recorded=False)
    )
    max_memory: Mapping[int | str, int | str] | str | None = field(
        default=None, metadata=setting(recorded=False)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):  # a torch.dtype: recorded and checked by its name
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))
        check_choice("dtype", self.dtype, DTYPES)
        memory = self.max_memory
        if isinstance(memory, str):
            memory = parse_max_memory(memory)
        object.__setattr__(
            self, "max_memory", check_placement(self.device, self.device_map, memory)
        )
        if self.device_map is None:
            choose_device(self.device)

    def resolve(self) -> ModelSource:
        """Where the spec points (no weights loaded)."""
        from .models import resolve_spec

        return resolve_spec(self.spec, offline=self.offline)

    def load(self, *, progress: bool = True) -> LoadedModel:
        """Load the model these settings name."""
        from .models import load_model

        return load_model(
            self.spec,
            device=self.device,
            dtype=self.dtype,
            device_map=self.device_map,
            max_memory=self.max_memory,
            offline=self.offline,
            progress=progress,
        )


@dataclass(frozen=True)
class PromptConfig:
    """Which prompts, and how each becomes token ids.

    source: builtin (None), a .txt/.jsonl/.json/.csv/.parquet file, hf:owner/name[:split], or a
    loaded PromptSet; limit keeps the first N. The column names override auto-detection.
    chat_template: render with the tokenizer's template; thinking: the template's thinking mode
    (where it has one). max_tokens: longer inputs are truncated (counted and warned about).
    generate: sample up to this many new tokens per prompt from softmax(z / temperature) with
    `sampler` (hf | vllm) and score the response only; samples: responses per prompt.
    responses: a run directory or responses.parquet whose saved responses are scored (their
    prompts in place of `source`, their ids as they are).
    """

    # the prompts themselves are recorded by their hash (prompts_sha256), not by these fields
    source: str | Path | PromptSet | None = field(
        default=None, metadata=setting(recorded=False, flag="--prompts")
    )
    limit: int | None = field(default=None, metadata=setting(recorded=False))
    column: str | None = field(default=None, metadata=setting(recorded=False))
    response_column: str | None = field(default=None, metadata=setting(recorded=False))
    answer_column: str | None = field(default=None, metadata=setting(recorded=False, flag=None))
    chat_template: bool = field(default=True, metadata=setting(flag="--no-chat-template"))
    thinking: bool = field(default=False, metadata=setting())
    max_tokens: int | None = field(default=1024, metadata=setting())
    generate: int | None = field(default=None, metadata=setting())
    temperature: float = field(default=1.0, metadata=setting())
    sampler: str = field(default="hf", metadata=setting())
    samples: int = field(default=1, metadata=setting())
    responses: str | Path | None = field(default=None, metadata=setting())

    def __post_init__(self) -> None:
        check_at_least("samples", self.samples, 1)
        if self.samples > 1 and not self.generate:
            raise LayerpolicyError("--samples draws responses; give --generate N with it")
        if self.responses is not None and (self.generate or self.response_column):
            raise LayerpolicyError(
                "--responses scores saved responses; drop --generate and --response-column"
            )
        named = self.source if isinstance(self.source, (str, Path)) else None  # not a loaded set
        if self.responses is not None and named is not None and str(named) != str(self.responses):
            raise LayerpolicyError(
                "--responses brings its own prompts; drop --prompts (or give the same path)"
            )
        check_at_least("limit", self.limit, 1, optional=True)
        check_at_least("max_tokens", self.max_tokens, 2, optional=True)
        check_at_least("generate", self.generate, 1, optional=True)
        check_at_least("temperature", self.temperature, 0.0)
        check_choice("sampler", self.sampler, SAMPLERS)
        if self.sampler == "vllm" and self.generate:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise LayerpolicyError(
                    "--sampler vllm needs vLLM (pip install vllm, on a GPU machine); "
                    "or use --sampler hf"
                )

    @classmethod
    def of(cls, prompts: str | Path | PromptSet | PromptConfig | None, limit: int | None = None):
        """`prompts` as a PromptConfig: a PromptConfig as it is (`limit` must then be inside it),
        anything else as the source with default encoding."""
        if isinstance(prompts, PromptConfig):
            if limit is not None and limit != prompts.limit:
                raise LayerpolicyError("limit is given twice; set it in the PromptConfig only")
            return prompts
        return cls(source=prompts, limit=limit)

    def load(self) -> PromptSet:
        """The prompts (a given PromptSet is cut to `limit` too); with `responses`, the prompts
        of the saved responses, in their order."""
        from .prompts import load_prompts

        if self.responses is not None and not hasattr(self.source, "items"):  # not a loaded set
            from .responses import saved_prompts

            return saved_prompts(self.responses, self.limit)[0]

        return load_prompts(
            self.source,
            limit=self.limit,
            column=self.column,
            response_column=self.response_column,
            answer_column=self.answer_column,
        )


@dataclass(frozen=True)
class AnalysisConfig:
    """Which readouts, and how they are summarised.

    readout: raw | logit-lens | jacobian-lens. sites: a site set (resid | modules | paper).
    batch_size: prompts per forward. chunk_tokens: tokens per unembedding chunk (None:
    automatic). top_k: the K most likely tokens kept for resid and final rows (0: none). n_boot:
    bootstrap resamples of the 95% CI. seed: sampling and bootstrap seed. lens: the Jacobian
    lens of jacobian-lens (a file, a directory or a published name; None: the newest one that
    `layerpolicy lens fit` cached for the model). readout_precision: how the readout matmul is
    computed, float32 | split | tf32 | bfloat16 (None: float32 on CPU, split on a CUDA GPU with
    TF32; run.json records the one used under readout_checks).
    """

    readout: str = field(default="raw", metadata=setting())
    sites: str = field(default="paper", metadata=setting())
    batch_size: int = field(default=4, metadata=setting(recorded=False))
    chunk_tokens: int | None = field(default=None, metadata=setting(recorded=False))
    top_k: int = field(default=DEFAULT_TOP_K, metadata=setting())
    n_boot: int = field(default=1000, metadata=setting(flag=None))
    seed: int = field(default=0, metadata=setting())
    lens: str | None = field(default=None, metadata=setting())
    readout_precision: str | None = field(default=None, metadata=setting())

    def __post_init__(self) -> None:
        check_choice("readout", self.readout, READOUT_MODES)
        if self.readout_precision is not None:
            check_choice("readout precision", self.readout_precision, PRECISIONS)
        if self.lens is not None and self.readout != "jacobian-lens":
            raise LayerpolicyError("--lens is the lens of --readout jacobian-lens; add that")
        check_choice("site set", self.sites, SITE_SETS)
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("chunk_tokens", self.chunk_tokens, 1, optional=True)
        check_at_least("top_k", self.top_k, 0)
        check_at_least("n_boot", self.n_boot, 1)

    def engine(self) -> EngineConfig:
        from .engine import EngineConfig

        return EngineConfig(
            readout=self.readout,
            sites=self.sites,
            chunk_tokens=self.chunk_tokens,
            top_k=self.top_k,
            lens=self.lens,
            readout_precision=self.readout_precision,
        )
