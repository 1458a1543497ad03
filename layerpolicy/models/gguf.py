"""Convert GGUF files into float32 Hugging Face directories that load in seconds.

transformers dequantises a GGUF file on every load (30-90 s); converting once and loading the
safetensors directory afterwards takes 2-4 s. Conversions are written into a temporary sibling
directory, renamed into place, and only then marked complete (see `cache`). The marker records
the file's quantisation (its GGUF `general.file_type`), since the float32 weights no longer show it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

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
from layerpolicy.models.cache import (
    apply_umask,
    cache_root,
    dir_lock,
    is_complete,
    read_marker,
    sha256_file,
    write_marker,
)


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


def gguf_file_type(gguf_path: Path) -> str | None:
    """The quantisation a GGUF file records (`general.file_type`, e.g. "Q4_1"), None if absent."""
    import gguf

    try:
        field = gguf.GGUFReader(gguf_path).get_field("general.file_type")
        code = int(field.parts[-1][0]) if field is not None else None
        return None if code is None else gguf.LlamaFileType(code).name.removeprefix("MOSTLY_")
    except (ValueError, OSError, IndexError, KeyError):  # not a (readable) GGUF file
        return None


def converted_quantisation(directory: Path) -> str | None:
    """The quantisation recorded when `directory` was converted, None if not recorded."""
    return read_marker(directory).get("file_type")


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
        apply_umask(tmp)
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
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise LayerpolicyError(f"GGUF file not found: {path}; check the path")
    out_dir = cache_root() / "gguf-converted" / sha256_file(path)[:16]
    if is_complete(out_dir):
        return out_dir
    with dir_lock(out_dir):
        if not is_complete(out_dir):
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


def _write_marker(out_dir: Path, gguf_path: Path) -> None:
    """Mark `out_dir` complete, recording the source file, its quantisation and transformers."""
    import transformers

    info = {"source": gguf_path.name, "transformers": transformers.__version__}
    info["file_type"] = gguf_file_type(gguf_path)
    write_marker(out_dir, info)


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
