"""Run directories for analysis and training: atomic writes, an OS lock, the record, resume.

Layout of an analysis run directory:
    run.json               settings, resolved model, prompt source + hash, versions, timings, status
    parts/                 part-NNNNN.parquet, one per finished batch (what a resumed run keeps);
                           shard-R-of-W-part-NNNNN.parquet and shard-R-of-W.json under a
                           data-parallel launch (layerpolicy.parallel)
    tokens.parquet         all parts merged (docs/tables.md), written when every prompt is done
    prompt_means.parquet   per-prompt means
    summary.csv            per (site, layer, metric) statistics
    .lock                  the lock file: the holder's pid; the lock itself dies with the process
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import LayerpolicyError, RunDirectoryError
from .locking import file_lock
from .run_format import check_settings, versions

__all__ = ["RunDirectory", "atomic_path", "read_json", "versions", "write_csv", "write_json"]
LOCK_NAME = ".lock"
PART_GLOB = "*part-*.parquet"
SHARD_GLOB = "shard-*-of-*.json"
_SHARD_PART = re.compile(r"^shard-(\d+)-of-(\d+)-")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file is created as a plain open() would create it, so the finished file has
    the mode the current umask gives. A full disk or other OS error becomes a one-line error;
    the previous file stays intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise LayerpolicyError(
                f"disk full while writing {path}; free space and rerun the same command "
                "(finished prompts are kept and the run resumes)"
            ) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_json(data: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise RunDirectoryError(
            f"{path} is missing; is this a layerpolicy run directory?"
        ) from error
    except json.JSONDecodeError as error:
        raise RunDirectoryError(
            f"{path} is not valid JSON; delete the run or rerun with --force"
        ) from error


class RunDirectory:
    """A run directory for one analysis or training run, resumable batch by batch."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def parts_dir(self) -> Path:
        return self.path / "parts"

    @property
    def tokens_path(self) -> Path:
        return self.path / "tokens.parquet"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.csv"

    @property
    def prompt_means_path(self) -> Path:
        return self.path / "prompt_means.parquet"

    def check_not_file(self, option: str = "--out") -> None:
        """Raise one line when a regular file stands where the directory goes (the one check,
        made before anything is loaded)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(
                f"{option} {self.path} is a file, not a directory; choose another {option}"
            )

    def ensure(self) -> None:
        """Create the directory; a regular file in its place is a one-line error."""
        self.check_not_file()
        self.path.mkdir(parents=True, exist_ok=True)

    def lock(
        self, *, shared: bool = False, wait: bool = True, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """The directory's OS lock (exclusive unless `shared`); see `file_lock`."""
        self.ensure()
        return file_lock(
            self.path / LOCK_NAME, guards=self.path, shared=shared, wait=wait, timeout=timeout
        )

    def exists(self) -> bool:
        return self.record_path.is_file()

    def record(self) -> dict[str, Any]:
        return read_json(self.record_path)

    def read_table(self, path: Path) -> pd.DataFrame:
        """One of this run's tables (.csv or .parquet); a missing or damaged file is one line
        naming it and the fix."""
        fix = "rerun the command in its run.json (argv) with --out pointing here and --force"
        try:
            return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        except FileNotFoundError as error:
            raise RunDirectoryError(f"{path} is missing; {fix}") from error
        except (OSError, ValueError) as error:  # truncated or not a table (pyarrow, pandas)
            raise RunDirectoryError(f"{path} is damaged ({type(error).__name__}); {fix}") from error

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(record, self.record_path)

    def is_complete(self) -> bool:
        return (
            self.exists()
            and self.record().get("status") == "complete"
            and self.summary_path.is_file()
        )

    def start(self, record: dict[str, Any], *, force: bool) -> None:
        """Begin or resume: settings must match an unfinished run's unless `force`."""
        if force and self.path.exists():
            self.remove([*self.part_paths(), *self.shard_record_paths()])
        else:
            self.check_settings(record["settings"])
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.write_record({**record, "status": "running"})

    def check_settings(
        self,
        settings: Mapping[str, Any],
        *,
        allowed: Iterable[str] = (),
        fix: str = "use another --out or --force to overwrite it",
    ) -> None:
        """Raise unless this directory's run and shards were made with `settings` (keys in
        `allowed` may differ: those a resumed run may change) and are of this run format."""
        sources = [("a run", self.record())] if self.exists() else []
        sources += [("shards", read_json(p)) for p in self.shard_record_paths()]
        for what, record in sources:
            previous = record.get("settings") or {}
            where = f"{self.path} holds {what}"
            check_settings(previous, settings, where=where, allowed=allowed, fix=fix)

    def shard_record_paths(self) -> list[Path]:
        return sorted(self.parts_dir.glob(SHARD_GLOB))

    def part_paths(self, prefix: str | None = None) -> list[Path]:
        """Finished part files: all of them, or those written under `prefix` ("" = one process)."""
        pattern = PART_GLOB if prefix is None else f"{prefix}part-*.parquet"
        return sorted(self.parts_dir.glob(pattern), key=_part_order)

    def remove(self, paths: Iterable[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def finished_prompt_ids(self, prefix: str | None = None) -> set[str]:
        """Prompt ids in the finished parts (all, or those under `prefix`)."""
        done: set[str] = set()
        for part in self.part_paths(prefix):
            done.update(pd.read_parquet(part, columns=["prompt_id"])["prompt_id"].unique())
        return done

    def write_part(self, frame: pd.DataFrame, prefix: str = "") -> Path:
        """Write one batch's rows as the next part (under `prefix`, e.g. a shard's name)."""
        index = len(self.part_paths(prefix))
        path = self.parts_dir / f"{prefix}part-{index:05d}.parquet"
        write_parquet(frame, path)
        return path

    def merged_tokens(self, order: Iterable[str] | None = None) -> pd.DataFrame:
        """Every part's rows, part after part (shards in rank order).

        With `order` (the prompt set's ids), each of those prompts must be there; a prompt found
        in several parts (a shard and an older part) is taken from the first that holds it."""
        parts = self.part_paths()
        if not parts:
            raise RunDirectoryError(f"{self.path} has no finished prompts")
        frames = [pd.read_parquet(p) for p in parts]
        if order is None:
            return pd.concat(frames, ignore_index=True)
        wanted = list(order)
        seen: set[str] = set()
        kept = []
        for frame in frames:
            ids = frame["prompt_id"].astype(str)
            kept.append(frame[ids.isin(set(wanted) - seen).to_numpy()])
            seen.update(ids.unique())
        missing = [p for p in wanted if p not in seen]
        if missing:
            raise RunDirectoryError(
                f"{self.path} lacks {len(missing)} prompt(s) (first: {missing[0]}); rerun the "
                "same command to score them"
            )
        return pd.concat(kept, ignore_index=True)

    def finish(self, record_updates: dict[str, Any]) -> None:
        """Mark the run complete: run.json gets `record_updates` over what it held (if anything)."""
        previous = self.record() if self.exists() else {}
        self.write_record({**previous, **record_updates, "status": "complete"})


def _part_order(path: Path) -> tuple[int, int, int, str]:
    """Single-process parts first, then each launch's shards in rank order, batches in order."""
    match = _SHARD_PART.match(path.name)
    if match is None:
        return (0, 0, 0, path.name)
    return (1, int(match.group(2)), int(match.group(1)), path.name)
