"""Where model files are cached, and how writers share the cache: root, locks, hashes, markers.

Every directory the cache holds is written beside its final place, renamed into place, and only
then marked complete (a marker file written last), so an interrupted write is never mistaken for
a finished one. Writers of one directory serialise through an inter-process lock file beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

COMPLETE_MARKER = ".layerpolicy-complete"
_CHUNK = 1 << 20


def cache_root() -> Path:
    """Where layerpolicy caches models: $LAYERPOLICY_CACHE if set, else ~/.cache/layerpolicy."""
    configured = os.environ.get("LAYERPOLICY_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "layerpolicy"


@contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold an inter-process lock for writing `directory` (a lock file beside it)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory.parent / f".{directory.name}.lock")):
        yield


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(directory: Path) -> bool:
    """Whether `directory` holds a finished write (its completion marker exists)."""
    return (Path(directory) / COMPLETE_MARKER).is_file()


def write_marker(directory: Path, info: dict[str, Any]) -> None:
    """Mark `directory` complete with `info`; written last, so its presence means it is whole."""
    (Path(directory) / COMPLETE_MARKER).write_text(json.dumps(info, sort_keys=True) + "\n")


def read_marker(directory: Path) -> dict[str, Any]:
    """The info a completion marker holds ({} when absent or unreadable)."""
    try:
        info = json.loads((Path(directory) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def apply_umask(directory: Path) -> None:
    """Give `directory` and its files umask modes (mkdtemp and safetensors make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)
