"""The README's profiles by correctness: the data step (scripts/figures_correctness.py) on graded
runs of a tiny model, and their rendering from figures/ alone (scripts/findings_correctness.py),
placed after the two-model comparison and listed in figures/README.md."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from layerpolicy.analysis import analyse
from layerpolicy.bupo.reward import grade
from layerpolicy.config import PromptConfig
from layerpolicy.correctness import by_correct
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_tokenizer
from layerpolicy.responses import write_responses
from layerpolicy.runs import write_json
from scripts import findings, findings_correctness
from scripts.figures_correctness import MIN_GROUP, correctness_facts
from tests.sampled import sample_problems


@pytest.fixture(scope="module")
def graded_runs(tiny_dirs, tmp_path_factory, analysis_config):
    """Two graded runs of tiny Qwen2 on 3 problems × 2 responses, scored on one thread: `both`
    with sample 0 of each problem boxed right (3 correct, 3 incorrect), `few` with only problem
    0's sample 0 right (1 correct, 5 incorrect); and `plain`, a run without responses."""
    root = tmp_path_factory.mktemp("correctness")
    sampled, spec = sample_problems(
        tiny_dirs["qwen2"], root, analysis_config, generate=4, out="sampled"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = load_tokenizer(spec.model.spec)
        runs = {}
        for name, right in (("both", lambda r: r.sample == 0), ("few", lambda r: r.Index == 0)):
            frame = sampled.responses.reset_index(drop=True)
            texts = [
                f"so \\boxed{{{r.answer}}}" if right(r) else "so \\boxed{999}"
                for r in frame.itertuples()
            ]
            ids = [np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
            frame = frame.assign(
                response_ids=[i.astype(np.int32) for i in ids],
                response_text=texts,
                n_tokens=[len(i) for i in ids],
                correct=pd.array(
                    [grade(t, a) for t, a in zip(texts, frame["answer"], strict=True)],
                    dtype="boolean",
                ),
            )
            saved = write_responses(frame, root / f"{name}.parquet")
            again = spec.replace(prompts=PromptConfig(responses=str(saved)))
            runs[name] = analyse(again, out=root / name, progress=False).path
        plain = spec.replace(prompts=PromptConfig(spec.prompts.source))
        runs["plain"] = analyse(plain, out=root / "plain", progress=False).path
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.fixture(scope="module")
def written(graded_runs, tmp_path_factory):
    """The data step on `both` (family qwen) and `few` (family llama) into a figures directory."""
    out = tmp_path_factory.mktemp("figures")
    facts = correctness_facts({"qwen": graded_runs["both"], "llama": graded_runs["few"]}, out)
    return facts, out


def test_the_data_step_compares_large_groups_and_counts_small_ones(written, graded_runs):
    facts, out = written
    assert MIN_GROUP == facts["min_group"] == 3
    both, few = facts["models"]["qwen"], facts["models"]["llama"]
    assert both["n_responses"] == {"correct": 3, "incorrect": 3, "ungraded": 0}
    assert few["n_responses"] == {"correct": 1, "incorrect": 5, "ungraded": 0}
    assert both["compared"] and not few["compared"]
    assert (few["table"], few["figures"]) == (None, [])
    assert both["figures"] == ["by_correct_entropy_qwen.png", "by_correct_entropy_change_qwen.png"]
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in both["figures"])
    assert sorted(p.name for p in out.iterdir()) == sorted([both["table"], *both["figures"]])
    assert both["verifier"]["name"] == "math-verify"
    assert both["command"] == f"layerpolicy compare {graded_runs['both']} --by correct"
    table = pd.read_csv(out / both["table"])
    assert set(zip(table.site, table.metric, strict=True)) == {
        ("resid", "entropy"), ("final", "entropy"),
        ("attn", "entropy_change"), ("mlp", "entropy_change"),
    }  # fmt: skip
    again = by_correct(graded_runs["both"]).by_correct  # the rows `compare --by correct` gives
    keys = ["site", "metric", "layer"]
    merged = table.merge(again, on=keys, suffixes=("", "_again"), validate="1:1")
    assert len(merged) == len(table)
    for column in ("correct", "incorrect", "difference", "difference_low", "difference_high"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_again"], rtol=1e-9)


def test_a_run_without_responses_is_one_line(graded_runs, tmp_path):
    with pytest.raises(LayerpolicyError, match=r"holds no responses\.parquet; delete it") as raised:
        correctness_facts({"qwen": graded_runs["plain"]}, tmp_path)
    assert "\n" not in str(raised.value)
    assert not any(tmp_path.iterdir())


def test_the_rendering_quotes_the_table_the_counts_and_the_intervals(written):
    facts, out = written
    record = {"families": ["qwen", "llama"], "prompts": {"title": "MATH-500"}, "by_correct": facts}
    text = "\n\n".join(findings_correctness.render_correctness(record, out))
    flat = " ".join(text.split())
    version = facts["models"]["qwen"]["verifier"]["version"]
    assert f"graded by math-verify {version}" in flat
    assert "A group of fewer than 3 responses is not compared." in flat
    assert "correct and 3 incorrect of 6 responses" in flat
    few = facts["models"]["llama"]
    assert (
        f"**{few['model']}**: 1 correct and 5 incorrect of 6 responses, {few['at_cap']} of them "
        "cut at the cap: too few correct responses to compare (a group needs at least 3), so no "
        "profile" in flat
    )
    graded = findings_correctness.render_correctness(
        {**record, "by_correct": {**facts, "max_new_tokens": 320}}, out
    )
    assert "sampled again under the protocol above but with room for 320 response tokens" in (
        " ".join(" ".join(graded).split())
    )
    assert text.count("<img") == 2 and "by_correct_entropy_qwen.png" in text
    rows = pd.read_csv(out / facts["models"]["qwen"]["table"])
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| | layer (l/L) | correct [95% CI]")
    body = [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines[1:]]
    assert [b[0] for b in body][:1] == ["H(π_θ)"] and {"H(resid)", "ΔH_mlp"} <= {b[0] for b in body}
    site = {"H(π_θ)": ("final", "entropy"), "H(resid)": ("resid", "entropy"),
            "ΔH_mlp": ("mlp", "entropy_change")}  # fmt: skip
    for title, layer, correct, incorrect, difference, word in body:
        s, m = site[title]
        row = rows[(rows.site == s) & (rows.metric == m) & (rows.layer == int(layer.split()[0]))]
        row = row.iloc[0]
        assert correct == f"{row.correct:.3f} [{row.correct_low:.3f}, {row.correct_high:.3f}]"
        assert incorrect.startswith(f"{row.incorrect:.3f} [")
        assert difference == f"{row.difference:+.3f} [{row.difference_low:+.3f}, " \
                             f"{row.difference_high:+.3f}]"  # fmt: skip
        wanted = ("higher" if row.difference_low > 0 else "lower" if row.difference_high < 0
                  else "no measurable")  # fmt: skip
        assert word.startswith(wanted)
    resid = rows[(rows.site == "resid") & (rows.metric == "entropy")]
    inside = int(((resid.difference_low <= 0) & (resid.difference_high >= 0)).sum())
    above = resid[resid.difference_low > 0].layer.tolist()
    if inside == len(resid):
        assert f"for H(resid) it includes 0 at all {len(resid)} layers" in flat
    else:
        assert f"and includes 0 at the other {inside} of {len(resid)} layers;" in flat
    if above:
        assert f"lies above 0 (correct higher) at layer{'s' * (len(above) > 1)} {above[0]}" in flat
    assert "The groups are 3 and 3 responses" in flat


def test_a_record_without_the_facts_renders_nothing(tmp_path):
    from tests.test_findings import built_figures  # a whole figures/ as make_figures writes it

    figures = built_figures(tmp_path / "f")
    record = json.loads((figures / "record.json").read_text())
    assert findings_correctness.render_correctness(record, figures) == []
    assert findings_correctness.correctness_files(record) == []
    assert "Profiles by correctness" not in findings.render_findings(figures)


def test_the_section_follows_the_two_model_comparison(written, tmp_path):
    from tests.test_findings import built_figures

    facts, out = written
    figures = built_figures(tmp_path / "f")
    record = json.loads((figures / "record.json").read_text())
    write_json({**record, "by_correct": facts}, figures / "record.json")
    for path in out.iterdir():
        (figures / path.name).write_bytes(path.read_bytes())
    text = findings.render_findings(figures)
    before, start = text.index("compare_entropy_change.png"), text.index("### Profiles by")
    assert before < start and "###" not in text[before:start]  # right after the two models
    assert "by_correct_entropy_qwen.png" in text[start:]


def test_figures_readme_lists_the_files_written(written):
    facts = written[0]
    record = {"by_correct": facts}
    lines = findings_correctness.correctness_files(record)
    listed = [re.match(r"- `([^`]+)`", line)[1] for line in lines]
    qwen = facts["models"]["qwen"]
    assert listed == [qwen["table"], *qwen["figures"]]  # the family not compared wrote none
    assert f"(`{qwen['command']}`)" in lines[0]
