"""Per-token metrics of policies given as logits, streamed chunk by chunk, in float32 nats.

No knowledge of models or files. Every metric of one readout comes from one logits chunk
z [n, vocab] in a single call, so the unembedding is paid once per (readout, chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReferencePolicy:
    """What metrics need of pi_theta for a chunk: probabilities, negative entropy, argmax."""

    probs: torch.Tensor  # [n, vocab]
    neg_entropy: torch.Tensor  # [n], sum p log p
    argmax: torch.Tensor  # [n]


def reference_policy(final_logits: torch.Tensor) -> ReferencePolicy:
    """Summarise the model's final logits [n, vocab] for KL and top-1 agreement."""
    logp = torch.log_softmax(final_logits.float(), dim=-1)
    probs = logp.exp()
    return ReferencePolicy(probs, _rowdot(probs, logp), final_logits.argmax(dim=-1))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) = logsumexp(z) - sum softmax(z) z, nats; logits [..., vocab] -> [...]."""
    z = logits.float()
    m = z.amax(dim=-1, keepdim=True)
    shifted = z - m
    e = shifted.exp()
    s = e.sum(dim=-1)
    return s.log() - (e * shifted).sum(dim=-1) / s


def readout_metrics(
    logits: torch.Tensor, targets: torch.Tensor, reference: ReferencePolicy | None
) -> dict[str, torch.Tensor]:
    """All metrics of one readout chunk.

    logits [n, vocab] float32; targets [n] token ids (-1 = no target); reference: pi_theta for
    the same tokens (None skips KL and top-1 agreement). Returns [n] tensors: entropy,
    kl_to_final = KL(pi_theta || readout), target_logprob, target_rank (1 + count of larger
    logits, no sort), top1_agree. Target metrics are NaN where targets == -1.
    """
    z = logits.float()
    has_target = targets >= 0
    safe_targets = targets.clamp(min=0).unsqueeze(-1)
    target_logit = z.gather(-1, safe_targets)
    rank = (z > target_logit).sum(dim=-1).float() + 1.0
    top_value, top_index = z.max(dim=-1)
    shifted = z - top_value.unsqueeze(-1)
    e = shifted.exp()
    s = e.sum(dim=-1)
    log_s = s.log()
    lse = top_value + log_s
    out = {
        "entropy": log_s - _rowdot(e, shifted) / s,
        "target_logprob": torch.where(has_target, target_logit.squeeze(-1) - lse, torch.nan),
        "target_rank": torch.where(has_target, rank, torch.nan),
    }
    if reference is not None:
        kl = reference.neg_entropy - _rowdot(reference.probs, z) + lse
        out["kl_to_final"] = kl.clamp(min=0.0)
        out["top1_agree"] = top_index == reference.argmax
    return out


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(x^2)) over the last dimension; [..., d] -> [...]."""
    return x.float().pow(2).mean(dim=-1).sqrt()


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of [n, v] tensors without an [n, v] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])
