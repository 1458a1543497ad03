"""Load a resolved model as a TransformerBridge on raw (unprocessed) weights, with its tokenizer."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..devices import check_placement, choose_device, choose_dtype
from ..errors import LayerpolicyError, ModelNotFoundError
from .resolve import ModelSource, resolve_spec


@dataclass(frozen=True)
class ModelInfo:
    """What results record about the model actually used.

    device: where input ids go (the embedding's); devices: every device holding weights;
    device_map: the placement strategy asked for (None: one device); quantisation: the GGUF
    quantisation the float32 weights were dequantised from (None: not from a GGUF file).
    """

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
    devices: tuple[str, ...]
    device_map: str | None
    quantisation: str | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        info = asdict(self)
        info["devices"] = list(self.devices)
        return info


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
        """Where input ids go: the input embedding's device."""
        return torch.device(self.info.device)

    @property
    def unembed_device(self) -> torch.device:
        """The unembedding's (lm_head's) device: compute readouts there. Equals `device` unless
        a device map split the model."""
        return self.hf_model.get_output_embeddings().weight.device


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
        from .tiny import tiny_model_dir

        return str(tiny_model_dir(source.location))
    raise ValueError(f"unknown source kind {source.kind!r}")


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Resolve `spec` and load it: raw weights, eval mode, `dtype` (float32 by default).

    `device_map` (auto, balanced, sequential; with `max_memory` per device) splits the model
    across the visible devices instead of putting it on `device`. Every option is checked
    before anything is downloaded or loaded. The bridge is booted over a model we load
    ourselves, so nothing is folded or centred and the raw readout H^l W_U is faithful.
    """
    limits = check_placement(device, device_map, max_memory)
    torch_device = None if device_map is not None else choose_device(device)
    on_cuda = torch.cuda.is_available() if torch_device is None else torch_device.type == "cuda"
    torch_dtype = choose_dtype(dtype, on_cuda)
    source = resolve_spec(spec, offline=offline)
    location = local_directory(source, progress=progress)
    placement = {} if device_map is None else {"device_map": device_map, "max_memory": limits}
    hf_model = _load_hf_model(location, torch_dtype, source, placement)
    _check_placed(hf_model, source.name)
    _check_finite(hf_model, source.name)
    if torch_device is not None:
        hf_model.to(torch_device)
    elif not getattr(hf_model, "hf_device_map", None):  # the map put everything on one device
        torch_device = hf_model.get_input_embeddings().weight.device
    bridge = _boot_bridge(location, hf_model, torch_dtype, torch_device)
    config = hf_model.config
    devices = sorted({str(p.device) for p in hf_model.parameters()})
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
        dtype=str(torch_dtype).replace("torch.", ""),
        device=str(torch_device or hf_model.get_input_embeddings().weight.device),
        devices=tuple(devices),
        device_map=device_map if isinstance(device_map, str) or device_map is None else "custom",
        quantisation=_quantisation(source, location),
        note=" ".join(n for n in (source.note, _half_on_cpu_note(torch_dtype, devices)) if n)
        or None,
    )
    return LoadedModel(bridge=bridge, tokenizer=load_tokenizer(location), info=info)


def _quantisation(source: ModelSource, location: str) -> str | None:
    """The GGUF quantisation the weights were dequantised from, e.g. "Q4_1 (dequantised to
    float32)"; None for weights not converted from a GGUF file."""
    if source.kind == "packaged":
        from .registry import PACKAGED_MODELS

        quantisation: str | None = PACKAGED_MODELS[source.location].quantisation
    elif source.kind == "gguf":
        from .gguf import converted_quantisation

        quantisation = converted_quantisation(Path(location))
        if quantisation is None:
            raise LayerpolicyError(
                f"{location} was converted by an older layerpolicy (no quantisation recorded); "
                "delete that directory and rerun to convert the GGUF file again"
            )
    else:
        return None
    return f"{quantisation} (dequantised to float32)"


def _half_on_cpu_note(dtype: torch.dtype, devices: list[str]) -> str | None:
    """A hint when a half-precision forward would run on CPU, where it is much slower."""
    if "cpu" in devices and dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        return f"{name} on CPU is many times slower than float32 here; use --dtype float32 on CPU."
    return None


def load_tokenizer(location: str) -> Any:
    """A fresh tokenizer (never share one between bridges: the bridge reconfigures its own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location)


def _load_hf_model(
    location: str, dtype: torch.dtype, source: ModelSource, placement: dict[str, Any]
) -> torch.nn.Module:
    """`from_pretrained` with eager attention; `placement` holds device_map/max_memory if any."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, attn_implementation="eager", **placement
        )
    except OSError as error:
        raise _hub_error(source, error) from error
    except ValueError as error:
        if not placement:
            raise
        raise LayerpolicyError(
            f"could not place {source.name} with --device-map {placement['device_map']}: "
            f"{_first_line(error)}; check --max-memory"
        ) from error
    return model.eval()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines or [type(error).__name__])[0].rstrip(".")


def _hub_error(source: ModelSource, error: Exception) -> LayerpolicyError:
    text = str(error)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return LayerpolicyError(
            f"{source.location} is gated: accept its licence on its hub page, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        )
    return ModelNotFoundError(
        f"could not load {source.location}: {_first_line(error)}; "
        "run `layerpolicy models` to list models"
    )


def _check_placed(model: torch.nn.Module, name: str) -> None:
    """Raise when a device map offloaded weights (to disk, or to cpu beside GPUs): readouts need
    every weight resident on a device that computes."""
    placed = getattr(model, "hf_device_map", None) or {}
    on_gpu = any(not isinstance(v, str) or v.startswith("cuda") for v in placed.values())
    offloaded = [k for k, v in placed.items() if v == "disk" or (on_gpu and v == "cpu")]
    if offloaded:
        raise LayerpolicyError(
            f"{name} does not fit in --max-memory: {len(offloaded)} modules would be offloaded "
            f"(first: {offloaded[0] or 'all'}); raise --max-memory or use more GPUs"
        )


def _check_finite(model: torch.nn.Module, name: str) -> None:
    for param_name, param in model.named_parameters():
        if param.device.type != "meta" and not torch.isfinite(param).all():
            raise LayerpolicyError(
                f"{name} has NaN or infinite weights in {param_name}; the checkpoint is corrupt: "
                "re-download it (packaged models: `layerpolicy models pull NAME --force`)"
            )


def _boot_bridge(
    location: str, hf_model: torch.nn.Module, dtype: torch.dtype, device: torch.device | None
) -> Any:
    """The bridge over `hf_model`; `device` None: the model is dispatched by a device map."""
    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bridge = TransformerBridge.boot_transformers(
                location,
                hf_model=hf_model,
                tokenizer=load_tokenizer(location),
                device=device,
                dtype=dtype,
            )
        except ValueError as error:
            if device is not None:
                raise
            raise LayerpolicyError(
                f"the bridge cannot run this placement: {_first_line(error)}"
            ) from error
    bridge.eval()
    return bridge
