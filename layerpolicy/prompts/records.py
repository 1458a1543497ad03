"""Table rows to prompt items: find the prompt, response and answer columns, read chat messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import PromptSourceError
from ..tables.values import is_missing
from .items import Message, PromptItem

PROMPT_COLUMNS = ("prompt", "messages", "question", "problem", "input", "text")
RESPONSE_COLUMNS = ("response", "completion", "output")
ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "final_answer", "ground_truth")

Record = dict[str, Any]


def records_to_items(
    records: Sequence[Record],
    stem: str,
    column: str | None,
    response_column: str | None,
    answer_column: str | None,
) -> list[PromptItem]:
    """One item per record; ids from an `id` column, else `{stem}-{row}`.

    The column arguments override auto-detection (the first present of PROMPT_COLUMNS etc.).
    """
    if not records:
        return []
    available = _available_columns(records)
    prompt_col = _pick_column(column, PROMPT_COLUMNS, available, "prompt", required=True)
    response_col = _pick_column(response_column, RESPONSE_COLUMNS, available, "response")
    answer_col = _pick_column(answer_column, ANSWER_COLUMNS, available, "answer")
    items, seen = [], set()
    for row, record in enumerate(records):
        item_id = _item_id(record, stem, row)
        if item_id in seen:
            raise PromptSourceError(
                f"duplicate id {item_id!r} in {stem}; make the id column unique"
            )
        seen.add(item_id)
        items.append(_record_item(record, item_id, prompt_col, response_col, answer_col))
    return items


def _available_columns(records: Sequence[Record]) -> list[str]:
    """Column names in order of first appearance, nested struct fields as dotted paths."""
    names: dict[str, None] = {}
    for record in records:
        for name in _flat_keys(record):
            names.setdefault(name)
    return list(names)


def _flat_keys(record: Record, prefix: str = "") -> list[str]:
    keys = []
    for key, value in record.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys.extend(_flat_keys(value, f"{prefix}{key}."))
    return keys


def _pick_column(
    given: str | None,
    candidates: Sequence[str],
    available: list[str],
    what: str,
    required: bool = False,
) -> str | None:
    if given is not None:
        if given not in available:
            raise PromptSourceError(
                f"no {what} column {given!r}; available columns: {', '.join(available) or 'none'}"
            )
        return given
    found = next((c for c in candidates if c in available), None)
    if found is None and required:
        raise PromptSourceError(
            f"no prompt column found (looked for {', '.join(candidates)}); pass the column to use, "
            f"available columns: {', '.join(available) or 'none'}"
        )
    return found


def _lookup(record: Record, column: str) -> Any:
    if column in record:
        return record[column]
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _item_id(record: Record, stem: str, row: int) -> str:
    value = record.get("id")
    return f"{stem}-{row}" if _is_missing(value) else str(value)


def _record_item(
    record: Record,
    item_id: str,
    prompt_col: str,
    response_col: str | None,
    answer_col: str | None,
) -> PromptItem:
    value = _lookup(record, prompt_col)
    response = _as_text(_lookup(record, response_col)) if response_col else None
    answer = _as_text(_lookup(record, answer_col)) if answer_col else None
    if _is_missing(value):
        raise PromptSourceError(f"prompt {item_id} has no {prompt_col!r}; fill or remove that row")
    if isinstance(value, str):
        return PromptItem(item_id, None, value, response, answer)
    messages = _as_messages(value, item_id, prompt_col)
    if messages[-1]["role"] == "assistant":
        response = response if response is not None else messages[-1]["content"]
        messages = messages[:-1]
    if not messages:
        raise PromptSourceError(f"prompt {item_id} has only an assistant turn; add the user's turn")
    return PromptItem(item_id, messages, None, response, answer)


def _as_messages(value: Any, item_id: str, column: str) -> tuple[Message, ...]:
    """Chat messages from a list (or a numpy array, as pandas gives them) of {role, content}."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise PromptSourceError(
            f"prompt {item_id}: {column!r} is neither text nor a list of chat messages; "
            "fix that row or pass another column"
        )
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise PromptSourceError(
                f"prompt {item_id}: chat messages need 'role' and text 'content'; fix that row"
            )
        messages.append({"role": str(message.get("role")), "content": message["content"]})
    return tuple(messages)


def _is_missing(value: Any) -> bool:
    """A missing cell (`is_missing`) or blank text."""
    return (not value.strip()) if isinstance(value, str) else is_missing(value)


def _as_text(value: Any) -> str | None:
    """Strings as they are, integral floats without ".0", missing values as None."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
