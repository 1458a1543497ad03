"""Prompt sets: load them from files, the hub or the built-in generator, and tokenise them once.

A `PromptItem` is a prompt (chat messages or plain text), optionally with a given response to
score and a ground-truth answer. `encode_prompt` turns one into token ids plus a score mask that
says which positions' policies are scored (METHOD.md section 2, "Which tokens"): every position
for plain prompts, only the positions whose next token is a response token when a response is given.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OfflineError, PromptSourceError

BUILTIN = "builtin"
HF_PREFIX = "hf:"
SUPPORTED_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
PROMPT_COLUMNS = ("prompt", "messages", "question", "problem", "input", "text")
RESPONSE_COLUMNS = ("response", "completion", "output")
ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "final_answer", "ground_truth")
SYSTEM_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
BUILTIN_DEFAULT_SIZE = 64

Message = dict[str, str]
Record = dict[str, Any]


@dataclass(frozen=True)
class PromptItem:
    """One prompt: chat `messages` (no final assistant answer) or plain `text`, exactly one of them.

    `response` is a given response to score (response-only scoring); `answer` the ground truth for
    verifiable rewards.
    """

    id: str
    messages: tuple[Message, ...] | None
    text: str | None
    response: str | None = None
    answer: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError(f"prompt {self.id!r} needs exactly one of messages and text")


@dataclass(frozen=True)
class PromptSet:
    """Loaded prompts; `source` is normalised and `sha256` hashes the items' content."""

    items: tuple[PromptItem, ...]
    source: str
    sha256: str


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt; `score_mask[t]`: the policy at t (predicting t+1) is scored.

    `response_start` is the index of the first response token (None without a response).
    """

    prompt_id: str
    input_ids: tuple[int, ...]
    score_mask: tuple[bool, ...]
    response_start: int | None
    truncated: bool


# ----------------------------------------------------------------------------- built-in prompts


def _add(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return f"What is {a} + {b}?", a + b


def _subtract(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 500), rng.randint(1, 500)
    return f"Compute {a} - {b}.", a - b


def _multiply(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(3, 99), rng.randint(3, 49)
    return f"What is {a} times {b}?", a * b


def _divide(rng: random.Random) -> tuple[str, int]:
    quotient, divisor = rng.randint(2, 60), rng.randint(2, 25)
    return f"What is {quotient * divisor} divided by {divisor}?", quotient


def _expression(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = (rng.randint(2, 20) for _ in range(4))
    return f"Evaluate ({a} + {b}) * {c} - {d}.", (a + b) * c - d


def _equation(rng: random.Random) -> tuple[str, int]:
    x, a, b = rng.randint(-12, 12), rng.randint(2, 9), rng.randint(-30, 30)
    sign = "+" if b >= 0 else "-"
    return f"Solve for x: {a}x {sign} {abs(b)} = {a * x + b}.", x


def _remainder(rng: random.Random) -> tuple[str, int]:
    n, m = rng.randint(50, 999), rng.randint(3, 17)
    return f"What is the remainder when {n} is divided by {m}?", n % m


def _shopping(rng: random.Random) -> tuple[str, int]:
    price, count = rng.randint(2, 15), rng.randint(2, 9)
    paid = (price * count // 10 + 1) * 10
    question = (
        f"A notebook costs {price} dollars. Mia buys {count} notebooks and pays with "
        f"{paid} dollars. How many dollars of change does she get?"
    )
    return question, paid - price * count


def _travel(rng: random.Random) -> tuple[str, int]:
    speed, hours = rng.randint(30, 120), rng.randint(2, 9)
    return f"A train travels at {speed} km per hour for {hours} hours. How many km does it go?", (
        speed * hours
    )


def _apples(rng: random.Random) -> tuple[str, int]:
    start, bags, per_bag = rng.randint(3, 40), rng.randint(2, 6), rng.randint(3, 12)
    given = rng.randint(1, start + bags * per_bag - 1)
    question = (
        f"Sam has {start} apples. He buys {bags} bags with {per_bag} apples each, then gives "
        f"{given} apples to friends. How many apples does Sam have now?"
    )
    return question, start + bags * per_bag - given


def _series(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(5, 60)
    return f"What is the sum of the integers from 1 to {n}?", n * (n + 1) // 2


def _percent(rng: random.Random) -> tuple[str, int]:
    percent, base = rng.choice((10, 20, 25, 50, 75)), rng.randint(1, 40) * 20
    return f"What is {percent}% of {base}?", percent * base // 100


_BUILTIN_KINDS: tuple[Callable[[random.Random], tuple[str, int]], ...] = (
    _add,
    _subtract,
    _multiply,
    _divide,
    _expression,
    _equation,
    _remainder,
    _shopping,
    _travel,
    _apples,
    _series,
    _percent,
)


def builtin_prompts(n: int = BUILTIN_DEFAULT_SIZE, seed: int = 0) -> tuple[PromptItem, ...]:
    """The project's own arithmetic and word problems with exact integer answers.

    Item i depends only on (seed, i), so a larger n extends a smaller one; kinds rotate with i.
    """
    items = []
    for i in range(n):
        rng = random.Random(f"layerpolicy-builtin-{seed}-{i}")
        question, answer = _BUILTIN_KINDS[i % len(_BUILTIN_KINDS)](rng)
        messages = (
            {"role": "system", "content": SYSTEM_INSTRUCTION},
            {"role": "user", "content": question},
        )
        items.append(PromptItem(f"builtin-{i:04d}", messages, None, answer=str(answer)))
    return tuple(items)


# ----------------------------------------------------------------------------- loading


def load_prompts(
    source: str | Path | None = None,
    *,
    limit: int | None = None,
    column: str | None = None,
    response_column: str | None = None,
    answer_column: str | None = None,
    split: str = "test",
) -> PromptSet:
    """Load prompts: None/"builtin", a .txt/.jsonl/.json/.csv/.parquet file, "hf:name[:split]".

    `limit` keeps the first K items. Column arguments override auto-detection (tabular sources).
    """
    if limit is not None and limit < 1:
        raise PromptSourceError(f"limit must be a positive number of prompts, got {limit}")
    columns = (column, response_column, answer_column)
    if source is None or str(source) == BUILTIN:
        _reject_columns(columns, BUILTIN)
        items = builtin_prompts(max(BUILTIN_DEFAULT_SIZE, limit or 0))
        return _prompt_set(items[:limit], BUILTIN)
    text = str(source)
    if text.startswith(HF_PREFIX):
        name, hf_split = _parse_hf(text, split)
        records = _hub_records(name, hf_split, limit)
        items = _records_to_items(records, name.rsplit("/", 1)[-1], *columns)
        return _prompt_set(items[:limit], f"{HF_PREFIX}{name}:{hf_split}", text)
    path = Path(text).expanduser().resolve()
    items = _file_items(path, columns)
    return _prompt_set(items[:limit], str(path), text)


def _prompt_set(items: Sequence[PromptItem], source: str, given: str = BUILTIN) -> PromptSet:
    if not items:
        raise PromptSourceError(f"prompt source {given} has no prompts; give a non-empty source")
    return PromptSet(tuple(items), source, prompts_sha256(items))


def prompts_sha256(items: Iterable[PromptItem]) -> str:
    """A stable hash of the items' content (ids, messages, text, responses, answers)."""
    payload = [dataclasses.asdict(item) for item in items]
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _reject_columns(columns: tuple[str | None, ...], kind: str) -> None:
    if any(c is not None for c in columns):
        raise PromptSourceError(
            f"column options apply to .jsonl/.json/.csv/.parquet and hf: sources, not to {kind}; "
            "drop them"
        )


def _file_items(path: Path, columns: tuple[str | None, ...]) -> list[PromptItem]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise PromptSourceError(
            f"unsupported prompt file {path.name}; use one of {', '.join(SUPPORTED_EXTENSIONS)}, "
            "'builtin' or hf:owner/name"
        )
    if not path.is_file():
        raise PromptSourceError(f"prompt file not found: {path}; check the path")
    if suffix == ".parquet":
        return _records_to_items(_read_parquet(path), path.stem, *columns)
    content = _read_text(path)
    if suffix == ".txt":
        _reject_columns(columns, "a .txt file")
        lines = [line.strip() for line in content.splitlines() if line.strip()]
        return [PromptItem(f"{path.stem}-{row}", None, line) for row, line in enumerate(lines)]
    readers = {".jsonl": _jsonl_records, ".json": _json_records, ".csv": _csv_records}
    return _records_to_items(readers[suffix](content, path), path.stem, *columns)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptSourceError(
            f"cannot read {path}: {exc.strerror}; check its permissions"
        ) from exc
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptSourceError(
            f"{path} is not UTF-8 text (binary file?); give a text file with that extension"
        ) from exc


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise PromptSourceError(
            f"cannot read {path} as parquet ({type(exc).__name__}); give a valid parquet file"
        ) from exc


def _jsonl_records(content: str, path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSourceError(
                f"{path.name} line {number} is not valid JSON ({exc.msg}); fix or remove that line"
            ) from exc
        records.append(_as_record(value, f"{path.name} line {number}"))
    return records


def _json_records(content: str, path: Path) -> list[Record]:
    """A JSON list of objects or strings; falls back to JSON lines (common under a .json name)."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return _jsonl_records(content, path)
    if not isinstance(value, list):
        raise PromptSourceError(f"{path.name} must hold a JSON list of objects or strings")
    return [_as_record(entry, f"{path.name} entry {i}") for i, entry in enumerate(value)]


def _as_record(value: Any, where: str) -> Record:
    if isinstance(value, str):
        return {"text": value}
    if not isinstance(value, dict):
        raise PromptSourceError(f"{where} is not a JSON object or string; fix that entry")
    return value


def _csv_records(content: str, path: Path) -> list[Record]:
    try:
        return list(csv.DictReader(io.StringIO(content, newline="")))
    except csv.Error as exc:
        raise PromptSourceError(f"cannot parse {path.name} as CSV ({exc}); fix the file") from exc


def _parse_hf(source: str, split: str) -> tuple[str, str]:
    spec = source[len(HF_PREFIX) :].strip()
    name, _, explicit_split = spec.partition(":")
    if not name:
        raise PromptSourceError(
            f"{source} names no dataset; use hf:owner/name or hf:owner/name:split"
        )
    return name, explicit_split or split


def _hub_records(name: str, split: str, limit: int | None) -> list[Record]:
    try:
        import datasets
    except ImportError as exc:
        raise PromptSourceError(
            "hf: prompt sources need the `datasets` package; pip install datasets"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, split=split)
    except ConnectionError as exc:
        raise OfflineError(
            f"cannot reach the hub for dataset {name}; connect, or download it to a local file"
        ) from exc
    except Exception as exc:  # datasets raises many types: missing dataset, split, config
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PromptSourceError(f"cannot load dataset {name} split {split}: {message}") from exc
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


# ----------------------------------------------------------------------------- records to items


def _records_to_items(
    records: Sequence[Record],
    stem: str,
    column: str | None,
    response_column: str | None,
    answer_column: str | None,
) -> list[PromptItem]:
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
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and value != value)


def _as_text(value: Any) -> str | None:
    """Strings as they are, integral floats without ".0", missing values as None."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------- tokenisation


def with_response(item: PromptItem, response: str) -> PromptItem:
    """The same prompt with `response` as the response to score."""
    return dataclasses.replace(item, response=response)


def uses_chat_template(tokenizer: Any, chat_template: bool = True) -> bool:
    """True when prompts will be rendered with the tokenizer's chat template."""
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def encode_generation_prompt(
    item: PromptItem, tokenizer: Any, *, chat_template: bool = True
) -> tuple[int, ...]:
    """Token ids of the prompt, ending with the assistant's generation prompt when templated.

    Without a template, messages' contents are joined by blank lines and encoded with the model's
    special tokens (BOS where it uses one); plain text is encoded the same way.
    """
    if uses_chat_template(tokenizer, chat_template):
        messages = item.messages or ({"role": "user", "content": item.text},)
        rendered = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
        return _ids(tokenizer, rendered, special=False)
    if item.messages is not None:
        return _ids(tokenizer, "\n\n".join(m["content"] for m in item.messages), special=True)
    return _ids(tokenizer, item.text or "", special=True)


def encode_prompt(
    item: PromptItem,
    tokenizer: Any,
    *,
    chat_template: bool = True,
    max_tokens: int | None = None,
) -> EncodedPrompt:
    """Encode an item; with `item.response`, only positions predicting response tokens count."""
    if item.response is not None:
        response_ids = _ids(tokenizer, item.response, special=False)
        return encode_with_response_ids(
            item, tokenizer, response_ids, chat_template=chat_template, max_tokens=max_tokens
        )
    ids = encode_generation_prompt(item, tokenizer, chat_template=chat_template)
    kept, truncated = _truncate(ids, max_tokens)
    return EncodedPrompt(item.id, kept, (True,) * len(kept), None, truncated)


def encode_with_response_ids(
    item: PromptItem,
    tokenizer: Any,
    response_ids: Sequence[int],
    *,
    chat_template: bool = True,
    max_tokens: int | None = None,
) -> EncodedPrompt:
    """Prompt ids (with generation prompt) followed by `response_ids` as given (no re-tokenising).

    Scored positions are t in [response_start - 1, len - 1): those whose next token is a response
    token still present after truncation.
    """
    prompt_ids = encode_generation_prompt(item, tokenizer, chat_template=chat_template)
    start = len(prompt_ids)
    kept, truncated = _truncate((*prompt_ids, *(int(i) for i in response_ids)), max_tokens)
    first_scored = max(start - 1, 0)
    mask = tuple(first_scored <= t < len(kept) - 1 for t in range(len(kept)))
    return EncodedPrompt(item.id, kept, mask, start, truncated)


def _ids(tokenizer: Any, text: str, *, special: bool) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=special)["input_ids"])


def _truncate(ids: tuple[int, ...], max_tokens: int | None) -> tuple[tuple[int, ...], bool]:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    return ids[:max_tokens], True
