"""Prompt files: read .txt, .jsonl, .json, .csv and .parquet files into prompt items."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import PromptSourceError
from .items import PromptItem
from .records import Record, records_to_items

SUPPORTED_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")

Columns = tuple[str | None, str | None, str | None]


def reject_columns(columns: Columns, kind: str) -> None:
    """Refuse column options for a source that has no columns."""
    if any(c is not None for c in columns):
        raise PromptSourceError(
            f"column options apply to .jsonl/.json/.csv/.parquet and hf: sources, not to {kind}; "
            "drop them"
        )


def file_items(path: Path, columns: Columns) -> list[PromptItem]:
    """The items of a prompt file; `columns` = (prompt, response, answer) overrides or None."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise PromptSourceError(
            f"unsupported prompt file {path.name}; use one of {', '.join(SUPPORTED_EXTENSIONS)}, "
            "a named set (builtin, math500, ...) or hf:owner/name"
        )
    if not path.is_file():
        raise PromptSourceError(f"prompt file not found: {path}; check the path")
    if suffix == ".parquet":
        return records_to_items(_read_parquet(path), path.stem, *columns)
    content = _read_text(path)
    if suffix == ".txt":
        reject_columns(columns, "a .txt file")
        lines = [line.strip() for line in content.splitlines() if line.strip()]
        return [PromptItem(f"{path.stem}-{row}", None, line) for row, line in enumerate(lines)]
    readers = {".jsonl": _jsonl_records, ".json": _json_records, ".csv": _csv_records}
    return records_to_items(readers[suffix](content, path), path.stem, *columns)


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
