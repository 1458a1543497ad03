"""All-at-once reference from the plain Hugging Face model alone: module forward hooks,
`output_hidden_states`, `lm_head`, full logits and torch.distributions."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def plain_model(directory) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def reference_vectors(
    model: torch.nn.Module, ids: torch.Tensor
) -> dict[tuple[str, int], torch.Tensor]:
    """Every site's vectors [T, d] for one sequence, from forward hooks on the plain HF model
    (H^l from each decoder layer's own output, so H^L is before the final norm)."""
    found: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def keep(key):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            found[key] = value[0].detach().clone()

        return hook

    layers = model.model.layers
    for i, layer in enumerate(layers, start=1):
        handles.append(layer.input_layernorm.register_forward_hook(keep(("attn_in", i))))
        handles.append(layer.self_attn.register_forward_hook(keep(("attn", i))))
        handles.append(layer.post_attention_layernorm.register_forward_hook(keep(("mlp_in", i))))
        handles.append(layer.mlp.register_forward_hook(keep(("mlp", i))))
        handles.append(layer.register_forward_hook(keep(("resid", i))))
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    found[("embed", 0)] = out.hidden_states[0][0]
    found[("final_logits", len(layers))] = out.logits[0]
    return found


def reference_logits(model: torch.nn.Module, x: torch.Tensor, readout: str) -> torch.Tensor:
    """A readout's logits [T, V] with the plain model's own lm_head (and final norm)."""
    with torch.no_grad():
        if readout == "logit-lens":
            x = model.model.norm(x)
        return model.lm_head(x)


def reference_metrics(logits: torch.Tensor, final_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropy and KL(pi_theta || readout) via torch.distributions, from full logits [T, V]."""
    readout = torch.distributions.Categorical(logits=logits.double())
    final = torch.distributions.Categorical(logits=final_logits.double())
    return {
        "entropy": readout.entropy(),
        "kl_to_final": torch.distributions.kl_divergence(final, readout),
    }
