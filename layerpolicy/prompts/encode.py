"""Tokenise prompts once: chat template, thinking mode, and which positions' policies are scored.

`encode_prompt` turns an item into token ids plus a score mask (docs/method.md, "Which tokens"):
every position for plain prompts, only the positions whose next token is a response token when a
response is given. Templates with a thinking switch (Qwen3's `enable_thinking`) are rendered
without thinking unless `thinking=True` is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LayerpolicyError
from .items import PromptItem

_PROBE = [{"role": "user", "content": "1 + 1"}]
_SWITCH_CACHE: dict[str, bool] = {}


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt; `score_mask[t]`: the policy at t (predicting t+1) is scored.

    `response_start` is the index of the first response token (None without a response);
    `sample` the response's index among its prompt's sampled or saved responses (None: given).
    """

    prompt_id: str
    input_ids: tuple[int, ...]
    score_mask: tuple[bool, ...]
    response_start: int | None
    truncated: bool
    sample: int | None = None


def uses_chat_template(tokenizer: Any, chat_template: bool = True) -> bool:
    """True when prompts will be rendered with the tokenizer's chat template."""
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def has_thinking_switch(tokenizer: Any) -> bool:
    """True when the chat template renders differently with enable_thinking True and False."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return False
    if template not in _SWITCH_CACHE:
        try:
            on, off = (
                _render(tokenizer, _PROBE, {"enable_thinking": flag}) for flag in (True, False)
            )
        except Exception:  # a template that cannot render the probe, or takes no variables
            on = off = ""
        _SWITCH_CACHE[template] = on != off
    return _SWITCH_CACHE[template]


def thinking_mode(
    tokenizer: Any, thinking: bool | None = None, *, chat_template: bool = True
) -> bool | None:
    """The thinking mode prompts are rendered in: True/False, or None where there is no switch.

    `thinking=None` means no thinking where the template has the switch. Asking for thinking
    from a template without the switch (or without a template) is refused.
    """
    if uses_chat_template(tokenizer, chat_template) and has_thinking_switch(tokenizer):
        return bool(thinking)
    if thinking:
        raise LayerpolicyError(
            "thinking mode needs a chat template with an enable_thinking switch (Qwen3-style); "
            "this tokenizer has none, so drop --thinking"
        )
    return None


def encode_generation_prompt(
    item: PromptItem, tokenizer: Any, *, chat_template: bool = True, thinking: bool | None = None
) -> tuple[int, ...]:
    """Token ids of the prompt, ending with the assistant's generation prompt when templated.

    Without a template, messages' contents are joined by blank lines and encoded with the model's
    special tokens (BOS where it uses one); plain text is encoded the same way.
    """
    mode = thinking_mode(tokenizer, thinking, chat_template=chat_template)
    if uses_chat_template(tokenizer, chat_template):
        messages = item.messages or ({"role": "user", "content": item.text},)
        variables = {} if mode is None else {"enable_thinking": mode}
        rendered = _render(tokenizer, [dict(m) for m in messages], variables)
        return _ids(tokenizer, rendered, special=False)
    if item.messages is not None:
        return _ids(tokenizer, "\n\n".join(m["content"] for m in item.messages), special=True)
    return _ids(tokenizer, item.text or "", special=True)


def encode_prompt(
    item: PromptItem,
    tokenizer: Any,
    *,
    chat_template: bool = True,
    thinking: bool | None = None,
    max_tokens: int | None = None,
) -> EncodedPrompt:
    """Encode an item; with a response (ids or text), only positions predicting it count."""
    options = {"chat_template": chat_template, "thinking": thinking, "max_tokens": max_tokens}
    if item.response_ids is not None:
        return encode_with_response_ids(item, tokenizer, item.response_ids, **options)
    if item.response is not None:
        response_ids = _ids(tokenizer, item.response, special=False)
        return encode_with_response_ids(item, tokenizer, response_ids, **options)
    ids = encode_generation_prompt(item, tokenizer, chat_template=chat_template, thinking=thinking)
    kept, truncated = _truncate(ids, max_tokens)
    return EncodedPrompt(item.id, kept, (True,) * len(kept), None, truncated)


def encode_with_response_ids(
    item: PromptItem,
    tokenizer: Any,
    response_ids: Sequence[int],
    *,
    chat_template: bool = True,
    thinking: bool | None = None,
    max_tokens: int | None = None,
) -> EncodedPrompt:
    """Prompt ids (with generation prompt) followed by `response_ids` as given (no re-tokenising).

    Scored positions are t in [response_start - 1, len - 1): those whose next token is a response
    token still present after truncation.
    """
    prompt_ids = encode_generation_prompt(
        item, tokenizer, chat_template=chat_template, thinking=thinking
    )
    return encode_ids(item.id, prompt_ids, response_ids, max_tokens=max_tokens)


def encode_ids(
    prompt_id: str,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    *,
    max_tokens: int | None = None,
    sample: int | None = None,
) -> EncodedPrompt:
    """Already encoded prompt ids and response ids as one scored sequence (response only);
    `sample`: the response's index among its prompt's responses."""
    start = len(prompt_ids)
    ids = (*(int(i) for i in prompt_ids), *(int(i) for i in response_ids))
    kept, truncated = _truncate(ids, max_tokens)
    first_scored = max(start - 1, 0)
    mask = tuple(first_scored <= t < len(kept) - 1 for t in range(len(kept)))
    return EncodedPrompt(prompt_id, kept, mask, start, truncated, sample)


def _render(tokenizer: Any, messages: list[dict[str, str]], variables: dict[str, Any]) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **variables
    )


def _ids(tokenizer: Any, text: str, *, special: bool) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=special)["input_ids"])


def _truncate(ids: tuple[int, ...], max_tokens: int | None) -> tuple[tuple[int, ...], bool]:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    return ids[:max_tokens], True
