"""Memory budgets and the chunk scorer: captured site vectors -> per-token metric columns.

Never holds [readouts x tokens x vocab]. Capture (`readout.capture`) keeps only the d_model
vectors of scored positions, in position windows sized by CAPTURE_BUDGET_BYTES. Each (readout,
chunk) then costs one unembedding matmul, computed one vocabulary block at a time on the
unembedding's device, and every metric is read from the block while it is in cache
(`metrics.ReadoutStats`). In raw mode the layer logits are the sum of the previous layer's and
the two module writes' (H^l = H^{l-1} + A^l + F^l and the readout is linear), so resid readouts
cost no matmul; `Engine` checks that decomposition on its first batch and reads resid directly
when it does not hold. The final policy's logits are the reference computed anyway, so the
final row costs no extra matmul.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .chunks import ChunkScorer
from .devices import use_physical_cores
from .errors import LayerpolicyError
from .models import LoadedModel
from .prompts import EncodedPrompt
from .readout.capture import make_batch, windows
from .readout.precision import check_precision, resolve_precision
from .readout.sites import (
    READOUT_MODES,
    SITE_NAMES,
    Site,
    captured_sites,
    readout_order,
    site_names,
)
from .readout.unembed import Unembedding

CHUNK_BUDGET_BYTES = 384 * 2**20
LOGIT_BUFFERS = 2  # [chunk, vocab] float32 tensors alive at once: pi_theta, running resid logits
CPU_CHUNK_TOKENS = 256  # CPU matmul throughput is flat from 256 rows on
CAPTURE_BUDGET_BYTES = 128 * 2**20  # captured d_model vectors of one position window
LINEARITY_RTOL = 1e-4  # max |H^l - (H^{l-1} + A^l + F^l)| / max |H^l| for the shortcut (float32)


@dataclass(frozen=True)
class EngineConfig:
    """How readouts are computed. chunk_tokens=None: `engine_chunk` (the [chunk, vocab] buffers
    within CHUNK_BUDGET_BYTES, at most CPU_CHUNK_TOKENS on CPU); window_tokens=None: a position
    window that keeps the captured vectors within CAPTURE_BUDGET_BYTES; block_vocab=None: a
    cache-sized vocabulary block on CPU, the whole vocabulary elsewhere. None of them changes
    results beyond float rounding. use_linearity only applies to raw float32 readouts (readout
    precision float32 or split). top_k > 0 adds the top_k most probable token ids and their
    log-probs to the rows of `top_k_sites`. lens: the Jacobian lens of readout "jacobian-lens" (a
    file, a directory, a published name; None: the newest one fitted for the model, see
    `readout.jacobian`). readout_precision: how the readout matmul is computed
    (`readout.precision`; None: the device's default, float32 on CPU, split on a CUDA GPU with
    TF32)."""

    readout: str = "raw"
    sites: str | tuple[str, ...] = "paper"
    chunk_tokens: int | None = None
    use_linearity: bool = True
    window_tokens: int | None = None
    block_vocab: int | None = None
    top_k: int = 0
    top_k_sites: tuple[str, ...] = ("resid", "final")
    lens: str | None = None
    readout_precision: str | None = None

    def __post_init__(self) -> None:
        if self.readout_precision is not None:
            check_precision(self.readout_precision)
        if self.readout not in READOUT_MODES:
            raise LayerpolicyError(
                f"unknown readout {self.readout!r}; choose one of {', '.join(READOUT_MODES)}"
            )
        site_names(self.sites)
        for name in ("chunk_tokens", "window_tokens", "block_vocab"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LayerpolicyError(f"{name} must be at least 1, got {value}")
        if self.top_k < 0:
            raise LayerpolicyError(f"top_k must be at least 0, got {self.top_k}")
        unknown = sorted(set(self.top_k_sites) - set(SITE_NAMES))
        if unknown:
            raise LayerpolicyError(
                f"unknown top-k sites {', '.join(unknown)}; choose from {', '.join(SITE_NAMES)}"
            )


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


def decomposition_error(vectors: dict[Site, torch.Tensor], n_layers: int) -> tuple[float, int]:
    """How far the hooked writes are from adding up to the residual: the largest
    max|H^l - (H^{l-1} + A^l + F^l)| / max|H^l| over layers (float32), and its layer.
    vectors: [n > 0, d_model] per site, embed and every layer's attn, mlp and resid."""
    worst, where = 0.0, 0
    previous = vectors[Site("embed", 0)].float()
    for layer in range(1, n_layers + 1):
        resid = vectors[Site("resid", layer)].float()
        parts = previous + vectors[Site("attn", layer)].float() + vectors[Site("mlp", layer)]
        scale = resid.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        error = float((resid - parts).abs().max() / scale)
        if error > worst:
            worst, where = error, layer
        previous = resid
    return worst, where


class Engine:
    """Scores batches of one model under one config. The linearity shortcut is checked on the
    first batch; `record` says what was used (for run.json)."""

    def __init__(self, model: LoadedModel, config: EngineConfig):
        self.model = model
        self.config = config
        self.order = readout_order(model.n_layers, config.sites)
        self.sites = captured_sites(self.order, model.n_layers)
        lens, lens_record = self._lens()
        precision = resolve_precision(config.readout_precision, model.unembed_device)
        self.unembed = Unembedding(model.hf_model, lens, precision=precision)
        self.dtype = next(model.hf_model.parameters()).dtype
        reason = self._shortcut_unavailable()
        self.linear: bool | None = False if reason else None  # None: check on the first batch
        self.record: dict[str, Any] = {
            "readout_precision": precision,
            "linearity_shortcut": reason or "unchecked",
        }
        if lens_record is not None:
            self.record["lens"] = lens_record

    def _lens(self) -> tuple[Any, dict[str, Any] | None]:
        """The J_l transport of readout "jacobian-lens" and what run.json records of its lens."""
        if self.config.readout != "jacobian-lens":
            return None, None
        from .readout.jacobian import lens_transport

        return lens_transport(self.model, self.config.lens)

    def _shortcut_unavailable(self) -> str | None:
        config, names = self.config, {site.name for site in self.order}
        if not config.use_linearity:
            return "off"
        if (
            config.readout != "raw"
            or self.unembed.has_bias
            or self.dtype != torch.float32
            or self.unembed.precision not in ("float32", "split")  # rounding would add up
            or not {"embed", "attn", "mlp", "resid"} <= names
        ):
            return "not applicable"
        return None

    def _check(self, vectors: dict[Site, torch.Tensor]) -> None:
        error, layer = decomposition_error(vectors, self.model.n_layers)
        self.linear = error <= LINEARITY_RTOL
        self.record.update(
            linearity_shortcut="used" if self.linear else "failed", linearity_error=error
        )
        if not self.linear:
            self.record["linearity_layer"] = layer
            warnings.warn(
                f"{self.model.info.name}: hooked resid_post != resid_pre + attn_out + mlp_out "
                f"(relative error {error:.1e} at layer {layer}); resid rows are read out directly",
                stacklevel=3,
            )

    def score(self, encoded: list[EncodedPrompt]) -> dict[str, np.ndarray]:
        """Per-token metrics for every readout of a batch, as flat numpy columns.

        Column order: prompt index (into `encoded`), position, target_id, site, layer, then
        metrics (then top_ids, top_logprobs: object arrays of per-row arrays, with top_k).
        """
        model, config, device = self.model, self.config, self.unembed.device
        if model.device.type == "cpu":
            _cpu_threads()
        pad_id = model.tokenizer.pad_token_id
        batch = make_batch(encoded, 0 if pad_id is None else pad_id, model.device)
        size = engine_chunk(self.unembed.vocab_size, device, config.chunk_tokens)
        size = min(size, max(1, len(batch.targets)))
        width = window_size(
            batch.input_ids.shape[0],
            len(self.sites),
            model.info.d_model,
            self.dtype.itemsize,
            size,
            config.window_tokens,
        )
        columns: dict[str, list[np.ndarray]] = {}
        scorer = None
        for index, vectors in windows(model, batch, self.sites, width, device):
            if not len(index):
                continue
            if self.linear is None:
                self._check(vectors)
            scorer = scorer or ChunkScorer(
                self.unembed,
                self.order,
                readout=config.readout,
                top_k=config.top_k,
                top_k_sites=config.top_k_sites,
                block_vocab=config.block_vocab,
                linear=self.linear,
                n_layers=model.n_layers,
                size=size,
            )
            for start in range(0, len(index), size):
                piece = slice(start, start + size)
                chunk = {site: vector[piece] for site, vector in vectors.items()}
                scorer.score(chunk, batch, index[piece], columns)
        return {name: np.concatenate(parts) for name, parts in columns.items()}


def score_batch(
    model: LoadedModel, encoded: list[EncodedPrompt], config: EngineConfig
) -> dict[str, np.ndarray]:
    """`Engine(model, config).score(encoded)`: one batch, the shortcut checked on it."""
    return Engine(model, config).score(encoded)
