"""Tiny random-weight models (Qwen2, Qwen3, Llama, Gemma 3), byte-identical wherever built.

They load offline in well under a second and exercise the same code paths as real checkpoints,
so tests, notebooks in CI and quick demos use them. Weights are random (seeded): the numbers
they give mean nothing about real models.

Nothing in them depends on the machine or on a library's training or sampling code: the
tokenizer is a written byte-level BPE vocabulary and merge list, and every weight is an integer
drawn from a seeded generator (integer arithmetic is exact everywhere) times one constant, so a
build on any CPU gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch

from .cache import cache_root, dir_lock

TINY_ARCHITECTURES = ("qwen2", "qwen3", "llama")  # the `tiny-` names and the test matrix
BUILDABLE_ARCHITECTURES = (*TINY_ARCHITECTURES, "gemma3")  # gemma3: save_tiny_model only
TINY_PREFIX = "tiny-"
INIT_STD = 0.25  # standard deviation of the weight matrices
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Merges in priority order (Ġ is a leading space in the byte-level alphabet). Each merge's parts
# are single characters or results of earlier merges, so every prefix is a valid merge list.
_MERGES = (
    "s t", "st e", "a n", "Ġ 1", "Ġ ste", "Ġste p", "e r", "Ġ b", "Ġ an", "a s", "h e", "i n",
    "i s", "Ġ +", "Ġ 3", "Ġ =", "Ġ f", "Ġ t", "Ġ is", "Ġb y", "e as", "o x", "s w", "Ġ 2",
    "Ġ 7", "Ġan sw", "Ġansw er", "4 8", "T he", "a l", "b ox", "e d", "h in", "m p", "o n",
    "u t", "} .", "Ġ *", "Ġ 6", "Ġ 8", "Ġ S", "Ġ \\", "Ġ d", "Ġ x", "Ġ1 2", "Ġan d", "in al",
    "Ġf inal", "Ġt he", "eas on", "box ed", "' s", "1 9", "C o", "L e", "P l", "R eason",
    "S o", "W h", "a c", "a t",
)  # fmt: skip
_BYTES = 256
MAX_VOCAB = len(SPECIAL_TOKENS) + _BYTES + len(_MERGES)  # 320


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's byte -> unicode map), sorted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [256 + i for i in range(_BYTES - len(printable))]
    return sorted(chr(c) for c in printable + shifted)


def tiny_vocabulary(vocab_size: int = MAX_VOCAB) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The written vocabulary (token -> id) and merges of a `vocab_size`-token tokenizer.

    Ids: the special tokens, then the byte alphabet, then one token per merge (the first
    `vocab_size - 259` merges).
    """
    n_merges = vocab_size - len(SPECIAL_TOKENS) - _BYTES
    if not 0 <= n_merges <= len(_MERGES):
        raise ValueError(
            f"tiny vocab_size must be between {MAX_VOCAB - len(_MERGES)} and {MAX_VOCAB}"
        )
    merges = [tuple(m.split(" ")) for m in _MERGES[:n_merges]]
    tokens = [*SPECIAL_TOKENS, *byte_alphabet(), *("".join(m) for m in merges)]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tiny_tokenizer(vocab_size: int = MAX_VOCAB):
    """A byte-level BPE tokenizer over the written vocabulary, with a ChatML template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = tiny_vocabulary(vocab_size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_config(architecture: str, vocab_size: int, n_layers: int = 4, d_model: int = 64):
    """A Hugging Face config for a tiny model of an architecture in BUILDABLE_ARCHITECTURES.

    gemma3 has sandwich blocks (a norm after attention and after the MLP), scaled embeddings and
    an 8-token sliding window on every layer but the last.
    """
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=INIT_STD,
    )
    if architecture == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if architecture == "qwen3":
        return Qwen3Config(**common, head_dim=d_model // 4, tie_word_embeddings=True)
    if architecture == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if architecture == "gemma3":
        layer_types = ["sliding_attention"] * (n_layers - 1) + ["full_attention"]
        return Gemma3TextConfig(
            **common,
            head_dim=d_model // 4,
            query_pre_attn_scalar=d_model // 4,
            sliding_window=8,
            layer_types=layer_types,
            tie_word_embeddings=True,
        )
    raise ValueError(
        f"unknown tiny architecture {architecture!r}; choose from {BUILDABLE_ARCHITECTURES}"
    )


def tiny_weight(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The float32 value of parameter `name`: exact integer draws, seeded by (seed, name).

    Norm gains are k / 2^23 for k uniform in [2^22, 3 * 2^22), i.e. uniform in [0.5, 1.5) and
    exact (not 1, so tests can tell normed from raw readouts); biases are 0; every other weight
    is a sum of 4 uniform integers (near-normal) times one constant, so its std is INIT_STD.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    if name.endswith("norm.weight"):
        k = torch.randint(2**22, 3 * 2**22, shape, generator=generator)
        return k.to(torch.float32) * 2.0**-23
    if name.endswith(".bias"):
        return torch.zeros(shape)
    half = 2**21
    k = torch.randint(-half, half, (4, *shape), generator=generator).sum(dim=0)
    scale = INIT_STD * math.sqrt(3.0) / 2**22  # std of the sum is 2^22 / sqrt(3)
    return (k.to(torch.float64) * scale).to(torch.float32)


def save_tiny_model(
    directory: Path, architecture: str, n_layers: int = 4, d_model: int = 64, seed: int = 0
) -> Path:
    """Write a tiny random model and its tokenizer as a Hugging Face directory; return it."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(architecture, len(tokenizer), n_layers=n_layers, d_model=d_model)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights appear once
            param.copy_(tiny_weight(name, param.shape, seed))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "layerpolicy.json").write_text(
        json.dumps({"tiny": architecture, "n_layers": n_layers, "d_model": d_model, "seed": seed})
    )
    return directory


def tiny_model_dir(architecture: str) -> Path:
    """The cached tiny random model of `architecture`, written on first use."""
    directory = cache_root() / "tiny" / architecture
    if (directory / "layerpolicy.json").is_file():
        return directory
    with dir_lock(directory):
        if not (directory / "layerpolicy.json").is_file():
            tmp = directory.with_name(f".{architecture}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            save_tiny_model(tmp, architecture)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
    return directory
