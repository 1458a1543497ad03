"""GRPO pieces: group advantages, the dual-clip PPO surrogate, and policy log-probs.

Two policies are trained (METHOD.md section 4): the model's own pi_theta = softmax(LN_final(H^L)
E_u^T), and the internal layer policy pi^k = softmax(H^k E_u^T) (raw, no norm), whose forward
stops after block k so the blocks above it get no gradient. Log-probs of the sampled tokens come
from a selective log-softmax over chunks of rows whose [chunk, vocab] logits are recomputed in
the backward pass, so no [tokens x vocab] tensor outlives its chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..metrics import readout_metrics, reference_policy
from ..models import LoadedModel
from ..readout.sites import Unembedding

ADVANTAGE_EPS = 1e-6
CHUNK_BYTES = 128 * 2**20  # one float32 [rows, vocab] logits chunk (about 3 alive in backward)
LOG_RATIO_LIMIT = 20.0  # verl clamps log(ratio) to [-20, 20] before exp

Readout = Callable[[torch.Tensor], torch.Tensor]


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO advantages (R - mean_group) / (std_group + 1e-6); rewards [P, G] -> [P, G].

    std is the sample standard deviation (n - 1), as torch.std and verl compute it.
    """
    if rewards.shape[-1] < 2:
        raise ValueError("group advantages need at least 2 responses per prompt")
    rewards = rewards.float()
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


@dataclass(frozen=True)
class Surrogate:
    """The clipped loss (scalar, token mean) and diagnostics over the masked tokens."""

    loss: torch.Tensor
    ratio: torch.Tensor  # [B, T], 0 where masked out
    clip_frac: float  # share of tokens where the eps clip is active
    dual_clip_frac: float  # share of tokens where the dual clip (A < 0) is active


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps: float = 0.2,
    dual_clip: float = 10.0,
) -> Surrogate:
    """PPO-clip loss with dual clip for negative advantages, aggregated as a token mean.

    logp, old_logp, mask [B, T]; advantages [B] (one per response) or [B, T]. Per token:
    l = max(-A r, -A clip(r, 1-eps, 1+eps)); for A < 0 additionally l = min(l, -A c).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    mask = mask.bool()
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps, 1.0 + eps)
    ppo = torch.maximum(unclipped, clipped)
    dual = torch.minimum(ppo, -advantages * dual_clip)
    negative = advantages < 0
    per_token = torch.where(negative, dual, ppo)
    n_tokens = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / n_tokens
    clip_frac = ((clipped > unclipped) & mask).sum() / n_tokens
    dual_frac = ((ppo > -advantages * dual_clip) & negative & mask).sum() / n_tokens
    return Surrogate(loss, ratio * mask, float(clip_frac), float(dual_frac))


def final_readout(unembed: Unembedding) -> Readout:
    """pi_theta's logits from LN_final(H^L) [n, d] (norm already applied) -> float32 [n, vocab]."""

    def readout(normed: torch.Tensor) -> torch.Tensor:
        logits = unembed.raw(normed)
        if unembed.softcap:
            logits = torch.tanh(logits / unembed.softcap) * unembed.softcap
        return logits

    return readout


def selective_log_softmax(
    states: torch.Tensor, targets: torch.Tensor, readout: Readout, chunk: int
) -> torch.Tensor:
    """log softmax(readout(states))[targets], chunk rows at a time; states [n, d] -> [n] float32.

    With gradients, each chunk is checkpointed: backward recomputes its [chunk, vocab] logits
    instead of keeping them.
    """
    parts = []
    for start in range(0, states.shape[0], chunk):
        rows = slice(start, start + chunk)
        if states.requires_grad:
            parts.append(
                checkpoint(
                    _target_log_prob, states[rows], targets[rows], readout, use_reentrant=False
                )
            )
        else:
            parts.append(_target_log_prob(states[rows], targets[rows], readout))
    return torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)


def chunk_rows(vocab_size: int) -> int:
    """Rows per logits chunk: [rows, vocab] float32 within CHUNK_BYTES (at least 16)."""
    return max(16, CHUNK_BYTES // (4 * vocab_size))


def _target_log_prob(states: torch.Tensor, targets: torch.Tensor, readout: Readout) -> torch.Tensor:
    logits = readout(states)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def policy_log_probs(
    model: LoadedModel,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    layer: int | None,
) -> torch.Tensor:
    """Log-probs of `targets` under pi^layer (raw H^layer W_U), or pi_theta when layer is None.

    input_ids [B, T] right-padded (causal: padding never reaches real positions, so no mask);
    targets, mask [B, T-1]: the token at t+1 and whether it is a response token.
    Returns [B, T-1] float32, 0 where masked out. For a layer, only blocks 1..layer run.
    """
    unembed = Unembedding(model.hf_model)
    if layer is None:
        states = model.hf_model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        readout = final_readout(unembed)
    else:
        states = model.bridge(input_ids, stop_at_layer=layer)
        readout = unembed.raw
    picked = selective_log_softmax(
        states[:, :-1][mask], targets[mask], readout, chunk_rows(model.info.vocab_size)
    )
    out = torch.zeros(targets.shape, dtype=torch.float32, device=picked.device)
    return out.masked_scatter(mask, picked)


@torch.no_grad()
def rollout_token_stats(
    model: LoadedModel,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    layer: int,
) -> dict[str, torch.Tensor]:
    """Per response token, from one forward without gradients: log-probs of the sampled token,
    entropies of pi_theta and pi^layer, and KL(pi_theta || pi^layer), all nats.

    Shapes as in `policy_log_probs`; returns [n_response_tokens] tensors (mask order):
    logp_final, logp_layer, entropy_final, entropy_layer, kl_layer_final.
    """
    out = model.hf_model.base_model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    layer_states = out.hidden_states[layer][:, :-1][mask]
    final_states = out.last_hidden_state[:, :-1][mask]
    unembed = Unembedding(model.hf_model)
    readout = final_readout(unembed)
    picked = targets[mask]
    size = chunk_rows(model.info.vocab_size)
    columns: dict[str, list[torch.Tensor]] = {}
    for start in range(0, picked.shape[0], size):
        rows = slice(start, start + size)
        final_logits = readout(final_states[rows])
        final = readout_metrics(final_logits, picked[rows], None)
        internal = readout_metrics(
            unembed.raw(layer_states[rows]), picked[rows], reference_policy(final_logits)
        )
        for name, value in (
            ("logp_final", final["target_logprob"]),
            ("logp_layer", internal["target_logprob"]),
            ("entropy_final", final["entropy"]),
            ("entropy_layer", internal["entropy"]),
            ("kl_layer_final", internal["kl_to_final"]),
        ):
            columns.setdefault(name, []).append(value)
    return {name: torch.cat(parts) for name, parts in columns.items()}
