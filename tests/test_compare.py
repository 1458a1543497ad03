"""`compare` and `layerpolicy compare`: cache reuse, mixed models, before/after, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main

import layerpolicy.analysis as analysis
from layerpolicy.analysis import AnalysisConfig, analyse
from layerpolicy.comparison import COMPARISON_COLUMNS, compare
from layerpolicy.errors import RunDirectoryError
from layerpolicy.models.tiny import build_tiny_tokenizer, save_tiny_model, tiny_config

FAST = AnalysisConfig(batch_size=2, n_boot=50)


@pytest.fixture(scope="session")
def other_vocab_dir(tmp_path_factory) -> Path:
    """A 3-layer tiny Qwen3 with a smaller vocabulary (288) than the other tiny models (320)."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("tiny-vocab") / "qwen3-v288"
    tokenizer = build_tiny_tokenizer(vocab_size=288)
    config = tiny_config("qwen3", len(tokenizer), n_layers=3)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_dir(model_dir: Path, out: Path, readout: str = "raw") -> Path:
    """A finished `layerpolicy entropy`-style run directory of `model_dir` on 2 prompts."""
    config = AnalysisConfig(batch_size=2, n_boot=50, readout=readout)
    analyse(str(model_dir), None, config=config, out=out, limit=2, device="cpu", progress=False)
    return out


def fast_compare(specs, tmp_path: Path, **kwargs):
    return compare(
        [str(s) for s in specs],
        config=kwargs.pop("config", FAST),
        limit=2,
        device="cpu",
        progress=False,
        cache=tmp_path / "cache",
        **kwargs,
    )


def test_second_compare_with_same_settings_does_no_forward_pass(
    tiny_dirs, tiny_deep_dir, tmp_path, monkeypatch
):
    specs = [tiny_dirs["qwen2"], tiny_deep_dir]
    first = fast_compare(specs, tmp_path)
    assert len(list((tmp_path / "cache").iterdir())) == 2

    def fail(*args, **kwargs):
        raise AssertionError("a cached model was scored again")

    monkeypatch.setattr(analysis, "score_batch", fail)
    again = fast_compare(specs, tmp_path)
    pd.testing.assert_frame_equal(first.comparison, again.comparison)
    assert first.runs == again.runs
    with pytest.raises(AssertionError, match="scored again"):  # other settings: a new run
        fast_compare(specs, tmp_path, config=AnalysisConfig(batch_size=2, n_boot=60))


def test_cli_compares_models_of_different_depth_and_vocabulary(
    tiny_deep_dir, other_vocab_dir, tmp_path, capsys
):
    out = tmp_path / "cmp"
    args = [str(tiny_deep_dir), str(other_vocab_dir), "--limit", "2", "--batch-size", "2"]
    args += ["--device", "cpu", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    code = main(["compare", *args, "--x", "layer"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == COMPARISON_COLUMNS
    assert list(table.model) == ["llama6", "qwen3-v288"]
    assert list(table.n_layers) == [6, 3] and list(table.vocab_size) == [320, 288]
    assert table.convergence_depth.between(0, 1).all() and table.eic_mlp.notna().all()
    for name in ("entropy", "entropy_change", "kl_to_final"):
        for suffix in ("png", "svg"):
            assert (out / "figures" / f"{name}.{suffix}").stat().st_size > 0
    assert "tokenizers differ" in captured.out and "shape statistics" in captured.out
    assert "llama6" in captured.out and "qwen3-v288" in captured.out


def test_comparison_md_quotes_every_model_and_its_numbers(
    tiny_dirs, tiny_deep_dir, other_vocab_dir, tmp_path
):
    out = tmp_path / "cmp"
    result = fast_compare([tiny_dirs["llama"], tiny_deep_dir, other_vocab_dir], tmp_path, out=out)
    text = (out / "comparison.md").read_text()
    table = pd.read_csv(out / "comparison.csv")
    assert result.reading in text
    for row in table.itertuples(index=False):
        assert row.model in result.reading
        for value in (row.convergence_depth, row.policy_entropy, row.eic_mlp):
            assert str(value) in result.reading
    quoted = set(re.findall(r"-?\d+\.\d+", result.reading))
    csv_numbers = set(re.findall(r"-?\d+\.\d+", (out / "comparison.csv").read_text()))
    assert quoted and quoted <= csv_numbers
    assert set(result.summaries) == set(table.model) == {"llama", "llama6", "qwen3-v288"}


def test_readouts_must_match_unless_mixing_is_allowed(tiny_dirs, tmp_path, monkeypatch, capsys):
    lens = run_dir(tiny_dirs["qwen2"], tmp_path / "lens", readout="logit-lens")

    def fail(*args, **kwargs):
        raise AssertionError("scored before the readouts were checked")

    with monkeypatch.context() as patch:
        patch.setattr(analysis, "score_batch", fail)
        with pytest.raises(RunDirectoryError, match="--allow-mixed-readouts"):
            fast_compare([lens, tiny_dirs["llama"]], tmp_path)
    code = main(["compare", str(lens), str(tiny_dirs["llama"]), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "readouts differ" in err and "logit-lens" in err
    mixed = fast_compare([lens, tiny_dirs["llama"]], tmp_path, allow_mixed_readouts=True)
    assert list(mixed.comparison.readout) == ["logit-lens", "raw"]


def test_missing_run_directory_is_a_clear_error(tiny_dirs, tmp_path, capsys):
    missing = tmp_path / "runs" / "entropy-gone"
    with pytest.raises(RunDirectoryError, match="does not exist"):
        fast_compare([missing, tiny_dirs["qwen2"]], tmp_path)
    code = main(["compare", str(missing), str(tiny_dirs["qwen2"])])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and err.strip().count("\n") == 0


def test_before_after_runs_give_the_difference(tiny_dirs, tmp_path):
    train = tmp_path / "train-run"
    run_dir(tiny_dirs["qwen2"], train / "before")
    after_model = save_tiny_model(tmp_path / "trained" / "qwen2", "qwen2", seed=1)
    run_dir(after_model, train / "after")
    out = tmp_path / "cmp"
    result = fast_compare([train], tmp_path, out=out)
    assert list(result.summaries) == ["qwen2 (before)", "qwen2 (after)"]
    diff = pd.read_csv(out / "difference.csv")
    before, after = (result.summaries[k] for k in result.summaries)
    row = diff.query("metric == 'entropy' and site == 'final'").iloc[0]
    expected = after.query("metric == 'entropy' and site == 'final'")["mean"].iloc[0]
    expected -= before.query("metric == 'entropy' and site == 'final'")["mean"].iloc[0]
    assert row["mean"] == pytest.approx(expected, abs=1e-3)
    assert (diff.ci_low <= diff["mean"]).all() and (diff["mean"] <= diff.ci_high).all()
    assert (out / "figures" / "difference_entropy.png").stat().st_size > 0
    assert (out / "figures" / "difference_entropy_change.svg").stat().st_size > 0
    assert "From qwen2 (before) to qwen2 (after)" in result.reading
