"""The one place that chooses devices, placements across devices, dtypes and CPU threads.

Every choice is checked here before a model is touched, so bad input costs nothing: an unknown
name or a GPU that is not visible is one line naming the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from .errors import LayerpolicyError

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_MAPS = ("auto", "balanced", "sequential")
DTYPES = ("float32", "bfloat16", "float16", "auto")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?)?B$", re.IGNORECASE)


def choose_device(device: str = "auto") -> torch.device:
    """`auto`: cuda if available, else mps, else cpu; an unavailable explicit choice is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise LayerpolicyError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LayerpolicyError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if device.startswith("cuda:"):
        _check_gpu(device, "--device")
    if device == "mps" and not torch.backends.mps.is_available():
        raise LayerpolicyError("--device mps but MPS is not available; use --device cpu")
    return torch.device(device)


def visible_devices() -> list[str]:
    """The devices a placement may name: cpu, then cuda:0 ... cuda:N-1 (and mps if present)."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def check_placement(
    device: str, device_map: str | Mapping[str, Any] | None, max_memory: Mapping | None
) -> dict[int | str, int | str] | None:
    """Check a model placement before loading; return `max_memory` with accelerate's keys.

    `device_map` is one of DEVICE_MAPS (or a Hugging Face module -> device dict) and splits the
    model across the visible devices; it excludes an explicit `device`, and `max_memory`
    ({0: "20GiB", "cuda:1": "20GiB", "cpu": "64GiB"}) needs it. A named GPU must be visible.
    """
    if device_map is None:
        if max_memory is not None:
            raise LayerpolicyError(
                "--max-memory needs --device-map (one of auto, balanced, sequential)"
            )
        return None
    if device != "auto":
        raise LayerpolicyError(
            f"--device-map places the model itself: drop --device {device} (or drop --device-map)"
        )
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAPS:
            raise LayerpolicyError(
                f"unknown device map {device_map!r}; choose one of {', '.join(DEVICE_MAPS)}"
            )
    else:
        for target in device_map.values():
            _memory_key(target, "--device-map")
    if max_memory is None:
        return None
    limits: dict[int | str, int | str] = {}
    for key, limit in max_memory.items():
        if not (isinstance(limit, int) and limit > 0) and not _MEMORY.match(str(limit)):
            raise LayerpolicyError(
                f"--max-memory {key}={limit} is not a size; write it like 20GiB, 512MB or bytes"
            )
        limits[_memory_key(key, "--max-memory")] = limit
    return limits


def parse_max_memory(text: str) -> dict[int | str, str]:
    """`0=20GiB,cuda:1=20GiB,cpu=64GiB` -> {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}."""
    limits: dict[int | str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, limit = item.partition("=")
        if not sep or not key.strip() or not limit.strip():
            raise LayerpolicyError(
                f"--max-memory {item!r} is not DEVICE=SIZE; write it like 0=20GiB,1=20GiB,cpu=64GiB"
            )
        limits[_memory_key(key.strip(), "--max-memory")] = limit.strip()
    if not limits:
        raise LayerpolicyError("--max-memory is empty; write it like 0=20GiB,1=20GiB,cpu=64GiB")
    return limits


def choose_dtype(dtype: str | torch.dtype, on_cuda: bool) -> torch.dtype:
    """The forward dtype: a name in DTYPES (or a torch dtype); `auto` is bfloat16 on a GPU that
    supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_DTYPES.values():
            raise LayerpolicyError(f"unsupported dtype {dtype}; choose one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise LayerpolicyError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        bf16 = on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return _TORCH_DTYPES[dtype]


def use_physical_cores() -> int:
    """Set torch's intra-op threads to the physical core count (hyper-threads slow matmuls)."""
    logical = os.cpu_count() or 1
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") as f:
            siblings = len(f.read().replace("-", ",").split(","))
    except OSError:
        siblings = 1
    cores = max(1, logical // max(1, siblings))
    torch.set_num_threads(cores)
    return cores


def _memory_key(target: Any, option: str) -> int | str:
    """accelerate's name for a device (GPU index, "cpu", "disk", "mps"); a missing GPU: error."""
    name = str(target).strip().lower()
    if name in ("cpu", "disk") or (name == "mps" and "mps" in visible_devices()):
        return name
    index = name.removeprefix("cuda:")
    if not index.isdigit():
        raise LayerpolicyError(
            f"{option} names {target!r}, which is not a device; use a GPU index, cuda:N or cpu"
        )
    _check_gpu(f"cuda:{int(index)}", option)
    return int(index)


def _check_gpu(name: str, option: str) -> None:
    """Raise unless the GPU `name` (cuda:N) is visible."""
    if name not in visible_devices():
        raise LayerpolicyError(
            f"{option} names {name}, which is not a visible device; visible: "
            f"{', '.join(visible_devices())}"
        )
