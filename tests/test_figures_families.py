"""The family comparison's analyses (scripts/figures_families.py) on two tiny models: each
logit-lens run scores the very responses its family's raw run sampled, and a second call loads
every run from the cache."""

from __future__ import annotations

import pandas as pd
import torch

from layerpolicy.analysis import load_run
from scripts import figures_families
from tests.sampled import sample_problems

KEYS = ["prompt_id", "sample", "position", "token_id"]


def _keys(tokens: pd.DataFrame) -> pd.DataFrame:
    """The scored (prompt, sample, position, token) keys of one run's residual-stream rows."""
    resid = tokens[tokens.site == "resid"][KEYS].drop_duplicates()
    return resid.sort_values(KEYS).reset_index(drop=True)


def test_logit_lens_runs_read_the_raw_runs_responses(tiny_dirs, tmp_path, analysis_config):
    _, spec = sample_problems(tiny_dirs["qwen2"], tmp_path, analysis_config, generate=5, out="x")
    families = (str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw, lens = figures_families.family_runs(families, spec, tmp_path / "cache")
        again = figures_families.family_runs(families, spec, tmp_path / "cache")
    finally:
        torch.set_num_threads(threads)
    assert list(raw.runs) == list(lens.runs)  # the same labels, in family order
    for label in raw.runs:
        raw_run, lens_run = load_run(raw.runs[label]), load_run(lens.runs[label])
        assert raw_run.record["settings"]["readout"] == "raw"
        assert lens_run.record["settings"]["readout"] == "logit-lens"
        assert set(lens_run.tokens.site) == {"embed", "resid", "final"}
        assert len(_keys(raw_run.tokens)) > 0
        pd.testing.assert_frame_equal(_keys(raw_run.tokens), _keys(lens_run.tokens))
        # the final row is the model's policy under either readout: same entropies
        finals = [
            r.tokens[r.tokens.site == "final"].sort_values(KEYS)["entropy"].to_numpy()
            for r in (raw_run, lens_run)
        ]
        assert abs(finals[0] - finals[1]).max() < 1e-5
    assert [again[i].runs for i in (0, 1)] == [raw.runs, lens.runs]  # loaded from the cache
    assert len(list((tmp_path / "cache").iterdir())) == 4
