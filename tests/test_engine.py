"""The engine against a reference built from the plain Hugging Face model, and its invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from layerpolicy.engine import Engine, EngineConfig, score_batch
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.prompts import EncodedPrompt, PromptItem, encode_prompt
from layerpolicy.readout.capture import capture, make_batch
from layerpolicy.readout.sites import Site, captured_sites, readout_order
from layerpolicy.tables.tokens import batch_frame
from tests.reference import plain_model, reference_logits, reference_metrics, reference_vectors

TEXTS = ("What is 12 + 7? Let's think step by step.", "Solve for x: 3x + 2 = 11.", "The fox")
KEY = ["prompt_id", "site", "layer", "position"]


def encoded_texts(model, texts=TEXTS) -> list[EncodedPrompt]:
    items = [PromptItem(f"p{i}", None, text) for i, text in enumerate(texts)]
    return [encode_prompt(item, model.tokenizer, chat_template=False) for item in items]


def frame_for(model, encoded, **config) -> pd.DataFrame:
    engine_config = EngineConfig(**config)
    columns = score_batch(model, encoded, engine_config)
    return batch_frame(model, encoded, columns, engine_config.readout)


def rows_of(frame: pd.DataFrame, prompt_id: str, site: Site) -> pd.DataFrame:
    rows = frame[(frame.prompt_id == prompt_id) & (frame.site == site.name)]
    return rows[rows.layer == site.layer].sort_values("position")


def test_bridge_matches_hugging_face(tiny, tiny_dirs):
    plain = plain_model(tiny.info.location)
    ids = torch.tensor([encoded_texts(tiny)[0].input_ids])
    with torch.no_grad():
        bridge_logits = tiny.bridge(ids)
        hf = plain(ids, output_hidden_states=True)
    torch.testing.assert_close(bridge_logits, hf.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny.bridge.W_U, plain.lm_head.weight.T)
    sites = [Site("resid", layer) for layer in range(1, tiny.n_layers)]
    batch = make_batch(encoded_texts(tiny)[:1], 0, torch.device("cpu"))
    vectors = capture(tiny, batch, sites)
    for site in sites:
        torch.testing.assert_close(
            vectors[site], hf.hidden_states[site.layer][0], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("readout", ["raw", "logit-lens"])
def test_engine_equals_plain_hugging_face_reference(tiny, readout):
    plain = plain_model(tiny.info.location)
    encoded = encoded_texts(tiny)
    frame = frame_for(tiny, encoded, readout=readout)
    for prompt in encoded:
        vectors = reference_vectors(plain, torch.tensor([prompt.input_ids]))
        final_logits = vectors[("final_logits", tiny.n_layers)]
        targets = torch.tensor(prompt.input_ids[1:])
        for site in readout_order(tiny.n_layers, "paper"):
            logits = (
                final_logits
                if site.name == "final"
                else reference_logits(plain, vectors[(site.name, site.layer)], readout)
            )
            expected = reference_metrics(logits, final_logits)
            got = rows_of(frame, prompt.prompt_id, site)
            assert len(got) == len(prompt.input_ids)
            for metric, values in expected.items():
                np.testing.assert_allclose(
                    got[metric].to_numpy(),
                    values.numpy(),
                    rtol=1e-4,
                    atol=2e-4,
                    err_msg=f"{metric} at {site}",
                )
            logp = torch.distributions.Categorical(logits=logits[:-1].double()).log_prob(targets)
            np.testing.assert_allclose(
                got.target_logprob.to_numpy()[:-1], logp.numpy(), rtol=1e-5, atol=2e-4
            )
            assert np.isnan(got.target_logprob.to_numpy()[-1])


def test_final_row_is_the_models_own_policy(tiny):
    """Entropy, target log-prob and rank of the final row against the model's own logits."""
    plain = plain_model(tiny.info.location)
    encoded = encoded_texts(tiny)
    frame = frame_for(tiny, encoded, block_vocab=32)
    for prompt in encoded:
        with torch.no_grad():
            logits = plain(torch.tensor([prompt.input_ids])).logits[0].double()
        final = rows_of(frame, prompt.prompt_id, Site("final", tiny.n_layers))
        assert (final.n_layers == tiny.n_layers).all()
        policy = torch.distributions.Categorical(logits=logits)
        np.testing.assert_allclose(final.entropy, policy.entropy().numpy(), rtol=1e-5, atol=1e-5)
        targets = torch.tensor(prompt.input_ids[1:])
        logp = policy.log_prob(torch.tensor([*prompt.input_ids[1:], 0]))[:-1]
        np.testing.assert_allclose(
            final.target_logprob.to_numpy()[:-1], logp.numpy(), rtol=1e-5, atol=1e-5
        )
        order = torch.argsort(logits[:-1], dim=-1, descending=True)
        rank = (order == targets.unsqueeze(-1)).nonzero()[:, 1] + 1
        np.testing.assert_array_equal(final.target_rank.to_numpy()[:-1], rank.numpy())


def test_residual_is_sum_of_module_writes(tiny):
    encoded = encoded_texts(tiny)[:1]
    batch = make_batch(encoded, 0, torch.device("cpu"))
    order = readout_order(tiny.n_layers, "paper")
    vectors = capture(tiny, batch, captured_sites(order, tiny.n_layers))
    previous = vectors[Site("embed", 0)]
    for layer in range(1, tiny.n_layers + 1):
        parts = previous + vectors[Site("attn", layer)] + vectors[Site("mlp", layer)]
        resid = vectors[Site("resid", layer)]
        torch.testing.assert_close(parts, resid, rtol=1e-5, atol=1e-5)
        previous = resid


def test_linearity_shortcut_matches_direct_readout(tiny):
    encoded = encoded_texts(tiny)
    engine = Engine(tiny, EngineConfig(use_linearity=True))
    fast = batch_frame(tiny, encoded, engine.score(encoded), "raw")
    assert engine.record["linearity_shortcut"] == "used"
    assert engine.record["linearity_error"] < 1e-5
    direct = frame_for(tiny, encoded, use_linearity=False)
    for metric in ("entropy", "kl_to_final", "target_logprob"):
        np.testing.assert_allclose(
            fast[metric], direct[metric], rtol=1e-5, atol=1e-4, equal_nan=True
        )
    pd.testing.assert_series_equal(
        fast.target_rank, direct.target_rank, check_exact=False, atol=0.5
    )


def test_failed_linearity_check_falls_back_to_direct_readouts(tiny_models):
    """A hook that adds a steering vector to block 2's output: the hooked attn and mlp writes
    no longer add up to resid_post, so the shortcut would be wrong from layer 2 on."""
    model = tiny_models["qwen2"]
    encoded = encoded_texts(model)
    steer = torch.linspace(-3.0, 3.0, model.info.d_model)
    layer = model.bridge.blocks[1].original_component
    handle = layer.register_forward_hook(
        lambda module, args, output: (
            (output[0] + steer, *output[1:]) if isinstance(output, tuple) else output + steer
        )
    )
    try:
        engine = Engine(model, EngineConfig(use_linearity=True))
        with pytest.warns(UserWarning, match="resid rows are read out directly"):
            checked = batch_frame(model, encoded, engine.score(encoded), "raw")
        direct = frame_for(model, encoded, use_linearity=False)
        with torch.no_grad():
            ids = torch.tensor([encoded[0].input_ids])
            hidden = model.hf_model(ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    assert engine.record["linearity_shortcut"] == "failed"
    assert engine.record["linearity_layer"] == 2
    for metric in ("entropy", "kl_to_final", "target_logprob", "target_rank"):
        np.testing.assert_array_equal(checked[metric], direct[metric])
    lm_head = model.hf_model.get_output_embeddings()
    batch = make_batch(encoded[:1], 0, torch.device("cpu"))
    sites = captured_sites(readout_order(model.n_layers, "modules"), model.n_layers)
    with torch.no_grad():
        vectors = capture(model, batch, sites)
        shortcut = lm_head(vectors[Site("embed", 0)])
        for site_layer in range(1, 3):
            shortcut = shortcut + lm_head(vectors[Site("attn", site_layer)])
            shortcut = shortcut + lm_head(vectors[Site("mlp", site_layer)])
        direct_logits = lm_head(hidden[2][0])
    got = rows_of(checked, "p0", Site("resid", 2)).entropy.to_numpy()
    np.testing.assert_allclose(
        got, torch.distributions.Categorical(logits=direct_logits).entropy(), atol=1e-4
    )
    wrong = torch.distributions.Categorical(logits=shortcut).entropy().numpy()
    assert np.abs(got - wrong).max() > 0.1


def test_record_says_when_the_shortcut_does_not_apply(tiny):
    assert Engine(tiny, EngineConfig(readout="logit-lens")).record == {
        "readout_precision": "float32",
        "linearity_shortcut": "not applicable",
    }
    assert Engine(tiny, EngineConfig(use_linearity=False)).record == {
        "readout_precision": "float32",
        "linearity_shortcut": "off",
    }


@pytest.mark.parametrize("readout", ["raw", "logit-lens"])
def test_chunk_and_batch_size_do_not_change_results(tiny, readout):
    encoded = encoded_texts(tiny)
    whole = frame_for(tiny, encoded, readout=readout)
    chunked = frame_for(tiny, encoded, readout=readout, chunk_tokens=3)
    one_by_one = pd.concat([frame_for(tiny, [e], readout=readout) for e in encoded])
    whole, chunked, one_by_one = (
        f.sort_values(KEY).reset_index(drop=True) for f in (whole, chunked, one_by_one)
    )
    for other in (chunked, one_by_one):
        pd.testing.assert_frame_equal(whole[KEY], other[KEY])
        for metric in ("entropy", "kl_to_final", "target_logprob", "rms_norm"):
            np.testing.assert_allclose(
                whole[metric], other[metric], rtol=1e-5, atol=1e-4, equal_nan=True
            )


def test_top_k_equals_torch_topk_of_the_plain_model(tiny):
    plain = plain_model(tiny.info.location)
    encoded = encoded_texts(tiny)
    frame = frame_for(tiny, encoded, top_k=5, block_vocab=7, chunk_tokens=4)
    assert frame["top_ids"].dtype == np.dtype(object)
    for prompt in encoded:
        vectors = reference_vectors(plain, torch.tensor([prompt.input_ids]))
        for site in (Site("resid", 1), Site("resid", tiny.n_layers), Site("final", tiny.n_layers)):
            logits = (
                vectors[("final_logits", tiny.n_layers)]
                if site.name == "final"
                else reference_logits(plain, vectors[("resid", site.layer)], "raw")
            )
            logp, ids = torch.log_softmax(logits.double(), -1).topk(5)
            got = rows_of(frame, prompt.prompt_id, site)
            np.testing.assert_array_equal(np.stack(got.top_ids.to_numpy()), ids.numpy())
            top_logprobs = np.stack(got.top_logprobs.to_numpy())
            assert top_logprobs.dtype == np.float32
            np.testing.assert_allclose(top_logprobs, logp.numpy(), rtol=1e-5, atol=1e-4)
    others = frame[~frame.site.isin(["resid", "final"])]
    assert len(others) and all(len(ids) == 0 for ids in others.top_ids)
    assert all(len(p) == 0 for p in others.top_logprobs)


def test_top_k_rows_on_chosen_sites_only(tiny):
    encoded = encoded_texts(tiny)[:1]
    frame = frame_for(tiny, encoded, top_k=3, top_k_sites=("mlp",))
    counts = frame.top_ids.map(len)
    assert (counts[frame.site == "mlp"] == 3).all()
    assert (counts[frame.site != "mlp"] == 0).all()
    assert "top_ids" not in frame_for(tiny, encoded).columns


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"readout": "bogus"}, "unknown readout 'bogus'; choose one of raw, logit-lens"),
        ({"sites": "foo"}, "unknown site set 'foo'; choose one of resid, modules, paper"),
        ({"sites": ("resid", "nope")}, "unknown sites nope"),
        ({"top_k": -1}, "top_k must be at least 0"),
        ({"top_k_sites": ("head",)}, "unknown top-k sites head"),
        ({"chunk_tokens": 0}, "chunk_tokens must be at least 1"),
    ],
)
def test_bad_engine_config_is_one_clear_error(config, message):
    with pytest.raises(LayerpolicyError, match=message.replace("(", r"\(")):
        EngineConfig(**config)


def test_single_cpu_device_map_equals_the_default(tiny_dirs):
    encoded = None
    frames = []
    for placement in ({}, {"device_map": "auto"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(
                str(tiny_dirs["qwen3"]), device="cpu" if not placement else "auto", **placement
            )
        assert model.unembed_device == torch.device("cpu")
        encoded = encoded or encoded_texts(model)
        frames.append(frame_for(model, encoded, top_k=2))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_response_only_scoring_rows(tiny):
    item = PromptItem("r", ({"role": "user", "content": "What is 6 * 8?"},), None, response="48.")
    encoded = encode_prompt(item, tiny.tokenizer)
    frame = frame_for(tiny, [encoded])
    positions = sorted(frame.position.unique())
    start = encoded.response_start
    assert positions == list(range(start - 1, len(encoded.input_ids) - 1))
    first = frame[frame.position == start - 1].iloc[0]
    assert first.target_id == encoded.input_ids[start]
