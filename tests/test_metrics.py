"""Streaming metrics against torch.distributions and sorting, and the engine's streaming knobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from layerpolicy.engine import EngineConfig, score_batch
from layerpolicy.metrics import (
    BlockPicks,
    block_kernel,
    block_stats,
    compiled_block_stats,
    entropy_from_logits,
    readout_metrics,
    reference_policy,
)
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.capture import capture, make_batch
from layerpolicy.readout.sites import Site, captured_sites, readout_order
from layerpolicy.readout.unembed import Unembedding
from layerpolicy.tables.tokens import batch_frame

SHAPES = [(1, 1), (3, 2), (5, 17), (8, 300), (4, 5000)]


def random_logits(n: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=generator) * scale


def random_targets(n: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab, (n,), generator=generator)


def sort_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based position of each target in a descending sort (no ties in random logits)."""
    order = torch.argsort(logits, dim=-1, descending=True)
    return (order == targets.unsqueeze(-1)).nonzero()[:, 1] + 1


@pytest.mark.parametrize(("n", "vocab"), SHAPES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 300.0])
def test_metrics_equal_torch_distributions(n, vocab, scale):
    seed = n * 1000 + vocab
    logits = random_logits(n, vocab, seed, scale)
    final = random_logits(n, vocab, seed + 7, scale)
    targets = random_targets(n, vocab, seed)
    got = readout_metrics(logits, targets, reference_policy(final))
    readout = torch.distributions.Categorical(logits=logits.double())
    policy = torch.distributions.Categorical(logits=final.double())
    tol = {"rtol": 1e-5, "atol": 1e-5 * max(1.0, scale)}
    torch.testing.assert_close(got["entropy"].double(), readout.entropy(), **tol)
    torch.testing.assert_close(entropy_from_logits(logits).double(), readout.entropy(), **tol)
    kl = torch.distributions.kl_divergence(policy, readout)
    # torch.distributions says inf where a probability of the readout underflows in float64
    exact = (policy.probs * (policy.logits - readout.logits)).sum(-1)
    torch.testing.assert_close(kl[torch.isfinite(kl)], exact[torch.isfinite(kl)])
    torch.testing.assert_close(got["kl_to_final"].double(), exact, **tol)
    logp = readout.log_prob(targets)
    torch.testing.assert_close(got["target_logprob"].double(), logp, **tol)
    torch.testing.assert_close(got["target_rank"], sort_rank(logits, targets).float())
    assert torch.equal(got["top1_agree"], logits.argmax(-1) == final.argmax(-1))


def masked_logits(n: int, vocab: int, seed: int) -> torch.Tensor:
    """Random logits with a masked (-inf) vocabulary: a random third of each row, a whole
    leading block of 40 entries, and all but one entry of the last row."""
    logits = random_logits(n, vocab, seed)
    generator = torch.Generator().manual_seed(seed + 2)
    logits[torch.rand(n, vocab, generator=generator) < 1 / 3] = -torch.inf
    logits[:, :40] = -torch.inf
    logits[-1, :-1] = -torch.inf
    logits[-1, -1] = 2.0
    return logits


@pytest.mark.parametrize("block", [None, 16, 40, 7])
def test_masked_logits_equal_torch_distributions(block):
    """-inf logits have probability 0: entropies stay finite, KL is infinite only where
    pi_theta puts mass on an entry the readout masks."""
    n, vocab = 6, 300
    logits = masked_logits(n, vocab, 11)
    final = masked_logits(n, vocab, 11)  # the same mask as the readout
    final[:, 40:] = torch.where(torch.isinf(final[:, 40:]), final[:, 40:], random_logits(n, 260, 4))
    targets = torch.tensor([45, 0, 299, 100, 200, 299])
    got = readout_metrics(logits, targets, reference_policy(final, block), block, top_k=4)
    readout = torch.distributions.Categorical(logits=logits.double())
    policy = torch.distributions.Categorical(logits=final.double())
    tol = {"rtol": 1e-5, "atol": 1e-5}
    assert torch.isfinite(got["entropy"]).all()
    torch.testing.assert_close(got["entropy"].double(), readout.entropy(), **tol)
    torch.testing.assert_close(entropy_from_logits(logits).double(), readout.entropy(), **tol)
    assert got["entropy"][-1] == pytest.approx(0.0, abs=1e-6)
    kl = torch.distributions.kl_divergence(policy, readout)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(got["kl_to_final"].double(), kl, **tol)
    logp = readout.log_prob(targets)
    assert torch.isinf(logp[1]) and torch.isinf(got["target_logprob"][1])
    finite = torch.isfinite(logp)
    torch.testing.assert_close(got["target_logprob"].double()[finite], logp[finite], **tol)
    top_logp, top_ids = torch.log_softmax(logits.double(), -1)[:-1].topk(4)
    assert torch.equal(got["top_ids"][:-1], top_ids)
    torch.testing.assert_close(got["top_logprobs"][:-1].double(), top_logp, **tol)
    assert got["top_ids"][-1, 0] == vocab - 1


def test_kl_is_infinite_where_the_readout_masks_policy_mass():
    logits = random_logits(2, 50, 3)
    logits[0, 7] = -torch.inf
    final = random_logits(2, 50, 4)
    got = readout_metrics(logits, torch.tensor([1, 2]), reference_policy(final), block=16)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=final),
        torch.distributions.Categorical(logits=logits),
    )
    assert torch.isinf(got["kl_to_final"][0]) and torch.isinf(kl[0])
    torch.testing.assert_close(got["kl_to_final"][1], kl[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "vocab"), SHAPES)
@pytest.mark.parametrize("block", [1, 7, None])
def test_running_top_k_equals_torch_topk(n, vocab, block):
    logits = random_logits(n, vocab, n + vocab)
    k = min(5, vocab)
    got = readout_metrics(logits, random_targets(n, vocab, 0), None, block=block, top_k=5)
    logp, ids = torch.log_softmax(logits.double(), -1).topk(k)
    assert torch.equal(got["top_ids"], ids)
    torch.testing.assert_close(got["top_logprobs"].double(), logp, rtol=1e-5, atol=1e-5)


def test_rank_counts_only_strictly_larger_logits():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    targets = torch.tensor([2, 4])
    got = readout_metrics(logits, targets, None, block=2)
    assert got["target_rank"].tolist() == [1.0, 1.0]
    got = readout_metrics(logits, torch.tensor([0, 0]), None, block=2)
    assert got["target_rank"].tolist() == [4.0, 1.0]


def test_missing_targets_give_nan_and_leave_the_rest():
    logits = random_logits(4, 50, 0)
    targets = torch.tensor([3, -1, 49, -1])
    got = readout_metrics(logits, targets, reference_policy(random_logits(4, 50, 1)))
    missing = targets < 0
    for name in ("target_logprob", "target_rank"):
        assert torch.isnan(got[name][missing]).all()
        assert torch.isfinite(got[name][~missing]).all()
    for name in ("entropy", "kl_to_final"):
        assert torch.isfinite(got[name]).all()


@pytest.mark.parametrize(("n", "vocab"), SHAPES)
def test_blocked_equals_whole(n, vocab):
    seed = 17 + n + vocab
    logits = random_logits(n, vocab, seed)
    targets = random_targets(n, vocab, seed)
    targets[::3] = -1
    reference = reference_policy(random_logits(n, vocab, seed + 3))
    whole = readout_metrics(logits, targets, reference, block=vocab)
    for block in (1, 7, max(1, vocab // 3), vocab + 5):
        blocked = readout_metrics(logits, targets, reference, block=block)
        for name, value in whole.items():
            torch.testing.assert_close(
                blocked[name], value, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name
            )
    halves = [
        readout_metrics(logits[rows], targets[rows], _rows(reference, rows), block=7)
        for rows in (slice(0, n // 2), slice(n // 2, n))
    ]
    for name, value in whole.items():
        joined = torch.cat([half[name] for half in halves])
        torch.testing.assert_close(joined, value, rtol=1e-5, atol=1e-5, equal_nan=True)


def _rows(reference, rows):
    return type(reference)(
        reference.probs[rows], reference.neg_entropy[rows], reference.argmax[rows]
    )


@pytest.mark.slow
def test_compiled_block_kernel_equals_eager():
    """Large CPU blocks go through torch.compile (when it works here); same numbers."""
    compiled = compiled_block_stats()
    if compiled is None:
        pytest.skip("torch.compile is not available on this machine")
    logits = random_logits(64, 3000, 5, scale=40.0)
    threshold = logits[:, 7:8]
    with torch.inference_mode():
        for got, want in zip(
            compiled(logits, threshold), block_stats(logits, threshold), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert block_kernel(logits) is compiled
    targets = random_targets(64, 3000, 5)
    got = readout_metrics(logits, targets, None, block=2048)
    readout = torch.distributions.Categorical(logits=logits.double())
    torch.testing.assert_close(got["entropy"].double(), readout.entropy(), rtol=1e-5, atol=4e-4)
    torch.testing.assert_close(got["target_rank"], sort_rank(logits, targets).float())


def test_reference_policy_matches_softmax():
    final = random_logits(6, 400, 3)
    reference = reference_policy(final, block=64)
    torch.testing.assert_close(reference.probs, torch.softmax(final, -1))
    entropy = torch.distributions.Categorical(logits=final).entropy()
    torch.testing.assert_close(-reference.neg_entropy, entropy)
    assert torch.equal(reference.argmax, final.argmax(-1))


def test_block_picks_cover_every_valid_id():
    ids = torch.tensor([5, -1, 0, 99, 40, 5, 63, 64])
    picks = BlockPicks(ids, width=32, vocab_size=100)
    assert len(picks.rows) == 4
    seen = torch.cat(picks.rows).sort().values
    assert seen.tolist() == [0, 2, 3, 4, 5, 6, 7]
    for index, (rows, cols) in enumerate(zip(picks.rows, picks.cols, strict=True)):
        assert torch.equal(ids[rows], cols + index * 32)


# The engine's streaming knobs: windows over the KV cache, vocabulary blocks, token chunks.

TEXTS = (
    "What is 12 + 7? Let's think step by step. 12 + 7 = 19. The answer is 19.",
    "Solve for x: 3x + 2 = 11.",
    "The fox",
)
KEY = ["prompt_id", "site", "layer", "position"]


def frame(model, **config) -> pd.DataFrame:
    items = [PromptItem(f"p{i}", None, text) for i, text in enumerate(TEXTS)]
    encoded = [encode_prompt(item, model.tokenizer, chat_template=False) for item in items]
    engine_config = EngineConfig(**config)
    columns = score_batch(model, encoded, engine_config)
    table = batch_frame(model, encoded, columns, engine_config.readout)
    return table.sort_values(KEY).reset_index(drop=True)


@pytest.mark.parametrize("readout", ["raw", "logit-lens"])
def test_windows_blocks_and_chunks_do_not_change_results(tiny, readout):
    whole = frame(tiny, readout=readout, block_vocab=10**6)
    for config in (
        {"window_tokens": 4},
        {"window_tokens": 1, "chunk_tokens": 2},
        {"block_vocab": 7},
        {"block_vocab": 64, "chunk_tokens": 5, "window_tokens": 9},
    ):
        other = frame(tiny, readout=readout, **config)
        pd.testing.assert_frame_equal(whole[KEY], other[KEY])
        for metric in ("entropy", "kl_to_final", "target_logprob", "rms_norm"):
            np.testing.assert_allclose(
                whole[metric],
                other[metric],
                rtol=1e-5,
                atol=2e-4,
                equal_nan=True,
                err_msg=str(config),
            )
        # windows change the vectors by float rounding, which may reorder near-tied logits
        rank_change = np.abs(whole.target_rank - other.target_rank).dropna()
        assert rank_change.max() <= 1 and (rank_change > 0).mean() < 0.01
        assert (whole.top1_agree == other.top1_agree).mean() > 0.99


def test_engine_ranks_equal_sorting(tiny):
    table = frame(tiny, block_vocab=16)
    item = PromptItem("p0", None, TEXTS[0])
    ids = encode_prompt(item, tiny.tokenizer, chat_template=False).input_ids
    with torch.inference_mode():
        hidden = tiny.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        weight = tiny.hf_model.get_output_embeddings().weight
        targets = torch.tensor(ids[1:])
        for layer in range(1, tiny.n_layers):
            logits = hidden[layer][0, :-1] @ weight.T
            rows = table[(table.prompt_id == "p0") & (table.site == "resid")]
            rows = rows[rows.layer == layer].sort_values("position")
            np.testing.assert_array_equal(
                rows.target_rank.to_numpy()[:-1], sort_rank(logits, targets).numpy()
            )


def test_half_precision_model_reads_out_in_float32(tiny_dirs):
    """A bf16 forward: readouts use float32 copies of W_U and the final norm, so the engine's
    metrics equal float64 ones computed from the same bf16 vectors."""
    model = load_model(str(tiny_dirs["qwen2"]), device="cpu", dtype=torch.bfloat16)
    assert "use --dtype float32 on CPU" in model.info.note
    unembed = Unembedding(model.hf_model)
    assert unembed.weight.dtype == torch.bfloat16 and unembed.weight32.dtype == torch.float32
    x = torch.randn(3, model.info.d_model, dtype=torch.bfloat16)
    assert unembed.raw(x).dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(unembed.raw(x), x.float() @ unembed.weight32.T)
    item = PromptItem("p1", None, TEXTS[1])
    encoded = encode_prompt(item, model.tokenizer, chat_template=False)
    columns = score_batch(model, [encoded], EngineConfig(readout="logit-lens"))
    table = batch_frame(model, [encoded], columns, "logit-lens")
    batch = make_batch([encoded], 0, torch.device("cpu"))
    order = readout_order(model.n_layers, "paper")
    vectors = capture(model, batch, captured_sites(order, model.n_layers))
    with torch.inference_mode():
        final = unembed.final(vectors[Site("resid", model.n_layers)]).double()
        for site in (Site("embed", 0), Site("mlp", 2), Site("resid", model.n_layers)):
            logits = unembed.normed(vectors[site]).double() @ unembed.weight32.double().T
            got = table[(table.site == site.name) & (table.layer == site.layer)]
            got = got.sort_values("position")
            readout = torch.distributions.Categorical(logits=logits)
            kl = torch.distributions.kl_divergence(
                torch.distributions.Categorical(logits=final), readout
            )
            np.testing.assert_allclose(got.entropy, readout.entropy().numpy(), atol=1e-4)
            np.testing.assert_allclose(got.kl_to_final, kl.numpy(), atol=1e-4)
