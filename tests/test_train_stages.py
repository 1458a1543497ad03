"""Training as stages: one copy of the weights per process at any time, the screen and reward
evaluations split across processes into one table, --grpo values of the wrong type."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import weakref

import pandas as pd
import pytest
from transformers import PreTrainedModel

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.bupo import sampled as sampled_module
from layerpolicy.bupo.config import check_grpo, grpo_arguments
from layerpolicy.bupo.evaluate import solve_rates
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.prompts import load_prompts
from tests.training import FAST, K, one_line_error, parity_reward

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_a_run_never_holds_two_copies_of_the_weights(tiny_dirs, tmp_path, monkeypatch):
    """Every `from_pretrained` (the base model's, the trainer's policy, the final model's) finds
    no earlier loaded model still alive: the analyses and evaluations load no second copy. The
    policy is loaded inside the trainer."""
    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []
    by_trainer: list[bool] = []
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        by_trainer.append(_inside_trainer())
        model = original(cls, *args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    config = TrainConfig(
        **FAST, steps=2, inter_steps=1, layer=K, analyse=True, analysis_prompts=2,
        eval_samples=2, screen_samples=2, save_every=2,
    )  # fmt: skip
    common = dict(out=tmp_path / "run", limit=4, reward_fn=parity_reward, device="cpu")
    try:
        result = train(str(tiny_dirs["qwen2"]), None, config=config, progress=False, **common)
    except LayerpolicyError as error:  # the screen may keep too few prompts of a tiny model
        pytest.skip(str(error))
    assert result.before is not None and result.after is not None
    assert (tmp_path / "run" / "reward_after.csv").is_file()
    # base model (screen, reward and analysis before), the policy, the dynamics monitor's bridge
    # (loaded once at the start of training, then pointed at the policy's tensors, its own
    # weights freed: tests/test_dynamics.py), the final model (after)
    assert alive_at_load == [0, 0, 1, 0]
    # the policy is loaded by TRL's trainer from its GRPOConfig's model_init_kwargs, so after
    # the accelerate state (and an engine's sharded loading) exists
    assert by_trainer == [False, True, False, False]


def _inside_trainer() -> bool:
    """Whether a GRPOTrainer's __init__ is on the call stack."""
    from trl import GRPOTrainer

    frames = inspect.stack(context=0)
    return any(
        f.function == "__init__" and isinstance(f.frame.f_locals.get("self"), GRPOTrainer)
        for f in frames
    )


def test_sampled_stages_split_the_prompts_across_processes_into_one_table(tiny_dirs, monkeypatch):
    """Each process samples its contiguous share; the gathered table is the one-process table."""
    model = load_model(str(tiny_dirs["qwen2"]), device="cpu")
    prompts = load_prompts(None, limit=5)
    config = TrainConfig(**FAST)
    options = dict(samples=2, seed=3, progress=False)
    whole, whole_responses = sampled_module.sample_rewards(
        model, prompts, config, parity_reward, **options
    )
    shares: list[list[str]] = []

    class RankZeroOfTwo:
        """accelerate's state as rank 0 of two processes sees it (rank 1 sampled in `gather`)."""

        num_processes, is_main_process = 2, True

        def split_between_processes(self, items):
            half = (len(items) + 1) // 2
            shares.extend([[i.id for i in items[:half]], [i.id for i in items[half:]]])
            self.rest = items[half:]
            return contextlib.nullcontext(items[:half])

    state = RankZeroOfTwo()

    def gather(objects):
        rest = dataclasses.replace(prompts, items=tuple(state.rest))
        drawn: list[pd.DataFrame] = []
        rank_one = solve_rates(
            model, rest, samples=2, max_new_tokens=config.max_new_tokens, seed=3,
            reward_fn=parity_reward, progress=False, responses=drawn,
        )  # fmt: skip
        return [*objects, (rank_one, pd.concat(drawn, ignore_index=True))]

    monkeypatch.setattr(sampled_module, "PartialState", lambda **_: state)
    monkeypatch.setattr(sampled_module, "gather_object", gather)
    merged, responses = sampled_module.sample_rewards(
        model, prompts, config, parity_reward, **options
    )
    ids = [item.id for item in prompts.items]
    assert shares == [ids[:3], ids[3:]]
    pd.testing.assert_frame_equal(merged, whole)
    pd.testing.assert_frame_equal(responses, whole_responses)
    keys = list(zip(responses["prompt_id"], responses["sample"], strict=True))
    assert keys == list(zip(merged["prompt_id"], merged["sample"], strict=True))
    assert (responses["n_tokens"].to_numpy() == merged["response_tokens"].to_numpy()).all()


def test_grpo_values_of_the_wrong_type_are_one_line_naming_field_and_type(
    tiny_dirs, tmp_path, capsys
):
    with pytest.raises(LayerpolicyError, match=r"num_iterations takes int") as raised:
        grpo_arguments(TrainConfig(**FAST, grpo={"num_iterations": "many"}), "x", 1)
    assert "\n" not in str(raised.value)
    with pytest.raises(LayerpolicyError, match=r"max_grad_norm takes float"):
        check_grpo({"max_grad_norm": "x"})
    with pytest.raises(LayerpolicyError, match=r"bf16 takes bool or null"):
        check_grpo({"bf16": 1})
    check_grpo({"max_grad_norm": 1, "report_to": ["wandb"], "epsilon_high": None})
    argv = ["train", "--model", str(tiny_dirs["qwen2"]), "--limit", "4", "--device", "cpu",
            "--grpo", "num_iterations=many", "--out", str(tmp_path / "run")]  # fmt: skip
    one_line_error(capsys, argv, "--grpo num_iterations='many': num_iterations takes int")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_finished_run_resumes_stage_by_stage_without_training_again(
    tiny_dirs, tmp_path, monkeypatch
):
    """Resuming a complete run reads every finished stage's files and does not train again; a
    changed --eval-samples samples the evaluations again; more steps train on and analyse the
    new final model afresh."""
    from layerpolicy.bupo import run as run_module

    config = TrainConfig(
        **FAST, steps=1, inter_steps=1, layer=K, analyse=True, analysis_prompts=2,
        eval_samples=1, save_every=1, lr=1e-2,
    )  # fmt: skip
    common = dict(out=tmp_path / "run", limit=2, reward_fn=parity_reward, device="cpu")
    first = train(str(tiny_dirs["qwen2"]), None, config=config, progress=False, **common)
    assert first.record["stages"] == ["trained"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training stage ran again")

    with monkeypatch.context() as patched:
        patched.setattr(run_module, "train_stage", no_training)
        again = train(
            str(tiny_dirs["qwen2"]), None, config=dataclasses.replace(config, eval_samples=2),
            resume=True, progress=False, **common,
        )  # fmt: skip
    pd.testing.assert_frame_equal(again.log, first.log)
    pd.testing.assert_frame_equal(again.after.summary, first.after.summary)
    rows = pd.read_csv(tmp_path / "run" / "reward_after.csv", dtype={"prompt_id": str})
    assert list(rows["sample"]) == [0, 1, 0, 1]  # sampled again with 2 samples per prompt
    assert again.record["reward"]["samples"] == 2 and again.record["status"] == "complete"
    longer = train(
        str(tiny_dirs["qwen2"]), None, config=dataclasses.replace(config, steps=2),
        resume=True, progress=False, **common,
    )  # fmt: skip
    assert list(longer.log.step) == [1, 2] and longer.record["stages"] == ["trained"]
    assert not longer.after.summary.equals(first.after.summary)  # the new final model's
