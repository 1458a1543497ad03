"""Sampled responses as data: responses.parquet, one row per (prompt, sample) (docs/tables.md).

Every run that samples writes the table (`entropy --generate`, `compare --generate`, the screen
and evaluations of training); `--responses RUN_OR_FILE` scores the same ids again under another
model or readout. Responses to prompts with an answer are graded by the verifier training uses
(`layerpolicy.bupo.reward.grade`); ungraded rows hold NA in `correct`.

Columns (`RESPONSE_COLUMNS`): prompt_id, sample (0-based index of the prompt's response), seed,
prompt_ids and response_ids (int32 lists, the ids as sampled), response_text (decoded without
special tokens, as training hands completions to the reward, and graded so), n_tokens
(response length, stop token included), finish_reason (`eos`: stopped on an end-of-sequence
token; `length`: ran out of budget), answer (None without one), correct (boolean, NA when
ungraded) and tokenizer (`tokenizer_fingerprint` of the tokenizer of the ids).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import LayerpolicyError
from .prompts import PromptItem, PromptSet
from .prompts.items import prompt_set
from .runs import write_parquet
from .tables.schema import RESPONSE_COLUMNS

RESPONSES_NAME = "responses.parquet"
_PART_GLOB = "*responses-*.parquet"
FINISH_REASONS = ("eos", "length")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary (token -> id) and special tokens: two
    tokenizers with one fingerprint map ids to the same text."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda pair: pair[1])
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    payload = json.dumps([vocab, special], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def responses_table(
    samples: Sequence[Any],
    tokenizer: Any,
    answers: dict[str, str | None],
    stops: Iterable[int],
) -> pd.DataFrame:
    """The responses.parquet rows of `samples` (`sampling.Sample`s): `answers` by prompt id
    (None: ungraded), `stops` the end-of-sequence ids (finish_reason `eos`, else `length`)."""
    stop_ids = set(int(s) for s in stops)
    texts = [tokenizer.decode(list(s.response_ids), skip_special_tokens=True) for s in samples]
    answer = [answers.get(s.prompt_id) for s in samples]
    frame = pd.DataFrame(
        {
            "prompt_id": [s.prompt_id for s in samples],
            "sample": np.array([s.index for s in samples], dtype=np.int32),
            "seed": np.array([s.seed for s in samples], dtype=np.int64),
            "prompt_ids": [np.asarray(s.prompt_ids, dtype=np.int32) for s in samples],
            "response_ids": [np.asarray(s.response_ids, dtype=np.int32) for s in samples],
            "response_text": texts,
            "n_tokens": np.array([len(s.response_ids) for s in samples], dtype=np.int32),
            "finish_reason": [
                "eos" if s.response_ids and s.response_ids[-1] in stop_ids else "length"
                for s in samples
            ],
            "answer": answer,
            "correct": pd.array(
                [
                    None if a is None else grade_text(t, a)
                    for t, a in zip(texts, answer, strict=True)
                ],
                dtype="boolean",
            ),
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
    )
    return frame[RESPONSE_COLUMNS]


def grade_text(response: str, answer: str) -> bool:
    """The training verifier's grade (math-verify, last boxed answer)."""
    from .bupo.reward import grade

    return grade(response, answer)


def verifier() -> dict[str, Any]:
    """What run.json records about the grader of `correct` (name, version, policy)."""
    from .bupo.reward import verifier_record

    return verifier_record()


def write_responses(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a responses table atomically (a directory gets responses.parquet inside)."""
    target = Path(path)
    if target.is_dir():
        target = target / RESPONSES_NAME
    write_parquet(frame[RESPONSE_COLUMNS], target)
    return target


def responses_path(path_or_run: str | Path) -> Path:
    """The responses.parquet a run directory holds, or the file itself; one line if neither."""
    path = Path(path_or_run)
    if path.is_dir():
        if not (path / RESPONSES_NAME).is_file():
            raise LayerpolicyError(
                f"{path} holds no {RESPONSES_NAME}; pass a run made with --generate (or the "
                "screen or evaluations of a training run), or a responses.parquet file"
            )
        return path / RESPONSES_NAME
    if not path.is_file():
        raise LayerpolicyError(
            f"--responses {path} does not exist; pass a run directory or a responses.parquet"
        )
    return path


def read_responses(path_or_run: str | Path) -> pd.DataFrame:
    """A saved responses table (run directory or file), checked for its columns."""
    path = responses_path(path_or_run)
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a file that is no parquet
        raise LayerpolicyError(
            f"{path} is no responses table ({type(error).__name__}); pass a responses.parquet"
        ) from None
    missing = [c for c in RESPONSE_COLUMNS if c not in frame.columns]
    if missing:
        raise LayerpolicyError(
            f"{path} is no responses table (no column {', '.join(missing)}); pass the "
            f"{RESPONSES_NAME} of a sampling run"
        )
    return frame[RESPONSE_COLUMNS]


def responses_prompt_set(frame: pd.DataFrame, source: str) -> PromptSet:
    """The prompts of a responses table, in its order (each id once, its answer kept), hashed
    by the saved ids so that two runs over one saved set share prompts_sha256."""
    first = frame.drop_duplicates("prompt_id")
    items = [
        PromptItem(str(row.prompt_id), None, "", answer=row.answer)
        for row in first.itertuples(index=False)
    ]
    hashed = hashlib.sha256()
    for row in frame.itertuples(index=False):
        key = [row.prompt_id, int(row.sample), list(map(int, row.prompt_ids))]
        hashed.update(json.dumps([*key, list(map(int, row.response_ids))]).encode())
    loaded = prompt_set(items, source)
    return PromptSet(loaded.items, source, hashed.hexdigest())


def saved_prompts(
    path_or_run: str | Path, limit: int | None = None
) -> tuple[PromptSet, pd.DataFrame]:
    """The prompts of saved responses (the first `limit` prompts) and those prompts' rows."""
    frame = read_responses(path_or_run)
    if limit is not None:
        keep = frame["prompt_id"].drop_duplicates().iloc[:limit]
        frame = frame[frame["prompt_id"].isin(set(keep))].reset_index(drop=True)
    return responses_prompt_set(frame, str(path_or_run)), frame


def check_tokenizer(frame: pd.DataFrame, tokenizer: Any, model_name: str, source: str) -> None:
    """Raise one line unless the responses were encoded by this model's tokenizer."""
    saved = set(frame["tokenizer"].astype(str))
    found = tokenizer_fingerprint(tokenizer)
    if saved != {found}:
        raise LayerpolicyError(
            f"{model_name} has another tokenizer than the responses in {source} (fingerprint "
            f"{found}, saved {', '.join(sorted(saved))}); score them with a model of the same "
            "tokenizer, or sample afresh with --generate"
        )


def write_part(run_path: Path, frame: pd.DataFrame, prefix: str = "") -> Path:
    """One scored batch's responses as the next part of a run directory (before its tokens)."""
    parts = run_path / "parts"
    index = len(list(parts.glob(f"{prefix}responses-*.parquet")))
    path = parts / f"{prefix}responses-{index:05d}.parquet"
    write_parquet(frame, path)
    return path


def finish(run_path: Path, tokens: pd.DataFrame, has_responses: bool) -> pd.DataFrame | None:
    """Merge a finished run's responses parts into responses.parquet (one row per (prompt,
    sample) of `tokens`, in their order) and return it; a run without responses (or a part
    left by an earlier run under --force) leaves no responses.parquet behind."""
    target = run_path / RESPONSES_NAME
    paths = sorted((run_path / "parts").glob(_PART_GLOB), key=lambda p: p.stat().st_mtime_ns)
    if not has_responses or not paths:
        target.unlink(missing_ok=True)
        return None
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    frame = frame.drop_duplicates(["prompt_id", "sample"], keep="last")  # the newest part wins
    scored = tokens[["prompt_id", "sample"]].drop_duplicates()
    frame = scored.merge(frame, on=["prompt_id", "sample"], how="left", validate="1:1")
    if frame["tokenizer"].isna().any():
        raise LayerpolicyError(
            f"{run_path} lacks the responses of some scored prompts; rerun with --force"
        )
    frame = frame[RESPONSE_COLUMNS]
    write_parquet(frame, target)
    return frame


def graded(frame: pd.DataFrame | None) -> bool:
    """True when some response of the table has a grade."""
    return frame is not None and bool(frame["correct"].notna().any())
