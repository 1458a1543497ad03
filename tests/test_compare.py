"""`compare` and `layerpolicy compare`: cache reuse, mixed models, before/after, clear errors."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main

import layerpolicy.comparison as comparison
from layerpolicy.analysis import analyse, load_run
from layerpolicy.comparison import compare
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.engine import Engine
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.models.tiny import build_tiny_tokenizer, save_tiny_model, tiny_config
from layerpolicy.spec import RunSpec
from layerpolicy.tables.difference import difference
from layerpolicy.tables.schema import COMPARISON_COLUMNS, DIFFERENCE_COLUMNS


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


def run_dir(model_dir: Path, out: Path, config: AnalysisConfig) -> Path:
    """A finished `layerpolicy entropy`-style run directory of `model_dir` on 2 prompts."""
    analyse(str(model_dir), None, config=config, out=out, limit=2, device="cpu", progress=False)
    return out


def fast_compare(specs, tmp_path: Path, config: AnalysisConfig, **kwargs):
    return compare(
        [str(s) for s in specs],
        config=config,
        limit=2,
        device="cpu",
        progress=False,
        cache=tmp_path / "cache",
        **kwargs,
    )


def test_second_compare_with_same_settings_does_no_forward_pass(
    tiny_dirs, tiny_deep_dir, tmp_path, monkeypatch, analysis_config
):
    specs = [tiny_dirs["qwen2"], tiny_deep_dir]
    first = fast_compare(specs, tmp_path, analysis_config)
    assert len(list((tmp_path / "cache").iterdir())) == 2

    def fail(*args, **kwargs):
        raise AssertionError("a cached model was scored again")

    monkeypatch.setattr(Engine, "score", fail)
    again = fast_compare(specs, tmp_path, analysis_config)
    pd.testing.assert_frame_equal(first.comparison, again.comparison)
    assert first.runs == again.runs
    with pytest.raises(AssertionError, match="scored again"):  # other settings: a new run
        fast_compare(specs, tmp_path, dataclasses.replace(analysis_config, n_boot=60))


def test_a_run_spec_gives_the_same_comparison_and_loads_the_same_cache(
    tiny_dirs, tiny_deep_dir, tmp_path, monkeypatch, analysis_config
):
    specs = [tiny_dirs["qwen2"], tiny_deep_dir]
    first = fast_compare(specs, tmp_path, analysis_config)
    monkeypatch.setattr(Engine, "score", lambda *a, **k: pytest.fail("scored again"))
    spec = RunSpec(ModelConfig(device="cpu"), PromptConfig(limit=2), analysis_config)
    again = compare([str(s) for s in specs], spec, progress=False, cache=tmp_path / "cache")
    pd.testing.assert_frame_equal(first.comparison, again.comparison)
    assert first.runs == again.runs
    for run in first.runs.values():  # each cached run records its own settings and command
        record = load_run(run).record
        assert record["settings"] == spec.replace(model=str(run)).settings(
            record["prompts"]["sha256"], model_name=record["model"]["name"]
        )
    with pytest.raises(LayerpolicyError, match="a RunSpec holds its prompts and settings"):
        compare([str(s) for s in specs], spec, limit=2, cache=tmp_path / "cache")


@pytest.mark.end_to_end
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
    tiny_dirs, tiny_deep_dir, other_vocab_dir, tmp_path, analysis_config
):
    out = tmp_path / "cmp"
    result = fast_compare(
        [tiny_dirs["llama"], tiny_deep_dir, other_vocab_dir], tmp_path, analysis_config, out=out
    )
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


def test_readouts_must_match_unless_mixing_is_allowed(
    tiny_dirs, tmp_path, monkeypatch, capsys, analysis_config
):
    lens_config = dataclasses.replace(analysis_config, readout="logit-lens")
    lens = run_dir(tiny_dirs["qwen2"], tmp_path / "lens", lens_config)

    def fail(*args, **kwargs):
        raise AssertionError("scored before the readouts were checked")

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "score", fail)
        with pytest.raises(RunDirectoryError, match="--allow-mixed-readouts"):
            fast_compare([lens, tiny_dirs["llama"]], tmp_path, analysis_config)
    code = main(["compare", str(lens), str(tiny_dirs["llama"]), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "readouts differ" in err and "logit-lens" in err
    mixed = fast_compare(
        [lens, tiny_dirs["llama"]], tmp_path, analysis_config, allow_mixed_readouts=True
    )
    assert list(mixed.comparison.readout) == ["logit-lens", "raw"]


def test_missing_run_directory_is_a_clear_error(tiny_dirs, tmp_path, capsys, analysis_config):
    missing = tmp_path / "runs" / "entropy-gone"
    with pytest.raises(RunDirectoryError, match="does not exist"):
        fast_compare([missing, tiny_dirs["qwen2"]], tmp_path, analysis_config)
    code = main(["compare", str(missing), str(tiny_dirs["qwen2"])])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and err.strip().count("\n") == 0


@pytest.fixture(scope="module")
def training_run(tiny_dirs, tmp_path_factory, analysis_config) -> Path:
    """A training run directory: before/ (tiny qwen2) and after/ (the same shape, other weights)."""
    root = tmp_path_factory.mktemp("train")
    run_dir(tiny_dirs["qwen2"], root / "train-run" / "before", analysis_config)
    after_model = save_tiny_model(root / "trained" / "qwen2", "qwen2", seed=1)
    run_dir(after_model, root / "train-run" / "after", analysis_config)
    return root / "train-run"


def test_before_after_runs_give_the_difference(training_run, tmp_path, analysis_config):
    out = tmp_path / "cmp"
    result = fast_compare([training_run], tmp_path, analysis_config, out=out)
    assert list(result.summaries) == ["qwen2 (before)", "qwen2 (after)"]
    diff = pd.read_csv(out / "difference.csv")
    assert list(diff.columns) == DIFFERENCE_COLUMNS
    before, after = (result.summaries[k] for k in result.summaries)
    row = diff.query("metric == 'entropy' and site == 'final'").iloc[0]
    expected = after.query("metric == 'entropy' and site == 'final'")["mean"].iloc[0]
    expected -= before.query("metric == 'entropy' and site == 'final'")["mean"].iloc[0]
    assert row["mean"] == pytest.approx(expected, abs=1e-3)
    assert (diff.ci_low <= diff["mean"]).all() and (diff["mean"] <= diff.ci_high).all()
    assert (out / "figures" / "difference_entropy.png").stat().st_size > 0
    assert (out / "figures" / "difference_entropy_change.svg").stat().st_size > 0
    assert "From qwen2 (before) to qwen2 (after)" in result.reading


@pytest.mark.slow
def test_a_second_compare_into_the_same_out_waits_for_the_first(
    training_run, tmp_path, capfd, analysis_config
):
    out = tmp_path / "cmp"
    hold = "import sys, time\nfrom layerpolicy.runs import RunDirectory\n"
    hold += (
        "with RunDirectory(sys.argv[1]).lock():\n    print('held', flush=True)\n    time.sleep(2)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        result = fast_compare([training_run], tmp_path, analysis_config, out=out)
        assert holder.poll() is not None  # the lock was free only once the holder had exited
    finally:
        holder.wait(timeout=60)
    assert f"waiting for process {holder.pid}, which holds {out}" in capfd.readouterr().err
    alone = fast_compare([training_run], tmp_path, analysis_config, out=tmp_path / "alone")
    written = pd.read_csv(out / "comparison.csv")
    pd.testing.assert_frame_equal(written, result.comparison, check_dtype=False)
    pd.testing.assert_frame_equal(result.comparison, alone.comparison)
    pd.testing.assert_frame_equal(result.difference, alone.difference)


def test_out_that_is_a_file_is_refused_before_any_run_is_read(
    training_run, tmp_path, monkeypatch, analysis_config
):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a directory")

    def fail(*args, **kwargs):
        raise AssertionError("a run was loaded before --out was checked")

    monkeypatch.setattr(comparison, "load_run", fail)
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        fast_compare([training_run], tmp_path, analysis_config, out=taken)


def summary_of(means: list[float], half_width: float, readout: str = "raw", n_layers: int = 2):
    """A summary.csv frame of resid entropy at layers 1..n with a symmetric CI of `half_width`."""
    return pd.DataFrame(
        {
            "model": "m",
            "readout": readout,
            "site": "resid",
            "layer": range(1, len(means) + 1),
            "n_layers": n_layers,
            "rel_depth": [layer / n_layers for layer in range(1, len(means) + 1)],
            "metric": "entropy",
            "mean": means,
            "ci_low": [m - half_width for m in means],
            "ci_high": [m + half_width for m in means],
        }
    )


def test_difference_combines_half_widths_in_quadrature():
    diff = difference(summary_of([5.0, 2.0], 0.3), summary_of([5.5, 1.0], 0.4))
    assert list(diff.columns) == DIFFERENCE_COLUMNS
    assert list(diff["mean"]) == [0.5, -1.0]
    assert list(diff["before"]) == [5.0, 2.0] and list(diff["after"]) == [5.5, 1.0]
    assert list(diff["ci_low"]) == [0.0, -1.5] and list(diff["ci_high"]) == [1.0, -0.5]  # 3-4-5
    rounded = difference(summary_of([0.0], 1 / 3, n_layers=1), summary_of([0.0], 0.0, n_layers=1))
    assert rounded["ci_high"].iloc[0] == 0.333


def test_difference_refuses_runs_that_do_not_pair():
    with pytest.raises(LayerpolicyError, match="before uses readout 'raw' but after uses 'logit"):
        difference(summary_of([1.0, 2.0], 0.1), summary_of([1.0, 2.0], 0.1, readout="logit-lens"))
    with pytest.raises(LayerpolicyError, match="base has 2 layers but tuned has 3"):
        difference(
            summary_of([1.0, 2.0], 0.1),
            summary_of([1.0, 2.0], 0.1, n_layers=3),
            labels=("base", "tuned"),
        )
    mixed = pd.concat([summary_of([1.0], 0.1), summary_of([1.0], 0.1, readout="logit-lens")])
    with pytest.raises(LayerpolicyError, match="before summary holds 2 readout values"):
        difference(mixed, summary_of([1.0, 2.0], 0.1))
