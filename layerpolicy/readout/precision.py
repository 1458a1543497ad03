"""Readout precision: how the float32 matmul x W_U^T that forms every readout's logits is computed.

    float32   the plain float32 matmul (IEEE; no tensor cores for float32 on a GPU)
    split     3xTF32: each operand a = a_hi + a_lo with a_hi = tf32(a), a_lo = tf32(a - a_hi);
              z = x_hi W_lo^T + x_lo W_hi^T + x_hi W_hi^T, accumulated in float32 (the
              x_lo W_lo^T term, about 2^-22 relative, is dropped): close to float32 accuracy at
              tensor-core speed
    tf32      operands rounded to TF32 (10 mantissa bits), products accumulated in float32
    bfloat16  operands rounded to bfloat16 (7 mantissa bits), float32 output

Logits are always float32 [n, vocab]. On CUDA, tf32 and split run with TF32 tensor cores allowed
for their matmuls only (the global setting is restored after), float32 with them disallowed, and
bfloat16 runs a bfloat16 matmul with a float32 output (torch 2.8 on; emulated before). Elsewhere
(CPU, MPS) the formats are emulated by rounding the operands and multiplying in float32: products
of TF32 or bfloat16 values are exact in float32, so the emulation measures the modes' accuracy,
not their speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import LayerpolicyError

PRECISIONS = ("float32", "split", "tf32", "bfloat16")
TF32_DROPPED_BITS = 13  # float32 has 23 stored mantissa bits, TF32 10
_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")  # bfloat16 x bfloat16 -> float32 (torch 2.8+)


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a one-line LayerpolicyError naming them."""
    if precision not in PRECISIONS:
        raise LayerpolicyError(
            f"unknown readout precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    return precision


def default_precision(device: torch.device | str) -> str:
    """split on a CUDA device with TF32 tensor cores (compute capability 8.0 on), else float32.

    split stays within 1e-4 nats of a float64 readout on the packaged models
    (benchmarks/bench_precision.py); without TF32 hardware it would cost three float32 matmuls.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "split"
    return "float32"


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """`precision` (checked), or `device`'s default where None."""
    return default_precision(device) if precision is None else check_precision(precision)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 x rounded to TF32 (10 mantissa bits, round to nearest, ties to even), as float32.
    Non-finite values pass through; values past TF32's largest round to infinity."""
    bits = x.float().contiguous().view(torch.int32)
    half = (1 << (TF32_DROPPED_BITS - 1)) - 1
    odd = (bits >> TF32_DROPPED_BITS) & 1
    rounded = (bits + half + odd) & ~((1 << TF32_DROPPED_BITS) - 1)
    return torch.where(torch.isfinite(x), rounded, bits).view(torch.float32)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """float32 x rounded to bfloat16 (round to nearest, ties to even), as float32."""
    return x.to(torch.bfloat16).float()


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo), both TF32 values in float32: hi = tf32(x), lo = tf32(x - hi) (x - hi is exact)."""
    hi = round_tf32(x)
    return hi, round_tf32(x - hi)


@dataclass(frozen=True)
class ReadoutWeight:
    """W_U [vocab, d_model] prepared once for one precision: parts = (W,) for float32 and, on
    CUDA, tf32; (W_hi, W_lo) for split; the rounded W (bfloat16 on CUDA) for the others.
    `emulate`: operands are rounded here rather than by the hardware."""

    precision: str
    parts: tuple[torch.Tensor, ...]
    emulate: bool

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def rows(self, start: int, stop: int) -> ReadoutWeight:
        """Vocabulary entries start..stop-1 (views, no copy)."""
        return ReadoutWeight(self.precision, tuple(p[start:stop] for p in self.parts), self.emulate)


def prepare_weight(weight: torch.Tensor, precision: str) -> ReadoutWeight:
    """W_U [vocab, d_model] (float32, no autograd) as `precision`'s matmul takes it. float32 keeps
    W itself; the others hold one rounded copy (split: two), so prepare once per run."""
    check_precision(precision)
    emulate = weight.device.type != "cuda" or (precision == "bfloat16" and not _MM_OUT_DTYPE)
    if precision == "split":
        parts = split_tf32(weight)
    elif precision == "tf32" and emulate:
        parts = (round_tf32(weight),)
    elif precision == "bfloat16":
        parts = (round_bf16(weight) if emulate else weight.to(torch.bfloat16),)
    else:
        parts = (weight,)
    return ReadoutWeight(precision, parts, emulate)


def readout_matmul(
    x: torch.Tensor, weight: ReadoutWeight, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [n, d_model] float32 times W^T under the weight's precision: float32 logits [n, vocab]
    (written into `out` when given; no other [n, vocab] tensor is made)."""
    if out is None:
        out = torch.empty(x.shape[0], weight.parts[0].shape[0], device=x.device)
    precision = weight.precision
    if precision == "float32":
        with _float32_matmuls("ieee", weight.emulate):
            return torch.mm(x, weight.parts[0].t(), out=out)
    if precision == "bfloat16":
        if weight.emulate:
            return torch.mm(round_bf16(x), weight.parts[0].t(), out=out)
        return torch.mm(x.to(torch.bfloat16), weight.parts[0].t(), out_dtype=torch.float32, out=out)
    with _float32_matmuls("tf32", weight.emulate):
        if precision == "tf32":
            return torch.mm(round_tf32(x) if weight.emulate else x, weight.parts[0].t(), out=out)
        x_hi, x_lo = split_tf32(x)
        w_hi, w_lo = weight.parts
        torch.mm(x_hi, w_lo.t(), out=out)  # the small terms first
        out.addmm_(x_lo, w_hi.t())
        return out.addmm_(x_hi, w_hi.t())


@contextlib.contextmanager
def _float32_matmuls(mode: str, emulate: bool) -> Iterator[None]:
    """CUDA float32 matmuls within the block as `mode` says ("tf32": on TF32 tensor cores,
    "ieee": exact float32), whatever the process-wide setting; nothing when `emulate`."""
    if emulate:
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", mode)  # torch 2.9+; older: the allow_tf32 flag
    if not hasattr(matmul, name):
        name, value = "allow_tf32", mode == "tf32"
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)
