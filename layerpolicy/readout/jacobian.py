"""Jacobian lenses: where fitted ones are cached, which lens a run reads through, and its check.

A lens is TransformerLens's `JacobianLens` (one [d_model, d_model] matrix J per block output,
fitted on raw weights). Lenses fitted by `layerpolicy lens fit` live beside the model's cache,
cache_root()/"lenses"/MODEL/KEY/lens.pt, KEY naming the fit's settings; their metadata records
the model's name and revision and those settings (key "layerpolicy"), so a lens is refused in
one line for any other model or revision. `LensTransport` applies J_l per layer: the one step
the Jacobian lens adds to the logit lens (`unembed.Unembedding` does the rest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import LayerpolicyError
from ..models.cache import cache_root, is_complete, read_marker, sha256_file

LENS_FILE = "lens.pt"
META_KEY = "layerpolicy"


def fit_command(model: str) -> str:
    """The command that fits a lens for `model` offline (the fix every refusal names)."""
    return f"layerpolicy lens fit --model {model} --prompts PROMPTS --limit N"


def model_lens_dir(model_name: str) -> Path:
    """Where the lenses fitted for `model_name` are cached (one directory per fit's settings)."""
    safe = model_name.replace("/", "--").replace("\\", "--")
    return cache_root() / "lenses" / safe


def model_revision(hf_model: torch.nn.Module, location: str) -> str:
    """What identifies the weights: the hub commit they were loaded at, else a digest of the
    model directory's config.json, cache marker and weight-file sizes (sha256 hex, 16 chars)."""
    commit = getattr(hf_model.config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    directory = Path(location)
    digest = hashlib.sha256()
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.name == "config.json":
                digest.update(sha256_file(path).encode())
            elif path.suffix in (".safetensors", ".bin", ".gguf"):
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
        digest.update(json.dumps(read_marker(directory), sort_keys=True).encode())
    else:
        digest.update(location.encode())
    return digest.hexdigest()[:16]


def cached_lenses(model_name: str) -> list[Path]:
    """The finished lens files fitted for `model_name`, newest first."""
    root = model_lens_dir(model_name)
    found = [d / LENS_FILE for d in root.iterdir() if is_complete(d)] if root.is_dir() else []
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def lens_choice_error(model_name: str, model_spec: str, lens: str | None) -> str | None:
    """Why the lens named `lens` (a file, a directory, a published name; None: the newest one
    fitted for the model) cannot serve `model_name`, in one line; None when it may. Reads only
    lens metadata, so it runs before the model is loaded."""
    if lens is None:
        if cached_lenses(model_name):
            return None
        return (
            f"--readout jacobian-lens needs a lens and none is fitted for {model_name}; fit one "
            f"with `{fit_command(model_spec)}` (or pass --lens PATH_OR_NAME)"
        )
    local = _local_file(lens)
    if local is not None:
        recorded = _read_meta(Path(local)).get("model")
        if recorded is not None and recorded != model_name:
            return (
                f"lens {lens} was fitted for {recorded}, not {model_name}; fit one with "
                f"`{fit_command(model_spec)}`"
            )
        return None
    if Path(lens).suffix == ".pt" or _looks_like_path(lens):
        return f"unknown lens {lens}: no such file; fit one with `{fit_command(model_spec)}`"
    from ..models.resolve import hub_reachable

    if not hub_reachable():
        return (
            f"unknown lens {lens}: not a file, and the hub that publishes lenses cannot be "
            f"reached; fit one with `{fit_command(model_spec)}`"
        )
    return None


def load_lens(model: Any, lens: str | None) -> tuple[Any, dict[str, Any]]:
    """The JacobianLens a run of `model` (a LoadedModel) reads through, checked against it, and
    what run.json records of it (path, sha256, prompts, fit settings)."""
    from transformer_lens.tools.analysis import JacobianLens

    info = model.info
    problem = lens_choice_error(info.name, info.spec, lens)
    if problem:
        raise LayerpolicyError(problem)
    source = str(cached_lenses(info.name)[0]) if lens is None else _local_file(lens) or lens
    try:
        loaded = JacobianLens.from_pretrained(source)
    except Exception as error:  # a damaged file, an unknown published name, no hub
        raise LayerpolicyError(
            f"cannot load lens {source}: {_first_line(error)}; fit one with "
            f"`{fit_command(info.spec)}`"
        ) from error
    check_lens(loaded, model, source)
    path = Path(source)
    record = {
        "source": source,
        "sha256": sha256_file(path) if path.is_file() else None,
        "n_prompts": loaded.n_prompts,
        "source_layers": [loaded.source_layers[0], loaded.source_layers[-1]],
        "fit": {k: v for k, v in loaded.metadata.items() if k != "processing"},
    }
    return loaded, record


def check_lens(lens: Any, model: Any, where: str) -> None:
    """Refuse, in one line, a lens fitted for another model or revision, or one whose shape or
    target does not fit `model` (TransformerLens's own validate_model, on the raw bridge)."""
    info, meta = model.info, lens.metadata.get(META_KEY) or {}
    fix = f"fit one with `{fit_command(info.spec)}`"
    if meta.get("model") not in (None, info.name):
        raise LayerpolicyError(
            f"lens {where} was fitted for {meta['model']}, not {info.name}; {fix}"
        )
    revision = model_revision(model.hf_model, info.location)
    if meta.get("revision") not in (None, revision):
        raise LayerpolicyError(
            f"lens {where} was fitted for revision {meta['revision']} of {info.name}, not "
            f"{revision}; {fix}"
        )
    try:
        lens.validate_model(model.bridge)
    except (TypeError, ValueError) as error:
        raise LayerpolicyError(
            f"lens {where} does not fit {info.name}: {_first_line(error)}; {fix}"
        ) from error
    missing = sorted(set(range(info.n_layers - 1)) - set(lens.source_layers))
    if missing:
        raise LayerpolicyError(
            f"lens {where} has no matrix for blocks {missing[:5]} of {info.name}; {fix}"
        )


class LensTransport:
    """J_l x for the sites of layer l (1-based, as `sites.Site`): layer l reads through the
    lens matrix of block l - 1; the embedding (l = 0) and the last layer (J_L = I) pass
    unchanged. Matrices are float32 on `device`; inputs [n, d_model], outputs float32."""

    def __init__(self, jacobians: Mapping[int, torch.Tensor], device: torch.device):
        self.matrices = {
            block + 1: matrix.to(device=device, dtype=torch.float32)
            for block, matrix in jacobians.items()
        }

    def __call__(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        matrix = self.matrices.get(layer)
        x = x.to(torch.float32)
        return x if matrix is None else x @ matrix.T


def _read_meta(path: Path) -> dict[str, Any]:
    """A lens file's layerpolicy metadata ({} for published artifacts or an unreadable file)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # refused with its reason when the run loads it
        return {}
    meta = payload.get("metadata") if isinstance(payload, dict) else None
    found = meta.get(META_KEY) if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def _local_file(lens: str) -> str | None:
    """The lens file a path names (a directory: its lens.pt), None when it names none."""
    path = Path(lens).expanduser()
    path = path / LENS_FILE if path.is_dir() else path
    return str(path) if path.is_file() else None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_lens_choice(spec: Any) -> None:
    """For a RunSpec reading through the Jacobian lens: refuse its lens choice in one line
    (unknown, fitted for another model, none fitted and no hub), before anything is loaded."""
    if spec.analysis.readout != "jacobian-lens":
        return
    problem = lens_choice_error(spec.model.resolve().name, spec.model.spec, spec.analysis.lens)
    if problem:
        raise LayerpolicyError(problem)


def lens_transport(model: Any, lens: str | None) -> tuple[LensTransport, dict[str, Any]]:
    """The J_l transport of `model` (a LoadedModel) through the lens `lens` names (see
    `load_lens`), on the unembedding's device, and what run.json records of the lens."""
    loaded, record = load_lens(model, lens)
    return LensTransport(loaded.jacobians, model.unembed_device), record
