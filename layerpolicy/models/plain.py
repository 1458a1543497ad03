"""A plain Hugging Face view of a bridged model: same tensors, no TransformerLens wrappers."""

from __future__ import annotations

import copy

import torch


def plain_view(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A plain Hugging Face model (same class, sdpa attention) sharing `hf_model`'s tensors.

    The bridge wraps the modules of `hf_model` in place (names gain `._original_component`);
    this view has the checkpoint's own names and no wrappers, so `save_pretrained` writes a clean
    state dict and `generate` works with a KV cache. It is built on the meta device and then
    given the very parameter and buffer objects of `hf_model`: nothing is copied, and optimiser
    updates to one are updates to the other. A model split across devices by a device map gets
    the same split, with accelerate's hooks moving activations between the devices.
    """
    from transformers import AutoModelForCausalLM

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in [
        *hf_model.named_parameters(remove_duplicate=False),
        *hf_model.named_buffers(remove_duplicate=False),
    ]:
        tensors.setdefault(name.replace("._original_component", ""), tensor)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(
            copy.deepcopy(hf_model.config), attn_implementation="sdpa"
        )
    for name, _ in [
        *plain.named_parameters(remove_duplicate=False),
        *plain.named_buffers(remove_duplicate=False),
    ]:
        if name not in tensors:
            raise RuntimeError(f"the bridged model has no tensor for {name}; unsupported model")
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner)
        slot = module._parameters if leaf in module._parameters else module._buffers
        slot[leaf] = tensors[name]
    plain.generation_config = copy.deepcopy(hf_model.generation_config)
    placed = getattr(hf_model, "hf_device_map", None)
    if placed and len(set(placed.values())) > 1:  # split by a device map: route activations
        from accelerate import dispatch_model

        # the tensors already sit on their devices, so this only adds accelerate's hooks
        dispatch_model(plain, device_map=placed, skip_keys=plain._skip_keys_device_placement)
    return plain.eval()
