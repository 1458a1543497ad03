"""Prompt sources: resolve a source (named set, file, hub dataset, PromptSet) and load it.

Named sets (`math500`, `deepmath`) are hub datasets; when the environment variable
LAYERPOLICY_DATA names a directory that holds the set's parquet file, that local copy is read
instead (no network). The PromptSet records the name and what it resolved to.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import OfflineError, PromptSourceError
from .builtin import BUILTIN, BUILTIN_DEFAULT_SIZE, builtin_prompts
from .files import Columns, file_items, reject_columns
from .items import SYSTEM_INSTRUCTION, PromptItem, PromptSet, check_limit, prompt_set
from .records import Record, records_to_items

HF_PREFIX = "hf:"
DATA_ENV = "LAYERPOLICY_DATA"


@dataclass(frozen=True)
class NamedSet:
    """A prompt set known by name: its hub dataset and the local file names that stand for it.

    Hub rows give `question` and `answer`; the question is asked under SYSTEM_INSTRUCTION, as in
    the local files (chat messages: that instruction, then the problem). A local file may hold a
    subset (deepmath-5k.parquet: 5000 of DeepMath-103K's problems), so the two copies can give
    different prompts; the PromptSet's `resolved` says which one was read.
    """

    name: str
    hub: str
    split: str
    files: tuple[str, ...]
    question: str
    answer: str


NAMED_SETS = {
    "math500": NamedSet(
        "math500", "HuggingFaceH4/MATH-500", "test", ("math500.parquet",), "problem", "answer"
    ),
    "deepmath": NamedSet(
        "deepmath",
        "zwhe99/DeepMath-103K",
        "train",
        ("deepmath-5k.parquet", "deepmath.parquet"),
        "question",
        "final_answer",
    ),
}


def set_names() -> tuple[str, ...]:
    """Every name `load_prompts` accepts as a source: builtin and the named sets."""
    return (BUILTIN, *sorted(NAMED_SETS))


def load_prompts(
    source: str | Path | PromptSet | None = None,
    *,
    limit: int | None = None,
    column: str | None = None,
    response_column: str | None = None,
    answer_column: str | None = None,
    split: str = "test",
) -> PromptSet:
    """Load prompts from any source, keeping the first `limit` items.

    `source`: None or "builtin", a named set ("math500", "deepmath"), a .txt/.jsonl/.json/.csv/
    .parquet file, "hf:owner/name[:split]", or a PromptSet (returned as `.head(limit)`). Column
    arguments override auto-detection (files and hf: sources).
    """
    check_limit(limit)
    columns: Columns = (column, response_column, answer_column)
    if isinstance(source, PromptSet):
        reject_columns(columns, "an already loaded PromptSet")
        return source.head(limit)
    text = BUILTIN if source is None else str(source)
    if text == BUILTIN:
        reject_columns(columns, BUILTIN)
        items = builtin_prompts(max(BUILTIN_DEFAULT_SIZE, limit or 0))
        return prompt_set(items[:limit], BUILTIN)
    if text.startswith(HF_PREFIX):
        name, hf_split = _parse_hf(text, split)
        records = _hub_records(name, hf_split, limit, hint="or download it to a local file")
        items = records_to_items(records, name.rsplit("/", 1)[-1], *columns)
        return prompt_set(items[:limit], f"{HF_PREFIX}{name}:{hf_split}")
    if _looks_like_name(text):
        reject_columns(columns, f"the named set {text!r}")
        return _named(_named_set(text), limit)
    path = Path(text).expanduser().resolve()
    return prompt_set(file_items(path, columns)[:limit], str(path))


def _looks_like_name(text: str) -> bool:
    """A bare word: no directory part, no extension, and no such file."""
    path = Path(text)
    bare = "/" not in text and os.sep not in text and not path.suffix
    return bare and not path.expanduser().is_file()


def _named_set(name: str) -> NamedSet:
    if name not in NAMED_SETS:
        raise PromptSourceError(
            f"unknown prompt set {name!r}; named sets: {', '.join(set_names())} "
            "(or give a file path or hf:owner/name)"
        )
    return NAMED_SETS[name]


def local_copy(named: NamedSet) -> Path | None:
    """The set's file in the LAYERPOLICY_DATA directory, or None when unset or absent there."""
    root = os.environ.get(DATA_ENV)
    if not root:
        return None
    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise PromptSourceError(
            f"{DATA_ENV}={root} is not a directory; point it at the folder that holds "
            f"{named.files[0]}, or unset it to read {named.name} from the hub"
        )
    return next((directory / f for f in named.files if (directory / f).is_file()), None)


def _named(named: NamedSet, limit: int | None) -> PromptSet:
    path = local_copy(named)
    if path is not None:
        path = path.resolve()
        return prompt_set(file_items(path, (None, None, None))[:limit], named.name, str(path))
    hint = f"or set {DATA_ENV} to a folder that holds {named.files[0]}"
    records = _hub_records(named.hub, named.split, limit, hint=hint)
    items = [
        _under_instruction(item)
        for item in records_to_items(records, named.name, named.question, None, named.answer)
    ]
    return prompt_set(items[:limit], named.name, f"{HF_PREFIX}{named.hub}:{named.split}")


def _under_instruction(item: PromptItem) -> PromptItem:
    """A plain-text problem as chat messages: the system instruction, then the problem."""
    if item.text is None:
        return item
    messages = (
        {"role": "system", "content": SYSTEM_INSTRUCTION},
        {"role": "user", "content": item.text},
    )
    return dataclasses.replace(item, messages=messages, text=None)


def _parse_hf(source: str, split: str) -> tuple[str, str]:
    spec = source[len(HF_PREFIX) :].strip()
    name, _, explicit_split = spec.partition(":")
    if not name:
        raise PromptSourceError(
            f"{source} names no dataset; use hf:owner/name or hf:owner/name:split"
        )
    return name, explicit_split or split


def _hub_records(name: str, split: str, limit: int | None, *, hint: str) -> list[Record]:
    try:
        import datasets
    except ImportError as exc:
        raise PromptSourceError(
            f"hub prompt sources need the `datasets` package; pip install datasets, {hint}"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, split=split)
    except ConnectionError as exc:
        raise OfflineError(f"cannot reach the hub for dataset {name}; connect, {hint}") from exc
    except Exception as exc:  # datasets raises many types: missing dataset, split, config
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PromptSourceError(f"cannot load dataset {name} split {split}: {message}") from exc
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()
