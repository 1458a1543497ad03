"""`BupoTrainer`: TRL's GRPOTrainer whose first s_inter rollouts train the internal policy pi^k.

The phase is chosen when a rollout buffer is generated and holds for the whole buffer: its old
log-probs (when TRL computes them) and every update on it (`steps_per_generation` mini-batches x
`num_iterations` passes, with any gradient accumulation) read the same policy. Phase "inter":
log-probs of pi^k = softmax(H^k W_U / T), from the model's own full forward with H^k fed to the
LM head (`layerpolicy.readout.layer_policy.layer_readout`): every module runs as in phase 2 (the
same module tree and sharding under DDP, FSDP2 and ZeRO-3), and blocks above k and the final norm
get no gradient; TRL's vLLM importance-sampling correction is off (its ratio would compare pi^k with
pi_theta's sampling log-probs). Phase "full": TRL's GRPO on pi_theta, unchanged.

TRL internals relied on (docs/training.md): `_generate` samples a rollout and
`_generate_and_score_completions` scores it, once per
rollout buffer and calls `_get_per_token_logps_and_entropies` for old log-probs; `_compute_loss`
calls it for the new ones; `vllm_importance_sampling_correction`, `_metrics` and
`_save_checkpoint` / `_load_optimizer_and_scheduler(checkpoint)` as in trl 1.x; transformers'
`create_optimizer` builds a torch optimizer whose param groups accelerate and DeepSpeed's ZeRO-3
optimizer hand back (the same dicts) from the optimizer they wrap it in.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from ..errors import LayerpolicyError
from ..readout.layer_policy import (
    base_causal_lm,
    check_layer_readout,
    layer_readout,
    layer_token_stats,
)
from ..readout.unembed import decoder_of, find_final_norm
from ..sampling import checkpoint_defaults_off, pure_generation_config
from .layer import check_beta

STATE_FILE = "bupo_state.json"
ABOVE_K = "bupo_above_k"  # key of a param group above k: its configured weight decay


class BupoTrainer(GRPOTrainer):
    """GRPOTrainer with BuPO's internal-policy phase for the first `inter_rollouts` rollouts.

    layer: k (1-based, 1 <= k < L). layer_stats: log H(pi_theta), H(pi^k) and
    KL(pi_theta || pi^k) of every rollout (one micro-batch forward without gradients each).
    """

    def __init__(
        self,
        *args: Any,
        layer: int,
        inter_rollouts: int,
        layer_stats: bool = True,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        check_beta(self.beta, inter_rollouts)
        if inter_rollouts > 0 and self.off_policy_mask_threshold is not None:
            raise LayerpolicyError(
                "off_policy_mask_threshold compares the ratio's policy with pi_theta's sampling "
                "log-probs, which phase 1 does not use; drop it or use --inter-steps 0"
            )
        if inter_rollouts > 0:
            check_layer_readout(self.model, layer)
        self.layer = layer
        self.inter_rollouts = inter_rollouts
        self.layer_stats = layer_stats
        self.rollouts = 0  # rollout buffers generated (in training) so far
        self.buffer_phase = self.phase_of(0)
        self._importance_sampling = bool(self.vllm_importance_sampling_correction)
        pad = self._tokenizer.pad_token_id
        self._pure_generation = pure_generation_config(
            self.max_completion_length, self.eos_token_ids, pad
        )

    def phase_of(self, rollout: int) -> str:
        """Phase of the rollout with 0-based index `rollout`: "inter" for 0..s_inter-1."""
        return "inter" if rollout < self.inter_rollouts else "full"

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        if training:
            self._enter_phase(self.phase_of(self.rollouts))
        output = super()._generate_and_score_completions(inputs)
        if training:
            self.rollouts += 1
            metrics = self._metrics["train"]
            metrics["bupo/rollout"].append(float(self.rollouts))
            metrics["bupo/inter"].append(float(self.buffer_phase == "inter"))
            if self.layer_stats:
                for name, value in self._layer_stats(output).items():
                    metrics[f"bupo/{name}"].append(value)
        return output

    def _enter_phase(self, phase: str) -> None:
        """Make `phase` the buffer's phase: TRL's vLLM importance-sampling correction on only in
        phase 2; the param groups above k decay only in phase 2 (ZeRO-3 steps flat partitions,
        so it would decay them in phase 1 too, though they get no gradient)."""
        self.buffer_phase = phase
        inter = phase == "inter"
        self.vllm_importance_sampling_correction = self._importance_sampling and not inter
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        for group in groups:
            if ABOVE_K in group:
                group["weight_decay"] = 0.0 if inter else group[ABOVE_K]

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """transformers' optimizer, with BuPO's phase 1 on each decayed param group split in
        two: its parameters below k, and those above k in a group of their own (`ABOVE_K`)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.inter_rollouts > 0 and isinstance(optimizer, torch.optim.Optimizer):
            unwrapped = self.accelerator.unwrap_model(self.model if model is None else model)
            split_above_k(optimizer, above_k_params(unwrapped, self.layer))
        return optimizer

    def _generate(self, prompts: list) -> tuple:
        """TRL's sampling with nothing of the checkpoint's generation config but its stop ids:
        pi_theta at the rollout temperature, no repetition penalty or top-k of its own."""
        model = base_causal_lm(self.accelerator.unwrap_model(self.model))
        with checkpoint_defaults_off(model, self._pure_generation):
            return super()._generate(prompts)

    def _get_per_token_logps_and_entropies(
        self, model: torch.nn.Module, input_ids: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.buffer_phase != "inter" or model is self.ref_model:
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
        with layer_readout(self.accelerator.unwrap_model(model), self.layer):
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

    @torch.no_grad()
    def _layer_stats(self, output: dict[str, Any]) -> dict[str, float]:
        """Token means of H(pi_theta), H(pi^k) and KL(pi_theta || pi^k), nats, under the
        rollout's (old) weights, over every m-th response of the rollout on every process
        (m = steps_per_generation), so they cost one micro-batch's forward per rollout."""
        every = slice(None, None, self.args.steps_per_generation)
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)[every]
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)[every]
        mask = output["completion_mask"][every].float()
        stats = layer_token_stats(
            self.model, ids, attention, self.layer, output["completion_ids"].shape[1],
            temperature=self.temperature,
        )  # fmt: skip
        names = ("entropy_final", "entropy_layer", "kl_layer_final")
        sums = [(stats[name] * mask).sum() for name in names]
        totals = self.accelerator.reduce(torch.stack([*sums, mask.sum()]), reduction="sum")
        count = float(totals[-1].clamp(min=1.0))
        logged = ("entropy_final", "entropy_layer_k", "kl_layer_k_final")
        return {name: float(totals[i]) / count for i, name in enumerate(logged)}

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
        generate_every = self.args.steps_per_generation * self.num_iterations
        finished = self.rollouts - (1 if self._step % generate_every else 0)
        state = {"rollouts": finished, "layer": self.layer, "inter_rollouts": self.inter_rollouts}
        with open(path, "w") as handle:
            json.dump(state, handle)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise LayerpolicyError(f"{checkpoint} has no {STATE_FILE}; it is not a BuPO checkpoint")
        with open(path) as handle:
            state = json.load(handle)
        if state["layer"] != self.layer or state["inter_rollouts"] != self.inter_rollouts:
            raise LayerpolicyError(
                f"{checkpoint} was trained with layer {state['layer']} and "
                f"{state['inter_rollouts']} inter steps; resume with the same settings"
            )
        self.rollouts = int(state["rollouts"])


def above_k_params(model: torch.nn.Module, layer: int) -> set[int]:
    """ids of the parameters that phase 1 gives no gradient: the blocks layer..L-1 (0-based)
    and the final norm (the embedding and the LM head do get one)."""
    hf_model = base_causal_lm(model)
    modules = [*decoder_of(hf_model).layers[layer:], find_final_norm(hf_model)]
    return {id(param) for module in modules for param in module.parameters()}


def split_above_k(optimizer: torch.optim.Optimizer, above: set[int]) -> None:
    """Split every param group with weight decay that holds parameters of `above` (ids) in
    two, in place: the others, then those of `above`, marked with `ABOVE_K` (the decay)."""
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        upper = [param for param in group["params"] if id(param) in above]
        if not upper or not group.get("weight_decay"):
            optimizer.add_param_group(group)
            continue
        lower = [param for param in group["params"] if id(param) not in above]
        if lower:
            optimizer.add_param_group({**group, "params": lower})
        optimizer.add_param_group({**group, "params": upper, ABOVE_K: group["weight_decay"]})
