"""The chunk scorer: one token chunk's captured site vectors -> every readout's metric columns.

Per chunk, pi_theta costs one full-vocabulary matmul (its logits are the reference of KL and
top-1 agreement) and every other readout one matmul per vocabulary block, read by
`metrics.ReadoutStats` while the block is in cache. With `linear`, resid logits are the running
sum of the embed, attn and mlp logits (no matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import BlockPicks, ReadoutStats, ReferencePolicy, block_width, rms_norm
from .readout.capture import ScoredBatch
from .readout.sites import Site
from .readout.unembed import Unembedding

NO_TOP_IDS = np.zeros(0, dtype=np.int32)
NO_TOP_LOGPROBS = np.zeros(0, dtype=np.float32)
TOP_K_NAMES = ("top_ids", "top_logprobs")


@dataclass(frozen=True)
class Policy:
    """pi_theta for one token chunk, as every readout of the chunk needs it.

    mean_row = pi_theta W_U [n, d_model] (and mean_bias = pi_theta . b_U): E_{pi_theta}[z] of a
    readout z = x W_U^T + b_U is x . mean_row + mean_bias, so KL needs no pass over the vocabulary.
    """

    reference: ReferencePolicy
    mean_row: torch.Tensor
    mean_bias: torch.Tensor | None
    picks: tuple[BlockPicks, BlockPicks]


class ChunkScorer:
    """Scores token chunks; its [chunk, vocab] and block buffers are reused across chunks.

    readout, top_k, top_k_sites, block_vocab: as the engine's settings (EngineConfig); linear:
    use the linearity shortcut; size: tokens per chunk."""

    def __init__(
        self,
        unembed: Unembedding,
        order: list[Site],
        *,
        readout: str,
        top_k: int,
        top_k_sites: tuple[str, ...],
        block_vocab: int | None,
        linear: bool,
        n_layers: int,
        size: int,
    ):
        self.unembed = unembed
        self.order = order
        self.readout = readout
        self.top_k = top_k
        self.top_k_sites = set(top_k_sites) if top_k else set()
        self.linear = linear
        self.last = Site("resid", n_layers)
        device, vocab = unembed.device, unembed.vocab_size
        self.width = block_width(vocab, size, device, block_vocab)
        self.final = torch.empty(size, vocab, device=device)
        self.running = torch.empty(size, vocab, device=device) if linear else None
        self.block = torch.empty(size * self.width, device=device)

    def score(
        self,
        vectors: dict[Site, torch.Tensor],
        batch: ScoredBatch,
        index: torch.Tensor,
        columns: dict[str, list[np.ndarray]],
    ) -> None:
        """Metrics of every readout for the scored entries `index`, appended to `columns`."""
        targets = batch.targets[index].to(self.unembed.device)
        with torch.inference_mode():
            policy, final_metrics = self._policy(vectors[self.last], targets)
            for site in self.order:
                if site.name == "final":
                    metrics = final_metrics
                else:
                    metrics = self._readout(site, vectors[site], targets, policy)
                source = vectors[self.last if site.name == "final" else site]
                metrics["rms_norm"] = rms_norm(source)
                append_columns(columns, site, batch, index, len(targets), metrics, self.top_k > 0)

    def _k(self, site: Site) -> int:
        return self.top_k if site.name in self.top_k_sites else 0

    def _policy(
        self, h_last: torch.Tensor, targets: torch.Tensor
    ) -> tuple[Policy, dict[str, torch.Tensor]]:
        """pi_theta for the chunk (one full-vocabulary matmul, one back for mean_row) and the
        final row's metrics; KL(pi_theta || pi_theta) = 0 and top-1 agreement hold by
        definition."""
        n = h_last.shape[0]
        unembed = self.unembed
        logits = unembed.block(unembed.normed(h_last), 0, unembed.vocab_size, out=self.final[:n])
        logits = unembed.cap(logits) if unembed.softcap else logits
        threshold = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        stats = ReadoutStats(targets, None, threshold, top_k=self._k(Site("final", 0)))
        stats.feed(logits, self.width)
        metrics = stats.result()
        argmax = logits.argmax(dim=-1)
        probs = torch.sub(logits, stats.logsumexp().unsqueeze(-1), out=logits).exp_()
        metrics["kl_to_final"] = torch.zeros(n, device=logits.device)
        metrics["top1_agree"] = torch.ones(n, dtype=torch.bool, device=logits.device)
        vocab = unembed.vocab_size
        policy = Policy(
            ReferencePolicy(probs, -metrics["entropy"], argmax),
            torch.mm(probs, unembed.weight32),
            None if unembed.bias32 is None else probs @ unembed.bias32,
            (BlockPicks(targets, self.width, vocab), BlockPicks(argmax, self.width, vocab)),
        )
        return policy, metrics

    def _readout(
        self, site: Site, x: torch.Tensor, targets: torch.Tensor, policy: Policy
    ) -> dict[str, torch.Tensor]:
        """One readout's metrics: one matmul per vocabulary block (none for a linear resid)."""
        n = x.shape[0]
        prepared = self.unembed.prepared(x, self.readout, site.layer)
        threshold = self.unembed.entries(prepared, targets.clamp(min=0))
        expected = (prepared * policy.mean_row).sum(dim=-1)
        if policy.mean_bias is not None:
            expected += policy.mean_bias
        stats = ReadoutStats(
            targets, policy.reference, threshold, policy.picks, expected, self._k(site)
        )
        from_running = self.linear and site.name == "resid"
        for start in range(0, self.unembed.vocab_size, self.width):
            stop = min(self.unembed.vocab_size, start + self.width)
            if from_running:
                z = self.running[:n, start:stop]
            else:
                z = self.unembed.block(
                    prepared, start, stop, self.block[: n * (stop - start)].view(n, -1)
                )
                if self.linear and site.name == "embed":
                    self.running[:n, start:stop].copy_(z)
                elif self.linear and site.name in ("attn", "mlp"):
                    self.running[:n, start:stop].add_(z)
            stats.update(z)
        return stats.result()


def append_columns(
    columns: dict[str, list[np.ndarray]],
    site: Site,
    batch: ScoredBatch,
    index: torch.Tensor,
    count: int,
    metrics: dict[str, torch.Tensor],
    top_k: bool,
) -> None:
    """Append one readout's rows for the scored entries `index` to `columns` (numpy arrays;
    with `top_k`, object arrays of per-row top_ids / top_logprobs, empty where not computed)."""
    fixed = {
        "row": batch.rows[index].cpu().numpy(),
        "position": batch.positions[index].cpu().numpy().astype(np.int32),
        "target_id": batch.targets[index].cpu().numpy().astype(np.int32),
        "site": np.full(count, site.name, dtype=object),
        "layer": np.full(count, site.layer, dtype=np.int16),
    }
    top = {name: metrics.pop(name, None) for name in TOP_K_NAMES}
    for name, values in {**fixed, **{k: v.cpu().numpy() for k, v in metrics.items()}}.items():
        columns.setdefault(name, []).append(values)
    if top_k:
        for name, values, empty in (
            ("top_ids", top["top_ids"], NO_TOP_IDS),
            ("top_logprobs", top["top_logprobs"], NO_TOP_LOGPROBS),
        ):
            column = np.empty(count, dtype=object)
            if values is None:
                column.fill(empty)
            else:
                for row, value in enumerate(values.cpu().numpy().astype(empty.dtype)):
                    column[row] = value
            columns.setdefault(name, []).append(column)
