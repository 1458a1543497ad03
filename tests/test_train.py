"""BuPO training: objective by hand, gradient reach of the internal policy, phases, the loop
end to end through the CLI, checkpoints, resume, and errors on bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main
from safetensors import safe_open

from layerpolicy.bupo import TrainConfig, train
from layerpolicy.bupo.checkpoint import load_trainer_state, save_checkpoint
from layerpolicy.bupo.loop import (
    boundary_layer_from,
    policy_updates,
    token_stats,
    training_prompts,
)
from layerpolicy.bupo.objective import (
    clipped_surrogate,
    group_advantages,
    policy_log_probs,
    selective_log_softmax,
)
from layerpolicy.bupo.rollout import collect_rollouts, step_prompts
from layerpolicy.errors import LayerpolicyError, PromptSourceError, RunDirectoryError
from layerpolicy.models import load_model
from layerpolicy.models.plain import plain_view
from layerpolicy.prompts import load_prompts
from tests.reference import plain_model as reference_model

DEEPMATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepmath-5k.parquet"
FAST = dict(group_size=2, prompts_per_step=2, mini_batches=2, max_new_tokens=6, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parity_reward(response: str, truth: str) -> float:
    """A reward random models can earn: odd-length responses win (groups get mixed rewards)."""
    return float(len(response) % 2)


def fresh(tiny_dirs, arch: str = "qwen2"):
    """A model of its own (training changes weights in place; fixtures are shared)."""
    return load_model(str(tiny_dirs[arch]), device="cpu")


def layer_index(name: str) -> int | None:
    match = re.search(r"layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- objective


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    advantages = group_advantages(rewards)
    half = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # mean 0.5, sample std sqrt(1/3)
    quarter_std = math.sqrt(0.25)  # rewards 0,0,0,1: mean 0.25, sample std 0.5
    expected = torch.tensor(
        [
            [half, -half, -half, half],
            [0.0, 0.0, 0.0, 0.0],
            [-0.25 / (quarter_std + 1e-6)] * 3 + [0.75 / (quarter_std + 1e-6)],
        ]
    )
    torch.testing.assert_close(advantages, expected)


def test_clipped_surrogate_with_dual_clip_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5, 20.0, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 1.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    old = torch.zeros_like(ratios)
    logp = ratios.log().requires_grad_()
    result = clipped_surrogate(logp, old, advantages, mask, eps=0.2, dual_clip=10.0)
    # per token: max(-A r, -A clip(r)) = -1.2 (clipped), -0.5, 1.5, 0.8 (clipped); then
    # A < 0 and r = 20: max(20, 1.2) = 20, dual clip min(20, 10) = 10; the last is masked.
    assert result.loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 + 10.0) / 5)
    assert result.clip_frac == pytest.approx(2 / 5)
    assert result.dual_clip_frac == pytest.approx(1 / 5)
    result.loss.backward()
    # d/dlogp of -A r is -A r for unclipped tokens, 0 for clipped ones; token mean over 5
    expected = torch.tensor([[0.0, -0.5 / 5, 1.5 / 5, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_surrogate_takes_per_response_advantages():
    logp = torch.tensor([[0.1, 0.2], [0.0, -0.1]])
    mask = torch.ones_like(logp, dtype=torch.bool)
    per_token = clipped_surrogate(logp, logp, torch.tensor([[2.0, 2.0], [-1.0, -1.0]]), mask)
    per_row = clipped_surrogate(logp, logp, torch.tensor([2.0, -1.0]), mask)
    assert per_row.loss.item() == pytest.approx(per_token.loss.item())
    assert per_row.loss.item() == pytest.approx(-0.5)  # ratio 1: mean of -A


def test_selective_log_softmax_equals_log_softmax_in_value_and_gradient():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 30, generator=generator, requires_grad=True)
    states = torch.randn(10, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 30, (10,), generator=generator)
    chunked = selective_log_softmax(states, targets, lambda x: x @ weight, chunk=3)
    plain = (states @ weight).log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(chunked, plain)
    got = torch.autograd.grad(chunked.sum(), (states, weight))
    expected = torch.autograd.grad(plain.sum(), (states, weight))
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- gradient reach


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # untied and tied embeddings
def test_internal_policy_gradients_reach_only_layers_up_to_k(tiny_dirs, arch):
    model = fresh(tiny_dirs, arch)
    k = 2
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    targets, mask = ids[:, 1:], torch.ones(3, 11, dtype=torch.bool)
    mask[:, :4] = False
    logp = policy_log_probs(model, ids, targets, mask, k)
    (-(logp * torch.tensor([[1.0], [-0.5], [0.3]])).sum()).backward()
    for name, param in model.hf_model.named_parameters():
        index = layer_index(name)
        grad = 0.0 if param.grad is None else param.grad.abs().sum().item()
        if (index is not None and index >= k) or ".norm." in name:
            assert grad == 0.0, f"{name} got a gradient through pi^{k}"
        else:
            assert grad > 0.0, f"{name} got no gradient through pi^{k}"  # lm_head included


def test_full_policy_gradients_reach_every_layer(tiny_dirs):
    model = fresh(tiny_dirs, "qwen3")
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.bool)
    policy_log_probs(model, ids, ids[:, 1:], mask, None).sum().backward()
    for name, param in model.hf_model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_log_probs_match_the_plain_model(tiny_dirs):
    model = fresh(tiny_dirs, "qwen2")
    reference = reference_model(tiny_dirs["qwen2"])
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True)
        full = policy_log_probs(model, ids, ids[:, 1:], mask, None)
        internal = policy_log_probs(model, ids, ids[:, 1:], mask, 2)
    expected_full = out.logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    raw = reference.lm_head(out.hidden_states[2])[:, :-1].log_softmax(-1)
    torch.testing.assert_close(full, expected_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        internal, raw.gather(-1, ids[:, 1:, None])[..., 0], atol=1e-5, rtol=0
    )


# ----------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("layer", [2, None])
def test_ratio_is_one_on_the_first_mini_batch(tiny_dirs, layer):
    model = fresh(tiny_dirs, "llama")
    config = TrainConfig(**FAST, lr=1e-2, inter_steps=1, steps=2)
    items = step_prompts(load_prompts(None, limit=4).items, 1, 2, 0)
    rollouts = collect_rollouts(
        model,
        plain_view(model.hf_model),
        items,
        step=1,
        group_size=2,
        max_new_tokens=6,
        temperature=1.0,
        seed=0,
        reward_fn=parity_reward,
    )
    stats = token_stats(model, rollouts, 2, 2)
    old = torch.zeros(rollouts.targets.shape)
    old[rollouts.mask] = stats["logp_final" if layer is None else "logp_layer"]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    optimizer = torch.optim.AdamW(model.hf_model.parameters(), lr=1e-2)
    updates = policy_updates(model, optimizer, rollouts, old, advantages, layer, config, 1)
    assert updates[0].ratio_dev < 1e-5
    assert updates[1].ratio_dev > 1e-4  # the first update changed the policy


def test_phases_switch_after_inter_steps_and_upper_layers_wait(tiny_dirs, tmp_path):
    model = fresh(tiny_dirs, "qwen2")
    k, params = 2, dict(model.hf_model.named_parameters())
    snapshots = [{n: p.detach().clone() for n, p in params.items()}]
    config = TrainConfig(**FAST, steps=3, inter_steps=2, layer=k, lr=1e-2, save_every=5)
    result = train(
        model,
        None,
        out=tmp_path / "run",
        config=config,
        limit=4,
        reward_fn=parity_reward,
        on_step=lambda row: snapshots.append({n: p.detach().clone() for n, p in params.items()}),
    )
    assert list(result.log.phase) == ["inter", "inter", "full"]
    assert [config.phase(s) for s in (1, 2, 3)] == ["inter", "inter", "full"]
    upper = [n for n in params if (layer_index(n) or 0) >= k or ".norm." in n]
    lower = [n for n in params if n not in upper]
    for step in (1, 2):  # inter: only layers <= k and the (tied) embeddings move
        assert all(torch.equal(snapshots[step][n], snapshots[0][n]) for n in upper)
        assert all(not torch.equal(snapshots[step][n], snapshots[step - 1][n]) for n in lower)
    assert all(not torch.equal(snapshots[3][n], snapshots[2][n]) for n in upper)


def test_train_cli_end_to_end_with_analysis(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train", "--model", str(tiny_dirs["qwen3"]), "--limit", "4", "--steps", "2",
            "--inter-steps", "1", "--group-size", "2", "--prompts-per-step", "2",
            "--mini-batches", "2", "--max-new-tokens", "6", "--analyse",
            "--analysis-prompts", "2", "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.step) == [1, 2] and list(log.phase) == ["inter", "full"]
    assert pd.read_parquet(out / "train_log.parquet").shape == log.shape
    for column in ("reward_mean", "groups_active", "entropy_final", "entropy_layer_k"):
        assert log[column].notna().all()
    assert (log.kl_layer_k_final >= 0).all()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["method"] == "BuPO"
    assert record["layer"]["requested"] == "auto" and record["layer"]["reason"]
    assert 1 <= record["layer"]["k"] < 4
    for side in ("before", "after"):
        assert json.loads((out / side / "run.json").read_text())["status"] == "complete"
    for name in ("training_log", "entropy_difference"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert (out / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    assert "KL(pi||k)" in captured.out and f"layer k = {record['layer']['k']}" in captured.out


def test_plain_view_shares_weights_and_generates_like_the_uncached_model(tiny_dirs):
    model = fresh(tiny_dirs, "qwen2")
    plain = plain_view(model.hf_model)
    shared = {id(p) for p in model.hf_model.parameters()}
    assert all(id(p) in shared for p in plain.parameters())
    ids = torch.tensor([[5, 17, 33, 80, 120, 7]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model.hf_model(ids).logits)
        cached = plain.generate(ids, do_sample=False, max_new_tokens=8, use_cache=True)
        uncached = model.hf_model.generate(ids, do_sample=False, max_new_tokens=8, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_checkpoint_round_trip_gives_identical_logits(tiny_dirs, tmp_path):
    model = fresh(tiny_dirs, "llama")  # tied embeddings
    with torch.no_grad():
        for param in model.hf_model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    directory = save_checkpoint(tmp_path, 7, plain_view(model.hf_model), model.tokenizer, {})
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.hf_model(ids).logits
        reloaded = reference_model(directory)(ids).logits
        via_bridge = load_model(str(directory), device="cpu").bridge(ids)
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=0)
    torch.testing.assert_close(via_bridge, expected, rtol=0, atol=0)
    with safe_open(str(directory / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
    with safe_open(str(tiny_dirs["llama"] / "model.safetensors"), "pt") as original:
        assert keys == set(original.keys())
    assert load_trainer_state(directory)["step"] == 7


def test_resume_continues_at_the_right_step_and_reproduces_the_log(tiny_dirs, tmp_path):
    config = dict(**FAST, inter_steps=1, layer=2, lr=1e-2, save_every=1)

    def run(out: str, steps: int, **extra):
        return train(
            str(tiny_dirs["qwen3"]),
            None,
            out=tmp_path / out,
            config=TrainConfig(steps=steps, **config),
            limit=4,
            reward_fn=parity_reward,
            device="cpu",
            **extra,
        )

    whole = run("whole", 2)
    run("split", 1)
    steps_seen = []
    resumed = run("split", 2, resume=True, on_step=lambda row: steps_seen.append(row["step"]))
    assert steps_seen == [2]  # the step after the checkpoint, across the phase switch
    assert load_trainer_state(resumed.checkpoint)["step"] == 2
    columns = [c for c in whole.log.columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed.log[columns], whole.log[columns])


# ----------------------------------------------------------------------------- layer choice


def _summary(dh_mlp: list[float]) -> pd.DataFrame:
    """A minimal summary table with resid entropy and tight-CI module entropy changes."""
    n_layers, rows = len(dh_mlp), []
    for layer in range(n_layers + 1):
        site = "embed" if layer == 0 else "resid"
        rows.append((site, layer, "entropy", 10.0 - layer))
    for layer, dh in enumerate(dh_mlp, start=1):
        rows += [("mlp", layer, "entropy_change", dh), ("attn", layer, "entropy_change", 0.0)]
    frame = pd.DataFrame(rows, columns=["site", "layer", "metric", "mean"])
    frame["ci_low"], frame["ci_high"] = frame["mean"] - 0.01, frame["mean"] + 0.01
    frame["n_layers"] = n_layers
    return frame


def test_boundary_layer_rule_and_its_fallback():
    k, reason = boundary_layer_from(_summary([2.0, 2.0, 0.0, -2.0, -2.0, 0.0]), 6)
    assert k == 2 and "E1-2" in reason and reason.startswith("boundary layer")
    k, reason = boundary_layer_from(_summary([-2.0, 1.0, 0.0, 3.0, -2.0, 5.0]), 6)
    assert k == 4 and reason.startswith("fallback") and "C1" in reason


# ----------------------------------------------------------------------------- errors


@pytest.mark.skipif(not DEEPMATH.is_file(), reason="shared data not present")
def test_the_bupo_parquet_layout_gives_prompts_with_answers():
    prompts = training_prompts(str(DEEPMATH), 3)
    assert len(prompts.items) == 3
    assert all(item.messages and item.answer for item in prompts.items)


def test_prompts_without_answers_are_a_one_line_error(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "no-answers.jsonl"
    path.write_text('{"prompt": "What is 1 + 1?"}\n{"prompt": "What is 2 + 2?"}\n')
    with pytest.raises(PromptSourceError, match="no answer"):
        train(str(tiny_dirs["qwen2"]), str(path), out=tmp_path / "run")
    code = main(["train", "--model", str(tiny_dirs["qwen2"]), "--prompts", str(path),
                 "--out", str(tmp_path / "cli")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no answer" in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--model", str(tiny_dirs["qwen2"]), "--prompts", str(tmp_path / "x.csv"),
                 "--out", str(tmp_path / "cli")])  # fmt: skip
    assert code == 2 and "not found" in capsys.readouterr().err


def test_bad_settings_and_runs_are_clear_errors(tiny_dirs, tmp_path):
    spec = str(tiny_dirs["qwen2"])
    with pytest.raises(LayerpolicyError, match="inter_steps"):
        TrainConfig(steps=3, inter_steps=5)
    with pytest.raises(LayerpolicyError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(LayerpolicyError, match=r"--layer must lie in 1\.\.3"):
        train(spec, None, out=tmp_path / "a", config=TrainConfig(**FAST, steps=1, layer=4))
    with pytest.raises(RunDirectoryError, match="no training run to resume"):
        train(spec, None, out=tmp_path / "b", resume=True)
    config = TrainConfig(**FAST, steps=1, inter_steps=0, layer=1)
    train(spec, None, out=tmp_path / "c", config=config, limit=2)
    with pytest.raises(RunDirectoryError, match="already holds a training run"):
        train(spec, None, out=tmp_path / "c", config=config, limit=2)
    with pytest.raises(RunDirectoryError, match="other settings"):
        train(
            spec,
            None,
            out=tmp_path / "c",
            limit=2,
            resume=True,
            config=TrainConfig(**{**FAST, "seed": 1}, steps=1, inter_steps=0, layer=1),
        )
