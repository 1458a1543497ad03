"""BuPO's prompt screen (train only on prompts solved sometimes) and the reward measured before and
after training, through train() and the CLI on tiny models."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from layerpolicy.bupo import TrainConfig, stages, train, training
from layerpolicy.bupo.config import RESUMABLE
from layerpolicy.bupo.evaluate import solve_rates
from layerpolicy.bupo.record import reward_lines
from layerpolicy.errors import LayerpolicyError, PromptSourceError, RunDirectoryError
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptSet, load_prompts
from layerpolicy.responses import read_responses
from tests.training import FAST, K, one_line_error, parity_reward

pytestmark = pytest.mark.usefixtures("one_thread")


def spy_trained_prompts(monkeypatch) -> list[list[str]]:
    """The prompt ids of every training dataset train() builds (one list per build)."""
    seen: list[list[str]] = []
    original = training.training_dataset

    def spy(prompt_set, tokenizer, config):
        seen.append([item.id for item in prompt_set.items])
        return original(prompt_set, tokenizer, config)

    monkeypatch.setattr(training, "training_dataset", spy)
    return seen


@pytest.mark.slow
def test_screen_keeps_prompts_solved_sometimes_and_reward_is_measured_before_and_after(
    tiny_dirs, tmp_path, monkeypatch
):
    spec, out = str(tiny_dirs["qwen3"]), tmp_path / "run"
    never = load_prompts(None, limit=1).items[0].answer

    def mixed(response: str, truth: str) -> float:
        """Never for the first prompt, response-length parity (mixed) for the others."""
        return 0.0 if truth == never else parity_reward(response, truth)

    analysed: list[list[str]] = []
    monkeypatch.setattr(
        stages, "analysis_stage", lambda model, named, items, *a, **k: analysed.append(
            [item.id for item in items.items]
        )
    )  # fmt: skip
    trained = spy_trained_prompts(monkeypatch)
    config = TrainConfig(
        **{**FAST, "mini_batches": 1}, steps=1, inter_steps=0, layer=K, screen_samples=4,
        eval_samples=2, analyse=True, analysis_prompts=2, save_every=1,
    )  # fmt: skip
    common = dict(out=out, limit=5, reward_fn=mixed, device="cpu", progress=False)
    result = train(spec, None, config=config, **common)
    screen = pd.read_csv(out / "screen.csv", dtype={"prompt_id": str})
    assert list(screen.columns) == ["prompt_id", "sample", "reward", "response_tokens", "stopped"]
    ids = [item.id for item in load_prompts(None, limit=5).items]
    assert list(screen.prompt_id) == [p for p in ids for _ in range(4)]
    assert list(screen["sample"]) == [0, 1, 2, 3] * 5
    for table in ("screen", "reward_before", "reward_after"):  # the responses behind each table
        rows = pd.read_csv(out / f"{table}.csv", dtype={"prompt_id": str})
        responses = read_responses(out / f"{table}_responses.parquet")
        assert list(responses["prompt_id"]) == list(rows["prompt_id"])
        assert list(responses["n_tokens"]) == list(rows["response_tokens"])
    rates = screen.groupby("prompt_id", sort=False)["reward"].mean()
    kept = [p for p in ids if 0 < rates[p] < 1]
    assert rates[ids[0]] == 0 and ids[0] not in kept and len(kept) >= 2
    assert trained == [kept] and analysed == [kept[:2]] * 2  # before and after
    record = json.loads((out / "run.json").read_text())
    assert record["screen"]["n_kept"] == len(kept) and record["screen"]["samples"] == 4
    assert record["screen"]["summary"]["never"] == pytest.approx(1 / 5)
    reward = record["reward"]
    assert {"before", "after", "difference", "prompts", "samples"} <= set(reward)
    assert reward["prompts"] == "trained prompts" and reward["samples"] == 2
    assert reward == result.record["reward"] and reward["function"] == "mixed"
    # the before rows are the base model's, the after rows the final model's: same prompts,
    # same evaluation seed (seed + 1)
    items = tuple(i for i in load_prompts(None, limit=5).items if i.id in kept)
    kept_set = PromptSet(items, "kept prompts", "")
    options = dict(samples=2, max_new_tokens=6, seed=1, reward_fn=mixed, progress=False)
    for name, model in (("reward_before", spec), ("reward_after", str(out / "model"))):
        rows = pd.read_csv(out / f"{name}.csv", dtype={"prompt_id": str})
        expected = solve_rates(load_model(model, device="cpu"), kept_set, **options)
        pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
        side = reward["before" if name == "reward_before" else "after"]
        assert side["prompt_mean"] == pytest.approx(
            rows.groupby("prompt_id")["reward"].mean().mean()
        )
    change = reward["difference"]
    assert change["mean"] == pytest.approx(
        reward["after"]["prompt_mean"] - reward["before"]["prompt_mean"]
    )
    assert change["ci_low"] <= change["mean"] <= change["ci_high"]
    screen_line, reward_line = reward_lines(record)
    assert f"trained on {len(kept)} of 5 prompts" in screen_line and "never 20%" in screen_line
    before = reward["before"]
    assert f"before {before['prompt_mean']:.3f} [{before['ci_low']:.3f}, " in reward_line

    # resume reads screen.csv (edited here: only the first two prompts mixed) and may change
    # eval_samples; screen_samples may not change
    assert "eval_samples" in RESUMABLE and "screen_samples" not in RESUMABLE
    with pytest.raises(RunDirectoryError, match="screen_samples"):
        train(
            spec, None, config=dataclasses.replace(config, screen_samples=5), resume=True, **common
        )
    edited = screen.assign(reward=[0.0, 1.0, 0.0, 0.0] * 2 + [1.0] * 12)
    edited.to_csv(out / "screen.csv", index=False)
    resumed = dataclasses.replace(config, steps=2, eval_samples=1)
    train(spec, None, config=resumed, resume=True, **common)
    assert trained[-1] == ids[:2]
    after = pd.read_csv(out / "reward_after.csv", dtype={"prompt_id": str})
    assert list(after.prompt_id) == ids[:2] and list(after["sample"]) == [0, 0]


def test_a_screen_that_keeps_too_few_prompts_stops_with_one_line(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    config = TrainConfig(**FAST, steps=1, inter_steps=0, layer=K, screen_samples=2)
    with pytest.raises(PromptSourceError, match=r"kept 0 of 4 prompts.*--limit or --screen"):
        train(str(tiny_dirs["qwen2"]), None, out=out, config=config, limit=4,
              reward_fn=lambda response, truth: 1.0, device="cpu", progress=False)  # fmt: skip
    assert len(pd.read_csv(out / "screen.csv")) == 8 and not (out / "run.json").exists()
    argv = ["train", "--model", str(tiny_dirs["qwen2"]), "--limit", "3", "--steps", "1",
            "--layer", "2", "--group-size", "2", "--prompts-per-step", "2", "--mini-batches",
            "1", "--max-new-tokens", "3", "--screen", "2", "--device", "cpu",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    one_line_error(capsys, argv, "the screen kept 0 of 3 prompts", after_work=True)
    with pytest.raises(LayerpolicyError, match="screen_samples must be 0"):
        TrainConfig(screen_samples=1)
    with pytest.raises(LayerpolicyError, match="eval_samples must be 0"):
        TrainConfig(eval_samples=-1)
