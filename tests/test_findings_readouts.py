"""The README's three readouts: the data step (scripts/figures_readouts.py) on a sampled run of a
tiny model with a lens fitted for it, and the rendering from figures/ alone
(scripts/findings_readouts.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens.tools.analysis import JacobianLens

from layerpolicy.analysis import analyse, load_run
from layerpolicy.config import AnalysisConfig, PromptConfig
from scripts import figures_readouts, findings_readouts
from tests.sampled import sample_problems

LENS_TEXTS = [
    "The sum of the first ten positive integers is found by pairing the smallest with the "
    "largest, which gives five pairs of eleven, so fifty five in all, and the same trick works "
    "for any even count of consecutive integers starting at one.",
    "A rectangle with sides three and four has a diagonal of length five by the theorem of "
    "Pythagoras, because nine plus sixteen is twenty five and its square root is five.",
]
KEYS = ["prompt_id", "sample", "position", "token_id"]


@pytest.fixture(scope="module")
def compared(tiny_dirs, tmp_path_factory, analysis_config):
    """readout_facts on tiny Qwen2: a sampled raw run (every site), a logit-lens run of its
    responses, a lens fitted on LENS_TEXTS into an empty cache; the facts, figures and paths."""
    root = tmp_path_factory.mktemp("readouts")
    patch = pytest.MonkeyPatch()
    patch.setenv("LAYERPOLICY_CACHE", str(root / "model-cache"))
    lens_prompts = root / "lens.txt"
    lens_prompts.write_text("\n".join(LENS_TEXTS) + "\n")
    patch.setattr(figures_readouts, "LENS_PROMPTS", str(lens_prompts))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw, spec = sample_problems(
            tiny_dirs["qwen2"], root, analysis_config, generate=6, out="raw"
        )
        saved = PromptConfig(responses=str(raw.path))
        lens_run = analyse(
            spec.replace(prompts=saved, readout="logit-lens", sites="resid"),
            out=root / "logit-lens",
            progress=False,
        )
        runs = {"qwen": (str(tiny_dirs["qwen2"]), raw.path)}
        base = spec.replace(n_boot=AnalysisConfig().n_boot)  # the command line has no --n-boot
        facts, written = figures_readouts.readout_facts(runs, base, root / "cache", root / "out")
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    return facts, written, root, raw.path, lens_run.path


def test_the_three_readouts_read_the_same_tokens(compared):
    facts, _, root, raw_dir, _ = compared
    model = facts["models"]["qwen"]
    jacobian = load_run(root / "cache" / model["run"].rsplit("/", 1)[-1])
    assert jacobian.record["settings"]["readout"] == "jacobian-lens"
    raw = load_run(raw_dir).tokens
    raw_keys = raw[raw.site == "resid"][KEYS].drop_duplicates().sort_values(KEYS)
    lens_keys = jacobian.tokens[KEYS].drop_duplicates().sort_values(KEYS)
    pd.testing.assert_frame_equal(raw_keys.reset_index(drop=True), lens_keys.reset_index(drop=True))


def test_the_table_holds_each_readout_and_the_last_layer_lens_is_the_logit_lens(compared):
    facts, _, root, raw_dir, lens_dir = compared
    table = pd.read_csv(root / "out" / facts["table"])
    assert set(table.readout) == {"raw", "logit-lens", "jacobian-lens"}
    assert set(table.metric) == {"entropy", "kl_to_final"}
    n_layers = facts["models"]["qwen"]["n_layers"]
    for readout, run in (("raw", raw_dir), ("logit-lens", lens_dir)):
        own = table[(table.readout == readout) & (table.site == "resid")]
        summary = load_run(run).summary
        expected = summary[(summary.site == "resid") & summary.metric.isin(own.metric.unique())]
        merged = own.merge(expected, on=["metric", "layer"], suffixes=("", "_run"))
        assert len(merged) == len(own) == 2 * n_layers
        np.testing.assert_allclose(merged["mean"], merged["mean_run"], atol=1e-4)
    at_last = table[(table.site == "resid") & (table.layer == n_layers)]
    by = at_last.set_index(["readout", "metric"])["mean"]
    # TransformerLens fits no J for the last block's output: J_L = I there, the logit lens
    assert by["jacobian-lens", "entropy"] == pytest.approx(by["logit-lens", "entropy"], abs=2e-4)


def test_the_facts_state_the_lens_and_its_distance_from_the_identity(compared):
    facts, written, root, _, _ = compared
    model = facts["models"]["qwen"]
    lens = model["lens"]
    assert (lens["n_prompts"], lens["prompts_fitted"], lens["max_seq_len"]) == (2, 2, 128)
    path = next((root / "model-cache").rglob("lens.pt"))
    jacobians = JacobianLens.load(str(path)).jacobians
    eye = torch.eye(next(iter(jacobians.values())).shape[0])
    distances = [
        float(torch.linalg.norm(j - eye) / torch.linalg.norm(eye)) for j in jacobians.values()
    ]
    assert lens["distance_from_identity"]["mean"] == pytest.approx(np.mean(distances), rel=1e-6)
    assert lens["distance_from_identity"]["max"] == pytest.approx(max(distances), rel=1e-6)
    assert set(model["shape"]) == {"raw", "logit-lens", "jacobian-lens"}
    assert model["command"].startswith("layerpolicy entropy --model ")
    assert "--readout jacobian-lens --sites resid" in model["command"]
    assert model["fit_command"].endswith("--limit 2 --offline")
    assert [p.name for p in written] == [
        "readouts_entropy_qwen.png",
        "readouts_kl_to_final_qwen.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_the_rendering_quotes_the_table_and_names_the_nearest_readout(compared):
    facts, _, root, _, _ = compared
    record = {"families": ["qwen"], "readouts": facts}
    text = "\n\n".join(findings_readouts.render_readouts(record, root / "out"))
    table = pd.read_csv(root / "out" / facts["table"])
    n_layers = facts["models"]["qwen"]["n_layers"]
    middle = round(n_layers / 2)
    kl = table[(table.site == "resid") & (table.metric == "kl_to_final") & (table.layer == middle)]
    nearest = kl.set_index("readout")["mean"].idxmin()
    title = findings_readouts.READOUT_TITLES[nearest]
    flat = " ".join(text.split())
    assert f"At layer {middle} of {n_layers} the {title} is nearest the model's policy" in flat
    row = table[(table.readout == "raw") & (table.site == "resid") & (table.metric == "entropy")
                & (table.layer == middle)].iloc[0]  # fmt: skip
    raw_line = next(line for line in text.splitlines() if line.startswith("| raw |"))
    assert f"{row['mean']:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]" in raw_line
    assert text.count("<img") == 2
    assert findings_readouts.render_readouts({"families": ["qwen"]}, root / "out") == []
