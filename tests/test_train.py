"""BuPO on TRL's GRPOTrainer: pi^k log-probs against the plain model, gradient reach, the phase
switch per rollout buffer, resume, the dual-clip loss by hand, one precision for old and new
log-probs, two processes, the CLI end to end, entropy at k with intervals, and errors on bad
input (the prompt screen and the reward before/after: test_train_screen.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.bupo.config import grpo_arguments
from layerpolicy.bupo.data import prepare, training_prompts
from layerpolicy.bupo.layer import boundary_layer_from
from layerpolicy.bupo.results import entropy_at_k
from layerpolicy.bupo.trainer import ABOVE_K, STATE_FILE
from layerpolicy.bupo.training import build_trainer
from layerpolicy.config import ModelConfig
from layerpolicy.errors import LayerpolicyError, PromptSourceError, RunDirectoryError
from layerpolicy.readout.layer_policy import layer_token_stats
from layerpolicy.spec import RunSpec
from tests.launch import free_port
from tests.reference import plain_model as reference_model
from tests.training import FAST, K, one_line_error, parity_reward

pytestmark = pytest.mark.usefixtures("one_thread")

DEEPMATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepmath-5k.parquet"


def layer_index(name: str) -> int | None:
    match = re.search(r"layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def above_k(name: str) -> bool:
    """Parameters pi^k must not reach: blocks above k (0-based index >= k) and the final norm."""
    return (layer_index(name) or 0) >= K or name.startswith("model.norm.")


def make_trainer(tiny_dirs, tmp_path, arch="qwen2", dtype="float32", **settings):
    config = TrainConfig(**{**FAST, "steps": 2, "inter_steps": 1, "layer": K, **settings})
    setup = prepare(ModelConfig(str(tiny_dirs[arch]), device="cpu", dtype=dtype), config)
    prompts = training_prompts(None, 4, config.prompts_per_step)
    return build_trainer(setup, prompts, config, tmp_path / "run", K, parity_reward)


def batch(seed: int = 2, rows: int = 2, prompt: int = 4, completion: int = 5):
    ids = torch.randint(
        3, 300, (rows, prompt + completion), generator=torch.Generator().manual_seed(seed)
    )
    return ids, torch.ones_like(ids), completion


# ----------------------------------------------------------------------------- the readout


def test_phase_one_log_probs_are_the_plain_models_layer_k_readout(tiny_dirs, tmp_path):
    trainer = make_trainer(tiny_dirs, tmp_path)
    ids, mask, keep = batch()
    reference = reference_model(tiny_dirs["qwen2"])
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True)
        trainer.buffer_phase = "inter"
        internal, entropy, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, keep, compute_entropy=True
        )
        trainer.buffer_phase = "full"
        full, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
    targets = ids[:, -keep:, None]
    raw = reference.lm_head(out.hidden_states[K])[:, -keep - 1 : -1].log_softmax(-1)
    final = out.logits[:, -keep - 1 : -1].log_softmax(-1)
    torch.testing.assert_close(internal, raw.gather(-1, targets)[..., 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, final.gather(-1, targets)[..., 0], rtol=1e-5, atol=1e-5)
    expected_entropy = -(raw.exp() * raw).sum(-1)  # a float32 sum over the vocabulary
    torch.testing.assert_close(entropy, expected_entropy, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(internal, full)  # the two phases read different policies


def test_layer_statistics_match_the_plain_model(tiny_dirs):
    model = reference_model(tiny_dirs["llama"])
    ids, mask, keep = batch(seed=4)
    stats = layer_token_stats(model, ids, mask, K, keep, temperature=0.7)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    final = (out.logits[:, -keep - 1 : -1] / 0.7).log_softmax(-1)
    internal = (model.lm_head(out.hidden_states[K])[:, -keep - 1 : -1] / 0.7).log_softmax(-1)
    expected = {
        "entropy_final": -(final.exp() * final).sum(-1),
        "entropy_layer": -(internal.exp() * internal).sum(-1),
        "kl_layer_final": (final.exp() * (final - internal)).sum(-1),
    }
    for name, value in expected.items():
        torch.testing.assert_close(stats[name], value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # untied and tied embeddings
def test_phase_one_gradient_stops_at_layer_k_and_phase_two_reaches_everything(
    tiny_dirs, tmp_path, arch
):
    trainer = make_trainer(tiny_dirs, tmp_path, arch)
    model = trainer.model
    ids, mask, keep = batch(seed=3, rows=3)
    weights = torch.tensor([[1.0], [-0.5], [0.3]])
    for phase in ("inter", "full"):
        model.zero_grad(set_to_none=True)
        trainer.buffer_phase = phase
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep)
        (-(logps * weights).sum()).backward()
        for name, param in model.named_parameters():
            grad = 0.0 if param.grad is None else param.grad.abs().sum().item()
            if phase == "inter" and above_k(name):
                assert grad == 0.0, f"{name} got a gradient through pi^{K}"
            else:
                assert grad > 0.0, f"{name} got no gradient in phase {phase}"


def test_lora_adapters_above_k_get_no_gradient_in_phase_one(tiny_dirs, tmp_path):
    trainer = make_trainer(tiny_dirs, tmp_path, lora_rank=4)
    model = trainer.model
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    ids, mask, keep = batch(seed=8)
    trainer.buffer_phase = "inter"
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep)
    (-logps.sum()).backward()
    for name, param in adapters.items():  # lora_B starts at 0, so only it gets a first gradient
        grad = 0.0 if param.grad is None else param.grad.abs().sum().item()
        if (layer_index(name) or 0) >= K:
            assert grad == 0.0, f"{name} got a gradient through pi^{K}"
        elif "lora_B" in name:
            assert grad > 0.0, f"{name} got no gradient through pi^{K}"


def test_bfloat16_old_and_new_log_probs_agree_so_the_first_ratio_is_one(tiny_dirs, tmp_path):
    trainer = make_trainer(tiny_dirs, tmp_path, dtype="bfloat16")
    # --dtype bfloat16 trains float32 master weights under bf16 autocast (bupo.engine)
    assert next(trainer.model.parameters()).dtype == torch.float32 and trainer.args.bf16
    ids, mask, keep = batch(seed=5)
    for phase in ("inter", "full"):
        trainer.buffer_phase = phase
        with torch.no_grad():  # how TRL computes old log-probs at generation
            old, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        new, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        assert new.requires_grad
        assert torch.equal(torch.exp(new.detach() - old), torch.ones_like(old)), phase


def test_dual_clip_loss_equals_a_hand_computation(tiny_dirs, tmp_path):
    trainer = make_trainer(tiny_dirs, tmp_path, mini_batches=1, prompts_per_step=1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    ids, attention, keep = batch(seed=6, rows=2, completion=3)
    prompt, completion = ids[:, :-keep], ids[:, -keep:]
    completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ratios = torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 20.0]])
    trainer.buffer_phase = "inter"
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attention, keep
        )
    inputs = {
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "completion_ids": completion,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -1.0]),
        "old_per_token_logps": logps - ratios.log(),
        "num_items_in_batch": completion_mask.sum(),
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    # verl's dual clip, per token: l = max(-A r, -A clip(r, 0.8, 1.2)); for A < 0, min(l, -A c).
    # A = +1: r 1.5 -> -1.2 (clipped), r 0.5 -> -0.5; A = -1: r 1.5 -> 1.5, r 0.5 -> 0.8
    # (clipped), r 20 -> min(20, 10) = 10 (dual clip); token mean over the 5 response tokens.
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 + 10.0) / 5, rel=1e-5)


# ----------------------------------------------------------------------------- phases


def test_decayed_parameters_above_k_get_their_own_groups_undecayed_in_phase_one(
    tiny_dirs, tmp_path
):
    trainer = make_trainer(tiny_dirs, tmp_path)  # weight decay 0.01
    groups = trainer.create_optimizer().param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    members = [{names[id(p)] for p in group["params"]} for group in groups]
    assert sorted(n for m in members for n in m) == sorted(names.values())
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    marked = {n for m, group in zip(members, groups, strict=True) if ABOVE_K in group for n in m}
    assert marked == {n for n in decayed if above_k(n)} and marked
    for phase, above_k_decay in (("inter", 0.0), ("full", 0.01)):
        trainer._enter_phase(phase)
        for m, group in zip(members, groups, strict=True):
            expected = above_k_decay if ABOVE_K in group else 0.01 if m <= decayed else 0.0
            assert group["weight_decay"] == expected and (m <= decayed or not m & decayed)


@pytest.mark.slow
def test_phase_switches_after_exactly_s_inter_rollouts_and_holds_per_buffer(tiny_dirs, tmp_path):
    trainer = make_trainer(tiny_dirs, tmp_path, steps=3, inter_steps=2, num_iterations=2, lr=1e-2)
    assert trainer.args.steps_per_generation == 2 and trainer.num_iterations == 2
    calls = []
    original = trainer._get_per_token_logps_and_entropies

    def spy(model, *args, **kwargs):
        calls.append((trainer.rollouts, trainer.buffer_phase, torch.is_grad_enabled()))
        return original(model, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = spy
    params = dict(trainer.model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    seen = {}
    trainer.step_log.on_step = lambda row: seen.update(
        {row["step"]: {n: p.detach().clone() for n, p in params.items()}}
    )
    trainer.train()
    # per rollout: old log-probs once without gradients, then 2 mini-batches x 2 iterations,
    # all on the readout of the rollout's phase
    expected = [
        (phase, grad) for phase in ("inter", "inter", "full") for grad in [False] + [True] * 4
    ]
    assert [(phase, grad) for _, phase, grad in calls] == expected
    assert [row["phase"] for row in trainer.step_log.rows] == ["inter", "inter", "full"]
    upper = [n for n in params if above_k(n)]
    lower = [n for n in params if not above_k(n)]
    for step, before in ((1, start), (2, seen[1])):
        assert all(torch.equal(seen[step][n], start[n]) for n in upper)
        assert all(not torch.equal(seen[step][n], before[n]) for n in lower)
    assert all(not torch.equal(seen[3][n], seen[2][n]) for n in upper)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resume_in_the_middle_of_phase_one_continues_phase_one(tiny_dirs, tmp_path):
    spec, out = str(tiny_dirs["qwen3"]), tmp_path / "run"
    config = TrainConfig(**FAST, steps=3, inter_steps=2, layer=K, lr=1e-2, save_every=1)

    def stop_at_two(row):
        if row["step"] == 2:
            raise Interrupted  # after rollout 2's updates, before its checkpoint

    common = dict(out=out, config=config, limit=4, reward_fn=parity_reward, device="cpu")
    with pytest.raises(Interrupted):
        train(spec, None, on_step=stop_at_two, **common)
    (checkpoint,) = (out / "checkpoints").glob("checkpoint-*")
    assert json.loads((checkpoint / STATE_FILE).read_text())["rollouts"] == 1
    upper_at_checkpoint = {
        n: p for n, p in reference_model(checkpoint).named_parameters() if above_k(n)
    }
    rows = []
    resumed = train(spec, None, resume=True, on_step=rows.append, **common)
    assert [row["step"] for row in rows] == [2, 3]
    assert [row["phase"] for row in rows] == ["inter", "full"]
    assert list(resumed.log.phase) == ["inter", "inter", "full"] and list(resumed.log.step) == [
        1,
        2,
        3,
    ]
    final = dict(reference_model(resumed.checkpoint).named_parameters())
    assert any(not torch.equal(final[n], p) for n, p in upper_at_checkpoint.items())


# ----------------------------------------------------------------------------- end to end


@pytest.mark.end_to_end
@pytest.mark.slow
def test_train_cli_end_to_end_with_analysis_and_hf_checkpoints(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train", "--model", str(tiny_dirs["qwen3"]), "--limit", "4", "--steps", "2",
            "--inter-steps", "1", "--layer", "2", "--group-size", "2", "--prompts-per-step", "2",
            "--mini-batches", "2", "--max-new-tokens", "6", "--analyse", "--analysis-prompts",
            "2", "--device", "cpu", "--lr", "0.01", "--grpo", "max_grad_norm=0.5",
            "--eval-samples", "2", "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.step) == [1, 2] and list(log.phase) == ["inter", "full"]
    assert pd.read_parquet(out / "train_log.parquet").shape == log.shape
    for column in ("reward_mean", "groups_active", "entropy_final", "entropy_layer_k", "loss",
                   "clip_frac", "grad_norm", "response_len", "seconds"):  # fmt: skip
        assert log[column].notna().all(), column
    assert (log.kl_layer_k_final >= 0).all() and (log.seconds > 0).all()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["method"] == "BuPO"
    assert record["layer"] == {"k": 2, "requested": 2, "reason": "given: --layer 2"}
    assert record["settings"]["grpo"] == {"max_grad_norm": 0.5}
    for side in ("before", "after"):
        assert json.loads((out / side / "run.json").read_text())["status"] == "complete"
    for name in ("training_log", "entropy_difference"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    ids = torch.randint(3, 300, (1, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        final = reference_model(out / "model")(ids).logits
        last = reference_model(out / "checkpoints" / "checkpoint-4")(ids).logits
        start = reference_model(tiny_dirs["qwen3"])(ids).logits
    torch.testing.assert_close(final, last, rtol=0, atol=0)
    assert not torch.equal(final, start)
    assert "KL(pi||k)" in captured.out and "layer k = 2" in captured.out
    assert record["settings"]["eval_samples"] == 2 and record["reward"]["samples"] == 2
    assert len(pd.read_csv(out / "reward_after.csv")) == 4 * 2  # 4 prompts x 2 samples
    assert "reward, mean over 4 trained prompts x 2 samples" in captured.out
    assert set(record["entropy_at_k"]["after"]) >= {"dh_mlp_ci", "policy_entropy_ci"}


def _artifacts(run: Path) -> set[str]:
    """Files of a run; the Trainer's RNG state files (one per process) count as one."""
    return {
        re.sub(r"rng_state(_\d+)?\.pth$", "rng_state*.pth", str(p.relative_to(run)))
        for p in run.rglob("*")
        if p.is_file() and p.name not in {".lock", "README.md"}
    }


@pytest.mark.slow
def test_two_processes_finish_and_write_the_same_artifacts_as_one(tiny_dirs, tmp_path):
    args = [
        "train", "--model", str(tiny_dirs["qwen2"]), "--limit", "4", "--steps", "2",
        "--inter-steps", "1", "--layer", "2", "--group-size", "2", "--prompts-per-step", "2",
        "--mini-batches", "1", "--max-new-tokens", "4", "--eval-samples", "2", "--device", "cpu",
    ]  # fmt: skip
    script = str(Path(sys.executable).parent / "layerpolicy")  # the console script
    entry = [sys.executable, script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = subprocess.run(
        [*entry, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-2000:]
    # torch's launcher (accelerate's --multi_gpu) starts the 2 processes; --device cpu makes
    # them a gloo (MULTI_CPU) group. accelerate's --cpu alone starts 1 process without mpirun.
    port = str(free_port())
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", port, script]  # fmt: skip
    double = subprocess.run(
        [*launch, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert double.returncode == 0, double.stderr[-3000:]
    files = _artifacts(tmp_path / "one")
    assert {"run.json", "train_log.parquet", "model/model.safetensors"} <= files
    assert _artifacts(tmp_path / "two") == files
    one = pd.read_parquet(tmp_path / "one" / "train_log.parquet")
    two = pd.read_parquet(tmp_path / "two" / "train_log.parquet")
    assert list(two.columns) == list(one.columns) and list(two.phase) == ["inter", "full"]
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["status"] == "complete" and record["world_size"] == 2
    assert {"reward_before.csv", "reward_after.csv"} <= files  # written by the main process
    before = [pd.read_csv(tmp_path / run / "reward_before.csv") for run in ("one", "two")]
    pd.testing.assert_frame_equal(before[1], before[0])  # the same base model, prompts, seeds
    after = pd.read_csv(tmp_path / "two" / "reward_after.csv")
    assert after[["prompt_id", "sample"]].equals(before[0][["prompt_id", "sample"]])


def test_the_paper_preset_maps_onto_grpo_config(tmp_path):
    from trl import GRPOConfig

    config = RunSpec.from_preset("paper-qwen3-4b", grad_accum=8).train
    assert (config.s_inter, config.layer, config.responses) == (30, 6, 1024)
    eight = grpo_arguments(config, str(tmp_path), world_size=8)
    assert eight["per_device_train_batch_size"] == 4  # 1024 / 4 mini-batches / 8 GPUs / 8 accum
    assert (eight["steps_per_generation"], eight["max_steps"], eight["logging_steps"]) == (
        32,
        1200,
        4,
    )
    one = GRPOConfig(**grpo_arguments(config, str(tmp_path), world_size=1), use_cpu=True)
    assert one.generation_batch_size == 1024 and one.num_generations == 8
    assert (one.epsilon, one.delta, one.beta, one.loss_type) == (0.2, 10.0, 0.0, "dapo")
    assert one.mask_truncated_completions is False  # as verl: truncated responses stay in
    assert (one.learning_rate, str(one.lr_scheduler_type), one.scale_rewards) == (
        1e-6,
        "SchedulerType.CONSTANT",
        "group",
    )


def test_entropy_at_k_reports_intervals_next_to_the_means():
    summary = _summary([2.0, 2.0, 0.0, -2.0, -2.0, 0.0])
    final = {"site": "final", "layer": 6, "metric": "entropy", "mean": 1.5, "n_layers": 6,
             "ci_low": 1.2, "ci_high": 1.9}  # fmt: skip
    summary = pd.concat([summary, pd.DataFrame([final])], ignore_index=True)
    later = summary.assign(**{c: summary[c] + 1 for c in ("mean", "ci_low", "ci_high")})

    class Result:  # what entropy_at_k reads of an AnalysisResult
        def __init__(self, frame):
            self.summary = frame

    out = entropy_at_k(Result(summary), Result(later), layer=2)
    assert out["before"]["entropy_resid"] == 8.0
    assert out["before"]["entropy_resid_ci"] == pytest.approx([7.99, 8.01])
    assert out["before"]["dh_mlp"] == 2.0 and out["before"]["dh_mlp_ci"] == pytest.approx(
        [1.99, 2.01]
    )
    assert out["before"]["dh_attn_ci"] == pytest.approx([-0.01, 0.01])
    assert out["before"]["policy_entropy"] == 1.5
    assert out["before"]["policy_entropy_ci"] == pytest.approx([1.2, 1.9])
    assert out["after"]["dh_mlp"] == 3.0 and out["after"]["dh_mlp_ci"] == pytest.approx(
        [2.99, 3.01]
    )
    assert out["after"]["policy_entropy_ci"] == pytest.approx([2.2, 2.9])
    assert entropy_at_k(None, Result(later), 2) is None


# ----------------------------------------------------------------------------- layer choice


def _summary(dh_mlp: list[float]) -> pd.DataFrame:
    """A minimal summary table with resid entropy and tight-CI module entropy changes."""
    n_layers, rows = len(dh_mlp), []
    for layer in range(n_layers + 1):
        rows.append(("embed" if layer == 0 else "resid", layer, "entropy", 10.0 - layer))
    for layer, dh in enumerate(dh_mlp, start=1):
        rows += [("mlp", layer, "entropy_change", dh), ("attn", layer, "entropy_change", 0.0)]
    frame = pd.DataFrame(rows, columns=["site", "layer", "metric", "mean"])
    frame["ci_low"], frame["ci_high"] = frame["mean"] - 0.01, frame["mean"] + 0.01
    frame["n_layers"] = n_layers
    return frame


def test_boundary_layer_rule_and_the_model_without_exploration():
    k, reason = boundary_layer_from(_summary([2.0, 2.0, 0.0, -2.0, -2.0, 0.0]), 6)
    assert k == 2 and "E1-2" in reason and reason.startswith("boundary layer")
    with pytest.raises(LayerpolicyError, match=r"no exploration region.*--layer N \(1\.\.5\)"):
        boundary_layer_from(_summary([-2.0, -2.0, 0.0, -2.0, -2.0, 0.0]), 6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.skipif(not DEEPMATH.is_file(), reason="shared data not present")
def test_the_bupo_parquet_layout_gives_prompts_with_answers():
    prompts = training_prompts(str(DEEPMATH), 3)
    assert len(prompts.items) == 3
    assert all(item.messages and item.answer for item in prompts.items)


def test_bad_input_is_one_line_each(tiny_dirs, tmp_path, capsys, monkeypatch):
    spec = str(tiny_dirs["qwen2"])
    flags = [part for k, v in FAST.items() for part in (f"--{k.replace('_', '-')}", str(v))]
    base = ["train", "--model", spec, "--limit", "4", "--device", "cpu", *flags]
    out = ["--out", str(tmp_path / "run")]
    one_line_error(
        capsys, [*base, "--layer", "4", "--steps", "1", *out], "--layer must lie in 1..3"
    )
    one_line_error(capsys, [*base, "--steps", "2", "--inter-steps", "3", *out], "inter_steps")
    one_line_error(capsys, [*base, "--beta", "0.1", "--inter-steps", "1", *out], "beta")
    one_line_error(capsys, [*base, "--group-size", "1", *out], "group_size must be at least 2")
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, [*base, "--out", str(tmp_path / "file")], "is a file")
    one_line_error(capsys, [*base, "--grpo", "no_such_field=1", *out], "no_such_field")
    one_line_error(capsys, [*base, "--preset", "nope", *out], "unknown preset")
    if not _installed("vllm"):
        one_line_error(capsys, [*base, "--use-vllm", *out], "needs vLLM")
    answers = tmp_path / "no-answers.jsonl"
    answers.write_text('{"prompt": "What is 1 + 1?"}\n{"prompt": "What is 2 + 2?"}\n')
    one_line_error(capsys, [*base, "--prompts", str(answers), *out], "no answer")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    one_line_error(capsys, [*base, "--steps", "1", *out], "3 processes")
    assert not (tmp_path / "run").exists()  # every check came before any work
    with pytest.raises(LayerpolicyError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(PromptSourceError, match="cannot fill a step of 5"):
        training_prompts(None, 4, 5)
    with pytest.raises(LayerpolicyError, match="do not divide"):
        grpo_arguments(TrainConfig(**FAST), "x", world_size=3)


def test_auto_layer_without_exploration_region_asks_for_a_layer(tiny_dirs, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_dirs["qwen2"]), "--limit", "4", "--steps", "1",
            "--analysis-prompts", "2", "--max-new-tokens", "4", "--group-size", "2",
            "--prompts-per-step", "2", "--mini-batches", "1", "--device", "cpu",
            "--out", str(tmp_path / "run")]  # fmt: skip
    expected = "no boundary layer k; choose the trained layer with --layer N (1..3)"
    one_line_error(capsys, argv, expected, after_work=True)


@pytest.mark.slow
def test_runs_are_not_overwritten_and_resume_checks_settings(tiny_dirs, tmp_path):
    spec = str(tiny_dirs["qwen2"])
    with pytest.raises(RunDirectoryError, match="no training run to resume"):
        train(spec, None, out=tmp_path / "b", resume=True, limit=4)
    config = TrainConfig(**FAST, steps=1, inter_steps=0, layer=1)
    train(spec, None, out=tmp_path / "c", config=config, limit=2, device="cpu")
    with pytest.raises(RunDirectoryError, match="already holds a training run"):
        train(spec, None, out=tmp_path / "c", config=config, limit=2)
    with pytest.raises(RunDirectoryError, match="other settings"):
        train(
            spec,
            None,
            out=tmp_path / "c",
            limit=2,
            resume=True,
            config=dataclasses.replace(config, seed=1),
        )


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
