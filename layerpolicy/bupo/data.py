"""What the trainer consumes: the plain model and tokenizer, the prompt dataset, the reward.

The trained model is a plain Hugging Face causal LM (no TransformerLens bridge), so DDP, FSDP,
DeepSpeed and PEFT wrap it as they wrap any model. Prompts go to TRL as chat messages (rendered
with the tokenizer's template, in no-thinking mode where the template has the switch) or, for a
tokenizer without a template, as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..devices import choose_device, choose_dtype
from ..errors import PromptSourceError
from ..models import LoadedModel, load_tokenizer, resolve_spec
from ..models.load import local_directory
from ..prompts import ANSWER_COLUMNS, PromptSet, load_prompts, thinking_mode, uses_chat_template
from ..readout.layer_policy import n_blocks
from .config import TrainConfig
from .reward import RewardFn


@dataclass
class TrainingSetup:
    """The model to train (plain HF), its tokenizer, name, depth L, device and record entry."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    n_layers: int
    device: str
    info: dict[str, Any]
    chat_template_kwargs: dict[str, Any]


def prepare(
    model: str | LoadedModel,
    config: TrainConfig,
    *,
    device: str = "auto",
    dtype: str = "float32",
    offline: bool | None = None,
    progress: bool = True,
) -> TrainingSetup:
    """Load `model` as a plain Hugging Face causal LM in `dtype` (a LoadedModel: its plain view,
    sharing its tensors, so it is trained in place)."""
    from transformers import AutoModelForCausalLM

    if isinstance(model, LoadedModel):
        hf_model, tokenizer = model.plain, model.tokenizer
        name, info = model.info.name, model.info.to_dict()
    else:
        source = resolve_spec(model, offline=offline)
        location = local_directory(source, progress=progress)
        torch_dtype = choose_dtype(dtype, choose_device(device).type == "cuda")
        hf_model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, attn_implementation="sdpa"
        )
        tokenizer = load_tokenizer(location)
        name = source.name
        info = {"spec": model, "name": name, "source_kind": source.kind, "location": location}
        info.update(architecture=type(hf_model).__name__, dtype=str(torch_dtype).split(".")[-1])
    mode = thinking_mode(tokenizer, config.thinking)
    return TrainingSetup(
        model=hf_model,
        tokenizer=tokenizer,
        name=name,
        n_layers=n_blocks(hf_model),
        device=str(choose_device(device)).split(":")[0],
        info={**info, "n_layers": n_blocks(hf_model), "thinking": mode},
        chat_template_kwargs={} if mode is None else {"enable_thinking": mode},
    )


def model_depth(model: str | LoadedModel, *, offline: bool | None = None) -> tuple[int, str]:
    """Decoder blocks L and the model's name, from its config alone (no weights loaded)."""
    if isinstance(model, LoadedModel):
        return model.n_layers, model.info.name
    from transformers import AutoConfig

    source = resolve_spec(model, offline=offline)
    config = AutoConfig.from_pretrained(local_directory(source)).get_text_config()
    return int(config.num_hidden_layers), source.name


def require_answers(prompt_set: PromptSet, needed_by: str) -> None:
    """A one-line error naming the first prompt without a ground-truth answer, if any."""
    missing = [item.id for item in prompt_set.items if not item.answer]
    if missing:
        raise PromptSourceError(
            f"{len(missing)} of {len(prompt_set.items)} prompts in {prompt_set.source} have no "
            f"answer (first: {missing[0]}); {needed_by} needs a ground-truth column "
            f"({', '.join(ANSWER_COLUMNS)})"
        )


def training_prompts(
    prompts: str | Path | PromptSet | None, limit: int | None, per_step: int = 1
) -> PromptSet:
    """Load prompts and check that every one has a ground-truth answer for the reward, and that
    there are at least `per_step` of them (one rollout's distinct prompts)."""
    prompt_set = load_prompts(prompts, limit=limit)
    require_answers(prompt_set, "training")
    if len(prompt_set.items) < per_step:
        raise PromptSourceError(
            f"{len(prompt_set.items)} prompts cannot fill a step of {per_step} distinct prompts; "
            "lower --prompts-per-step or use more prompts"
        )
    return prompt_set


def training_dataset(prompt_set: PromptSet, tokenizer: Any, config: TrainConfig):
    """A `datasets.Dataset` with prompt (chat messages or text), answer and prompt_id."""
    from datasets import Dataset

    templated = uses_chat_template(tokenizer)
    rows = []
    for item in prompt_set.items:
        if templated:
            messages = item.messages or ({"role": "user", "content": item.text},)
            prompt: Any = [dict(m) for m in messages]
        elif item.messages is not None:
            prompt = "\n\n".join(m["content"] for m in item.messages)
        else:
            prompt = item.text
        rows.append({"prompt": prompt, "answer": item.answer or "", "prompt_id": item.id})
    return Dataset.from_list(rows)


def reward_function(reward_fn: RewardFn):
    """`reward_fn(response_text, truth)` as a TRL reward function (one float per completion)."""

    def reward(completions: list, answer: list[str], **_: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [float(reward_fn(text, truth)) for text, truth in zip(texts, answer, strict=True)]

    reward.__name__ = getattr(reward_fn, "__name__", "reward")
    return reward
