"""Data parallel runs: which contiguous shard of the prompts a process scores; how shards meet.

Under `accelerate launch --num_processes N` (or torchrun, or MPI) every process reads its rank and
the world size from the environment the launcher sets. Rank r of N scores the prompts
[r * n // N, (r + 1) * n // N) of the prompt set's order, writes its parts under `shard-r-of-N-`
in the one run directory and, when done, `parts/shard-r-of-N.json` (settings, prompt ids, status).
The main process (rank 0) waits for every shard, then merges them once; the other ranks wait for
that merge and load it, so every rank returns the same tables.

Locks: each rank holds its shard's lock (`parts/.shard-r-of-N.lock`) for as long as it runs, and a
shared lock on the run directory while it scores; the merge takes the directory's exclusive lock.
A single-process run holds the exclusive lock throughout, so it never mixes with scoring ranks.
A shard whose rank is gone (no process holds its lock) and that is still unfinished after
`LAYERPOLICY_SHARD_TIMEOUT` seconds (default 600) is reported by name.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import LayerpolicyError, RunDirectoryError
from .locking import file_lock, is_locked
from .runs import RunDirectory, read_json, write_json

TIMEOUT_ENV = "LAYERPOLICY_SHARD_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
POLL_S = 0.5
_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def name(self) -> str:
        return f"shard-{self.rank}-of-{self.world}"

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of `items` (sizes differ by at most one)."""
        n = len(items)
        return list(items[self.rank * n // self.world : (self.rank + 1) * n // self.world])

    def device(self, device: str) -> str:
        """`auto` becomes this rank's own GPU (cuda:LOCAL_RANK) when there are GPUs."""
        import torch

        if self.parallel and device == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device


def current_shard() -> Shard:
    """Rank and world size from the launcher's environment (accelerate reads the same)."""
    if not any(key in os.environ for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return Shard()
    from accelerate.utils import get_cpu_distributed_information

    info = get_cpu_distributed_information()
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise LayerpolicyError(
            f"rank {info.rank} of world size {info.world_size} from the environment is not a "
            "valid process; launch with accelerate launch --num_processes N"
        )
    return Shard(info.rank, info.world_size, info.local_rank)


def shard_timeout() -> float:
    """Seconds to wait for a shard that no live process is working on."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError as error:
        raise LayerpolicyError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from error


def record_path(run: RunDirectory, shard: Shard) -> Path:
    return run.parts_dir / f"{shard.name}.json"


def lock_path(run: RunDirectory, shard: Shard) -> Path:
    return run.parts_dir / f".{shard.name}.lock"


def run_sharded(
    run: RunDirectory,
    shard: Shard,
    *,
    settings: dict[str, Any],
    prompt_ids: Sequence[str],
    force: bool,
    score: Callable[[list[str], str], dict[str, Any]],
    merge: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Score this rank's shard, then merge (main) or wait for the merge (other ranks).

    `score(todo, prefix)` scores the prompt ids `todo`, writing parts under `prefix`, and returns
    fields for the shard's record; `merge(records)` writes the merged run from every shard's
    record (called under the directory's exclusive lock).
    """
    run.ensure()
    run.parts_dir.mkdir(exist_ok=True)
    mine = shard.take(list(prompt_ids))
    token = secrets.token_hex(8)
    timeout = shard_timeout()
    with file_lock(lock_path(run, shard), guards=run.path):
        with run.lock(shared=True):
            if force:
                _clear(run, shard)
            else:
                run.check_settings(settings)
            entry = {"settings": settings, "rank": shard.rank, "world": shard.world}
            write_json({**entry, "prompt_ids": mine, "status": "running"}, record_path(run, shard))
            done = run.finished_prompt_ids(f"{shard.name}-" if force else None)
            extra = score([p for p in mine if p not in done], f"{shard.name}-")
            finished = {**entry, "prompt_ids": mine, "status": "complete", "token": token}
            write_json({**finished, **extra}, record_path(run, shard))
        if shard.is_main:
            records = wait_for_shards(run, shard.world, prompt_ids, timeout=timeout)
            with run.lock():
                merge(records)
        else:
            wait_for_merge(run, shard, token, timeout=timeout)


def _clear(run: RunDirectory, shard: Shard) -> None:
    """--force under a launch: this shard's files; the main rank also removes the merged run and
    every part that belongs to no shard of this launch."""
    run.remove([*run.part_paths(f"{shard.name}-"), record_path(run, shard)])
    if not shard.is_main:
        return
    stale = [
        path
        for path in [*run.part_paths(), *run.shard_record_paths()]
        if (match := _SHARD_NAME.match(path.name)) is None or int(match.group(2)) != shard.world
    ]
    run.remove([*stale, run.record_path, run.summary_path])


def wait_for_shards(
    run: RunDirectory, world: int, prompt_ids: Sequence[str], *, timeout: float
) -> list[dict[str, Any]]:
    """Every shard's finished record, in rank order, once all are there.

    A shard that no live process holds and that stays unfinished for `timeout` seconds raises one
    line naming it and its prompts."""
    shards = [Shard(rank, world) for rank in range(world)]
    seen_alive = dict.fromkeys(range(world), time.monotonic())
    while True:
        records: list[dict[str, Any]] = []
        for shard in shards:
            path = record_path(run, shard)
            record = read_json(path) if path.is_file() else {}
            if record.get("status") == "complete":
                records.append(record)
                continue
            if is_locked(lock_path(run, shard)):
                seen_alive[shard.rank] = time.monotonic()
            elif time.monotonic() - seen_alive[shard.rank] > timeout:
                ids = shard.take(list(prompt_ids))
                span = f"prompts {ids[0]}..{ids[-1]}" if ids else "no prompts"
                raise RunDirectoryError(
                    f"{run.path}: {shard.name} ({span}) is missing and no process has worked on "
                    f"it for {timeout:.0f} s; rerun the same launch to resume it"
                )
        if len(records) == world:
            return records
        time.sleep(POLL_S)


def wait_for_merge(run: RunDirectory, shard: Shard, token: str, *, timeout: float) -> None:
    """Wait until the main rank has merged this launch's shards (its record lists `token`)."""
    main = Shard(0, shard.world)
    seen_alive = time.monotonic()
    while True:
        if run.is_complete():
            entries = run.record().get("parallel", {}).get("shards", [])
            if any(e.get("rank") == shard.rank and e.get("token") == token for e in entries):
                return
        if is_locked(lock_path(run, main)) or is_locked(run.path / ".lock"):
            seen_alive = time.monotonic()
        elif time.monotonic() - seen_alive > timeout:
            raise RunDirectoryError(
                f"{run.path}: the merge by the main process (rank 0) did not happen within "
                f"{timeout:.0f} s; rerun the same launch to finish it"
            )
        time.sleep(POLL_S)


def parallel_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What run.json records of a launch: the number of processes and each rank's prompt ids."""
    return {
        "n_processes": len(records),
        "shards": [
            {"rank": r["rank"], "prompt_ids": r["prompt_ids"], "token": r["token"]} for r in records
        ],
    }
