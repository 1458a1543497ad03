"""Responses as data: responses.parquet of sampling runs, scoring saved responses again under
another readout or model, samples averaged per prompt, and profiles by correctness."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from layerpolicy.cli.app import main

from layerpolicy.analysis import analyse, load_run
from layerpolicy.bupo.evaluate import solve_rates
from layerpolicy.bupo.reward import grade, verifier_record
from layerpolicy.comparison import compare
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.correctness import by_correct
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_tokenizer
from layerpolicy.models.tiny import build_tiny_tokenizer
from layerpolicy.report import run_figures
from layerpolicy.report.view import build_report
from layerpolicy.responses import read_responses, tokenizer_fingerprint, write_responses
from layerpolicy.sampling import prompt_seed
from layerpolicy.spec import RunSpec
from layerpolicy.tables import stats
from layerpolicy.tables.schema import RESPONSE_COLUMNS
from tests.sampled import PROBLEMS, sample_problems

KEYS = ["prompt_id", "sample", "position", "token_id"]


@pytest.fixture(scope="module")
def sampled(tiny_dirs, tmp_path_factory, analysis_config):
    """A --generate run of 3 prompts with answers, 2 responses each, on tiny Qwen2, scored on one
    thread as the tests that score it again are (float32 sums follow the thread count)."""
    root = tmp_path_factory.mktemp("responses")
    return sample_problems(tiny_dirs["qwen2"], root, analysis_config, generate=6, out="run")


def test_a_sampling_run_keeps_its_responses_as_data(sampled, one_thread):
    result, spec = sampled
    responses = read_responses(result.path)
    assert list(responses.columns) == RESPONSE_COLUMNS
    assert responses.equals(result.responses)
    assert list(zip(responses["prompt_id"], responses["sample"], strict=True)) == [
        (p, s) for p in responses["prompt_id"].unique() for s in (0, 1)
    ]
    assert responses["prompt_id"].nunique() == len(PROBLEMS)
    tokenizer = load_tokenizer(spec.model.spec)
    stop = tokenizer.eos_token_id
    for row in responses.itertuples(index=False):
        ids = [int(i) for i in row.response_ids]
        assert row.seed == prompt_seed(0, row.prompt_id, row.sample)
        assert row.n_tokens == len(ids) <= 6
        assert row.response_text == tokenizer.decode(ids, skip_special_tokens=True)
        assert row.finish_reason == ("eos" if ids[-1] == stop else "length")
        assert row.correct == grade(row.response_text, row.answer)
        assert row.tokenizer == tokenizer_fingerprint(tokenizer)
    # the token table holds exactly the sampled ids, one position per response token
    resid = result.tokens[(result.tokens["site"] == "resid") & (result.tokens["layer"] == 1)]
    for row in responses.itertuples(index=False):
        mine = resid[(resid["prompt_id"] == row.prompt_id) & (resid["sample"] == row.sample)]
        mine = mine.sort_values("position")
        assert mine["target_id"].tolist() == [int(i) for i in row.response_ids]
        assert mine["token_id"].iloc[0] == row.prompt_ids[-1]
        assert mine["correct"].eq(row.correct).all()
    record = json.loads((result.path / "run.json").read_text())
    assert record["responses"]["verifier"] == verifier_record()
    assert record["settings"]["samples"] == 2
    argv = spec.replace(n_boot=1000).to_argv()
    assert argv[argv.index("--samples") + 1] == "2"


def test_prompt_means_average_a_prompts_samples_first(sampled):
    tokens = sampled[0].tokens
    rows = tokens[(tokens["site"] == "resid") & (tokens["layer"] == 2)]
    per_response = rows.groupby(["prompt_id", "sample"])["entropy"].mean()
    expected = per_response.groupby(level="prompt_id").mean()
    means = sampled[0].prompt_means
    got = means[(means["site"] == "resid") & (means["layer"] == 2) & (means["metric"] == "entropy")]
    got = got.set_index("prompt_id")
    np.testing.assert_allclose(got["value"], expected.loc[got.index], rtol=1e-6)
    assert (got["n_tokens"] == rows.groupby("prompt_id").size().loc[got.index]).all()


def test_saved_responses_score_again_with_identical_keys(sampled, tmp_path, one_thread):
    result, spec = sampled
    again = spec.replace(prompts=PromptConfig(responses=str(result.path)))
    raw = analyse(again, out=tmp_path / "raw", progress=False)
    lens = analyse(again.replace(readout="logit-lens"), progress=False)
    raw_keys = raw.tokens[KEYS].drop_duplicates().reset_index(drop=True)
    assert raw_keys.equals(lens.tokens[KEYS].drop_duplicates().reset_index(drop=True))
    assert raw_keys.equals(result.tokens[KEYS].drop_duplicates().reset_index(drop=True))
    both = result.tokens.merge(raw.tokens, on=[*KEYS, "site", "layer"], suffixes=("", "_again"))
    assert len(both) == len(result.tokens) == len(raw.tokens)
    for metric in ("entropy", "kl_to_final", "target_logprob"):
        np.testing.assert_allclose(both[f"{metric}_again"], both[metric], atol=1e-6)
    assert raw.responses.equals(result.responses)
    assert raw.prompt_means["prompt_id"].nunique() == len(PROBLEMS)
    assert raw.record["settings"]["prompts_sha256"] == lens.record["settings"]["prompts_sha256"]


def test_another_tokenizer_is_refused_before_the_weights_load(sampled, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sampled[1].model.spec, other)
    build_tiny_tokenizer(vocab_size=300).save_pretrained(other)
    for weights in other.glob("*.safetensors"):
        weights.write_bytes(b"not weights")  # loading them would fail with another message
    spec = RunSpec(ModelConfig(str(other), device="cpu"), PromptConfig(responses=sampled[0].path))
    with pytest.raises(LayerpolicyError, match="has another tokenizer than the responses") as e:
        analyse(spec, progress=False)
    assert "\n" not in str(e.value)


def _one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error:"), (code, err)
    return err


def test_bad_input_is_one_line_before_the_model_loads(sampled, tmp_path, capsys, one_thread):
    unknown = ["--model", "no-such-model-anywhere", "--out", str(tmp_path / "x")]
    plain = analyse(
        str(sampled[1].model.spec), "builtin", limit=1, out=tmp_path / "plain", progress=False
    )
    err = _one_line(capsys, ["entropy", *unknown, "--responses", str(plain.path)])
    assert "holds no responses.parquet" in err
    err = _one_line(capsys, ["entropy", *unknown, "--responses", str(tmp_path / "none")])
    assert "does not exist" in err
    err = _one_line(capsys, ["entropy", *unknown, "--generate", "4", "--samples", "0"])
    assert "samples must be at least 1, got 0" in err
    assert "give --generate" in _one_line(capsys, ["entropy", *unknown, "--samples", "2"])
    err = _one_line(capsys, ["compare", str(plain.path), "--by", "correct"])
    assert "holds no responses" in err
    ungraded = tmp_path / "ungraded.parquet"
    frame = sampled[0].responses.assign(answer=None, correct=pd.NA)
    write_responses(frame.astype({"correct": "boolean"}), ungraded)
    rescored = analyse(
        sampled[1].replace(prompts=PromptConfig(responses=str(ungraded))),
        out=tmp_path / "ungraded",
        progress=False,
    )
    err = _one_line(capsys, ["compare", str(rescored.path), "--by", "correct"])
    assert "ungraded responses" in err


def test_profiles_by_correctness(sampled, tmp_path, one_thread):
    """Saved responses made to end right (sample 0) or wrong (sample 1), graded by the
    verifier, scored and split: group means, the difference and its two-sample CI."""
    result, spec = sampled
    tokenizer = load_tokenizer(spec.model.spec)
    frame = result.responses.copy()
    texts = [
        f"so \\boxed{{{r.answer}}}" if r.sample == 0 else "so \\boxed{999}"
        for r in frame.itertuples()
    ]
    ids = [np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"], np.int32) for t in texts]
    grades = [grade(t, a) for t, a in zip(texts, frame["answer"], strict=True)]
    frame = frame.assign(
        response_ids=ids,
        response_text=texts,
        n_tokens=[len(i) for i in ids],
        correct=pd.array(grades, dtype="boolean"),
    )
    assert grades == [s == 0 for s in frame["sample"]]
    saved = write_responses(frame, tmp_path / "graded.parquet")
    scored = analyse(spec.replace(prompts=PromptConfig(responses=str(saved))), progress=False)
    found = by_correct(scored, out=tmp_path / "by")
    assert found.record["n_responses"] == {"correct": 3, "incorrect": 3}
    table = found.by_correct
    row = table[(table["site"] == "resid") & (table["metric"] == "entropy") & (table["layer"] == 2)]
    tokens = scored.tokens[(scored.tokens["site"] == "resid") & (scored.tokens["layer"] == 2)]
    per_response = tokens.groupby(["sample", "prompt_id"])["entropy"].mean()
    correct, incorrect = per_response.loc[0].mean(), per_response.loc[1].mean()
    np.testing.assert_allclose(row[["correct", "incorrect"]].iloc[0], [correct, incorrect], 1e-6)
    np.testing.assert_allclose(row["difference"].iloc[0], correct - incorrect, rtol=1e-6)
    assert (table["difference_low"] <= table["difference"] + 1e-12).all()
    assert (table["difference"] <= table["difference_high"] + 1e-12).all()
    assert list(found.shapes["group"]) == ["correct", "incorrect"]
    assert {p.name for p in (tmp_path / "by" / "figures").iterdir()} >= {
        "by_correct_entropy.png",
        "by_correct_entropy.svg",
    }
    assert pd.read_csv(tmp_path / "by" / "by_correct.csv").shape == table.shape


def test_two_sample_ci_matches_a_loop_over_resamples():
    rng = np.random.default_rng(3)
    first, second = rng.normal(1.0, 1.0, (2, 7)), rng.normal(0.0, 2.0, (2, 5))
    first[1, 2] = np.nan
    low, high = stats.two_sample_ci(first, second, n_boot=200, seed=4)
    for row in range(2):
        boot = []
        draws = [np.random.default_rng(s).integers(0, v.shape[1], (200, v.shape[1]))
                 for s, v in ((4, first), (5, second))]  # fmt: skip
        for b in range(200):
            boot.append(np.nanmean(first[row, draws[0][b]]) - np.nanmean(second[row, draws[1][b]]))
        np.testing.assert_allclose([low[row], high[row]], np.percentile(boot, [2.5, 97.5]))


def test_view_shows_each_response_with_its_grade_beside_its_heatmap(sampled):
    result = load_run(sampled[0].path)
    page = build_report(result).html
    found = re.search(r'<script type="application/json" id="lp-data">(.*?)</script>', page, re.S)
    entries = json.loads(found.group(1))["prompts"]
    rows = list(result.responses.itertuples(index=False))
    assert len(entries) == len(rows) == 2 * len(PROBLEMS)
    for entry, row in zip(entries, rows, strict=True):
        assert entry["id"] == f"{row.prompt_id} · sample {row.sample}"
        assert entry["targets"] == [int(i) for i in row.response_ids]
        assert entry["response"] == row.response_text
        assert entry["grade"] == ("correct" if row.correct else "incorrect")
        ended = "end of sequence" if row.finish_reason == "eos" else "token budget"
        assert entry["finish"] == ended
    assert 'id="lp-response"' in page and "lp-text" in page


def test_reward_sampling_keeps_responses_of_the_same_layout(tiny_models, tmp_path, one_thread):
    """The screen's and evaluations' sampler hands its responses out as responses.parquet rows,
    graded as its rewards are."""
    prompts = tmp_path / "problems.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    kept: list[pd.DataFrame] = []
    options = {"samples": 2, "max_new_tokens": 5, "batch_size": 4, "progress": False}
    rows = solve_rates(tiny_models["qwen2"], PromptConfig(str(prompts)).load(), **options,
                       responses=kept)  # fmt: skip
    frame = pd.concat(kept, ignore_index=True)
    assert list(frame.columns) == RESPONSE_COLUMNS
    pairs = [list(zip(t["prompt_id"], t["sample"], strict=True)) for t in (frame, rows)]
    assert pairs[0] == pairs[1]
    assert frame["n_tokens"].tolist() == rows["response_tokens"].tolist()
    assert (frame["finish_reason"] == "eos").tolist() == rows["stopped"].tolist()
    assert frame["correct"].astype(bool).tolist() == (rows["reward"] == 1.0).tolist()


def test_a_forced_rerun_leaves_no_stale_responses(sampled, tmp_path, one_thread):
    run = tmp_path / "run"
    shutil.copytree(sampled[0].path, run)
    again = analyse(sampled[1].replace(seed=1), out=run, force=True, progress=False)
    keys = zip(again.responses["prompt_id"], again.responses["sample"], strict=True)
    expected = [prompt_seed(1, p, s) for p, s in keys]
    assert again.responses["seed"].tolist() == expected
    assert read_responses(run).equals(again.responses)
    plain = analyse(sampled[1].replace(generate=None, samples=1), out=run, force=True)
    assert plain.responses is None and not (run / "responses.parquet").exists()
    assert load_run(run).responses is None


def test_the_figures_of_a_run_with_several_samples_draw_its_first_response(sampled, tmp_path):
    drawn = {p.name for p in run_figures(sampled[0], tmp_path)}
    assert {"heatmap_first_prompt.png", "heatmap_first_prompt.svg"} <= drawn


def test_compare_scores_one_saved_set_under_two_models(sampled, tiny_dirs, tmp_path, one_thread):
    saved = PromptConfig(responses=str(sampled[0].path), limit=2)
    models = [str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])]
    compared = compare(models, sampled[1].replace(prompts=saved), cache=tmp_path, progress=False)
    runs = sorted(p for p in tmp_path.iterdir() if (p / "responses.parquet").is_file())
    assert len(runs) == 2 and len(compared.summaries) == 2
    assert not any("different token ids" in note for note in compared.notes)
    first_two = sampled[0].responses.iloc[:4].reset_index(drop=True)
    for run in runs:
        assert read_responses(run).equals(first_two)
        tokens = load_run(run).tokens
        assert set(zip(tokens["prompt_id"], tokens["sample"], strict=True)) == set(
            zip(first_two["prompt_id"], first_two["sample"], strict=True)
        )
