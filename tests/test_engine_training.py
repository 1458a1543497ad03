"""The training engine (layerpolicy.bupo.engine): half precision as float32 master weights under
autocast, the engine on record, a launch config that cannot get its engine, the final save."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from layerpolicy.bupo.engine import (
    check_engine,
    check_launch,
    engine_record,
    save_final_model,
    training_precision,
)
from layerpolicy.bupo.trainer import BupoTrainer
from layerpolicy.errors import LayerpolicyError
from tests.training import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
K = 2


def make_trainer(location, tmp_path, load_dtype: str, bf16: bool, **extra) -> BupoTrainer:
    args = GRPOConfig(
        output_dir=str(tmp_path / "trainer"), use_cpu=True, per_device_train_batch_size=2,
        num_generations=2, max_completion_length=5, report_to="none", beta=0.0,
        disable_tqdm=True, bf16=bf16, learning_rate=1e-6, weight_decay=0.01, save_strategy="no",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, load_dtype))
    return BupoTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args, train_dataset=Dataset.from_list([{"prompt": "1 + 1 =", "answer": "2"}] * 2),
        processing_class=AutoTokenizer.from_pretrained(location), layer=K, inter_rollouts=0,
        layer_stats=False, **extra,
    )  # fmt: skip


def share_changed(trainer: BupoTrainer, steps: int = 4) -> float:
    """Share of the trained weights (all but the input embedding, whose rows of unseen tokens
    get no gradient) that `steps` AdamW steps at lr 1e-6 change, under the trainer's autocast."""
    model = trainer.model
    trainer.create_optimizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        with trainer.autocast_smart_context_manager():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                model, ids, torch.ones_like(ids), 6
            )
        (-logps.mean()).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    changed = total = 0
    for name, param in model.named_parameters():
        if "embed_tokens" not in name:
            changed += int((param.detach() != before[name]).sum())
            total += param.numel()
    return changed / total


def test_half_precision_trains_float32_master_weights_under_autocast(tiny_dirs, tmp_path):
    precision = training_precision("bfloat16")
    assert precision == {"bf16": True, "fp16": False, "load_dtype": "float32"}
    assert training_precision("float32")["bf16"] is False
    assert training_precision("float16")["fp16"] is True
    location = tiny_dirs["qwen2"]
    trainer = make_trainer(location, tmp_path, precision["load_dtype"], precision["bf16"])
    assert trainer.accelerator.mixed_precision == "bf16"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    master = share_changed(trainer)
    bare = share_changed(make_trainer(location, tmp_path, "bfloat16", False))
    assert master > 0.99, master
    assert bare < 0.5, bare  # bare bfloat16 weights round most lr-1e-6 updates away


def test_engine_record_and_a_config_that_cannot_get_its_engine(monkeypatch):
    accelerator = Accelerator(cpu=True)
    record = engine_record(accelerator)
    assert record == {"distributed_type": "NO", "mixed_precision": "no", "num_processes": 1}
    check_engine(accelerator)
    for variable, engine in (
        ("ACCELERATE_USE_FSDP", "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED"),
    ):
        monkeypatch.setenv(variable, "true")
        with pytest.raises(LayerpolicyError, match=f"asks for {engine} but accelerate runs NO"):
            check_engine(accelerator)
        if engine == "FSDP" and not torch.cuda.is_available():  # refused before any work
            with pytest.raises(LayerpolicyError, match="asks for FSDP but no CUDA GPU is visible"):
                check_launch()
        monkeypatch.delenv(variable)
    check_launch()  # nothing asked


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_an_fsdp_launch_without_gpus_is_one_line_before_any_work(
    tiny_dirs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    argv = ["train", "--model", str(tiny_dirs["qwen2"]), "--layer", "2", "--limit", "4"]
    one_line_error(
        capsys, [*argv, "--out", str(tmp_path / "run")], "asks for FSDP but no CUDA GPU is visible"
    )
    assert not (tmp_path / "run").exists()


def test_lora_save_in_one_process_equals_the_merged_model(tiny_dirs, tmp_path):
    from peft import LoraConfig

    location = tiny_dirs["qwen2"]
    trainer = make_trainer(
        location, tmp_path, "float32", False,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )  # fmt: skip
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    save_final_model(trainer, tmp_path / "model")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    merged = trainer.model.merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(location).state_dict()
    assert saved.keys() == merged.keys()
    assert all(torch.equal(saved[n], merged[n]) for n in merged)
    assert sum(not torch.equal(saved[n], base[n]) for n in base) > 0
    assert not (tmp_path / "model.adapter").exists()
    assert (tmp_path / "model" / "tokenizer_config.json").exists()
