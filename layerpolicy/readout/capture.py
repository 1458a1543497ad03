"""Reading site vectors out of the model: hooked forwards and position windows.

The engine's capture keeps only the d_model vectors of scored positions, moved to the
unembedding's device as each hook fires (a model split across devices never has them stacked
elsewhere). Long inputs run as position windows over the Hugging Face KV cache.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..models import LoadedModel
from ..prompts import EncodedPrompt
from .sites import Site


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


class _Captured(Exception):
    """Raised by the last hook: every vector is kept, the rest of the forward is not needed."""


def capture(
    model: LoadedModel, batch: ScoredBatch, sites: list[Site], device: torch.device | None = None
) -> dict[Site, torch.Tensor]:
    """One forward through the blocks, stopped once every site fired (no final norm, no
    unembedding); returns each site's vectors at the scored positions, [n_scored, d_model] in
    the model's dtype on `device` (default: the unembedding's)."""
    everything = torch.arange(len(batch.positions), device=batch.positions.device)
    target = device or model.unembed_device
    return _forward(model, batch, sites, 0, batch.input_ids.shape[1], everything, None, target)


def _forward(
    model: LoadedModel,
    batch: ScoredBatch,
    sites: list[Site],
    start: int,
    stop: int,
    index: torch.Tensor,
    kv_cache: object | None,
    device: torch.device,
) -> dict[Site, torch.Tensor]:
    """Run positions start..stop-1 (earlier ones are in `kv_cache`) and keep the vectors of the
    scored entries `index` (into batch.rows/positions), all of which lie in the window."""
    where = {batch.rows.device: (batch.rows[index], batch.positions[index] - start)}
    store: dict[Site, torch.Tensor] = {}

    def keep(site: Site):
        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            if activation.device not in where:
                rows, positions = where[batch.rows.device]
                where[activation.device] = (
                    rows.to(activation.device),
                    positions.to(activation.device),
                )
            rows, positions = where[activation.device]
            store[site] = activation[rows, positions].detach().to(device)
            if len(store) == len(sites):
                raise _Captured
            return activation

        return hook

    extra = {} if kv_cache is None else {"cache": kv_cache, "use_cache": True}
    try:
        with torch.inference_mode():
            model.bridge.run_with_hooks(
                batch.input_ids[:, start:stop],
                fwd_hooks=[(site.hook_name(), keep(site)) for site in sites],
                attention_mask=batch.attention_mask[:, :stop],
                **extra,
            )
    except _Captured:
        pass
    missing = [site for site in sites if site not in store]
    if missing:
        raise RuntimeError(f"hooks did not fire for {missing[:3]}; unsupported architecture?")
    return store


def windows(
    model: LoadedModel,
    batch: ScoredBatch,
    sites: list[Site],
    width: int,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, dict[Site, torch.Tensor]]]:
    """(index into the scored entries, their vectors) per window of `width` positions; windows
    after the first continue from the KV cache. Needs H^L among the sites: the forward only
    stops early after the last block, so the cache is complete."""
    if len(batch.positions) == 0:
        return
    target = device or model.unembed_device
    end = int(batch.positions.max()) + 1
    everything = torch.arange(len(batch.positions), device=batch.positions.device)
    if width >= end:
        yield everything, capture(model, batch, sites, target)
        return
    if Site("resid", model.n_layers) not in sites:
        raise ValueError("windowed capture needs the last block's output among the sites")
    from transformers import DynamicCache

    kv_cache = DynamicCache(config=model.hf_model.config)
    with _bridge_reads_cache(model):
        for start in range(0, end, width):
            stop = min(end, start + width)
            inside = (batch.positions >= start) & (batch.positions < stop)
            index = torch.nonzero(inside).squeeze(-1)
            vectors = _forward(model, batch, sites, start, stop, index, kv_cache, target)
            if kv_cache.get_seq_length() != stop:  # this bridge ignores the cache
                if start > 0:
                    raise RuntimeError("the KV cache stopped growing between position windows")
                warnings.warn(
                    "the bridge does not extend the KV cache; scoring the batch in one forward "
                    "(captured vectors then grow with its length)",
                    stacklevel=3,
                )
                yield everything, capture(model, batch, sites, target)
                return
            yield index, vectors


@contextlib.contextmanager
def _bridge_reads_cache(model: LoadedModel) -> Iterator[None]:
    """Hand the Hugging Face cache to the bridge's attention under the name it reads.

    transformers 5 passes the KV cache to attention as `cache`; TransformerLens 4.3's attention
    bridges read `past_key_values` and would silently attend within the window only.
    """

    def rename(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return args, kwargs

    handles = [
        block.attn.register_forward_pre_hook(rename, with_kwargs=True)
        for block in model.bridge.blocks
        if hasattr(block, "attn")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
