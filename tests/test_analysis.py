"""The analysis API and `layerpolicy entropy`: outputs, resume, and errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from layerpolicy.cli.app import main, spec_from_argv

from layerpolicy.analysis import analyse, load_run
from layerpolicy.config import AnalysisConfig, PromptConfig
from layerpolicy.engine import Engine
from layerpolicy.errors import RunDirectoryError
from layerpolicy.prompts import load_prompts
from layerpolicy.report import run_figures
from layerpolicy.runs import RunDirectory


@pytest.mark.end_to_end
def test_entropy_cli_writes_tables_record_and_figures(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "entropy",
            "--model",
            str(tiny_dirs["qwen3"]),
            "--limit",
            "3",
            "--out",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert set(tokens.site) == {"embed", "attn_in", "attn", "mlp_in", "mlp", "resid", "final"}
    assert tokens.prompt_id.nunique() == 3 and (tokens.readout == "raw").all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"entropy", "entropy_change", "kl_to_final"} <= set(summary.metric)
    assert (summary.ci_low <= summary["mean"] + 1e-9).all()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["settings"]["readout"] == "raw"
    assert record["kl_direction"] == "KL(pi_theta || readout)"
    assert record["versions"]["torch"]
    assert record["readout_checks"]["linearity_shortcut"] == "used"
    assert record["sampling"] is None and record["prompts"]["n_prompts"] == 3
    assert record["format_version"] == 2 and record["kind"] == "entropy"
    argv = record["argv"]  # the command that reproduces the run, read back by the CLI's parser
    assert argv == ["layerpolicy", "entropy", "--model", str(tiny_dirs["qwen3"]), "--limit", "3",
                    "--batch-size", "2"]  # fmt: skip
    spec_from_argv(argv[1:]).check_against(
        record, prompts_sha256=record["prompts"]["sha256"], model_name=record["model"]["name"]
    )
    for name in ("entropy_profile", "entropy_change", "kl_to_final", "heatmap_first_prompt"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
        assert (out / "figures" / f"{name}.svg").stat().st_size > 0
    assert "final (pi_theta)" in capsys.readouterr().out


def test_final_entropy_in_summary_matches_the_token_table(tiny_models, analysis_config):
    result = analyse(
        tiny_models["llama"], load_prompts(None, limit=2), config=analysis_config, progress=False
    )
    final_tokens = result.tokens[result.tokens.site == "final"]
    final_row = result.summary.query("metric == 'entropy' and site == 'final'").iloc[0]
    assert final_row.pooled_mean == pytest.approx(final_tokens.entropy.mean(), rel=1e-5)
    assert final_row.layer == final_row.n_layers == 4


def test_interrupted_run_resumes_and_matches_uninterrupted(
    tiny_models, tmp_path, monkeypatch, analysis_config
):
    model = tiny_models["qwen2"]
    prompts = load_prompts(None, limit=5)
    reference = analyse(
        model, prompts, config=analysis_config, progress=False, out=tmp_path / "whole"
    )

    real_score = Engine.score
    calls = {"n": 0}

    def interrupt_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(Engine, "score", interrupt_second_batch)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        analyse(model, prompts, config=analysis_config, progress=False, out=out)
    assert len(list((out / "parts").glob("part-*.parquet"))) == 1
    assert not (out / "summary.csv").exists()

    scored: list[str] = []

    def count(engine, encoded):
        scored.extend(e.prompt_id for e in encoded)
        return real_score(engine, encoded)

    monkeypatch.setattr(Engine, "score", count)
    resumed = analyse(model, prompts, config=analysis_config, progress=False, out=out)
    assert scored == [item.id for item in prompts.items[2:]]
    key = ["prompt_id", "site", "layer", "position"]
    a = reference.tokens.sort_values(key).reset_index(drop=True)
    b = resumed.tokens.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_finished_run_is_loaded_not_recomputed(tiny_models, tmp_path, monkeypatch, analysis_config):
    out = tmp_path / "run"
    first = analyse(
        tiny_models["qwen2"],
        load_prompts(None, limit=2),
        config=analysis_config,
        progress=False,
        out=out,
    )

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(Engine, "score", fail)
    again = analyse(
        tiny_models["qwen2"],
        load_prompts(None, limit=2),
        config=analysis_config,
        progress=False,
        out=out,
    )
    pd.testing.assert_frame_equal(first.summary, again.summary, check_dtype=False)
    assert load_run(out).record["status"] == "complete"


def test_other_settings_in_the_same_directory_are_refused(tiny_models, tmp_path, analysis_config):
    out = tmp_path / "run"
    prompts = load_prompts(None, limit=2)
    settings = {"format_version": 2, "model": "x", "readout": "raw"}
    RunDirectory(out).start({"settings": settings}, force=False)
    with pytest.raises(RunDirectoryError, match="other settings"):
        analyse(tiny_models["qwen2"], prompts, config=analysis_config, progress=False, out=out)


def test_generate_scores_sampled_response_only_and_is_reproducible(tiny_models):
    config = AnalysisConfig(n_boot=20, seed=3)
    prompts = PromptConfig(limit=2, generate=5)
    first = analyse(tiny_models["llama"], prompts, config=config, progress=False)
    second = analyse(tiny_models["llama"], prompts, config=config, progress=False)
    pd.testing.assert_frame_equal(first.tokens, second.tokens)
    assert first.record["sampling"]["max_new_tokens"] == 5
    assert first.record["sampling"]["temperature"] == 1.0
    per_prompt = first.tokens[first.tokens.site == "final"].groupby("prompt_id").size()
    assert (per_prompt <= 5).all() and (per_prompt >= 1).all()
    assert (first.tokens.target_id >= 0).all()


def test_logit_lens_readout_differs_from_raw_except_final(tiny_models, analysis_config):
    prompts = load_prompts(None, limit=2)
    raw = analyse(tiny_models["qwen2"], prompts, config=analysis_config, progress=False)
    lens = analyse(
        tiny_models["qwen2"],
        prompts,
        config=AnalysisConfig(readout="logit-lens", n_boot=50),
        progress=False,
    )
    final = lambda r: r.tokens[r.tokens.site == "final"].entropy.to_numpy()  # noqa: E731
    np.testing.assert_allclose(final(raw), final(lens), atol=1e-6)
    mid = lambda r: r.tokens.query("site == 'resid' and layer == 2").entropy.to_numpy()  # noqa: E731
    assert np.abs(mid(raw) - mid(lens)).max() > 1e-2
    assert (lens.tokens.readout == "logit-lens").all()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "empty.txt", "no prompts"),
        (b"\x00\x01\x02binary", "weird.txt", "not utf-8 text"),
        ('{"question": "hi"}\n', "rows.jsonl", "no prompt column 'nope'"),
    ],
)
def test_bad_prompt_sources_are_one_line_errors(
    tiny_dirs, tmp_path, capsys, content, name, message
):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [
        "entropy",
        "--model",
        str(tiny_dirs["qwen2"]),
        "--prompts",
        str(path),
        "--out",
        str(tmp_path / "out"),
    ]
    if name == "rows.jsonl":
        args += ["--column", "nope"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err.lower() and err.strip().count("\n") == 0


def test_missing_prompt_file_names_the_path(tiny_dirs, tmp_path, capsys):
    missing = tmp_path / "nowhere.parquet"
    code = main(["entropy", "--model", str(tiny_dirs["qwen2"]), "--prompts", str(missing)])
    assert code == 2 and str(missing) in capsys.readouterr().err


@pytest.mark.parametrize("sites", ["resid", "modules"])
def test_smaller_site_sets_write_their_figures(tiny_models, tmp_path, sites):
    out = tmp_path / sites
    config = AnalysisConfig(sites=sites, n_boot=20)
    result = analyse(
        tiny_models["qwen2"], load_prompts(None, limit=2), config=config, progress=False, out=out
    )
    assert set(result.tokens.site) <= {"embed", "resid", "attn", "mlp", "final"}
    run_figures(result)  # analyse draws nothing; the caller draws the run's figures
    assert (out / "figures" / "entropy_profile.png").is_file()
    assert not (out / "figures" / "entropy_change.png").exists()


def test_finished_run_with_other_settings_is_refused(tiny_models, tmp_path, analysis_config):
    out = tmp_path / "run"
    prompts = load_prompts(None, limit=2)
    analyse(tiny_models["qwen2"], prompts, config=analysis_config, progress=False, out=out)
    with pytest.raises(RunDirectoryError, match="readout"):
        analyse(
            tiny_models["qwen2"],
            prompts,
            config=AnalysisConfig(readout="logit-lens"),
            progress=False,
            out=out,
        )
