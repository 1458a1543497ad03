"""Run directories: file modes, the OS lock (two processes, kill -9), settings, old formats,
damaged tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from layerpolicy.analysis import analyse, load_run
from layerpolicy.config import AnalysisConfig
from layerpolicy.errors import RunDirectoryError
from layerpolicy.locking import RunDirectoryBusy, file_lock, is_locked
from layerpolicy.prompts import load_prompts
from layerpolicy.runs import RunDirectory, write_csv, write_json, write_parquet

REPO = Path(__file__).resolve().parents[1]
KEY = ["prompt_id", "site", "layer", "position"]

# Holds OUT's lock, says so on stdout, then sleeps until killed.
HOLDER = """
import sys, time
from layerpolicy.runs import RunDirectory
with RunDirectory(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_finished_files_get_the_mode_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
        write_json({"a": 1}, tmp_path / "t.json")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    for name in ("t.parquet", "t.csv", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert not list(tmp_path.glob(".*.tmp"))


def _start_holder(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_lock_names_the_holder_and_a_kill_9_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = _start_holder(out)
    try:
        assert is_locked(out / ".lock")
        busy = pytest.raises(RunDirectoryBusy, match=rf"in use by process {holder.pid};")
        with busy, RunDirectory(out).lock(wait=False):
            pass
        started = time.monotonic()
        with (
            pytest.raises(RunDirectoryBusy, match=str(holder.pid)),
            RunDirectory(out).lock(timeout=0.5),
        ):
            pass
        assert time.monotonic() - started >= 0.5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # the file stays, the lock not
    assert not is_locked(out / ".lock")
    with RunDirectory(out).lock(wait=False):
        assert (out / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_a_waiting_lock_is_granted_when_the_holder_dies(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _start_holder(out)
    killer = subprocess.Popen(["sh", "-c", f"sleep 2; kill -9 {holder.pid}"])
    with RunDirectory(out).lock(timeout=60):
        assert holder.wait(timeout=5) == -signal.SIGKILL
    killer.wait()
    assert f"waiting for process {holder.pid}, which holds {out}" in capsys.readouterr().err


def test_lock_is_reentrant_in_one_process_and_shared_locks_coexist(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.lock(), run.lock(wait=False):
        assert is_locked(run.path / ".lock")
    assert not is_locked(run.path / ".lock")
    with file_lock(tmp_path / "shared.lock", guards=tmp_path, shared=True):
        code = (
            "import sys; from pathlib import Path; from layerpolicy.locking import file_lock\n"
            "with file_lock(Path(sys.argv[1]), guards=Path('.'), shared=True, wait=False):\n"
            "    print('shared too')"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "shared.lock")],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert done.stdout.strip() == "shared too", done.stderr


def test_out_that_is_a_file_is_one_line_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with (
        pytest.raises(RunDirectoryError, match="is a file, not a directory"),
        RunDirectory(path).lock(),
    ):
        pass


def test_check_settings_names_what_changed_and_allows_the_given_keys(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start(
        {"settings": {"format_version": 2, "model": "m", "lr": 1e-6, "steps": 10}}, force=False
    )
    run.check_settings(
        {"format_version": 2, "model": "m", "lr": 1e-6, "steps": 20}, allowed=["steps"]
    )
    with pytest.raises(RunDirectoryError, match=r"other settings \(lr, steps\)"):
        run.check_settings({"format_version": 2, "model": "m", "lr": 1e-5, "steps": 20})


def test_runs_of_the_old_format_are_refused_with_one_line(tiny_models, tmp_path, analysis_config):
    out = tmp_path / "run"
    analyse(
        tiny_models["qwen2"],
        load_prompts(None, limit=2),
        config=analysis_config,
        progress=False,
        out=out,
    )
    record = json.loads((out / "run.json").read_text())
    assert record["format_version"] == record["settings"]["format_version"] == 2
    del record["format_version"], record["settings"]["format_version"]  # as format 1 wrote it
    (out / "run.json").write_text(json.dumps(record))
    fix = (
        r"holds a run of format 1 \(this layerpolicy reads format 2\); rerun the command that "
        "made it with --force"
    )
    with pytest.raises(RunDirectoryError, match=fix):
        load_run(out)
    with pytest.raises(RunDirectoryError, match=fix):
        analyse(
            tiny_models["qwen2"],
            load_prompts(None, limit=2),
            config=analysis_config,
            progress=False,
            out=out,
        )
    rerun = analyse(
        tiny_models["qwen2"], load_prompts(None, limit=2), config=analysis_config,
        progress=False, out=out, force=True,
    )  # fmt: skip
    assert rerun.record["format_version"] == 2


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_table_is_one_line_naming_the_file_and_the_fix(
    tiny_models, tmp_path, damage, analysis_config
):
    out = tmp_path / "run"
    analyse(
        tiny_models["qwen2"],
        load_prompts(None, limit=2),
        config=analysis_config,
        progress=False,
        out=out,
    )
    tokens = out / "tokens.parquet"
    if damage == "truncated":
        tokens.write_bytes(tokens.read_bytes()[:100])
    else:
        tokens.unlink()
    with pytest.raises(RunDirectoryError) as error:
        load_run(out)
    message = str(error.value)
    assert message.startswith(str(tokens)) and "\n" not in message
    assert ("damaged" if damage == "truncated" else "missing") in message
    assert message.endswith("with --out pointing here and --force")


def test_a_finished_run_is_recognised_without_loading_the_model(
    tiny_dirs, tmp_path, monkeypatch, analysis_config
):
    out = tmp_path / "run"
    spec = str(tiny_dirs["llama"])
    first = analyse(spec, None, limit=2, config=analysis_config, progress=False, out=out)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a finished run")

    monkeypatch.setattr("layerpolicy.config.ModelConfig.load", no_load)
    again = analyse(spec, None, limit=2, config=analysis_config, progress=False, out=out)
    pd.testing.assert_frame_equal(first.summary, again.summary, check_dtype=False)
    with pytest.raises(RunDirectoryError, match="other settings"):
        analyse(spec, None, limit=3, config=analysis_config, progress=False, out=out)


def test_result_profile_is_the_summary_column_by_layer(tiny_models, analysis_config):
    result = analyse(
        tiny_models["qwen2"], load_prompts(None, limit=2), config=analysis_config, progress=False
    )
    profile = result.profile("entropy", "resid")
    rows = result.summary.query("metric == 'entropy' and site == 'resid'").sort_values("layer")
    assert list(profile.index) == list(rows.layer)
    assert profile.to_numpy().tolist() == rows["mean"].tolist()
    with pytest.raises(ValueError, match="no rows"):
        result.profile("entropy", "nowhere")


def _entropy_cli(model_dir: Path, out: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "layerpolicy"),
        "entropy",
        "--model",
        str(model_dir),
        "--limit",
        "4",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_two_processes_on_one_out_both_end_with_the_single_run(tiny_dirs, tmp_path):
    """Started at once on one --out: the second waits, then loads the first one's finished run."""
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            _entropy_cli(tiny_dirs["qwen2"], out),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    assert sum("waiting for process" in err for _, err in outputs) <= 1
    single = analyse(
        str(tiny_dirs["qwen2"]),
        load_prompts(None, limit=4),
        config=AnalysisConfig(batch_size=1),
        progress=False,
        out=tmp_path / "single",
    )
    shared = load_run(out)
    assert shared.tokens.prompt_id.nunique() == 4
    pd.testing.assert_frame_equal(shared.tokens, single.tokens)
    pd.testing.assert_frame_equal(shared.summary, single.summary, check_dtype=False)
    assert len(list((out / "parts").glob("part-*.parquet"))) == 4  # each prompt scored once
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_merged_parts_keep_part_order_take_each_prompt_once_and_name_a_missing_one(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.parts_dir.mkdir(parents=True)

    def part(name: str, *rows: tuple[str, int]) -> None:
        frame = pd.DataFrame({"prompt_id": [p for p, _ in rows], "value": [v for _, v in rows]})
        write_parquet(frame, run.parts_dir / f"{name}.parquet")

    part("shard-10-of-12-part-00000", ("p4", 4))
    part("shard-2-of-12-part-00000", ("p1", 10), ("p3", 3))  # p1 again: the older part wins
    part("shard-2-of-12-part-00001", ("p2", 2))
    part("part-00000", ("p0", 0), ("p1", 1))
    merged = run.merged_tokens(["p0", "p1", "p2", "p3", "p4"])
    assert merged.prompt_id.tolist() == ["p0", "p1", "p3", "p2", "p4"]
    assert merged.value.tolist() == [0, 1, 3, 2, 4]
    with pytest.raises(RunDirectoryError, match=r"lacks 1 prompt\(s\) \(first: p5\)"):
        run.merged_tokens(["p0", "p5"])
