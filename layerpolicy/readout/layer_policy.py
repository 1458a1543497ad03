"""The internal layer policy pi^k of a plain Hugging Face causal LM, with gradients, for training.

pi^k = softmax(H^k W_U / T): H^k is the raw residual after block k (1-based, no norm), W_U the
model's own unembedding, T the rollout temperature (1 in the paper). Two entry points:

- `layer_readout(model, k)`: within it the model's own full forward (through any DDP / FSDP /
  DeepSpeed wrapper, every module in its usual order) feeds H^k to the LM head in place of the
  final norm's output, so the logits are pi^k's. The blocks above k and the final norm run but
  are outside the loss's graph, so autograd gives them no gradient.
- `layer_token_stats(...)`: per response token, from one forward without gradients, the
  entropies of pi_theta and pi^k and KL(pi_theta || pi^k), read through `Unembedding` in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from ..errors import LayerpolicyError
from ..metrics import readout_metrics, reference_policy
from .unembed import Unembedding, decoder_of, find_final_norm

STATS_CHUNK_BYTES = 128 * 2**20  # one float32 [rows, vocab] logits chunk per readout


def base_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside a PEFT model (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def n_blocks(model: torch.nn.Module) -> int:
    """Decoder blocks L of a causal LM."""
    return len(_decoder(base_causal_lm(model)).layers)


def check_layer(layer: int, n_layers: int, name: str) -> int:
    """`layer` if it is a trainable internal layer (1..L-1), else a one-line error."""
    if not 1 <= layer < n_layers:
        raise LayerpolicyError(
            f"--layer must lie in 1..{n_layers - 1} for {name} ({n_layers} layers; "
            f"layer {n_layers} is pi_theta without its final norm), got {layer}"
        )
    return layer


def check_layer_readout(model: torch.nn.Module, layer: int) -> None:
    """Raise one line unless pi^layer can be read: 1 <= layer < L and no logit scaling that the
    model's LM head applies on top of x W_U (soft-cap, logit scale)."""
    hf_model = base_causal_lm(model)
    check_layer(layer, n_blocks(hf_model), type(hf_model).__name__)
    config = hf_model.config.get_text_config()
    scaled = [
        name
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
        if getattr(config, name, None) not in (None, 1, 1.0)
    ]
    if scaled:
        raise LayerpolicyError(
            f"{type(hf_model).__name__} scales its logits ({', '.join(scaled)}), so its LM head "
            "is not the raw readout H^k W_U; train it with --inter-steps 0 (plain GRPO)"
        )


@contextmanager
def layer_readout(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """Make the model's logits H^layer W_U (+ bias): the full forward, H^layer in place of the
    final norm's output (hooks, removed on exit).

    Every module runs, in the same order and with the same sharding as outside (DDP, FSDP2 and
    ZeRO-3 see the same module tree in both phases). The block `layer` (1-based) hands its output
    H^layer [B, T, d] to the final norm's output, so the LM head (and any logits_to_keep slice)
    reads the raw residual after block `layer`; the blocks above and the final norm are outside
    the loss's graph and get no gradient (their grads stay None).
    """
    hf_model = base_causal_lm(model)
    block = _decoder(hf_model).layers[layer - 1]
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: Any, _args: Any, output: Any) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output

    def substitute(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        return captured.pop("h")

    hooks = [
        block.register_forward_hook(capture),
        find_final_norm(hf_model).register_forward_hook(substitute),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        captured.clear()


@torch.no_grad()
def layer_token_stats(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layer: int,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Entropies of pi_theta and pi^layer and KL(pi_theta || pi^layer) per completion token.

    input_ids, attention_mask [B, P + C] (prompt left-padded, completion right-padded);
    logits_to_keep = C. Returns [B, C] float32 tensors (nats) for the next-token distributions
    at the completion positions: entropy_final, entropy_layer, kl_layer_final. Both policies use
    the rollout temperature, as the trainer's ratios do. Under DeepSpeed ZeRO-3 the LM head
    becomes an external parameter of the causal LM (`_head_external_under_zero3`).
    """
    _head_external_under_zero3(model)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,
    )
    window = slice(-logits_to_keep - 1, -1)
    h_layer = outputs.hidden_states[layer][:, window]
    h_final = outputs.hidden_states[-1][:, window]  # the decoder's normed output
    shape = h_layer.shape[:2]
    with _full_head(model):
        unembed = Unembedding(base_causal_lm(model))
        rows = max(16, STATS_CHUNK_BYTES // (4 * unembed.vocab_size))
        names = ("entropy_final", "entropy_layer", "kl_layer_final")
        columns: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        flat_layer, flat_final = h_layer.flatten(0, 1), h_final.flatten(0, 1)
        for start in range(0, flat_layer.shape[0], rows):
            part = slice(start, start + rows)
            final = unembed.from_normed(flat_final[part]) / temperature
            internal = unembed.raw(flat_layer[part]) / temperature
            targets = torch.full(final.shape[:1], -1, device=final.device)
            final_stats = readout_metrics(final, targets, None)
            layer_stats = readout_metrics(internal, targets, reference_policy(final))
            columns["entropy_final"].append(final_stats["entropy"])
            columns["entropy_layer"].append(layer_stats["entropy"])
            columns["kl_layer_final"].append(layer_stats["kl_to_final"])
    return {name: torch.cat(parts).view(shape) for name, parts in columns.items()}


def _decoder(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (the module holding the block list `layers` and the final norm)."""
    decoder = decoder_of(hf_model)
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise LayerpolicyError(
            f"{type(hf_model).__name__} keeps no decoder block list `layers`; the internal "
            "layer policy supports Llama-style decoders (Llama, Qwen, Mistral, SmolLM, ...)"
        )
    return decoder


def _head_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LM head's weight and bias (if any)."""
    head = base_causal_lm(model).get_output_embeddings()
    return [p for p in (head.weight, getattr(head, "bias", None)) if p is not None]


def _head_external_under_zero3(model: torch.nn.Module) -> None:
    """Under DeepSpeed ZeRO-3, register the LM head's parameters as external parameters of the
    causal LM, so ZeRO gathers them for its every forward and backward (nothing otherwise).

    TRL's fused head reads the head's weight in the causal LM's forward without calling the
    head module; DeepSpeed registers such a parameter itself only if it finds it released
    there. A forward that calls the head module (this one) puts the head in ZeRO-3's module
    trace, whose prefetch then gathers the weight before TRL reads it: it is not registered,
    nothing gathers it for the backward, and the gradient meets the released shard.
    """
    params = _head_params(model)
    if any(hasattr(p, "ds_status") for p in params):
        import deepspeed

        for param in params:
            deepspeed.zero.register_external_parameter(base_causal_lm(model), param)


def _full_head(model: torch.nn.Module) -> Any:
    """A context in which the LM head's weight is whole: gathered under DeepSpeed ZeRO-3,
    unsharded under FSDP2; a null context otherwise."""
    params = _head_params(model)
    if any(hasattr(p, "ds_status") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
    unshard = getattr(model, "unshard", None)
    if callable(unshard) and type(params[0]).__name__ == "DTensor":
        return _unsharded(model)
    return nullcontext()


@contextmanager
def _unsharded(model: Any) -> Iterator[None]:
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
