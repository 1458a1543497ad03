"""Tiny models: byte-identical builds in separate processes, a written tokenizer, exact weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerpolicy.models.tiny import (
    MAX_VOCAB,
    TINY_ARCHITECTURES,
    build_tiny_tokenizer,
    save_tiny_model,
    tiny_vocabulary,
    tiny_weight,
)

# sha256 of model.safetensors for each tiny architecture (seed 0). The weights are integer draws
# times one constant, so every machine must write these bytes; a change means the recipe changed.
WEIGHT_SHA256 = {
    "qwen2": "9b8e82272c012d36abaf32236a4990d2d5d55d65de6ab790a69fd613992a1bc5",
    "qwen3": "9f4b4b4516262c75d0ea073a075139cc888f500ee833bffbd95c070153a48f1f",
    "llama": "a09b7417aa75064a6b236d50c84eb85d42041574fc703ab831ba4732057710c5",
}

_BUILD = """
from layerpolicy.models.tiny import TINY_ARCHITECTURES, tiny_model_dir
for arch in TINY_ARCHITECTURES:
    print("built:", tiny_model_dir(arch))
"""  # marked lines: libraries may log to stdout too (DeepSpeed's accelerator notice on a CPU)


def _hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _build_in_fresh_process(cache: Path) -> list[Path]:
    env = {**os.environ, "LAYERPOLICY_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", _BUILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = "built: "
    return [
        Path(line[len(marker) :]) for line in result.stdout.splitlines() if line.startswith(marker)
    ]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Every tiny model built twice, each time by a new process into a new cache."""
    root = tmp_path_factory.mktemp("tiny-builds")
    return _build_in_fresh_process(root / "a"), _build_in_fresh_process(root / "b")


@pytest.mark.slow
def test_builds_in_separate_processes_are_byte_identical(two_builds):
    first, second = two_builds
    assert [p.name for p in first] == list(TINY_ARCHITECTURES)
    for a, b in zip(first, second, strict=True):
        hashes = _hashes(a)
        assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(hashes)
        assert hashes == _hashes(b), a.name


@pytest.mark.slow
def test_an_in_process_build_matches_the_cached_one(two_builds, tmp_path):
    for cached in two_builds[0]:
        assert _hashes(save_tiny_model(tmp_path / cached.name, cached.name)) == _hashes(cached)


@pytest.mark.slow
def test_weights_have_the_recorded_bytes(two_builds):
    for directory in two_builds[0]:
        digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
        assert digest == WEIGHT_SHA256[directory.name], directory.name


def test_seeds_give_different_weights(tmp_path):
    a = load_file(save_tiny_model(tmp_path / "s0", "llama", seed=0) / "model.safetensors")
    b = load_file(save_tiny_model(tmp_path / "s1", "llama", seed=1) / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(a[name], b[name])


def test_weights_are_exact_integer_multiples():
    shape = torch.Size([64, 128])
    w = tiny_weight("model.layers.0.mlp.up_proj.weight", shape, seed=0)
    assert w.dtype == torch.float32 and w.shape == shape
    assert 0.2 < w.std().item() < 0.3 and abs(w.mean().item()) < 0.02
    gain = tiny_weight("model.layers.0.input_layernorm.weight", torch.Size([64]), seed=0)
    k = gain.double() * 2**23
    assert torch.equal(k, k.round()) and gain.min() >= 0.5 and gain.max() < 1.5
    assert not torch.equal(gain, torch.ones_like(gain))
    assert torch.equal(tiny_weight("x.bias", torch.Size([8]), 0), torch.zeros(8))


def test_saved_weights_are_the_recipe(two_builds):
    directory = two_builds[0][0]
    seed = json.loads((directory / "layerpolicy.json").read_text())["seed"]
    for name, tensor in load_file(directory / "model.safetensors").items():
        assert torch.equal(tensor, tiny_weight(name, tensor.shape, seed)), name


def test_the_tokenizer_is_the_written_vocabulary():
    tokenizer = build_tiny_tokenizer()
    vocab, merges = tiny_vocabulary()
    assert len(tokenizer) == MAX_VOCAB == 320 and tokenizer.get_vocab() == vocab
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 2)
    for left, right in merges:  # every merge is built from tokens that exist before it
        assert vocab[left] < vocab[left + right] and vocab[right] < vocab[left + right]
    text = "What is 12 + 7? The answer is \\boxed{19}."
    assert "Ġanswer" in tokenizer.tokenize(text) and "boxed" in tokenizer.tokenize(text)
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_a_smaller_vocabulary_keeps_the_first_merges():
    small = build_tiny_tokenizer(vocab_size=288)
    assert len(small) == 288
    full = build_tiny_tokenizer().get_vocab()
    assert all(full[token] == i for token, i in small.get_vocab().items())
    with pytest.raises(ValueError, match="between 259 and 320"):
        build_tiny_tokenizer(vocab_size=400)
