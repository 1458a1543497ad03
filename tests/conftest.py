"""Shared fixtures: tiny random-weight Qwen2, Qwen3 and Llama models, saved once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from layerpolicy.config import AnalysisConfig
from layerpolicy.models import load_model
from layerpolicy.models.tiny import TINY_ARCHITECTURES, save_tiny_model

warnings.filterwarnings("ignore", module="transformer_lens")

# Real prompt sets (math500, deepmath) for the named sources, where this checkout has them.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("LAYERPOLICY_DATA", str(SHARED_DATA))


# Warnings of other packages that an `end_to_end` test lets pass (every other warning, ours
# included, fails it), as pytest filters "action:message:category".
THIRD_PARTY_WARNINGS = (
    # TRL 1.16 unwraps the policy for generation by reading `is_gradient_checkpointing`, which
    # transformers 5.25 deprecates; nothing of ours calls it.
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every warning of an `end_to_end` test is an error, but THIRD_PARTY_WARNINGS."""
    strict = pytest.mark.filterwarnings("error", *THIRD_PARTY_WARNINGS)
    for item in items:
        if item.get_closest_marker("end_to_end"):
            item.add_marker(strict)


@pytest.fixture
def shared_data() -> Path:
    """The directory of the real prompt sets; skips the test where this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data next to this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def analysis_config() -> AnalysisConfig:
    """Fast analysis settings for tiny models: batches of 2 prompts, 50 bootstrap resamples."""
    return AnalysisConfig(batch_size=2, n_boot=50)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny model directories by architecture (4 layers, d_model 64, vocab ~320)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(root / arch, arch) for arch in TINY_ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_deep_dir(tmp_path_factory) -> Path:
    """A 6-layer tiny Llama (a different depth from the others), for comparisons."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-deep") / "llama6", "llama", n_layers=6)


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """Loaded tiny models by architecture (bridges over raw weights, CPU, float32)."""
    torch.manual_seed(0)
    return {arch: load_model(str(path), device="cpu") for arch, path in tiny_dirs.items()}


@pytest.fixture(params=TINY_ARCHITECTURES)
def tiny(request, tiny_models):
    """Each tiny architecture in turn."""
    return tiny_models[request.param]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty layerpolicy cache for one test."""
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
