"""Inter-process locks that die with their process: flock on a lock file, holder's pid inside.

A second process either waits (printing one line that names the holder) or, with `wait=False` or
after `timeout` seconds, stops with a one-line RunDirectoryBusy. A kill -9 leaves no stale lock:
the kernel drops an flock when its process ends, and the lock file itself is never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import RunDirectoryError

POLL_S = 0.1
ANNOUNCE_AFTER_S = 0.5  # a wait shorter than this (a lock changing hands) is not worth a line

# Locks this process holds, by lock file: [fd, depth]; a nested lock of the same file is free.
_HELD: dict[Path, list[int]] = {}


class RunDirectoryBusy(RunDirectoryError):
    """Another process holds the lock."""


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    guards: Path,
    shared: bool = False,
    wait: bool = True,
    timeout: float | None = None,
) -> Iterator[None]:
    """Hold an flock on `path` (exclusive, or shared); the kernel drops it when the process dies.

    An exclusive holder writes its pid into the file while it holds it (a killed holder's pid
    stays, harmlessly: no lock is left). A wait longer than ANNOUNCE_AFTER_S prints one line
    naming the holder; `wait=False`, or `timeout` seconds passed, raises RunDirectoryBusy naming
    `guards`. A nested lock of a file this process already holds returns at once (any mode).
    """
    key = Path(os.path.abspath(path))
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, key, guards, shared=shared, wait=wait, timeout=timeout)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            if not shared:
                os.ftruncate(fd, 0)  # no stale pid for waiters behind later shared holders
    finally:
        os.close(fd)  # releases the lock


def _acquire(
    fd: int, path: Path, guards: Path, *, shared: bool, wait: bool, timeout: float | None
) -> None:
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    announced = False
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            pass
        holder = lock_holder(path)
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise RunDirectoryBusy(
                f"{guards} is in use by {holder}; wait for it to finish or choose another --out"
            )
        if not announced and time.monotonic() - started >= ANNOUNCE_AFTER_S:
            print(f"waiting for {holder}, which holds {guards}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S)


def lock_holder(path: Path) -> str:
    """'process PID' as the lock file records it, or 'another process'."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return f"process {int(Path(path).read_text().split()[0])}"
    return "another process"


def is_locked(path: Path) -> bool:
    """True when a process (this one included) holds a lock on `path`."""
    key = Path(os.path.abspath(path))
    if key in _HELD:
        return True
    try:
        fd = os.open(key, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
