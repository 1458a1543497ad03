"""Tiny random-weight models (Qwen2, Qwen3, Llama) with a tiny trained byte-level BPE tokenizer.

They load offline in well under a second and exercise the same code paths as real checkpoints,
so tests, notebooks in CI and quick demos use them. Weights are random (seeded): the numbers
they give mean nothing about real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_ARCHITECTURES = ("qwen2", "qwen3", "llama")
TINY_PREFIX = "tiny-"

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "What is 12 + 7? Let's think step by step. 12 + 7 = 19. The answer is \\boxed{19}.",
    "Compute 6 * 8. Six times eight is 48, so the final answer is \\boxed{48}.",
    "The quick brown fox jumps over the lazy dog. Reason step by step.",
    "Solve for x: 3x + 2 = 11. Subtract 2 and divide by 3: x = 3.",
    "system user assistant Please reason step by step, and put your final answer within",
    "0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) . , ? !",
]


def build_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_config(architecture: str, vocab_size: int, n_layers: int = 4, d_model: int = 64):
    """A Hugging Face config for a tiny model of the given architecture (qwen2, qwen3, llama)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.25,
    )
    if architecture == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if architecture == "qwen3":
        return Qwen3Config(**common, head_dim=d_model // 4, tie_word_embeddings=True)
    if architecture == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    raise ValueError(
        f"unknown tiny architecture {architecture!r}; choose from {TINY_ARCHITECTURES}"
    )


def save_tiny_model(
    directory: Path, architecture: str, n_layers: int = 4, d_model: int = 64, seed: int = 0
) -> Path:
    """Write a tiny random model and its tokenizer as a Hugging Face directory; return it.

    Norm gains are drawn around 1 (not exactly 1) so that tests can tell normed from raw readouts.
    """
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(architecture, len(tokenizer), n_layers=n_layers, d_model=d_model)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "layerpolicy.json").write_text(
        json.dumps({"tiny": architecture, "n_layers": n_layers, "d_model": d_model, "seed": seed})
    )
    return directory
