"""The engine against a plain all-at-once reference, and the decomposition's invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from layerpolicy.engine import EngineConfig, batch_frame, capture, make_batch, score_batch
from layerpolicy.prompts import EncodedPrompt, PromptItem, encode_prompt
from layerpolicy.readout.sites import Site, Unembedding, captured_sites, readout_order
from tests.reference import plain_model, reference_metrics, reference_vectors

TEXTS = ("What is 12 + 7? Let's think step by step.", "Solve for x: 3x + 2 = 11.", "The fox")


def encoded_texts(model, texts=TEXTS) -> list[EncodedPrompt]:
    items = [PromptItem(f"p{i}", None, text) for i, text in enumerate(texts)]
    return [encode_prompt(item, model.tokenizer, chat_template=False) for item in items]


def frame_for(model, encoded, **config) -> pd.DataFrame:
    engine_config = EngineConfig(**config)
    columns = score_batch(model, encoded, engine_config)
    return batch_frame(model, encoded, columns, engine_config.readout)


def test_bridge_matches_hugging_face(tiny, tiny_dirs):
    plain = plain_model(tiny.info.location)
    ids = torch.tensor([encoded_texts(tiny)[0].input_ids])
    with torch.no_grad():
        bridge_logits = tiny.bridge(ids)
        hf = plain(ids, output_hidden_states=True)
    torch.testing.assert_close(bridge_logits, hf.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(tiny.bridge.W_U, plain.lm_head.weight.T)
    sites = [Site("resid", layer) for layer in range(1, tiny.n_layers)]
    batch = make_batch(encoded_texts(tiny)[:1], 0, torch.device("cpu"))
    vectors = capture(tiny, batch, sites)
    for site in sites:
        torch.testing.assert_close(
            vectors[site], hf.hidden_states[site.layer][0], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("readout", ["raw", "logit-lens"])
def test_engine_equals_all_at_once_reference(tiny, readout):
    plain = plain_model(tiny.info.location)
    unembed = Unembedding(plain)
    encoded = encoded_texts(tiny)
    frame = frame_for(tiny, encoded, readout=readout)
    for prompt in encoded:
        ids = torch.tensor([prompt.input_ids])
        vectors = reference_vectors(plain, ids)
        final_logits = vectors[("final_logits", tiny.n_layers)]
        rows = frame[frame.prompt_id == prompt.prompt_id]
        for site in readout_order(tiny.n_layers, "paper"):
            with torch.no_grad():
                logits = (
                    final_logits
                    if site.name == "final"
                    else unembed.readout(vectors[(site.name, site.layer)], readout)
                )
            expected = reference_metrics(logits, final_logits)
            got = rows[(rows.site == site.name) & (rows.layer == site.layer)].sort_values(
                "position"
            )
            assert len(got) == len(prompt.input_ids)
            for metric, values in expected.items():
                np.testing.assert_allclose(
                    got[metric].to_numpy(),
                    values.numpy(),
                    rtol=1e-4,
                    atol=2e-4,
                    err_msg=f"{metric} at {site}",
                )
            targets = torch.tensor([*prompt.input_ids[1:], -1])
            logp = torch.log_softmax(logits.double(), -1)
            expected_logp = logp[torch.arange(len(targets))[:-1], targets[:-1]].numpy()
            np.testing.assert_allclose(got.target_logprob.to_numpy()[:-1], expected_logp, atol=2e-4)
            assert np.isnan(got.target_logprob.to_numpy()[-1])


def test_final_row_is_the_models_policy(tiny):
    encoded = encoded_texts(tiny)[:1]
    frame = frame_for(tiny, encoded)
    with torch.no_grad():
        logits = tiny.hf_model(torch.tensor([encoded[0].input_ids])).logits[0]
    final = frame[frame.site == "final"].sort_values("position")
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    np.testing.assert_allclose(final.entropy.to_numpy(), entropy.numpy(), atol=1e-5)
    assert np.allclose(final.kl_to_final, 0.0, atol=1e-5)
    assert final.top1_agree.all()
    assert (final.layer == tiny.n_layers).all()


def test_residual_is_sum_of_module_writes(tiny):
    encoded = encoded_texts(tiny)[:1]
    batch = make_batch(encoded, 0, torch.device("cpu"))
    order = readout_order(tiny.n_layers, "paper")
    vectors = capture(tiny, batch, captured_sites(order, tiny.n_layers))
    unembed = Unembedding(tiny.hf_model)
    previous = vectors[Site("embed", 0)]
    for layer in range(1, tiny.n_layers + 1):
        parts = previous + vectors[Site("attn", layer)] + vectors[Site("mlp", layer)]
        resid = vectors[Site("resid", layer)]
        torch.testing.assert_close(parts, resid, rtol=0, atol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(unembed.raw(parts), unembed.raw(resid), rtol=0, atol=1e-4)
        previous = resid


def test_linearity_shortcut_matches_direct_readout(tiny):
    encoded = encoded_texts(tiny)
    fast = frame_for(tiny, encoded, use_linearity=True)
    direct = frame_for(tiny, encoded, use_linearity=False)
    for metric in ("entropy", "kl_to_final", "target_logprob"):
        np.testing.assert_allclose(fast[metric], direct[metric], atol=1e-4, equal_nan=True)
    pd.testing.assert_series_equal(
        fast.target_rank, direct.target_rank, check_exact=False, atol=0.5
    )


@pytest.mark.parametrize("readout", ["raw", "logit-lens"])
def test_chunk_and_batch_size_do_not_change_results(tiny, readout):
    encoded = encoded_texts(tiny)
    whole = frame_for(tiny, encoded, readout=readout)
    chunked = frame_for(tiny, encoded, readout=readout, chunk_tokens=3)
    one_by_one = pd.concat([frame_for(tiny, [e], readout=readout) for e in encoded])
    key = ["prompt_id", "site", "layer", "position"]
    whole, chunked, one_by_one = (
        f.sort_values(key).reset_index(drop=True) for f in (whole, chunked, one_by_one)
    )
    for other in (chunked, one_by_one):
        pd.testing.assert_frame_equal(whole[key], other[key])
        for metric in ("entropy", "kl_to_final", "target_logprob", "rms_norm"):
            np.testing.assert_allclose(whole[metric], other[metric], atol=1e-4, equal_nan=True)


def test_response_only_scoring_rows(tiny):
    item = PromptItem("r", ({"role": "user", "content": "What is 6 * 8?"},), None, response="48.")
    encoded = encode_prompt(item, tiny.tokenizer)
    frame = frame_for(tiny, [encoded])
    positions = sorted(frame.position.unique())
    start = encoded.response_start
    assert positions == list(range(start - 1, len(encoded.input_ids) - 1))
    first = frame[frame.position == start - 1].iloc[0]
    assert first.target_id == encoded.input_ids[start]


def test_rank_counts_larger_logits(tiny):
    encoded = encoded_texts(tiny)[:1]
    frame = frame_for(tiny, encoded)
    final = frame[(frame.site == "final")].sort_values("position")
    with torch.no_grad():
        logits = tiny.hf_model(torch.tensor([encoded[0].input_ids])).logits[0]
    targets = torch.tensor(encoded[0].input_ids[1:])
    order = torch.argsort(logits[:-1], dim=-1, descending=True)
    expected = (order == targets.unsqueeze(-1)).nonzero()[:, 1] + 1
    np.testing.assert_array_equal(final.target_rank.to_numpy()[:-1], expected.numpy())
