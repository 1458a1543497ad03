"""Per-token metrics of policies given as logits, streamed block by block, in float32 nats.

No knowledge of models or files. Every metric of one readout comes from one pass over its logits
z [n, vocab], fed as vocabulary blocks [n, w] (`ReadoutStats.update`): each block is read while
it is still in cache, so the unembedding matmul that produced it stays the dominant cost, and no
[n, vocab] temporary is made. Per block it keeps the block max m_b, s_b = sum exp(z - m_b),
u_b = sum exp(z - m_b) (z - m_b), sum p_ref z and count(z > z_target); `result` combines them:

    lse = M + log S,   entropy = log S - U / S,   KL(pi_theta || q) = -H(pi_theta) - E_p[z] + lse

with M the overall max, S = sum_b e^{m_b - M} s_b, U = sum_b e^{m_b - M} (u_b + (m_b - M) s_b).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .running_topk import RunningTopK

CPU_BLOCK_BYTES = 2 * 2**20  # one [n, w] float32 block; benchmarks/bench_blocks.py picks it
LOG2_E = 1.0 / math.log(2.0)
EXP2_FLOOR = -125.0  # 2^-125 = 2.4e-38; below 2^-126 floats are subnormal
COMPILE_MIN_ELEMENTS = 2**16  # smaller blocks run eagerly (compiling would cost more than it saves)
FLOAT_MIN = torch.finfo(torch.float32).min  # stands in for -inf (masked logits) where we subtract


@dataclass(frozen=True)
class ReferencePolicy:
    """What metrics need of pi_theta for a chunk: probabilities, negative entropy, argmax."""

    probs: torch.Tensor  # [n, vocab]
    neg_entropy: torch.Tensor  # [n], sum p log p
    argmax: torch.Tensor  # [n]


def reference_policy(final_logits: torch.Tensor, block: int | None = None) -> ReferencePolicy:
    """Summarise the model's final logits [n, vocab] for KL and top-1 agreement."""
    z = final_logits.float()
    stats = ReadoutStats(torch.full(z.shape[:1], -1, device=z.device), None)
    stats.feed(z, block)
    lse = stats.logsumexp()
    return ReferencePolicy(
        torch.exp(z - lse.unsqueeze(-1)), -stats.entropy(), final_logits.argmax(dim=-1)
    )


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) = logsumexp(z) - sum softmax(z) z, nats; logits [..., vocab] -> [...].

    -inf logits (a masked vocabulary) have probability 0 and add nothing."""
    z = logits.float()
    m = z.amax(dim=-1, keepdim=True).clamp_min(FLOAT_MIN)
    shifted = (z - m).clamp_min(FLOAT_MIN)
    e = shifted.exp()
    s = e.sum(dim=-1)
    return s.log() - (e * shifted).sum(dim=-1) / s


def readout_metrics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reference: ReferencePolicy | None,
    block: int | None = None,
    top_k: int = 0,
) -> dict[str, torch.Tensor]:
    """All metrics of one readout chunk.

    logits [n, vocab] float32; targets [n] token ids (-1 = no target); reference: pi_theta for
    the same tokens (None skips KL and top-1 agreement); block: vocabulary entries per pass
    (None: `block_width`; results do not depend on it beyond float rounding). Returns [n]
    tensors: entropy, kl_to_final = KL(pi_theta || readout), target_logprob, target_rank
    (1 + count of larger logits, no sort), top1_agree; with top_k > 0 also top_ids and
    top_logprobs [n, top_k], most probable first. Target metrics are NaN where targets == -1.
    """
    z = logits.float()
    target_logits = z.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    stats = ReadoutStats(targets, reference, target_logits, top_k=top_k)
    stats.feed(z, block)
    return stats.result()


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(x^2)) over the last dimension; [..., d] -> [...]."""
    return x.float().pow(2).mean(dim=-1).sqrt()


def block_width(
    vocab_size: int,
    rows: int,
    device: torch.device,
    requested: int | None = None,
    block_bytes: int = CPU_BLOCK_BYTES,
) -> int:
    """Vocabulary entries per block of `rows` rows: `requested`; else on CPU as many as keep a
    float32 block within `block_bytes` (at least 256), elsewhere the whole vocabulary."""
    if requested is None:
        if device.type != "cpu":
            return vocab_size
        requested = max(256, block_bytes // (4 * max(1, rows)))
    return max(1, min(requested, vocab_size))


class BlockPicks:
    """For ids [n] (one vocabulary entry per row, -1 = none): which rows fall in each block.

    Built once per chunk and shared by every readout of it, so picking the exact logit of the
    target (or of pi_theta's argmax) costs one small indexing per block.
    """

    def __init__(self, ids: torch.Tensor, width: int, vocab_size: int):
        self.width = width
        n_blocks = -(-vocab_size // width)
        valid = torch.nonzero(ids >= 0).squeeze(-1)
        order = valid[torch.argsort(ids[valid])]
        bounds = torch.searchsorted(
            ids[order], torch.arange(n_blocks + 1, device=ids.device) * width
        ).tolist()
        self.rows = [order[bounds[b] : bounds[b + 1]] for b in range(n_blocks)]
        self.cols = [ids[rows] - b * width for b, rows in enumerate(self.rows)]

    def take(self, block: torch.Tensor, index: int, out: torch.Tensor) -> None:
        """Copy block[row, col] into out[row] for the rows whose id lies in block `index`."""
        rows = self.rows[index]
        if rows.numel():
            out[rows] = block[rows, self.cols[index]]


def block_stats(
    z: torch.Tensor, threshold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One vocabulary block z [n, w]: its max m, s = sum e^(z - m), u = sum e^(z - m) (z - m)
    and count(z > threshold [n, 1]), each [n]. e^x is computed as 2^(x log2 e): exp2 is twice
    as fast as exp on CPU; terms below 2^EXP2_FLOOR (subnormal, slow on x86) are raised to it,
    which adds < 1e-31 to s >= 1. A block of -inf logits (masked) gets m = FLOAT_MIN, so its
    weight e^(m - M) in `ReadoutStats` is 0."""
    m = z.amax(dim=-1, keepdim=True).clamp_min(FLOAT_MIN)
    t = ((z - m) * LOG2_E).clamp_min(EXP2_FLOOR)
    e = torch.exp2(t)
    count = (z > threshold).sum(dim=-1, dtype=torch.float32)
    return m.squeeze(-1), e.sum(dim=-1), (e * t).sum(dim=-1) / LOG2_E, count


@functools.cache
def compiled_block_stats() -> Callable | None:
    """`block_stats` fused into one C++ kernel by torch.compile (CPU), or None if unavailable.

    Eager, each of its ~8 tensor ops is a separate pass and a separate OpenMP region; fused, a
    block costs one or two, which matters most when other jobs share the cores.
    """
    compiled = torch.compile(block_stats, dynamic=True)
    z = torch.randn(4, 300)
    try:
        with torch.inference_mode():
            got = compiled(z, z[:, :1])
    except Exception as error:  # no C++ compiler, unsupported platform, ...
        warnings.warn(f"torch.compile unavailable ({error}); metrics run eagerly", stacklevel=3)
        return None
    want = block_stats(z, z[:, :1])
    if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want, strict=True)):
        warnings.warn("torch.compile gave different metrics; metrics run eagerly", stacklevel=3)
        return None
    return compiled


def block_kernel(z: torch.Tensor) -> Callable:
    """`block_stats`, compiled for large CPU blocks (COMPILE_MIN_ELEMENTS and up)."""
    if z.device.type == "cpu" and z.numel() >= COMPILE_MIN_ELEMENTS:
        return compiled_block_stats() or block_stats
    return block_stats


class ReadoutStats:
    """Streaming metrics of one readout chunk; feed its vocabulary blocks in order, then read.

    targets [n] (-1 = none); reference: pi_theta of the same rows (None: no KL, no top-1);
    target_logits [n]: the threshold of the rank count, known before the blocks arrive (None:
    no rank). The logits reported are taken exactly from the blocks, and the target itself is
    never counted, so a threshold computed apart (x . W_U[target]) only matters for logits tied
    with the target to rounding. picks: `BlockPicks` of the targets and of pi_theta's argmax
    (built by `feed` when not given). expected_logit [n]: E_{pi_theta}[z] when the caller knows
    it (for z = x W_U^T it is x . (pi_theta W_U), a d_model dot product); otherwise it is
    summed from reference.probs block by block. top_k > 0 also keeps the top_k most probable
    entries (`RunningTopK`).
    """

    def __init__(
        self,
        targets: torch.Tensor,
        reference: ReferencePolicy | None,
        target_logits: torch.Tensor | None = None,
        picks: tuple[BlockPicks, BlockPicks | None] | None = None,
        expected_logit: torch.Tensor | None = None,
        top_k: int = 0,
    ):
        n = targets.shape[0]
        device = targets.device
        self.targets = targets
        self.reference = reference
        self.has_threshold = target_logits is not None
        self.threshold = (
            torch.full((n, 1), torch.inf, device=device)
            if target_logits is None
            else target_logits.float().unsqueeze(-1)
        )
        self.picks = picks
        self.expected_logit = expected_logit
        self.blocks: list[tuple[torch.Tensor, ...]] = []
        self.ref_dot = torch.zeros(n, device=device)
        self.target_logit = torch.full((n,), torch.nan, device=device)
        self.at_ref_argmax = torch.full((n,), torch.nan, device=device)
        self.top = RunningTopK(n, top_k, device) if top_k > 0 else None
        self._start = 0

    def feed(self, logits: torch.Tensor, block: int | None = None) -> None:
        """Feed a whole [n, vocab] logits tensor, block by block."""
        vocab = logits.shape[1]
        width = block_width(vocab, logits.shape[0], logits.device, block)
        if self.picks is None:
            self.picks = (
                BlockPicks(self.targets, width, vocab),
                None if self.reference is None else BlockPicks(self.reference.argmax, width, vocab),
            )
        for start in range(0, vocab, width):
            self.update(logits[:, start : start + width])

    def update(self, z: torch.Tensor) -> None:
        """Consume the next vocabulary block z [n, w] (float32; not modified)."""
        index = len(self.blocks)
        target_picks, ref_picks = self.picks
        target_picks.take(z, index, self.target_logit)
        if ref_picks is not None:
            ref_picks.take(z, index, self.at_ref_argmax)
        if self.reference is not None and self.expected_logit is None:
            probs = self.reference.probs[:, self._start : self._start + z.shape[1]]
            self.ref_dot += torch.where(probs > 0, z * probs, 0.0).sum(dim=-1)
        self.blocks.append(block_kernel(z)(z, self.threshold))
        if self.top is not None:
            self.top.update(z, self._start)
        self._start += z.shape[1]

    def _combined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Overall max M, S = sum_b e^(m_b - M) s_b, U (see the module docstring), count."""
        m, s, u, count = (torch.stack(parts) for parts in zip(*self.blocks, strict=True))
        top = m.amax(dim=0)
        scale = torch.exp(m - top)
        total = (scale * s).sum(dim=0)
        spread = (scale * (u + (m - top) * s)).sum(dim=0)
        return top, total, spread, count.sum(dim=0)

    def logsumexp(self) -> torch.Tensor:
        top, total, _, _ = self._combined()
        return top + total.log()

    def entropy(self) -> torch.Tensor:
        _, total, spread, _ = self._combined()
        return total.log() - spread / total

    def result(self) -> dict[str, torch.Tensor]:
        """entropy, target_logprob, target_rank (+ kl_to_final, top1_agree with a reference;
        + top_ids, top_logprobs [n, k] with top_k), each [n]."""
        top, total, spread, count = self._combined()
        lse = top + total.log()
        has_target = self.targets >= 0
        if self.has_threshold:  # the target itself is counted when its logit exceeds it
            rank = count + 1.0 - (self.target_logit > self.threshold.squeeze(-1)).float()
        else:
            rank = torch.full_like(lse, torch.nan)
        out = {
            "entropy": total.log() - spread / total,
            "target_logprob": torch.where(has_target, self.target_logit - lse, torch.nan),
            "target_rank": torch.where(has_target, rank, torch.nan),
        }
        if self.reference is not None:
            expected = self.ref_dot if self.expected_logit is None else self.expected_logit
            kl = self.reference.neg_entropy - expected + lse
            out["kl_to_final"] = kl.clamp(min=0.0)
            out["top1_agree"] = self.at_ref_argmax >= top
        if self.top is not None:
            out["top_ids"] = self.top.ids
            out["top_logprobs"] = self.top.values - lse.unsqueeze(-1)
        return out
