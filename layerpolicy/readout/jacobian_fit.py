"""Fitting a Jacobian lens with TransformerLens (`JacobianLens.fit`), resumably, into the cache.

The fit runs prompt by prompt: after each one the running lens (TransformerLens's prompt-weighted
`JacobianLens.merge` of what is done) is saved atomically with the index of the next prompt, so
an interrupted fit resumes where it stopped and ends with the same lens. The finished lens is
written as lens.pt (float32) beside settings.json, then the directory is marked complete.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LayerpolicyError
from ..models.cache import dir_lock, is_complete, write_marker
from ..runs import atomic_path
from .jacobian import LENS_FILE, META_KEY, model_lens_dir, model_revision

CHECKPOINT_FILE = "checkpoint.pt"
NEXT_KEY = "next_prompt"


@dataclass(frozen=True)
class FitSettings:
    """What a fit depends on besides the model: the prompts (by content hash, with a label),
    how many, and TransformerLens's fit options (tokens per prompt, leading positions left out,
    output dimensions per backward pass)."""

    prompts: str
    prompts_sha256: str
    n_prompts: int
    max_seq_len: int = 128
    skip_first_positions: int = 16
    dim_batch: int = 8

    def key(self) -> str:
        """The cache directory's name: the prompt label and a digest of every setting."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        label = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(self.prompts).stem)
        return f"{label}-n{self.n_prompts}-{digest[:12]}"


def prompt_text(item: Any) -> str:
    """What a lens is fitted on for one prompt: its plain text, or its chat messages' contents
    joined by blank lines."""
    if item.text is not None:
        return item.text
    return "\n\n".join(message["content"] for message in item.messages)


def lens_directory(model_name: str, settings: FitSettings) -> Path:
    """Where the lens of `model_name` fitted with `settings` is (or will be) cached."""
    return model_lens_dir(model_name) / settings.key()


def fit_lens(
    model: Any,
    texts: Sequence[str],
    settings: FitSettings,
    *,
    advance: Callable[[int], None] = lambda done: None,
) -> Path:
    """Fit (or finish fitting) the lens of `model` (a LoadedModel) on `texts` and return its
    lens.pt. `advance(done)` is called with the number of prompts done, first on resume.
    A finished lens with the same settings is returned as it is."""
    directory = lens_directory(model.info.name, settings)
    if is_complete(directory):
        advance(len(texts))
        return directory / LENS_FILE
    with dir_lock(directory):
        if is_complete(directory):
            advance(len(texts))
            return directory / LENS_FILE
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": model.info.name,
            "revision": model_revision(model.hf_model, model.info.location),
            **asdict(settings),
        }
        lens, start = _resume(directory / CHECKPOINT_FILE, meta)
        advance(start)
        started = time.perf_counter()
        for index in range(start, len(texts)):
            lens = _merged(lens, _fit_one(model, texts[index], settings, meta))
            _save(lens, directory / CHECKPOINT_FILE, next_prompt=index + 1)
            advance(index + 1)
        if lens is None:
            raise LayerpolicyError(
                f"no prompt had more than {settings.skip_first_positions + 1} tokens to fit on; "
                "use longer prompts or lower --skip-first-positions"
            )
        _save(lens, directory / LENS_FILE)
        (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
        summary = {**meta, "prompts_fitted": lens.n_prompts, "fit_s": time.perf_counter() - started}
        with atomic_path(directory / "settings.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_marker(directory, {"lens": LENS_FILE, "n_prompts": lens.n_prompts})
    return directory / LENS_FILE


def _fit_one(model: Any, text: str, settings: FitSettings, meta: dict[str, Any]) -> Any | None:
    """TransformerLens's fit on one prompt (None when it is too short to have a position)."""
    from transformer_lens.tools.analysis import JacobianLens

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipping prompt with only")
        try:
            return JacobianLens.fit(
                model.bridge,
                [text],
                corpus=f"{settings.prompts} sha256:{settings.prompts_sha256[:16]}",
                max_seq_len=settings.max_seq_len,
                skip_first_positions=settings.skip_first_positions,
                dim_batch=settings.dim_batch,
                show_progress=False,
                metadata={META_KEY: meta},
            )
        except ValueError as error:
            if "too short" in str(error):
                return None
            raise


def _merged(running: Any | None, new: Any | None) -> Any | None:
    """The prompt-weighted mean of the lens so far and one more prompt's (either may be None)."""
    if running is None or new is None:
        return running if new is None else new
    from transformer_lens.tools.analysis import JacobianLens

    return JacobianLens.merge([running, new])


def _save(lens: Any, path: Path, *, next_prompt: int | None = None) -> None:
    """Write `lens` in float32 to `path` atomically; a checkpoint also records the next prompt."""
    original = lens.metadata
    if next_prompt is not None:
        lens.metadata = {**original, NEXT_KEY: next_prompt}
    try:
        with atomic_path(path) as tmp:
            lens.save(str(tmp), dtype=torch.float32)
    finally:
        lens.metadata = original


def _resume(path: Path, meta: dict[str, Any]) -> tuple[Any | None, int]:
    """The running lens of an interrupted fit with these settings and the next prompt's index,
    or (None, 0) to start afresh."""
    if not path.is_file():
        return None, 0
    from transformer_lens.tools.analysis import JacobianLens

    try:
        lens = JacobianLens.load(str(path))
    except Exception:  # a checkpoint written by an older layerpolicy or damaged: start again
        return None, 0
    if lens.metadata.get(META_KEY) != meta:
        return None, 0
    start = int(lens.metadata.pop(NEXT_KEY, 0))
    return lens, start
