"""The probe set of training dynamics: responses sampled once, then scored teacher-forced.

`score_probe` turns one model state into dynamics rows (DYNAMICS_COLUMNS, without step and
phase): per site and layer the readouts' entropy (the same scoring an `entropy --responses` run
of the probe does), for layer k the KL(pi^k || pi^j) to every later layer j and the cosine
similarity of H^k with H^j, and the perplexity of pi_theta on the probe responses. Values are
means over probe responses of per-response token means, with 95% bootstrap intervals over
responses (`tables.stats.summarise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import AnalysisConfig, PromptConfig
from ..engine import engine_chunk
from ..metrics import readout_metrics, reference_policy
from ..models import LoadedModel
from ..prompt_scoring import score_prompts
from ..prompts import PromptItem, encode_ids
from ..readout.capture import capture, make_batch
from ..readout.sites import Site
from ..readout.unembed import Unembedding
from ..responses import responses_table, saved_prompts, write_responses
from ..sampling import SamplingConfig, sample_items, stop_token_ids
from ..tables import stats

PROBE_NAME = "probe.parquet"
ROW_COLUMNS = ["site", "layer", "n_layers", "metric", "mean", "ci_low", "ci_high", "n_tokens"]
_KEYS = ["prompt_id", "sample"]


def sample_probe(
    model: LoadedModel,
    items: Sequence[PromptItem],
    config: SamplingConfig,
    *,
    chat_template: bool = True,
    thinking: bool | None = None,
) -> pd.DataFrame:
    """The probe: `config.n` responses per item from `model` with the library's sampler, as a
    responses.parquet table (ungraded)."""
    samples = sample_items(model, items, config, chat_template=chat_template, thinking=thinking)
    stops = stop_token_ids(model.tokenizer, model.plain)
    return responses_table(samples, model.tokenizer, {}, stops)


def save_probe(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the probe (a responses table) atomically; returns the file."""
    return write_responses(frame, path)


def score_probe(
    model: LoadedModel,
    probe: Path,
    layer: int,
    config: AnalysisConfig,
) -> pd.DataFrame:
    """Dynamics rows (ROW_COLUMNS) of `model` on the saved probe `probe` (a responses.parquet);
    `layer`: k of the KL and cosine rows (1 <= k < L)."""
    prompts = PromptConfig(responses=str(probe), max_tokens=None)  # whole responses
    frames: list[pd.DataFrame] = []
    prompt_set, saved = saved_prompts(probe)
    score_prompts(model, prompt_set.items, prompts, config, frames.append, progress=False)
    tokens = pd.concat(frames, ignore_index=True)
    means = stats.prompt_means(tokens)  # as the analysis: a prompt's samples averaged
    entropy = means[means["metric"] == "entropy"]
    nll = _perplexity_means(means, model.n_layers)
    pairs = layer_pair_means(model, saved, layer, config)
    long = pd.concat([entropy, nll, pairs], ignore_index=True)
    summary = stats.summarise(
        long, model=model.info.name, readout=config.readout, n_boot=config.n_boot, seed=config.seed
    )
    summary = summary.rename(columns={"pooled_mean": "_pooled"})
    perplexity = summary["metric"] == "perplexity"
    # perplexity = exp(mean NLL of every probe response token); its interval maps the
    # interval of the mean over responses of per-response mean NLL
    summary.loc[perplexity, "mean"] = np.exp(summary.loc[perplexity, "_pooled"])
    for column in ("ci_low", "ci_high"):
        summary.loc[perplexity, column] = np.exp(summary.loc[perplexity, column])
    return summary[ROW_COLUMNS].reset_index(drop=True)


def _perplexity_means(means: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per-response mean NLL of pi_theta (the final row's -target_logprob), metric perplexity."""
    final = means[(means["metric"] == "target_logprob") & (means["site"] == "final")].copy()
    final["value"] = -final["value"]
    final["metric"] = "perplexity"
    final["layer"] = n_layers
    return final


def layer_pair_means(
    model: LoadedModel, frame: pd.DataFrame, layer: int, config: AnalysisConfig
) -> pd.DataFrame:
    """Per-prompt means (over its responses of per-response token means) of KL(pi^k || pi^j)
    (metric kl_from_k) and cos(H^k, H^j) (metric cos_with_k) for every j > k, in the
    `stats.prompt_means` layout (site resid, layer j).
    Readouts of `config.readout`; one [chunk, vocab] pair of logits alive at a time."""
    unembed = Unembedding(model.hf_model)
    n_layers = model.n_layers
    sites = [Site("resid", j) for j in range(layer, n_layers + 1)]
    pad = model.tokenizer.pad_token_id
    rows: list[tuple[str, int, int, str, float, int]] = []
    records = list(frame.itertuples(index=False))
    for start in range(0, len(records), config.batch_size):
        batch_rows = records[start : start + config.batch_size]
        encoded = [
            encode_ids(r.prompt_id, r.prompt_ids, r.response_ids, sample=int(r.sample))
            for r in batch_rows
        ]
        batch = make_batch(encoded, 0 if pad is None else pad, model.device)
        vectors = capture(model, batch, sites)
        owner = batch.rows.cpu().numpy()
        sums = _pair_sums(unembed, vectors, layer, n_layers, config)
        for j, (kl, cos) in sums.items():
            for row, item in enumerate(batch_rows):
                mine = owner == row
                count = int(mine.sum())
                key = (item.prompt_id, int(item.sample))
                rows.append((*key, j, "kl_from_k", float(kl[mine].mean()), count))
                rows.append((*key, j, "cos_with_k", float(cos[mine].mean()), count))
    long = pd.DataFrame(rows, columns=[*_KEYS, "layer", "metric", "value", "n_tokens"])
    per_prompt = long.groupby(["prompt_id", "layer", "metric"], sort=False).agg(
        value=("value", "mean"), n_tokens=("n_tokens", "sum")
    )  # each response weighs the same, as in `stats.prompt_means`
    return per_prompt.reset_index().assign(site="resid", n_layers=n_layers)


def _pair_sums(
    unembed: Unembedding,
    vectors: dict[Site, torch.Tensor],
    layer: int,
    n_layers: int,
    config: AnalysisConfig,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per scored token, KL(pi^k || pi^j) and cos(H^k, H^j) for each j > k, chunk by chunk."""
    h_k = vectors[Site("resid", layer)]
    size = engine_chunk(unembed.vocab_size, unembed.device, config.chunk_tokens)
    out: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
        j: ([], []) for j in range(layer + 1, n_layers + 1)
    }
    no_targets = torch.full((h_k.shape[0],), -1, device=unembed.device)
    with torch.inference_mode():
        for begin in range(0, h_k.shape[0], size):
            piece = slice(begin, begin + size)
            x_k = h_k[piece]
            reference = reference_policy(unembed.readout(x_k, config.readout, layer))
            for j, (kls, coss) in out.items():
                x_j = vectors[Site("resid", j)][piece]
                logits = unembed.readout(x_j, config.readout, j)
                kls.append(readout_metrics(logits, no_targets[piece], reference)["kl_to_final"])
                coss.append(torch.cosine_similarity(x_k.float(), x_j.float(), dim=-1))
                del logits
            del reference
    return {
        j: (torch.cat(k).cpu().numpy(), torch.cat(c).cpu().numpy()) for j, (k, c) in out.items()
    }
