"""The README's BuPO-against-GRPO showcase (scripts/figures_showcase.py): BuPO − GRPO after
training paired by prompt, refused for runs trained on other prompts; and, from two tiny training
runs, the tables, figures and README section make_figures writes from them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.config import ModelConfig, PromptConfig
from layerpolicy.errors import LayerpolicyError, RunDirectoryError
from layerpolicy.report.figures import showcase_figures
from layerpolicy.runs import write_csv, write_json
from layerpolicy.spec import RunSpec
from scripts import findings, make_figures
from scripts.figures_showcase import (
    ShowcaseRun,
    bupo_minus_grpo,
    showcase_facts,
    write_showcase_tables,
)
from scripts.findings_bupo_files import SHOWCASE_FIGURE_TEXT
from tests.test_findings import built_figures
from tests.training import FAST, K, parity_reward

# ------------------------------------------------------------------------------ hand-built rows


def rows_run(directory: Path, method: str, rewards: dict[str, list[float]]) -> ShowcaseRun:
    """A run whose reward_after.csv holds `rewards` (per prompt id, one value per sample)."""
    rows = pd.DataFrame(
        [
            (prompt, sample, reward, 10, True)
            for prompt, values in rewards.items()
            for sample, reward in enumerate(values)
        ],
        columns=["prompt_id", "sample", "reward", "response_tokens", "stopped"],
    )
    write_csv(rows, directory / "reward_after.csv")
    empty = pd.DataFrame()
    record = {"method": method, "reward": {"samples": 2}}
    return ShowcaseRun(record, empty, empty, empty, empty, path=directory)


def test_bupo_minus_grpo_pairs_the_after_rewards_by_prompt(tmp_path):
    bupo = rows_run(tmp_path / "b", "BuPO", {"p1": [1, 1], "p2": [0, 1], "p3": [0, 0]})
    # the same prompts in another order: rates 0.5, 0, 0 for p1, p2, p3
    grpo = rows_run(tmp_path / "g", "GRPO", {"p3": [0, 0], "p1": [1, 0], "p2": [0, 0]})
    change = bupo_minus_grpo(bupo, grpo)
    assert change["mean"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # per-prompt differences
    assert 0.0 <= change["ci_low"] <= change["mean"] <= change["ci_high"] <= 0.5
    assert (change["n_prompts"], change["samples"], change["file"]) == (3, 2, "reward_after.csv")
    assert bupo_minus_grpo(grpo, bupo)["mean"] == pytest.approx(-change["mean"])


def test_bupo_minus_grpo_refuses_runs_trained_on_different_prompts(tmp_path):
    bupo = rows_run(tmp_path / "b", "BuPO", {"p1": [1, 1], "p2": [0, 1], "p3": [0, 0]})
    grpo = rows_run(tmp_path / "g", "GRPO", {"p1": [1, 0], "p2": [0, 0], "p4": [1, 1]})
    with pytest.raises(LayerpolicyError, match="trained on different prompts") as raised:
        bupo_minus_grpo(bupo, grpo)
    message = str(raised.value)
    assert "only in the first: ['p3']; only in the second: ['p4']" in message
    assert str(tmp_path / "b") in message and "--screen and --seed" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------ tiny runs


def tiny_spec(directory: Path, inter_steps: int) -> RunSpec:
    config = TrainConfig(
        **FAST, steps=2, inter_steps=inter_steps, layer=K, screen_samples=4, eval_samples=2,
        analyse=True, analysis_prompts=2, monitor_every=1, save_every=2,
    )  # fmt: skip
    model, prompts = ModelConfig(str(directory), device="cpu"), PromptConfig(None, limit=4)
    return RunSpec(model, prompts, train=config)


@pytest.fixture(scope="module")
def tiny_runs(tiny_dirs, tmp_path_factory) -> dict[str, tuple[Path, RunSpec]]:
    """A BuPO and a GRPO run of one tiny model, same prompts, screen and seed (parity reward)."""
    root, threads = tmp_path_factory.mktemp("showcase"), torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    for label, inter in (("bupo", 1), ("grpo", 0)):
        spec, path = tiny_spec(tiny_dirs["qwen2"], inter), root / f"showcase-{label}"
        train(spec, out=path, reward_fn=parity_reward, progress=False)
        runs[label] = (path, spec)
    torch.set_num_threads(threads)
    return runs


@pytest.mark.slow
def test_finished_runs_are_loaded_and_checked_against_their_specs(tiny_runs):
    path, spec = tiny_runs["bupo"]
    run = make_figures.trained_run(path, spec, "auto")  # finished: loaded, not trained
    assert run.method == "BuPO" and run.record["status"] == "complete"
    assert set(run.log.phase) == {"inter", "full"} and len(run.dynamics)
    with pytest.raises(RunDirectoryError, match=r"\(inter_steps\); delete or move it"):
        make_figures.trained_run(path, tiny_runs["grpo"][1], "auto")


@pytest.mark.slow
def test_showcase_tables_figures_and_section_from_two_runs(tiny_runs, tmp_path):
    runs = {label: ShowcaseRun.load(path) for label, (path, _) in tiny_runs.items()}
    out = built_figures(tmp_path / "figures")
    paired = write_showcase_tables(runs, out)
    after = {
        label: pd.read_csv(path / "reward_after.csv", dtype={"prompt_id": str})
        .groupby("prompt_id")["reward"]
        .mean()
        for label, (path, _) in tiny_runs.items()
    }
    assert paired["mean"] == pytest.approx((after["bupo"] - after["grpo"]).mean())
    before = [pd.read_csv(p / "reward_before.csv") for p, _ in tiny_runs.values()]
    pd.testing.assert_frame_equal(*before)  # one base model, prompts and seed
    table = pd.read_csv(out / "showcase.csv")
    for run in runs.values():
        rows = table[table.method == run.method].set_index("stage")
        reward = run.record["reward"]
        assert rows.loc["before", "mean"] == pytest.approx(reward["before"]["prompt_mean"])
        assert rows.loc["after − before", "ci_low"] == pytest.approx(reward["difference"]["ci_low"])
    last = table.iloc[-1]
    assert (last.method, last.stage, last["mean"]) == ("BuPO − GRPO", "after", paired["mean"])
    log = pd.read_csv(out / "showcase_train_log.csv")
    assert log.columns[0] == "method" and log.groupby("method").size().to_dict() == {
        "BuPO": 2, "GRPO": 2
    }  # fmt: skip
    assert set(pd.read_csv(out / "showcase_difference.csv").method) == {"BuPO", "GRPO"}
    paths = showcase_figures(runs, out)
    assert {p.stem for p in paths} == set(SHOWCASE_FIGURE_TEXT)
    assert all(p.stat().st_size > 0 for p in paths)

    record = json.loads((out / "record.json").read_text())
    commands = {label: f"layerpolicy train --out runs/showcase-{label}" for label in runs}
    record["showcase"] = showcase_facts(runs, paired, commands)
    write_json(record, out / "record.json")
    flat = " ".join(findings.render_findings(out).split())
    low, high = f"{paired['ci_low']:+.3f}", f"{paired['ci_high']:+.3f}"
    assert f"trained prompts (2 responses each from each trained model): " \
           f"{paired['mean']:+.3f} [{low}, {high}]" in flat  # fmt: skip
    assert "differ in s_inter only" in flat and f"Layer k = {K} of 4" in flat
    assert "layerpolicy train --out runs/showcase-grpo" in flat
    assert "Reward: `parity_reward` (no verifier)." in flat
