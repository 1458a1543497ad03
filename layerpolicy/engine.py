"""Hooked forwards per position window, then every readout streamed per token chunk into metrics.

Never holds [readouts x tokens x vocab]. Hooks keep only the d_model vectors of scored
positions, and long inputs run as position windows over the Hugging Face KV cache, so those
vectors never exceed CAPTURE_BUDGET_BYTES whatever the length. Each (readout, chunk) costs one
unembedding matmul, computed one vocabulary block at a time, and every metric is read from the
block while it is in cache (`metrics.ReadoutStats`). In raw mode the layer logits are the sum of
the previous layer's and the two module writes' (H^l = H^{l-1} + A^l + F^l and the readout is
linear), so resid readouts cost no matmul, and the final policy's logits are the reference
computed anyway, so the final row costs none either.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .devices import use_physical_cores
from .metrics import BlockPicks, ReadoutStats, ReferencePolicy, block_width, rms_norm
from .models import LoadedModel
from .prompts import EncodedPrompt
from .readout.sites import READOUT_MODES, Site, Unembedding, captured_sites, readout_order

CHUNK_BUDGET_BYTES = 384 * 2**20
LOGIT_BUFFERS = 2  # [chunk, vocab] float32 tensors alive at once: pi_theta, running resid logits
CPU_CHUNK_TOKENS = 256  # CPU matmul throughput is flat from 256 rows on
CAPTURE_BUDGET_BYTES = 128 * 2**20  # captured d_model vectors of one position window


@dataclass(frozen=True)
class EngineConfig:
    """How readouts are computed. chunk_tokens=None: `engine_chunk` (the [chunk, vocab] buffers
    within CHUNK_BUDGET_BYTES, at most CPU_CHUNK_TOKENS on CPU); window_tokens=None: a position
    window that keeps the captured vectors within CAPTURE_BUDGET_BYTES; block_vocab=None: a
    cache-sized vocabulary block on CPU, the whole vocabulary elsewhere. None of them changes
    results beyond float rounding. use_linearity only applies to raw float32 readouts."""

    readout: str = "raw"
    sites: str = "paper"
    chunk_tokens: int | None = None
    use_linearity: bool = True
    window_tokens: int | None = None
    block_vocab: int | None = None

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


class _Captured(Exception):
    """Raised by the last hook: every vector is kept, the rest of the forward is not needed."""


def capture(model: LoadedModel, batch: ScoredBatch, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """One forward through the blocks, stopped once every site fired (no final norm, no
    unembedding); returns each site's vectors at the scored positions, [n_scored, d_model] in
    the model's dtype."""
    everything = torch.arange(len(batch.positions), device=batch.positions.device)
    return _forward(model, batch, sites, 0, batch.input_ids.shape[1], everything, None)


def _forward(
    model: LoadedModel,
    batch: ScoredBatch,
    sites: list[Site],
    start: int,
    stop: int,
    index: torch.Tensor,
    kv_cache: object | None,
) -> dict[Site, torch.Tensor]:
    """Run positions start..stop-1 (earlier ones are in `kv_cache`) and keep the vectors of the
    scored entries `index` (into batch.rows/positions), all of which lie in the window."""
    rows = batch.rows[index]
    positions = batch.positions[index] - start
    store: dict[Site, torch.Tensor] = {}

    def keep(site: Site):
        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            store[site] = activation[rows, positions].detach()
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


def _windows(
    model: LoadedModel, batch: ScoredBatch, sites: list[Site], width: int
) -> Iterator[tuple[torch.Tensor, dict[Site, torch.Tensor]]]:
    """(index into the scored entries, their vectors) per window of `width` positions; windows
    after the first continue from the KV cache. Needs H^L among the sites: the forward only
    stops early after the last block, so the cache is complete."""
    if len(batch.positions) == 0:
        return
    end = int(batch.positions.max()) + 1
    everything = torch.arange(len(batch.positions), device=batch.positions.device)
    if width >= end:
        yield everything, capture(model, batch, sites)
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
            vectors = _forward(model, batch, sites, start, stop, index, kv_cache)
            if kv_cache.get_seq_length() != stop:  # this bridge ignores the cache
                if start > 0:
                    raise RuntimeError("the KV cache stopped growing between position windows")
                warnings.warn(
                    "the bridge does not extend the KV cache; scoring the batch in one forward "
                    "(captured vectors then grow with its length)",
                    stacklevel=3,
                )
                yield everything, capture(model, batch, sites)
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


def chunk_size(vocab_size: int, requested: int | None) -> int:
    """Tokens per chunk: `requested`, else as many as keep LOGIT_BUFFERS [chunk, vocab] float32
    tensors within CHUNK_BUDGET_BYTES (a multiple of 64 from 64 on)."""
    if requested is not None:
        return max(1, requested)
    rows = CHUNK_BUDGET_BYTES // (LOGIT_BUFFERS * 4 * vocab_size)
    return max(64, rows // 64 * 64) if rows >= 64 else max(8, rows)


def engine_chunk(vocab_size: int, device: torch.device, requested: int | None) -> int:
    """Tokens per engine chunk: `requested`; else `chunk_size`, at most CPU_CHUNK_TOKENS on CPU
    (larger chunks only cost memory there)."""
    size = chunk_size(vocab_size, requested)
    return size if requested is not None or device.type != "cpu" else min(CPU_CHUNK_TOKENS, size)


def window_size(
    n_rows: int, n_sites: int, d_model: int, itemsize: int, chunk: int, requested: int | None
) -> int:
    """Positions per forward window: `requested`, else as many as keep the captured vectors of
    `n_rows` sequences within CAPTURE_BUDGET_BYTES, rounded down to whole chunks of one row
    (at least 64)."""
    if requested is not None:
        return max(1, requested)
    positions = CAPTURE_BUDGET_BYTES // max(1, n_rows * n_sites * d_model * itemsize)
    if positions >= chunk:
        positions = positions // chunk * chunk
    return max(64, positions)


@functools.cache
def _cpu_threads() -> int:
    """Torch threads = physical cores (hyper-threads slow the matmuls), once per process; a
    lower count set before (torch.set_num_threads, OMP_NUM_THREADS) is kept."""
    before = torch.get_num_threads()
    cores = use_physical_cores()
    if before < cores:
        torch.set_num_threads(before)
    return torch.get_num_threads()


def score_batch(
    model: LoadedModel, encoded: list[EncodedPrompt], config: EngineConfig
) -> dict[str, np.ndarray]:
    """Per-token metrics for every readout of a batch, as flat numpy columns.

    Column order: prompt index (into `encoded`), position, target_id, site, layer, then metrics.
    """
    if model.device.type == "cpu":
        _cpu_threads()
    pad_id = model.tokenizer.pad_token_id
    batch = make_batch(encoded, 0 if pad_id is None else pad_id, model.device)
    order = readout_order(model.n_layers, config.sites)
    sites = captured_sites(order, model.n_layers)
    unembed = Unembedding(model.hf_model)
    model_dtype = next(model.hf_model.parameters()).dtype
    linear = (
        config.use_linearity
        and config.readout == "raw"
        and not unembed.has_bias
        and model_dtype == torch.float32
        and {"embed", "attn", "mlp", "resid"} <= {s.name for s in order}
    )
    size = engine_chunk(unembed.vocab_size, model.device, config.chunk_tokens)
    size = min(size, max(1, len(batch.targets)))
    scorer = _ChunkScorer(unembed, order, config, linear, model.n_layers, size, model.device)
    width = window_size(
        batch.input_ids.shape[0],
        len(sites),
        model.info.d_model,
        model_dtype.itemsize,
        size,
        config.window_tokens,
    )
    columns: dict[str, list[np.ndarray]] = {}
    for index, vectors in _windows(model, batch, sites, width):
        for start in range(0, len(index), size):
            piece = slice(start, start + size)
            chunk = {site: vector[piece] for site, vector in vectors.items()}
            scorer.score(chunk, batch, index[piece], columns)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


@dataclass(frozen=True)
class _Policy:
    """pi_theta for one token chunk, as every readout of the chunk needs it.

    mean_row = pi_theta W_U [n, d_model] (and mean_bias = pi_theta . b_U): E_{pi_theta}[z] of a
    readout z = x W_U^T + b_U is x . mean_row + mean_bias, so KL needs no pass over the vocabulary.
    """

    reference: ReferencePolicy
    mean_row: torch.Tensor
    mean_bias: torch.Tensor | None
    picks: tuple[BlockPicks, BlockPicks]


class _ChunkScorer:
    """Scores token chunks; its [chunk, vocab] and block buffers are reused across chunks."""

    def __init__(
        self,
        unembed: Unembedding,
        order: list[Site],
        config: EngineConfig,
        linear: bool,
        n_layers: int,
        size: int,
        device: torch.device,
    ):
        self.unembed = unembed
        self.order = order
        self.readout = config.readout
        self.linear = linear
        self.last = Site("resid", n_layers)
        vocab = unembed.vocab_size
        self.width = block_width(vocab, size, device, config.block_vocab)
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
        targets = batch.targets[index]
        with torch.inference_mode():
            policy, final_metrics = self._policy(vectors[self.last], targets)
            for site in self.order:
                if site.name == "final":
                    metrics = final_metrics
                else:
                    metrics = self._readout(site, vectors[site], targets, policy)
                source = vectors[self.last if site.name == "final" else site]
                metrics["rms_norm"] = rms_norm(source)
                _append(columns, site, batch, index, len(targets), metrics)

    def _policy(
        self, h_last: torch.Tensor, targets: torch.Tensor
    ) -> tuple[_Policy, dict[str, torch.Tensor]]:
        """pi_theta for the chunk (one full-vocabulary matmul, one back for mean_row) and the
        final row's metrics; KL(pi_theta || pi_theta) = 0 and top-1 agreement hold by
        definition."""
        n = h_last.shape[0]
        unembed = self.unembed
        logits = unembed.block(unembed.normed(h_last), 0, unembed.vocab_size, out=self.final[:n])
        logits = unembed.cap(logits) if unembed.softcap else logits
        threshold = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        stats = ReadoutStats(targets, None, threshold)
        stats.feed(logits, self.width)
        metrics = stats.result()
        argmax = logits.argmax(dim=-1)
        probs = torch.sub(logits, stats.logsumexp().unsqueeze(-1), out=logits).exp_()
        metrics["kl_to_final"] = torch.zeros(n, device=logits.device)
        metrics["top1_agree"] = torch.ones(n, dtype=torch.bool, device=logits.device)
        vocab = unembed.vocab_size
        policy = _Policy(
            ReferencePolicy(probs, -metrics["entropy"], argmax),
            torch.mm(probs, unembed.weight32),
            None if unembed.bias32 is None else probs @ unembed.bias32,
            (BlockPicks(targets, self.width, vocab), BlockPicks(argmax, self.width, vocab)),
        )
        return policy, metrics

    def _readout(
        self, site: Site, x: torch.Tensor, targets: torch.Tensor, policy: _Policy
    ) -> dict[str, torch.Tensor]:
        """One readout's metrics: one matmul per vocabulary block (none for a linear resid)."""
        n = x.shape[0]
        prepared = self.unembed.prepared(x, self.readout)
        threshold = self.unembed.entries(prepared, targets.clamp(min=0))
        expected = (prepared * policy.mean_row).sum(dim=-1)
        if policy.mean_bias is not None:
            expected += policy.mean_bias
        stats = ReadoutStats(targets, policy.reference, threshold, policy.picks, expected)
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


def _append(
    columns: dict[str, list[np.ndarray]],
    site: Site,
    batch: ScoredBatch,
    index: torch.Tensor,
    count: int,
    metrics: dict[str, torch.Tensor],
) -> None:
    fixed = {
        "row": batch.rows[index].cpu().numpy(),
        "position": batch.positions[index].cpu().numpy().astype(np.int32),
        "target_id": batch.targets[index].cpu().numpy().astype(np.int32),
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
