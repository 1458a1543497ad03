"""The trained model: a plain Hugging Face causal LM named by the same ModelConfig as an analysis.

Training never loads weights here: `causal_lm_source` resolves the spec to a directory and the
`from_pretrained` keyword arguments (dtype, attention, device map) that TRL's trainer loads it
with, once the accelerate state exists, so an engine's sharded loading (DeepSpeed's
zero3_init_flag, FSDP's cpu_ram_efficient_loading) takes effect. `device`, `dtype` and
`device_map` mean what they mean for `load_model`: the same dtype rule, the same checks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..devices import choose_device, choose_dtype
from .load import load_tokenizer, local_directory
from .resolve import resolve_spec

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class CausalLMSource:
    """Where a causal LM's weights are and how to load them (nothing loaded yet).

    location: a directory (or hub id) for `from_pretrained`; n_layers: decoder blocks L;
    init_kwargs: `from_pretrained` keyword arguments (dtype name, attention, device map);
    device: cpu | cuda | mps, where a single-device run trains.
    """

    spec: str
    name: str
    source_kind: str
    location: str
    n_layers: int
    device: str
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The record's model entry."""
        return {
            "spec": self.spec,
            "name": self.name,
            "source_kind": self.source_kind,
            "location": self.location,
            "n_layers": self.n_layers,
            "dtype": self.init_kwargs["dtype"],
            "device_map": self.init_kwargs.get("device_map"),
        }

    def tokenizer(self) -> Any:
        return load_tokenizer(self.location)


def causal_lm_source(config: ModelConfig, *, progress: bool = True) -> CausalLMSource:
    """Resolve `config` (downloading or converting the weights if needed, loading none)."""
    source = resolve_spec(config.spec, offline=config.offline)
    location = local_directory(source, progress=progress)
    device = "cuda" if config.device_map is not None else choose_device(config.device).type
    on_cuda = device == "cuda" and torch.cuda.is_available()
    dtype = str(choose_dtype(config.dtype, on_cuda)).removeprefix("torch.")
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if config.device_map is not None:
        kwargs.update(device_map=config.device_map, max_memory=config.max_memory)
    return CausalLMSource(
        spec=config.spec,
        name=source.name,
        source_kind=source.kind,
        location=location,
        n_layers=_depth(location),
        device=device,
        init_kwargs=kwargs,
    )


def model_depth(config: ModelConfig) -> tuple[int, str]:
    """Decoder blocks L and the model's name, from its config file alone (no weights loaded)."""
    source = resolve_spec(config.spec, offline=config.offline)
    return _depth(local_directory(source)), source.name


def _depth(location: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(location).get_text_config().num_hidden_layers)


@contextlib.contextmanager
def whole_copy_loading() -> Iterator[None]:
    """Load every weight on every process inside this block, as sampling a model needs.

    Under an FSDP launch with cpu_ram_efficient_loading, `from_pretrained` leaves the weights of
    every rank but the first on the meta device once the process group exists (the engine then
    broadcasts them); a model that samples on its own needs its own full copy.
    """
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    saved = os.environ.pop(key, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[key] = saved
