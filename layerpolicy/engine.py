"""One hooked forward per batch, then every readout streamed per token chunk into metrics.

Never holds [readouts x tokens x vocab]: hooks keep only the d_model vectors of scored positions,
and each (readout, chunk) is unembedded once, all metrics computed from that one logits chunk.
In raw mode the layer logits are the sum of the previous layer's and the two module writes'
(H^l = H^{l-1} + A^l + F^l and the readout is linear), so resid readouts cost no matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .metrics import ReferencePolicy, readout_metrics, reference_policy, rms_norm
from .models import LoadedModel
from .prompts import EncodedPrompt
from .sites import READOUT_MODES, Site, Unembedding, captured_sites, readout_order

CHUNK_BUDGET_BYTES = 384 * 2**20
LOGIT_BUFFERS = 6  # [chunk, vocab] float32 tensors alive at once in the metric pass


@dataclass(frozen=True)
class EngineConfig:
    """How readouts are computed. chunk_tokens=None picks a chunk that keeps the metric pass
    within CHUNK_BUDGET_BYTES. use_linearity only applies to raw float32 readouts."""

    readout: str = "raw"
    sites: str = "paper"
    chunk_tokens: int | None = None
    use_linearity: bool = True

    def __post_init__(self) -> None:
        if self.readout not in READOUT_MODES:
            raise ValueError(f"unknown readout {self.readout!r}; choose from {READOUT_MODES}")


@dataclass
class ScoredBatch:
    """Right-padded token ids [B, T] and the flat (row, position) index of scored positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


def make_batch(encoded: list[EncodedPrompt], pad_id: int, device: torch.device) -> ScoredBatch:
    """Right-pad (causal attention makes real positions independent of trailing padding)."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, item in enumerate(encoded):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        mask[row, :n] = 1
        for t in np.flatnonzero(item.score_mask):
            rows.append(row)
            positions.append(int(t))
            targets.append(item.input_ids[t + 1] if t + 1 < n else -1)
    return ScoredBatch(
        ids.to(device),
        mask.to(device),
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        torch.tensor(targets, dtype=torch.long, device=device),
    )


def capture(model: LoadedModel, batch: ScoredBatch, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """One forward through the blocks (no unembedding); returns each site's vectors at the
    scored positions, [n_scored, d_model] in the model's dtype."""
    store: dict[Site, torch.Tensor] = {}

    def keep(site: Site):
        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            store[site] = activation[batch.rows, batch.positions].detach()
            return activation

        return hook

    hooks = [(site.hook_name(), keep(site)) for site in sites]
    with torch.inference_mode():
        model.bridge.run_with_hooks(
            batch.input_ids,
            fwd_hooks=hooks,
            stop_at_layer=model.n_layers,
            attention_mask=batch.attention_mask,
        )
    missing = [site for site in sites if site not in store]
    if missing:
        raise RuntimeError(f"hooks did not fire for {missing[:3]}; unsupported architecture?")
    return store


def chunk_size(vocab_size: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(8, CHUNK_BUDGET_BYTES // (LOGIT_BUFFERS * 4 * vocab_size))


def score_batch(
    model: LoadedModel, encoded: list[EncodedPrompt], config: EngineConfig
) -> dict[str, np.ndarray]:
    """Per-token metrics for every readout of a batch, as flat numpy columns.

    Column order: prompt index (into `encoded`), position, target_id, site, layer, then metrics.
    """
    pad_id = model.tokenizer.pad_token_id
    batch = make_batch(encoded, 0 if pad_id is None else pad_id, model.device)
    order = readout_order(model.n_layers, config.sites)
    vectors = capture(model, batch, captured_sites(order, model.n_layers))
    unembed = Unembedding(model.hf_model)
    linear = (
        config.use_linearity
        and config.readout == "raw"
        and not unembed.has_bias
        and vectors[Site("resid", model.n_layers)].dtype == torch.float32
        and {"embed", "attn", "mlp", "resid"} <= {s.name for s in order}
    )
    size = chunk_size(model.info.vocab_size, config.chunk_tokens)
    n = len(batch.targets)
    columns: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, n, size):
            piece = slice(start, min(n, start + size))
            _score_chunk(vectors, order, unembed, config.readout, linear, batch, piece, columns)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def _score_chunk(
    vectors: dict[Site, torch.Tensor],
    order: list[Site],
    unembed: Unembedding,
    readout: str,
    linear: bool,
    batch: ScoredBatch,
    piece: slice,
    columns: dict[str, list[np.ndarray]],
) -> None:
    n_layers = max(site.layer for site in order)
    targets = batch.targets[piece]
    final_logits = unembed.final(vectors[Site("resid", n_layers)][piece])
    reference: ReferencePolicy = reference_policy(final_logits)
    running: torch.Tensor | None = None  # raw resid logits H^l W_U, built by linearity
    for site in order:
        if site.name == "final":
            logits = final_logits
        elif linear and site.name == "resid":
            logits = running
        else:
            logits = unembed.readout(vectors[site][piece], readout)
        if linear and site.name == "embed":
            running = logits.clone()
        elif linear and site.name in ("attn", "mlp"):
            running += logits
        metrics = readout_metrics(logits, targets, reference)
        vector = (
            vectors[site][piece]
            if site.name != "final"
            else vectors[Site("resid", n_layers)][piece]
        )
        metrics["rms_norm"] = rms_norm(vector)
        _append(columns, site, batch, piece, metrics)


def _append(
    columns: dict[str, list[np.ndarray]],
    site: Site,
    batch: ScoredBatch,
    piece: slice,
    metrics: dict[str, torch.Tensor],
) -> None:
    count = piece.stop - piece.start
    fixed = {
        "row": batch.rows[piece].cpu().numpy(),
        "position": batch.positions[piece].cpu().numpy().astype(np.int32),
        "target_id": batch.targets[piece].cpu().numpy().astype(np.int32),
        "site": np.full(count, site.name, dtype=object),
        "layer": np.full(count, site.layer, dtype=np.int16),
    }
    for name, values in {**fixed, **{k: v.cpu().numpy() for k, v in metrics.items()}}.items():
        columns.setdefault(name, []).append(values)


def batch_frame(
    model: LoadedModel, encoded: list[EncodedPrompt], columns: dict[str, np.ndarray], readout: str
) -> pd.DataFrame:
    """The tokens.parquet rows (docs/tables.md) for one scored batch."""
    rows = columns["row"]
    input_ids = [np.asarray(e.input_ids, dtype=np.int32) for e in encoded]
    token_id = np.array(
        [input_ids[r][p] for r, p in zip(rows, columns["position"], strict=True)], np.int32
    )
    vocab_text = _token_texts(model.tokenizer, np.unique(token_id))
    frame = pd.DataFrame(
        {
            "prompt_id": np.array([e.prompt_id for e in encoded], dtype=object)[rows],
            "position": columns["position"],
            "token_id": token_id,
            "token": pd.Series(token_id).map(vocab_text).to_numpy(dtype=object),
            "target_id": columns["target_id"],
            "model": model.info.name,
            "readout": readout,
            "site": columns["site"],
            "layer": columns["layer"],
            "n_layers": np.int16(model.n_layers),
        }
    )
    for name in ("entropy", "kl_to_final", "target_logprob", "target_rank", "rms_norm"):
        frame[name] = columns[name].astype(np.float32)
    frame["top1_agree"] = columns["top1_agree"].astype(bool)
    return frame


def _token_texts(tokenizer, token_ids: np.ndarray) -> dict[int, str]:
    return {int(t): tokenizer.decode([int(t)]) for t in token_ids}
