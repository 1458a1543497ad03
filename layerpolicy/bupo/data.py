"""What the trainer consumes: the plain model and tokenizer, the prompt dataset, the reward.

The trained model is a plain Hugging Face causal LM (no TransformerLens bridge), so DDP, FSDP,
DeepSpeed and PEFT wrap it as they wrap any model; TRL's trainer loads it from the source that
`prepare` resolves (`layerpolicy.models.causal_lm`). Prompts go to TRL as chat messages (rendered
with the tokenizer's template, in no-thinking mode where the template has the switch) or, for a
tokenizer without a template, as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig, PromptConfig
from ..errors import PromptSourceError
from ..models.causal_lm import CausalLMSource, causal_lm_source
from ..prompts import ANSWER_COLUMNS, PromptSet, thinking_mode, uses_chat_template
from .config import TrainConfig
from .reward import RewardFn


@dataclass(frozen=True)
class TrainingModel:
    """What the trainer loads (the source, no weights yet), its tokenizer and thinking mode."""

    source: CausalLMSource
    tokenizer: Any
    thinking: bool | None

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        return {} if self.thinking is None else {"enable_thinking": self.thinking}

    def info(self) -> dict[str, Any]:
        """The record's model entry."""
        return {**self.source.info(), "thinking": self.thinking}


def prepare(model: ModelConfig, config: TrainConfig, *, progress: bool = True) -> TrainingModel:
    """The model to train as a plain Hugging Face causal LM: resolved and its tokenizer loaded;
    the weights are loaded by the trainer."""
    source = causal_lm_source(model, progress=progress)
    tokenizer = source.tokenizer()
    return TrainingModel(source, tokenizer, thinking_mode(tokenizer, config.thinking))


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
    prompts: str | Path | PromptSet | PromptConfig | None,
    limit: int | None = None,
    per_step: int = 1,
) -> PromptSet:
    """Load prompts and check that every one has a ground-truth answer for the reward, and that
    there are at least `per_step` of them (one rollout's distinct prompts)."""
    prompt_set = PromptConfig.of(prompts, limit).load()
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
