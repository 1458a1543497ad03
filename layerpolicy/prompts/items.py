"""The prompt data types: one item, a loaded set, and the content hash that identifies a set."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PromptSourceError

SYSTEM_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

Message = dict[str, str]


@dataclass(frozen=True)
class PromptItem:
    """One prompt: chat `messages` (no final assistant answer) or plain `text`, exactly one of them.

    `response` is a given response to score (response-only scoring), `response_ids` the same as
    token ids, used verbatim (e.g. sampled ids); `answer` the ground truth for verifiable rewards.
    """

    id: str
    messages: tuple[Message, ...] | None
    text: str | None
    response: str | None = None
    answer: str | None = None
    response_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError(f"prompt {self.id!r} needs exactly one of messages and text")


@dataclass(frozen=True)
class PromptSet:
    """Loaded prompts.

    `source` names the set as given (a named set, `builtin`, `hf:owner/name:split` or an absolute
    file path); `resolved` is what was read for it (the local file or hub dataset of a named set;
    None when that is `source` itself). `sha256` hashes the items' content.
    """

    items: tuple[PromptItem, ...]
    source: str
    sha256: str
    resolved: str | None = None

    def head(self, n: int | None) -> PromptSet:
        """The first `n` items (all of them for None), with their own hash."""
        if n is None:
            return self
        check_limit(n)
        if n >= len(self.items):
            return self
        items = self.items[:n]
        return dataclasses.replace(self, items=items, sha256=prompts_sha256(items))

    def record(self) -> dict[str, Any]:
        """What run.json records about the prompts: source, what it resolved to, hash, count."""
        return {
            "source": self.source,
            "resolved": self.resolved or self.source,
            "sha256": self.sha256,
            "n_prompts": len(self.items),
        }


def check_limit(limit: int | None) -> None:
    """Refuse a limit below 1 (None means all prompts)."""
    if limit is not None and limit < 1:
        raise PromptSourceError(f"limit must be a positive number of prompts, got {limit}")


def prompt_set(items: Sequence[PromptItem], source: str, resolved: str | None = None) -> PromptSet:
    """A PromptSet of `items`; refuses an empty one."""
    if not items:
        raise PromptSourceError(
            f"prompt source {resolved or source} has no prompts; give a non-empty source"
        )
    return PromptSet(tuple(items), source, prompts_sha256(items), resolved)


def prompts_sha256(items: Iterable[PromptItem]) -> str:
    """A stable hash of the items' content (ids, messages, text, responses, answers).

    `response_ids` counts only where it is set, so sets without them hash as they always have.
    """
    payload = []
    for item in items:
        fields = dataclasses.asdict(item)
        if fields["response_ids"] is None:
            del fields["response_ids"]
        payload.append(fields)
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def with_response(item: PromptItem, response: str) -> PromptItem:
    """The same prompt with `response` as the response to score."""
    return dataclasses.replace(item, response=response, response_ids=None)


def with_response_ids(item: PromptItem, response_ids: Sequence[int]) -> PromptItem:
    """The same prompt with token ids (e.g. sampled ones) as the response, scored verbatim."""
    ids = tuple(int(i) for i in response_ids)
    return dataclasses.replace(item, response=None, response_ids=ids)
