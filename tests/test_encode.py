"""Tokenisation with score masks: chat templates, given response ids, truncation, thinking."""

from __future__ import annotations

import hashlib
import json

import pytest

from layerpolicy.errors import LayerpolicyError
from layerpolicy.models.tiny import build_tiny_tokenizer
from layerpolicy.prompts import (
    PromptItem,
    PromptSet,
    builtin_prompts,
    encode_generation_prompt,
    encode_prompt,
    encode_with_response_ids,
    has_thinking_switch,
    load_prompts,
    prompts_sha256,
    thinking_mode,
    with_response,
    with_response_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_hash_ignores_unset_response_ids_and_counts_set_ones() -> None:
    item = builtin_prompts(1)[0]
    fields = {"id": item.id, "messages": list(item.messages), "text": None, "response": None}
    payload = json.dumps([{**fields, "answer": item.answer}], sort_keys=True, separators=(",", ":"))
    assert prompts_sha256([item]) == hashlib.sha256(payload.encode()).hexdigest()
    sampled = with_response_ids(item, [5, 6])
    assert prompts_sha256([sampled]) != prompts_sha256([item])
    assert with_response(sampled, "x").response_ids is None
    assert isinstance(load_prompts(limit=1), PromptSet)


def test_response_ids_are_scored_verbatim(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    encoded = encode_prompt(with_response_ids(item, [7, 8, 9]), tokenizer)
    prompt = encode_generation_prompt(item, tokenizer)
    assert encoded.input_ids == (*prompt, 7, 8, 9)
    assert encoded == encode_with_response_ids(item, tokenizer, [7, 8, 9])


# ----------------------------------------------------------------------------- encoding


class _ByteTokenizer:
    """Bytes as ids, BOS = 1000, a trivial template: records how it was called."""

    bos = 1000

    def __init__(self, chat_template: str | None = "t") -> None:
        self.chat_template = chat_template

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        ids = list(text.encode("utf-8"))
        return {"input_ids": [self.bos, *ids] if add_special_tokens else ids}

    def apply_chat_template(
        self, messages, tokenize: bool, add_generation_prompt: bool, **variables
    ) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_plain_text_keeps_bos_and_scores_every_position() -> None:
    tokenizer = _ByteTokenizer(chat_template=None)
    encoded = encode_prompt(PromptItem("p", None, "ab"), tokenizer)
    assert encoded.input_ids == (1000, ord("a"), ord("b"))
    assert encoded.score_mask == (True, True, True)
    assert encoded.response_start is None and not encoded.truncated


def test_template_wraps_text_and_skips_special_tokens() -> None:
    tokenizer = _ByteTokenizer()
    from_text = encode_generation_prompt(PromptItem("p", None, "hi"), tokenizer)
    from_messages = encode_generation_prompt(
        PromptItem("p", ({"role": "user", "content": "hi"},), None), tokenizer
    )
    assert from_text == from_messages == tuple(b"<user>hi<assistant>")
    untemplated = encode_generation_prompt(
        PromptItem("p", None, "hi"), tokenizer, chat_template=False
    )
    assert untemplated == (1000, *b"hi")


def test_messages_without_template_join_contents() -> None:
    item = PromptItem(
        "p", ({"role": "system", "content": "S"}, {"role": "user", "content": "U"}), None
    )
    ids = encode_generation_prompt(item, _ByteTokenizer(), chat_template=False)
    assert ids == (1000, *b"S\n\nU")


def test_response_mask_scores_positions_predicting_response_tokens(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    prompt_ids = encode_generation_prompt(item, tokenizer)
    response = "12 + 7 = 19. The answer is \\boxed{19}."
    response_ids = tuple(tokenizer(response, add_special_tokens=False)["input_ids"])
    encoded = encode_prompt(with_response(item, response), tokenizer)
    start = len(prompt_ids)
    assert encoded.response_start == start
    assert encoded.input_ids == prompt_ids + response_ids
    scored = [t for t, keep in enumerate(encoded.score_mask) if keep]
    assert scored == list(range(start - 1, len(encoded.input_ids) - 1))
    assert tuple(encoded.input_ids[t + 1] for t in scored) == response_ids
    assert len(encoded.score_mask) == len(encoded.input_ids)


def test_chat_template_matches_tokenizer_rendering(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    rendered = tokenizer.apply_chat_template(
        list(item.messages), tokenize=False, add_generation_prompt=True
    )
    expected = tuple(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    encoded = encode_prompt(item, tokenizer)
    assert encoded.input_ids == expected
    assert all(encoded.score_mask)


def test_response_ids_are_used_verbatim() -> None:
    tokenizer = _ByteTokenizer()
    item = PromptItem("p", None, "q")
    encoded = encode_with_response_ids(item, tokenizer, [7, 8, 9])
    prompt = tuple(b"<user>q<assistant>")
    assert encoded.input_ids == (*prompt, 7, 8, 9)
    assert encoded.response_start == len(prompt)
    expected_mask = [False] * (len(prompt) - 1) + [True, True, True, False]
    assert list(encoded.score_mask) == expected_mask


def test_truncation() -> None:
    tokenizer = _ByteTokenizer()
    item = PromptItem("p", None, "q")  # prompt is 18 ids
    full = encode_with_response_ids(item, tokenizer, [7, 8, 9, 10])
    cut = encode_with_response_ids(item, tokenizer, [7, 8, 9, 10], max_tokens=20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:20]
    assert [t for t, keep in enumerate(cut.score_mask) if keep] == [17, 18]
    into_prompt = encode_with_response_ids(item, tokenizer, [7, 8], max_tokens=10)
    assert into_prompt.truncated and not any(into_prompt.score_mask)
    plain = encode_prompt(item, tokenizer, max_tokens=5)
    assert plain.input_ids == full.input_ids[:5] and plain.truncated and all(plain.score_mask)
    assert not encode_prompt(item, tokenizer, max_tokens=100).truncated


# ----------------------------------------------------------------------------- thinking mode

QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture
def thinking_tokenizer():
    """The tiny tokenizer under a Qwen3-style template: thinking unless enable_thinking=False."""
    tok = build_tiny_tokenizer()
    tok.chat_template = QWEN3_STYLE
    return tok


def _rendered_ids(tok, item, **variables) -> tuple[int, ...]:
    text = tok.apply_chat_template(
        list(item.messages), tokenize=False, add_generation_prompt=True, **variables
    )
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def test_thinking_templates_default_to_no_thinking(thinking_tokenizer) -> None:
    tok, item = thinking_tokenizer, builtin_prompts(1)[0]
    assert has_thinking_switch(tok)
    no_thinking = _rendered_ids(tok, item, enable_thinking=False)
    thinking = _rendered_ids(tok, item, enable_thinking=True)
    assert no_thinking != thinking
    assert encode_generation_prompt(item, tok) == no_thinking
    assert encode_generation_prompt(item, tok, thinking=False) == no_thinking
    assert encode_generation_prompt(item, tok, thinking=True) == thinking
    assert (thinking_mode(tok), thinking_mode(tok, True)) == (False, True)
    encoded = encode_with_response_ids(item, tok, [5, 6])
    assert encoded.input_ids[: encoded.response_start] == no_thinking


def test_templates_without_a_switch_have_no_thinking_mode(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    assert not has_thinking_switch(tokenizer)
    assert thinking_mode(tokenizer) is None and thinking_mode(tokenizer, False) is None
    assert encode_generation_prompt(item, tokenizer, thinking=False) == encode_generation_prompt(
        item, tokenizer
    )
    with pytest.raises(LayerpolicyError, match="drop --thinking"):
        encode_generation_prompt(item, tokenizer, thinking=True)
    assert not has_thinking_switch(_ByteTokenizer())


def test_thinking_needs_the_chat_template(thinking_tokenizer) -> None:
    assert thinking_mode(thinking_tokenizer, chat_template=False) is None
    with pytest.raises(LayerpolicyError, match="drop --thinking"):
        thinking_mode(thinking_tokenizer, True, chat_template=False)
