"""Sampling responses from the full model (KV cache), reproducibly per prompt."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .models import LoadedModel


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A seed per (run seed, prompt), so a resumed run samples exactly what it would have."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def stop_token_ids(tokenizer, hf_model: torch.nn.Module) -> list[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(hf_model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def sample_response(
    model: LoadedModel,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[int, ...]:
    """Sample one response (token ids, ending with EOS if the model stopped) from pi_theta.

    Pure sampling from softmax(logits / temperature): no top-k, no top-p. Runs on the plain
    Hugging Face view of the model (the bridge's attention ignores transformers' KV cache).
    """
    ids = torch.tensor([list(prompt_ids)], device=model.device)
    torch.manual_seed(seed)
    pad = model.tokenizer.pad_token_id
    stops = stop_token_ids(model.tokenizer, model.hf_model)
    with torch.inference_mode():
        out = model.plain.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad if pad is not None else stops[0],
            use_cache=True,
        )
    return tuple(int(t) for t in out[0, ids.shape[1] :])
