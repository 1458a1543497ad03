"""Convert GGUF files into float32 Hugging Face directories that load in seconds.

transformers dequantises a GGUF file on every load (30-90 s); converting once and loading the
safetensors directory afterwards takes 2-4 s. Conversions are written into a temporary sibling
directory, renamed into place, and only then marked complete, so an interrupted conversion is
never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from filelock import FileLock
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from layerpolicy.errors import LayerpolicyError

COMPLETE_MARKER = ".layerpolicy-complete"
_CHUNK = 1 << 20


def make_progress(enabled: bool) -> Progress:
    """A rich progress display on stderr; does nothing when `enabled` is false."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def is_converted(directory: Path) -> bool:
    """Whether `directory` holds a finished conversion (its completion marker exists)."""
    return (directory / COMPLETE_MARKER).is_file()


@contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold an inter-process lock for writing `directory` (a lock file beside it)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory.parent / f".{directory.name}.lock")):
        yield


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(
    gguf_path: Path, out_dir: Path, *, progress: bool = True, require_chat_template: bool = False
) -> Path:
    """Dequantise `gguf_path` into a float32 Hugging Face directory at `out_dir` and return it.

    The directory holds config, safetensors weights and the tokenizer (with its chat template when
    the GGUF carries one; `require_chat_template` makes a missing one an error). An existing
    `out_dir` is replaced. Runs with the hub offline: nothing is fetched.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise LayerpolicyError(f"GGUF file not found: {gguf_path}; check the path")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _convert_into(
            gguf_path, tmp, progress=progress, require_chat_template=require_chat_template
        )
        _apply_umask(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_marker(out_dir, gguf_path)
    return out_dir


def converted_gguf_dir(gguf_path: Path, *, progress: bool = True) -> Path:
    """The converted directory for a user's own .gguf file, converting it on first use.

    Cached under `cache_root()/"gguf-converted"/<first 16 hex of the file's sha256>`, so the
    same file is converted once whatever its name or location.
    """
    from layerpolicy.models.packaged import cache_root  # packaged imports this module

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise LayerpolicyError(f"GGUF file not found: {path}; check the path")
    out_dir = cache_root() / "gguf-converted" / sha256_file(path)[:16]
    if is_converted(out_dir):
        return out_dir
    with dir_lock(out_dir):
        if not is_converted(out_dir):
            convert_gguf(path, out_dir, progress=progress)
    return out_dir


def _convert_into(
    gguf_path: Path, out_dir: Path, *, progress: bool, require_chat_template: bool
) -> None:
    """Load the GGUF with transformers (offline) as float32 and save it to `out_dir`."""
    with _offline_hub(), _quiet_transformers(), make_progress(progress) as bar:
        task = bar.add_task(f"converting {gguf_path.name}: tokenizer", total=3)
        tokenizer = _load(gguf_path, "AutoTokenizer")
        if require_chat_template and not tokenizer.chat_template:
            raise LayerpolicyError(
                f"{gguf_path.name} gave a tokenizer without a chat template; upgrade transformers "
                "and gguf (pip install -U transformers gguf) and pull again with --force"
            )
        bar.update(task, advance=1, description=f"converting {gguf_path.name}: dequantising")
        model = _load(gguf_path, "AutoModelForCausalLM")
        bar.update(task, advance=1, description=f"converting {gguf_path.name}: saving")
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        bar.update(task, advance=1, description=f"converted {gguf_path.name}")


def _load(gguf_path: Path, auto_class: str):
    """`auto_class.from_pretrained` on a GGUF file, float32, with failures as LayerpolicyError."""
    import torch
    import transformers

    kwargs = {"dtype": torch.float32} if auto_class == "AutoModelForCausalLM" else {}
    try:
        return getattr(transformers, auto_class).from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True, **kwargs
        )
    except ImportError as e:
        raise LayerpolicyError(
            f"loading GGUF files needs the gguf package ({_first_line(e)}); pip install gguf"
        ) from e
    except (ValueError, OSError, KeyError) as e:
        raise LayerpolicyError(
            f"could not convert {gguf_path.name}: {_first_line(e)}; check that the file is a "
            "complete GGUF of an architecture transformers supports (e.g. llama, qwen2)"
        ) from e


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines or [type(error).__name__])[0].rstrip(".")


def _apply_umask(directory: Path) -> None:
    """Give `directory` and its files umask modes (mkdtemp and safetensors make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _write_marker(out_dir: Path, gguf_path: Path) -> None:
    """Mark `out_dir` complete; written last, so its presence means the directory is whole."""
    import transformers

    info = {"source": gguf_path.name, "transformers": transformers.__version__}
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(info) + "\n")


@contextmanager
def _offline_hub() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the duration (loads also pass local_files_only=True)."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own tqdm bars (the rich display reports progress instead).

    The GGUF dequantisation bar calls tqdm directly, ignoring transformers' switch, so that
    module's `tqdm` is swapped for a disabled one while converting.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging

    enabled, bar = logging.is_progress_bar_enabled(), gguf_utils.tqdm
    logging.disable_progress_bar()
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        if enabled:
            logging.enable_progress_bar()
