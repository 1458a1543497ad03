"""The one place that chooses a torch device and the CPU thread count."""

from __future__ import annotations

import os

import torch

from .errors import LayerpolicyError

DEVICES = ("auto", "cpu", "cuda", "mps")


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
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LayerpolicyError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise LayerpolicyError("--device mps but MPS is not available; use --device cpu")
    return torch.device(device)


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
