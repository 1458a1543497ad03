"""Training dynamics: the probe's step-0 rows against a separate `entropy --responses` run, the
KL and cosine rows against the plain model, the callback under TRL's own GRPOTrainer and under
BuPO, two processes, and bad input."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from datasets import Dataset
from layerpolicy.cli.app import main
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from layerpolicy.analysis import analyse
from layerpolicy.bupo import TrainConfig, train
from layerpolicy.config import AnalysisConfig, ModelConfig, PromptConfig
from layerpolicy.dynamics import DYNAMICS_COLUMNS, DynamicsCallback, layer_pair_means
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptItem
from layerpolicy.responses import read_responses
from layerpolicy.spec import RunSpec
from tests.launch import free_port, run_launch
from tests.reference import plain_model, reference_vectors
from tests.training import FAST as TRAIN_FAST
from tests.training import parity_reward

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = [PromptItem(f"p{i}", None, f"What is {i} + {i}?") for i in range(3)]
FAST = AnalysisConfig(top_k=0, n_boot=50)


def monitor(out: Path, **options) -> DynamicsCallback:
    options = {"every": 1, "layer": 1, "analysis": FAST, **options}
    return DynamicsCallback(out, ITEMS, **options)


def grpo_trainer(directory: Path, out: Path, callback: DynamicsCallback, steps: int = 2):
    """TRL's own GRPOTrainer on a tiny model (nothing of layerpolicy but the callback)."""
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    args = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=2, num_generations=2,
        max_completion_length=6, max_steps=steps, learning_rate=0.05, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, seed=0,
    )  # fmt: skip
    prompts = Dataset.from_dict({"prompt": [f"Count to {i}:" for i in range(8)]})
    return GRPOTrainer(
        model=model, reward_funcs=lambda completions, **_: [float(len(c) % 2) for c in completions],
        args=args, train_dataset=prompts, callbacks=[callback],
    )  # fmt: skip


def test_step_zero_rows_equal_a_separate_entropy_responses_run(tiny_dirs, tmp_path):
    callback = monitor(tmp_path / "run")
    callback._trainer_model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["qwen2"]))
    rows = callback.record(0)
    assert list(rows.columns) == DYNAMICS_COLUMNS
    probe = tmp_path / "run" / "probe.parquet"
    spec = RunSpec.of(model=str(tiny_dirs["qwen2"]), responses=str(probe), top_k=0, n_boot=50)
    separate = analyse(spec, out=tmp_path / "separate", progress=False).summary
    separate = separate[separate.metric == "entropy"]
    ours = rows[rows.metric == "entropy"].merge(separate, on=["site", "layer"], how="outer")
    assert len(ours) == len(separate) and ours["mean_x"].notna().all()
    for column in ("mean", "ci_low", "ci_high"):
        assert (ours[f"{column}_x"] - ours[f"{column}_y"]).abs().max() <= 1e-5, column
    final = separate.query("site == 'final'")
    logprob = analyse(spec, out=tmp_path / "separate", progress=False).summary
    nll = -logprob.query("site == 'final' and metric == 'target_logprob'")["pooled_mean"]
    perplexity = rows.query("metric == 'perplexity'")
    assert len(final) == 1 and len(perplexity) == 1
    assert perplexity["mean"].iloc[0] == pytest.approx(float(torch.tensor(nll.iloc[0]).exp()))


def test_kl_and_cosine_rows_match_the_plain_model(tiny_dirs, tmp_path):
    callback = monitor(tmp_path / "run")
    callback._trainer_model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"]))
    callback.record(0)
    frame = read_responses(tmp_path / "run" / "probe.parquet").iloc[:1]
    loaded = load_model(str(tiny_dirs["llama"]), device="cpu", progress=False)
    k = 1
    ours = layer_pair_means(loaded, frame, k, FAST).set_index(["metric", "layer"])["value"]
    row = frame.iloc[0]
    ids = torch.tensor([[*row.prompt_ids, *row.response_ids]])
    vectors = reference_vectors(plain_model(tiny_dirs["llama"]), ids)
    scored = slice(len(row.prompt_ids) - 1, ids.shape[1] - 1)  # positions predicting the response
    head = plain_model(tiny_dirs["llama"]).lm_head.weight.detach()
    h_k = vectors[("resid", k)][scored]
    log_p = torch.log_softmax(h_k @ head.T, dim=-1)
    for j in range(k + 1, loaded.n_layers + 1):
        h_j = vectors[("resid", j)][scored]
        log_q = torch.log_softmax(h_j @ head.T, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        cos = torch.cosine_similarity(h_k, h_j, dim=-1).mean()
        assert ours[("kl_from_k", j)] == pytest.approx(float(kl), rel=1e-4, abs=1e-6)
        assert ours[("cos_with_k", j)] == pytest.approx(float(cos), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_the_callback_runs_with_trls_own_grpo_trainer(tiny_dirs, tmp_path):
    callback = monitor(tmp_path / "run", every=2)
    trainer = grpo_trainer(tiny_dirs["qwen2"], tmp_path, callback, steps=4)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    table = pd.read_parquet(tmp_path / "run" / "dynamics.parquet")
    assert sorted(table.step.unique()) == [0, 2, 4] and set(table.phase) == {""}
    assert set(table.metric) == {"entropy", "kl_from_k", "cos_with_k", "perplexity"}
    assert set(table.query("metric == 'kl_from_k'").layer) == {2, 3, 4}  # every j > k = 1
    assert (table.query("metric == 'kl_from_k'")["mean"] >= 0).all()
    policy = {p.data_ptr() for p in trainer.model.parameters()}
    assert all(p.data_ptr() in policy for p in callback._bridge.hf_model.parameters())  # no copy
    changed = any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    first, last = (table.query(f"step == {s} and metric == 'entropy'")["mean"] for s in (0, 4))
    assert changed and not first.reset_index(drop=True).equals(last.reset_index(drop=True))


@pytest.mark.slow
def test_bupo_run_writes_dynamics_with_its_phases_and_the_view_draws_them(
    tiny_dirs, tmp_path, capsys
):
    settings = {**TRAIN_FAST, "steps": 2, "inter_steps": 1, "layer": 2, "mini_batches": 1}
    config = TrainConfig(**settings, monitor_every=1, analysis_prompts=2)
    model = ModelConfig(str(tiny_dirs["qwen2"]), device="cpu")
    spec = RunSpec(model, PromptConfig(None, limit=2), train=config)
    result = train(spec, out=tmp_path / "run", reward_fn=parity_reward, progress=False)
    table = pd.read_parquet(result.path / "dynamics.parquet")
    assert sorted(table.step.unique()) == [0, 1, 2] and set(table.k) == {2}
    phases = table.drop_duplicates("step").set_index("step")["phase"]
    assert phases.to_dict() == {0: "inter", 1: "inter", 2: "full"}
    assert result.record["settings"]["monitor_every"] == 1
    capsys.readouterr()
    assert main(["view", str(result.path)]) == 0, capsys.readouterr().err
    page = (result.path / "view.html").read_text()
    assert page.count("<svg") == 2 and "optimizer steps 0 to 2" in page
    for name in ("dynamics", "dynamics_heatmap"):
        assert (result.path / "figures" / f"{name}.png").stat().st_size > 0


@pytest.mark.slow
def test_a_lora_bupo_run_monitors_the_adapted_model(tiny_dirs, tmp_path):
    settings = {**TRAIN_FAST, "steps": 2, "inter_steps": 1, "layer": 2, "mini_batches": 1}
    config = TrainConfig(**settings, lr=0.05, lora_rank=4, monitor_every=1, analysis_prompts=2)
    model = ModelConfig(str(tiny_dirs["qwen2"]), device="cpu")
    spec = RunSpec(model, PromptConfig(None, limit=2), train=config)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="training dynamics off")
        result = train(spec, out=tmp_path / "run", reward_fn=parity_reward, progress=False)
    table = pd.read_parquet(result.path / "dynamics.parquet")
    assert sorted(table.step.unique()) == [0, 1, 2]
    entropy = table[(table.metric == "entropy") & (table.site == "final")].set_index("step")
    assert entropy.loc[0, "mean"] != entropy.loc[2, "mean"]  # the adapters moved π_θ


def test_bad_input_is_one_line_before_any_work(tmp_path):
    with pytest.raises(LayerpolicyError, match="at least 1 step"):
        DynamicsCallback(tmp_path, ITEMS, every=0)
    (tmp_path / "other.parquet").write_bytes(b"not parquet")
    with pytest.raises(LayerpolicyError, match="no responses table"):
        DynamicsCallback(tmp_path, tmp_path / "other.parquet")
    callback = monitor(tmp_path / "run", layer=None)
    with pytest.raises(LayerpolicyError, match="needs k: pass layer="):
        callback._layer(4)
    with pytest.raises(LayerpolicyError, match=r"1\.\.3"):
        monitor(tmp_path / "run", layer=4)._layer(4)


def lora_model(directory: Path, **options):
    """A tiny model with LoRA adapters on every linear layer, their B matrices random (PEFT
    starts them at 0, which would make the adapted model the base model)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_pretrained(str(directory))
    model = get_peft_model(plain, LoraConfig(r=2, target_modules="all-linear", **options))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return model


def test_a_lora_model_is_scored_with_its_adapters_merged(tiny_dirs, tmp_path):
    model = lora_model(tiny_dirs["qwen2"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    callback = monitor(tmp_path / "run")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(None, state, None, model=model)
    assert not callback.off
    rows = pd.read_parquet(callback.path)
    for name, parameter in model.named_parameters():  # the trainer's tensors are not touched
        assert torch.equal(parameter, before[name]), name
    merged = tmp_path / "merged"  # PEFT's own merge, scored as a plain model
    model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(str(tiny_dirs["qwen2"])).save_pretrained(merged)
    spec = RunSpec.of(
        model=str(merged), responses=str(tmp_path / "run" / "probe.parquet"), top_k=0, n_boot=50
    )
    separate = analyse(spec, out=tmp_path / "separate", progress=False).summary
    separate = separate[separate.metric == "entropy"]
    ours = rows[rows.metric == "entropy"].merge(separate, on=["site", "layer"], how="outer")
    assert len(ours) == len(separate) and ours["mean_x"].notna().all()
    assert (ours["mean_x"] - ours["mean_y"]).abs().max() <= 1e-5
    base = analyse(spec.replace(model=str(tiny_dirs["qwen2"])), out=tmp_path / "base",
                   progress=False).summary  # fmt: skip
    base = base[(base.metric == "entropy") & (base.site == "final")]["mean"].iloc[0]
    assert abs(base - separate[separate.site == "final"]["mean"].iloc[0]) > 1e-3  # LoRA matters


def test_a_model_training_whole_modules_turns_the_monitor_off_with_a_warning(tiny_dirs, tmp_path):
    model = lora_model(tiny_dirs["qwen2"], modules_to_save=["lm_head"])
    callback = monitor(tmp_path / "run")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    with pytest.warns(UserWarning, match="training dynamics off: the PEFT model trains whole"):
        callback.on_train_begin(None, state, None, model=model)
    state.global_step = 1
    callback.on_step_end(None, state, None)
    assert callback.off and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_write_one_table(tiny_dirs, tmp_path):
    """Under a 2-process DDP launch the main process scores and writes one table."""
    script = Path(__file__).with_name("dynamics_worker.py")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(script.parents[1]), env.get("PYTHONPATH", "")])
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
        "--main_process_port", str(free_port()), str(script), str(tiny_dirs["qwen2"]),
        str(tmp_path),
    ]  # fmt: skip
    done = run_launch(command, env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "run" / "dynamics.parquet")
    assert sorted(table.step.unique()) == [0, 1, 2]
    assert not table.duplicated(["step", "site", "layer", "metric"]).any()
