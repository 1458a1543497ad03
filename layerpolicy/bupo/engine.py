"""The training engine: precision, the distributed engine on record, and the final model's save.

- `training_precision(dtype)`: half precision trains as float32 master weights under autocast
  (TRL's / accelerate's bf16 or fp16), never as bare half-precision parameters under AdamW, whose
  lr-1e-6 updates round away in bfloat16.
- `engine_record(accelerator)` / `check_engine(accelerator)`: what accelerate actually runs (DDP,
  FSDP and its version, DeepSpeed and its ZeRO stage, mixed precision, processes), and a one-line
  stop when the launch asked for FSDP or DeepSpeed but got something else.
- `save_final_model(trainer, path)`: one Hugging Face directory from every rank together (the
  gather under FSDP2 and ZeRO-3 is a collective), a LoRA adapter merged on the main process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..devices import choose_dtype
from ..errors import LayerpolicyError

ENGINE_REQUESTS = (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
LOAD_DTYPE = "float32"  # the master weights that AdamW updates
ADAPTER_SUFFIX = ".adapter"


def training_precision(dtype: str) -> dict[str, Any]:
    """GRPOConfig's `bf16` / `fp16` flags for a requested compute `dtype` (float32, bfloat16,
    float16 or auto) and `load_dtype`, the dtype the trained weights are loaded in: always
    float32, so the optimizer updates float32 master weights and the forward autocasts."""
    compute = choose_dtype(dtype, torch.cuda.is_available())
    return {
        "bf16": compute == torch.bfloat16,
        "fp16": compute == torch.float16,
        "load_dtype": LOAD_DTYPE,
    }


def engine_record(accelerator: Any) -> dict[str, Any]:
    """run.json's `engine`: the distributed type accelerate runs, its FSDP version and sharding
    or DeepSpeed ZeRO stage, the mixed precision and the number of processes."""
    state = accelerator.state
    kind = str(accelerator.distributed_type).split(".")[-1]
    record: dict[str, Any] = {
        "distributed_type": kind,
        "mixed_precision": str(accelerator.mixed_precision),
        "num_processes": int(accelerator.num_processes),
    }
    fsdp = getattr(state, "fsdp_plugin", None)
    if kind == "FSDP" and fsdp is not None:
        record["fsdp_version"] = int(getattr(fsdp, "fsdp_version", 1))
        record["fsdp_reshard_after_forward"] = str(fsdp.reshard_after_forward)
        record["fsdp_state_dict_type"] = str(fsdp.state_dict_type).split(".")[-1]
    deepspeed = getattr(state, "deepspeed_plugin", None)
    if kind == "DEEPSPEED" and deepspeed is not None:
        record["zero_stage"] = int(deepspeed.zero_stage)
    return record


def requested_engine() -> str | None:
    """FSDP or DEEPSPEED when `accelerate launch` was given a config asking for it, else None."""
    for wanted, variable in ENGINE_REQUESTS:
        if os.environ.get(variable, "false").lower() == "true":
            return wanted
    return None


def check_launch() -> None:
    """Before any heavy work: one line when the launch asks for FSDP or DeepSpeed and this
    machine cannot give it (no CUDA GPU, or DeepSpeed not installed); `check_engine` checks
    what accelerate then actually runs."""
    wanted = requested_engine()
    if wanted is None:
        return
    missing = None if torch.cuda.is_available() else "no CUDA GPU is visible"
    if wanted == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        missing = "DeepSpeed is not installed (pip install deepspeed)"
    if missing:
        raise LayerpolicyError(
            f"the launch config asks for {wanted} but {missing}; launch on GPUs or use a config "
            "without it (configs/accelerate/multi_gpu.yaml, or --multi_gpu on CPU)"
        )


def check_engine(accelerator: Any) -> None:
    """One line when the launch asked for FSDP or DeepSpeed (accelerate launch sets
    ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED from its config) but accelerate runs another
    engine, e.g. DDP because no GPU is visible."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    wanted = requested_engine()
    if wanted is not None and kind != wanted:
        raise LayerpolicyError(
            f"the launch config asks for {wanted} but accelerate runs {kind} (FSDP and "
            "DeepSpeed need GPUs, one per process); launch on GPUs or use a config without "
            f"{wanted} (configs/accelerate/multi_gpu.yaml, or --multi_gpu on CPU)"
        )


def save_final_model(trainer: Any, path: str | Path) -> None:
    """The trained model as one Hugging Face directory at `path`, with the tokenizer.

    Every process must call it: TRL's `save_model` gathers the full weights (FSDP2 full state
    dict, ZeRO-3 16-bit gather) with all ranks. A LoRA run saves its adapter that way to
    `path.adapter`, then the main process loads the base weights in float32, merges the adapter
    and writes `path` (the adapter directory is removed).
    """
    path = Path(path)
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        trainer.save_model(str(path))
        accelerator.wait_for_everyone()
        return
    adapter = path.with_name(path.name + ADAPTER_SUFFIX)
    trainer.save_model(str(adapter))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        merge_adapter(adapter, path)
        shutil.rmtree(adapter)
    accelerator.wait_for_everyone()


def merge_adapter(adapter: str | Path, path: str | Path) -> None:
    """Merge the LoRA adapter directory `adapter` into its base model (the directory its
    adapter_config.json names, loaded in float32) and save the merged model and the
    adapter's tokenizer to `path`."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32)
    peft_model.merge_and_unload().save_pretrained(str(path))
    if any(Path(adapter).glob("tokenizer*")):
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(path))
