"""The one logits path (final norm found from structure, float32 maths) and `residual`."""

from __future__ import annotations

import pytest
import torch

from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.unembed import Unembedding, find_final_norm
from tests.reference import plain_model, reference_vectors


def ids_of(model) -> torch.Tensor:
    item = PromptItem("x", None, "What is 12 + 7? Let's think.")
    return torch.tensor([encode_prompt(item, model.tokenizer, chat_template=False).input_ids])


def test_final_norm_is_the_module_that_feeds_lm_head(tiny):
    plain = plain_model(tiny.info.location)
    assert find_final_norm(plain) is plain.model.norm
    found = find_final_norm(tiny.hf_model)
    assert found is tiny.hf_model.model.norm.original_component


def tiny_hf(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny random Hugging Face model of another family, and its final norm by name."""
    import transformers

    sizes = {"vocab_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    configs = {
        "opt": (
            transformers.OPTConfig,
            {"hidden_size": 16, "ffn_dim": 32, "word_embed_proj_dim": 16},
        ),
        "gpt2": (transformers.GPT2Config, {"n_embd": 16, "n_layer": 2, "n_head": 2}),
        "gpt_neox": (transformers.GPTNeoXConfig, {"hidden_size": 16, "intermediate_size": 32}),
        "gemma2": (
            transformers.Gemma2Config,
            {"hidden_size": 16, "intermediate_size": 32, "head_dim": 8},
        ),
        "olmo2": (transformers.Olmo2Config, {"hidden_size": 16, "intermediate_size": 32}),
    }
    config_class, extra = configs[kind]
    model = transformers.AutoModelForCausalLM.from_config(config_class(**sizes, **extra))
    norms = {
        "opt": lambda m: m.model.decoder.final_layer_norm,
        "gpt2": lambda m: m.transformer.ln_f,
        "gpt_neox": lambda m: m.gpt_neox.final_layer_norm,
        "gemma2": lambda m: m.model.norm,
        "olmo2": lambda m: m.model.norm,
    }
    return model, norms[kind](model)


@pytest.mark.parametrize("kind", ["opt", "gpt2", "gpt_neox", "gemma2", "olmo2"])
def test_final_norm_of_other_families(kind):
    model, norm = tiny_hf(kind)
    assert find_final_norm(model) is norm


def test_missing_final_norm_is_one_clear_error():
    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 4)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Decoder()

        def get_decoder(self):
            return self.decoder

    with pytest.raises(LayerpolicyError, match="cannot find the final norm of Model"):
        find_final_norm(Model())


def test_logits_equal_the_plain_models(tiny):
    plain = plain_model(tiny.info.location)
    ids = ids_of(tiny)
    vectors = reference_vectors(plain, ids)
    unembed = Unembedding(tiny.hf_model)
    last = vectors[("resid", tiny.n_layers)]
    with torch.no_grad():
        want = plain(ids).logits[0]
        normed = plain.model.norm(last)
        torch.testing.assert_close(unembed.final(last), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unembed.from_normed(normed), want, rtol=1e-5, atol=1e-5)
        mlp = vectors[("mlp", 2)]
        torch.testing.assert_close(unembed.readout(mlp, "raw"), plain.lm_head(mlp))
        torch.testing.assert_close(
            unembed.readout(mlp, "logit-lens"), plain.lm_head(plain.model.norm(mlp))
        )
    with pytest.raises(LayerpolicyError, match="unknown readout 'lens'"):
        unembed.readout(mlp, "lens")


def test_half_precision_readouts_are_float32_with_and_without_gradients(tiny_dirs):
    model = load_model(str(tiny_dirs["llama"]), device="cpu", dtype=torch.bfloat16)
    unembed = Unembedding(model.hf_model)
    x = torch.randn(3, model.info.d_model, dtype=torch.bfloat16)
    with torch.no_grad():
        frozen = unembed.logit_lens(x)
    trained = unembed.logit_lens(x)
    assert frozen.dtype == trained.dtype == torch.float32
    torch.testing.assert_close(trained.detach(), frozen)
    trained.logsumexp(-1).sum().backward()
    assert unembed.weight.grad is not None and unembed.weight.grad.dtype == torch.bfloat16
    norm = find_final_norm(model.hf_model)
    assert norm.weight.grad is not None
