"""Data-parallel analysis: contiguous shards, per-shard resume, the merge, and real 2-process runs.

The CPU launches use `accelerate launch --multi_gpu --num_processes 2` (torchrun underneath, no GPU
needed); accelerate's `--cpu` starts a single process unless it is given an MPI host file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerpolicy.analysis import analyse, load_run
from layerpolicy.config import AnalysisConfig
from layerpolicy.engine import Engine
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.parallel import Shard, current_shard
from layerpolicy.prompts import load_prompts
from tests.launch import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_PROMPTS = 8
KEY = ["prompt_id", "site", "layer", "position"]


def test_shards_are_contiguous_and_cover_every_prompt_once():
    for n in (0, 1, 5, 8, 11):
        items = [f"p{i}" for i in range(n)]
        for world in (1, 2, 3, 4):
            shards = [Shard(rank, world).take(items) for rank in range(world)]
            assert [p for shard in shards for p in shard] == items
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1
    assert Shard(1, 2).take(["a", "b", "c"]) == ["b", "c"]


def test_rank_and_world_come_from_the_launcher_environment(monkeypatch):
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert current_shard() == Shard(0, 1, 0) and not current_shard().parallel
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_shard() == Shard(1, 3, 1)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(LayerpolicyError, match="rank 3 of world size 3"):
        current_shard()


def _sorted(tokens: pd.DataFrame) -> pd.DataFrame:
    return tokens.sort_values(KEY, kind="stable").reset_index(drop=True)


def _as_rank(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_shards_resume_one_by_one_and_merge_to_the_single_run(
    tiny_models, tmp_path, monkeypatch, analysis_config
):
    """Each rank run in turn in this process: a missing shard is named, a finished shard is not
    scored again, and the merge equals a single-process run."""
    model = tiny_models["qwen2"]
    prompts = load_prompts(None, limit=6)
    single = analyse(model, prompts, config=analysis_config, progress=False)
    out = tmp_path / "run"
    monkeypatch.setenv("LAYERPOLICY_SHARD_TIMEOUT", "0.5")
    real_score = Engine.score
    scored: list[str] = []

    def count(engine, encoded):
        scored.extend(e.prompt_id for e in encoded)
        return real_score(engine, encoded)

    monkeypatch.setattr(Engine, "score", count)

    _as_rank(monkeypatch, 0)
    missing = "shard-1-of-2 \\(prompts builtin-0003..builtin-0005\\) is missing"
    with pytest.raises(RunDirectoryError, match=missing):
        analyse(model, prompts, config=analysis_config, progress=False, out=out)
    assert scored == ["builtin-0000", "builtin-0001", "builtin-0002"]

    _as_rank(monkeypatch, 1)
    other = dataclasses.replace(analysis_config, readout="logit-lens")
    with pytest.raises(RunDirectoryError, match=r"holds shards with other settings \(readout\)"):
        analyse(model, prompts, config=other, progress=False, out=out)
    with pytest.raises(RunDirectoryError, match="merge by the main process"):
        analyse(model, prompts, config=analysis_config, progress=False, out=out)
    assert scored[3:] == ["builtin-0003", "builtin-0004", "builtin-0005"]

    _as_rank(monkeypatch, 0)
    merged = analyse(model, prompts, config=analysis_config, progress=False, out=out)
    assert len(scored) == 6  # both shards were finished: nothing scored again
    pd.testing.assert_frame_equal(_sorted(merged.tokens), _sorted(single.tokens))
    pd.testing.assert_frame_equal(merged.summary, single.summary, check_dtype=False)
    record = json.loads((out / "run.json").read_text())
    assert record["parallel"]["n_processes"] == 2
    assert [s["prompt_ids"] for s in record["parallel"]["shards"]] == [
        ["builtin-0000", "builtin-0001", "builtin-0002"],
        ["builtin-0003", "builtin-0004", "builtin-0005"],
    ]
    _as_rank(monkeypatch, 1)
    again = analyse(model, prompts, config=analysis_config, progress=False, out=out)
    pd.testing.assert_frame_equal(again.tokens, merged.tokens, check_dtype=False)


# ------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def single_run(tiny_dirs, tmp_path_factory):
    """The 1-process reference with the CLI's settings (defaults, batch size 1)."""
    out = tmp_path_factory.mktemp("single") / "run"
    return analyse(
        str(tiny_dirs["qwen2"]),
        load_prompts(None, limit=N_PROMPTS),
        config=AnalysisConfig(batch_size=1),
        progress=False,
        out=out,
    )


def _launch(model_dir: Path, out: Path) -> subprocess.Popen:
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(BIN / "layerpolicy"),
        "entropy",
        "--model",
        str(model_dir),
        "--limit",
        str(N_PROMPTS),
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _assert_equal_runs(merged, single) -> None:
    assert merged.tokens.prompt_id.nunique() == N_PROMPTS
    merged_tokens, single_tokens = _sorted(merged.tokens), _sorted(single.tokens)
    pd.testing.assert_frame_equal(merged_tokens[KEY], single_tokens[KEY])
    np.testing.assert_allclose(merged_tokens.entropy, single_tokens.entropy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(merged.summary["mean"], single.summary["mean"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_two_process_launch_equals_the_single_process_run(tiny_dirs, tmp_path, single_run):
    out = tmp_path / "launch"
    launch = _launch(tiny_dirs["qwen2"], out)
    output, _ = launch.communicate(timeout=900)
    assert launch.returncode == 0, output[-3000:]
    merged = load_run(out)
    _assert_equal_runs(merged, single_run)
    parallel = merged.record["parallel"]
    ids = [f"builtin-{i:04d}" for i in range(N_PROMPTS)]
    assert parallel["n_processes"] == 2
    assert [s["prompt_ids"] for s in parallel["shards"]] == [ids[:4], ids[4:]]
    assert sorted(p.name for p in (out / "parts").glob("*.parquet"))[0].startswith("shard-0-of-2")


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_resumed_by_the_next_launch(tiny_dirs, tmp_path, single_run):
    out = tmp_path / "killed"
    launch = _launch(tiny_dirs["qwen2"], out)
    first_part = out / "parts" / "shard-1-of-2-part-00000.parquet"
    deadline = time.monotonic() + 600
    while not first_part.exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first_part.exists(), "rank 1 never wrote a part"
    rank_1 = int((out / "parts" / ".shard-1-of-2.lock").read_text())
    os.kill(rank_1, signal.SIGKILL)
    output, _ = launch.communicate(timeout=600)
    assert launch.returncode != 0
    record = json.loads((out / "parts" / "shard-1-of-2.json").read_text())
    assert record["status"] == "running", "rank 1 finished before it was killed"
    assert not (out / "summary.csv").exists()

    again = _launch(tiny_dirs["qwen2"], out)
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-3000:]
    _assert_equal_runs(load_run(out), single_run)
