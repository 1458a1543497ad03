"""`DynamicsCallback`: the internal policies during training, for any transformers/TRL trainer.

At the start of training it samples the probe (or takes a saved one) and scores the untrained
model (step 0); then every `every` optimizer steps it scores the probe again and appends the
rows to OUT/dynamics.parquet (DYNAMICS_COLUMNS). Scoring reads the trainer's own weights: a
bridge over a model of the same architecture is loaded once, and its parameters are then bound
to the trainer's tensors (no second copy is kept, and no copy is made per step; under LoRA the
adapted weights are bound to W + ΔW, made per scoring).

Processes: under DDP (every process holds the whole model) the main process scores and writes,
the others go on to the next step's gradient sync and wait there. Parameters sharded across
processes (FSDP, DeepSpeed ZeRO-3), PEFT models training whole modules and non-LoRA adapters are
not read: the callback warns once and stays off (score the saved checkpoints with `layerpolicy
entropy --responses` instead).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback

from ..config import AnalysisConfig
from ..errors import LayerpolicyError
from ..models import LoadedModel, load_model
from ..prompts import PromptItem
from ..responses import read_responses
from ..runs import write_parquet
from ..sampling import SamplingConfig
from .probe import PROBE_NAME, ROW_COLUMNS, sample_probe, save_probe, score_probe

DYNAMICS_NAME = "dynamics.parquet"
DYNAMICS_COLUMNS = ["step", "phase", "k", *ROW_COLUMNS, "score_s"]
_BRIDGE_PART = "._original_component"


class DynamicsCallback(TrainerCallback):
    """Scores a fixed probe every `every` optimizer steps (and at step 0) into OUT/dynamics.parquet.

    probe: a saved responses table (run directory or file) or prompts to sample it from at the
    start with `sampling` (default 64 new tokens at T = 1, seed 0) from the untrained model,
    saved as OUT/probe.parquet. layer: k of the KL(pi^k || pi^j) and cos(H^k, H^j) rows (None:
    the `layer` of the trainer given to `attach`, as BupoTrainer has). analysis: readout, sites,
    batch size, bootstrap. model_location: what `load_model` loads the scoring bridge from
    (None: the trainer model's `name_or_path`). Use it as `callbacks=[callback]` of any
    transformers Trainer, or `callback.attach(trainer)` (which also reads BuPO's phase).
    """

    def __init__(
        self,
        out: str | Path,
        probe: str | Path | Sequence[PromptItem],
        *,
        every: int = 10,
        layer: int | None = None,
        sampling: SamplingConfig | None = None,
        analysis: AnalysisConfig | None = None,
        model_location: str | None = None,
        thinking: bool | None = None,
    ):
        if every < 1:
            raise LayerpolicyError(f"the monitor's interval must be at least 1 step, got {every}")
        if isinstance(probe, (str, Path)):
            read_responses(probe)  # one line now if it is no responses table
        self.out = Path(out)
        self.probe = probe
        self.every = every
        self.layer = layer
        self.sampling = sampling or SamplingConfig(max_new_tokens=64, seed=0)
        self.analysis = analysis or AnalysisConfig(top_k=0)
        self.model_location = model_location
        self.thinking = thinking
        self._bridge: LoadedModel | None = None
        self._trainer_model: torch.nn.Module | None = None
        self.trainer: Any = None
        self.off = False

    def attach(self, trainer: Any) -> DynamicsCallback:
        """Add this callback to `trainer` and read k and BuPO's phase from it."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @property
    def path(self) -> Path:
        return self.out / DYNAMICS_NAME

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if not state.is_world_process_zero or model is None:
            return
        self._trainer_model = model
        reason = _unreadable(model)
        if reason:
            warnings.warn(f"training dynamics off: {reason}", stacklevel=2)
            self.off = True
            return
        if state.global_step == 0 or not self.path.is_file():
            self.record(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.off or not state.is_world_process_zero or state.global_step % self.every:
            return
        self.record(state.global_step)

    def record(self, step: int) -> pd.DataFrame:
        """Score the probe with the current weights and append the rows of `step`."""
        started = time.perf_counter()
        bridge = self._bound()
        layer = self._layer(bridge.n_layers)
        rows = score_probe(bridge, self._probe_file(bridge), layer, self.analysis)
        rows.insert(0, "k", layer)
        rows.insert(0, "phase", _phase(self.trainer, step))
        rows.insert(0, "step", step)
        rows["score_s"] = time.perf_counter() - started
        earlier = pd.read_parquet(self.path) if self.path.is_file() else None
        if earlier is not None:
            earlier = earlier[earlier["step"] != step]  # a resumed run scores its step again
        table = pd.concat([f for f in (earlier, rows) if f is not None], ignore_index=True)
        write_parquet(table[DYNAMICS_COLUMNS], self.path)
        return rows

    def _layer(self, n_layers: int) -> int:
        layer = self.layer
        if layer is None:
            layer = getattr(self.trainer, "layer", None)
        if layer is None:
            raise LayerpolicyError(
                "the dynamics monitor needs k: pass layer= (the trainer has no `layer`)"
            )
        if not 1 <= layer < n_layers:
            raise LayerpolicyError(
                f"the monitor's layer must lie in 1..{n_layers - 1}, got {layer}"
            )
        return int(layer)

    def _probe_file(self, bridge: LoadedModel) -> Path:
        """The saved probe: given, or sampled now (once) into OUT/probe.parquet."""
        if isinstance(self.probe, (str, Path)):
            return Path(self.probe)
        target = self.out / PROBE_NAME
        if not target.is_file():
            frame = sample_probe(bridge, list(self.probe), self.sampling, thinking=self.thinking)
            save_probe(frame, target)
        return target

    def _bound(self) -> LoadedModel:
        """The scoring bridge, its parameters bound to the trainer model's current tensors."""
        model = _plain_model(self._trainer_model)
        if self._bridge is None:
            location = self.model_location or model.name_or_path
            dtype = next(model.parameters()).dtype
            device = str(next(model.parameters()).device)
            self._bridge = load_model(location, device=device, dtype=dtype, progress=False)
        bind_parameters(self._bridge.hf_model, model)
        return self._bridge


def bind_parameters(bridged: torch.nn.Module, source: torch.nn.Module) -> None:
    """Point every parameter (and every buffer `source` also has) of `bridged`, a model a
    TransformerBridge wraps, at the tensor of the same name in `source` (a PEFT model: at its
    base weights with the active LoRA updates added, `merged_tensors`); one line if a
    parameter has no counterpart."""
    parameters = merged_tensors(source)
    buffers = dict(source.named_buffers())
    if hasattr(source, "peft_config"):
        buffers = {_base_name(n): b for n, b in source.get_base_model().named_buffers()}
    for name, tensor in bridged.named_parameters():
        plain = name.replace(_BRIDGE_PART, "")
        match = parameters.get(plain)
        if match is None or match.shape != tensor.shape:
            raise LayerpolicyError(
                f"the trained model has no parameter {plain} of shape {tuple(tensor.shape)}; "
                "pass model_location= naming the trained model's architecture"
            )
        tensor.data = match
    for name, tensor in bridged.named_buffers():
        match = buffers.get(name.replace(_BRIDGE_PART, ""))
        if match is not None and match.shape == tensor.shape:  # the bridge's own ones stay
            tensor.data = match.data


def merged_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights `model` computes with, by the plain model's parameter names: its parameters'
    tensors as they are; for a PEFT model, each LoRA-adapted weight as a new tensor W + ΔW
    (PEFT's own `get_delta_weight` of every active adapter), the trainer's tensors untouched."""
    if not hasattr(model, "peft_config"):
        return {name: p.data for name, p in model.named_parameters()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                merged = weight.detach().clone()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A or adapter in module.lora_embedding_A:
                        merged += module.get_delta_weight(adapter).to(merged.dtype)
                tensors[f"{name}.weight"] = merged
        for name, parameter in base.named_parameters():
            if "lora_" not in name:
                tensors.setdefault(_base_name(name), parameter.data)
    return tensors


def _base_name(name: str) -> str:
    """A PEFT base model's parameter name as the plain model has it."""
    return name.replace(".base_layer", "")


def _plain_model(model: Any) -> torch.nn.Module:
    """The model inside DDP / accelerate wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _unreadable(model: Any) -> str | None:
    """Why the trainer's weights cannot be read whole on this process (None: they can)."""
    plain = _plain_model(model)
    if hasattr(plain, "peft_config"):
        if any("modules_to_save" in name for name, _ in plain.named_parameters()):
            return "the PEFT model trains whole modules (modules_to_save); score its checkpoints"
        if any(config.peft_type != "LORA" for config in plain.peft_config.values()):
            return "the PEFT adapters are not LoRA; score the merged checkpoints instead"
    from torch.distributed.tensor import DTensor

    for parameter in plain.parameters():
        sharded = ("ds_id", "_is_flat_param")  # DeepSpeed ZeRO-3, FSDP1 flat parameters
        if isinstance(parameter, DTensor) or any(hasattr(parameter, a) for a in sharded):
            return "the parameters are sharded across processes (FSDP or ZeRO-3)"
    return None


def _phase(trainer: Any, step: int) -> str:
    """BuPO's phase of the rollouts before `step` ("inter" or "full"); "" for other trainers."""
    if trainer is None or not hasattr(trainer, "phase_of"):
        return ""
    return str(trainer.buffer_phase) if step else trainer.phase_of(0)
