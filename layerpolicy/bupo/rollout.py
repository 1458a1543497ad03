"""Rollouts: which prompts a step uses, G sampled responses per prompt from the full model, rewards.

Sampling runs on the plain Hugging Face view of the model (`plain_view`: the same parameter
tensors without the bridge's wrappers), because the bridged model's KV-cached `generate` is
wrong (TransformerLens 4.3 + transformers 5: tokens after the first repeat one token). Each
group is sampled in one batch (the prompt is shared, so no padding), seeded by (seed, step,
prompt): a resumed run samples exactly what the uninterrupted run did.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LoadedModel
from ..prompts import PromptItem, encode_generation_prompt
from ..sampling import prompt_seed, stop_token_ids
from .reward import RewardFn


@dataclass(frozen=True)
class Rollouts:
    """N = P * G responses (row n belongs to prompt n // G), right-padded with the pad id.

    input_ids [N, T]: prompt + response; targets [N, T-1]: input_ids[:, 1:]; mask [N, T-1]:
    the target at t is a response token. rewards [N]; response_len [N] (tokens, EOS included).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    response_len: torch.Tensor
    group_size: int
    prompt_ids: tuple[str, ...]
    responses: tuple[str, ...]

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)


def step_prompts(
    items: Sequence[PromptItem], step: int, per_step: int, seed: int
) -> list[PromptItem]:
    """The prompts of training step `step` (1-based): consecutive slices of a per-epoch shuffle.

    A pure function of its arguments, so resuming at any step picks the same prompts.
    """
    n = len(items)
    first = (step - 1) * per_step
    chosen = []
    for index in range(first, first + per_step):
        epoch, position = divmod(index, n)
        order = list(range(n))
        random.Random(f"layerpolicy-train-{seed}-{epoch}").shuffle(order)
        chosen.append(items[order[position]])
    return chosen


def sample_group(
    generator: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[tuple[int, ...]]:
    """`group_size` responses to one prompt (token ids, cut after the first stop token)."""
    ids = torch.tensor([list(prompt_ids)] * group_size, device=generator.device)
    stops = stop_token_ids(tokenizer, generator)
    pad = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.no_grad():
        out = generator.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=stops[0] if pad is None else pad,
            use_cache=True,
        )
    responses = []
    for row in out[:, ids.shape[1] :].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        responses.append(tuple(row[:end]))
    return responses


def collect_rollouts(
    model: LoadedModel,
    generator: torch.nn.Module,
    items: Sequence[PromptItem],
    *,
    step: int,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    reward_fn: RewardFn,
) -> Rollouts:
    """Sample and score `group_size` responses for each item; rewards use `item.answer`."""
    tokenizer = model.tokenizer
    sequences: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    texts, rewards = [], []
    for item in items:
        prompt = encode_generation_prompt(item, tokenizer)
        group = sample_group(
            generator,
            tokenizer,
            prompt,
            group_size=group_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=prompt_seed(seed, f"step-{step}:{item.id}"),
        )
        for response in group:
            text = tokenizer.decode(response, skip_special_tokens=True)
            sequences.append((prompt, response))
            texts.append(text)
            rewards.append(float(reward_fn(text, item.answer or "")))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _pack(sequences, rewards, texts, items, group_size, pad_id, model.device)


def _pack(
    sequences: list[tuple[tuple[int, ...], tuple[int, ...]]],
    rewards: list[float],
    texts: list[str],
    items: Sequence[PromptItem],
    group_size: int,
    pad_id: int,
    device: torch.device,
) -> Rollouts:
    """Right-pad prompt + response rows into tensors with the response-target mask."""
    width = max(len(p) + len(r) for p, r in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width - 1), dtype=torch.bool)
    for row, (prompt, response) in enumerate(sequences):
        ids[row, : len(prompt) + len(response)] = torch.tensor((*prompt, *response))
        mask[row, len(prompt) - 1 : len(prompt) - 1 + len(response)] = True
    return Rollouts(
        input_ids=ids.to(device),
        targets=ids[:, 1:].to(device),
        mask=mask.to(device),
        rewards=torch.tensor(rewards, device=device),
        response_len=torch.tensor([len(r) for _, r in sequences], device=device),
        group_size=group_size,
        prompt_ids=tuple(item.id for item in items),
        responses=tuple(texts),
    )
