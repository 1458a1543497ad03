"""Run directories: atomic writes, the JSON record of settings and versions, and resume.

Layout of a run directory:
    run.json         settings, resolved model, prompt source + hash, versions, timings, status
    parts/           part-NNNNN.parquet, one per finished batch (what a resumed run keeps)
    tokens.parquet   all parts merged (docs/tables.md), written when every prompt is done
    prompts.parquet  per-prompt means;  summary.csv  per (site, layer, metric) statistics
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import LayerpolicyError, RunDirectoryError

PACKAGES = ("layerpolicy", "torch", "transformers", "transformer-lens", "pandas", "numpy")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A full disk or other OS error becomes a one-line error; the previous file stays intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
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


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that decide the numbers."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class RunDirectory:
    """A run directory for one model's analysis, resumable batch by batch."""

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
        return self.path / "prompts.parquet"

    def exists(self) -> bool:
        return self.record_path.is_file()

    def record(self) -> dict[str, Any]:
        return read_json(self.record_path)

    def is_complete(self) -> bool:
        return (
            self.exists()
            and self.record().get("status") == "complete"
            and self.summary_path.is_file()
        )

    def start(self, record: dict[str, Any], *, force: bool) -> None:
        """Begin or resume: settings must match an unfinished run's unless `force`."""
        if force and self.path.exists():
            for part in self.parts_dir.glob("part-*.parquet"):
                part.unlink()
        elif self.exists():
            self.check_settings(record["settings"])
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_json({**record, "status": "running"}, self.record_path)

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Raise unless this directory's run was made with `settings`."""
        previous = self.record().get("settings") or {}
        if previous == settings:
            return
        changed = sorted(
            key for key in {**previous, **settings} if previous.get(key) != settings.get(key)
        )
        raise RunDirectoryError(
            f"{self.path} holds a run with other settings ({', '.join(changed)}); "
            "use another --out or --force to overwrite it"
        )

    def finished_prompt_ids(self) -> set[str]:
        done: set[str] = set()
        for part in sorted(self.parts_dir.glob("part-*.parquet")):
            done.update(pd.read_parquet(part, columns=["prompt_id"])["prompt_id"].unique())
        return done

    def write_part(self, frame: pd.DataFrame) -> Path:
        index = len(list(self.parts_dir.glob("part-*.parquet")))
        path = self.parts_dir / f"part-{index:05d}.parquet"
        write_parquet(frame, path)
        return path

    def merged_tokens(self) -> pd.DataFrame:
        parts = sorted(self.parts_dir.glob("part-*.parquet"))
        if not parts:
            raise RunDirectoryError(f"{self.path} has no finished prompts")
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

    def finish(self, record_updates: dict[str, Any]) -> None:
        write_json({**self.record(), **record_updates, "status": "complete"}, self.record_path)
