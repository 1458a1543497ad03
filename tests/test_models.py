"""Model specs: resolution, offline fallback, and one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch
from layerpolicy.cli.app import main
from safetensors.torch import load_file, save_file

from layerpolicy.errors import LayerpolicyError, ModelNotFoundError, OfflineError
from layerpolicy.models import load_model, resolve, resolve_spec


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: False)


def test_packaged_tiny_and_directory_specs(tiny_dirs):
    assert resolve_spec("smollm2-135m-instruct").kind == "packaged"
    assert resolve_spec("TINY-QWEN3").location == "qwen3"
    source = resolve_spec(str(tiny_dirs["llama"]))
    assert (source.kind, source.name) == ("local", "llama")


def test_alias_falls_back_to_packaged_model_offline(no_hub):
    source = resolve_spec("qwen")
    assert (source.kind, source.location) == ("packaged", "qwen2.5-coder-0.5b-instruct")
    assert "Qwen/Qwen2.5-1.5B" in source.note
    assert resolve_spec("llama", offline=True).location == "smollm2-135m-instruct"


def test_alias_uses_hub_when_reachable(monkeypatch):
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: True)
    source = resolve_spec("llama")
    assert (source.kind, source.location, source.note) == ("hub", "meta-llama/Llama-3.2-1B", None)


def test_hub_id_offline_names_the_alternatives(no_hub):
    with pytest.raises(OfflineError, match="smollm2-135m-instruct"):
        resolve_spec("Qwen/Qwen2.5-1.5B")


def test_hf_hub_offline_env_counts_as_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve.hub_reachable() is False


def test_unknown_spec_suggests_close_matches():
    with pytest.raises(ModelNotFoundError, match="did you mean qwen"):
        resolve_spec("qwne")


def test_directory_without_config_and_missing_gguf(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_spec(str(tmp_path / "model.gguf"))


def test_cli_unknown_model_is_one_line_exit_2(capsys):
    code = main(["entropy", "--model", "qwne"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "layerpolicy models" in err and "Traceback" not in err


def test_tiny_spec_loads_from_cache(cache_dir):
    model = load_model("tiny-llama", device="cpu")
    assert model.info.name == "tiny-llama" and model.n_layers == 4
    assert model.info.note is None  # float32 on CPU: nothing to say
    assert (cache_dir / "tiny" / "llama" / "config.json").is_file()


def test_nan_weights_are_refused(tiny_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["qwen2"], broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if "layers.1.mlp" in k)
    weights[name][0, 0] = torch.nan
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LayerpolicyError, match=r"NaN or infinite weights in .*layers\.1\.mlp"):
        load_model(str(broken), device="cpu")


def test_gated_hub_model_says_how_to_log_in(monkeypatch):
    import transformers

    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: True)

    def gated(*args, **kwargs):
        raise OSError("You are trying to access a gated repo. 401 Client Error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", gated)
    with pytest.raises(LayerpolicyError, match="hf auth login"):
        load_model("meta-llama/Llama-3.2-1B", device="cpu")


def test_final_norm_gains_are_not_one(tiny):
    """Guards the tests: with unit gains, raw and normed readouts would be harder to tell apart."""
    norm = tiny.hf_model.model.norm
    weight = getattr(norm, "original_component", norm).weight
    assert not torch.allclose(weight, torch.ones_like(weight))
