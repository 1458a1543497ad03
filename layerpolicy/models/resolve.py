"""Turn a model spec (alias, packaged or tiny name, directory, .gguf, hub id) into a source."""

from __future__ import annotations

import difflib
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError, OfflineError
from .registry import ALIAS_FAMILY, ALIASES, FAMILY_FALLBACK, PACKAGED_MODELS
from .tiny import TINY_ARCHITECTURES, TINY_PREFIX

HUB_CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    kind: "hub" (location is a hub id), "local" (a Hugging Face directory), "gguf" (a .gguf file),
    "packaged" (location is a packaged name), "tiny" (location is a tiny architecture name).
    name: the model actually used, as results record it. note: one line for the user (a fallback).
    """

    spec: str
    kind: str
    location: str
    name: str
    note: str | None = None


def known_names() -> list[str]:
    """Every name the resolver accepts besides paths and hub ids."""
    tiny = [TINY_PREFIX + arch for arch in TINY_ARCHITECTURES]
    return sorted(ALIASES) + sorted(PACKAGED_MODELS) + tiny


def hub_reachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """True when the Hugging Face hub answers a TCP connection within `timeout` seconds.

    HF_HUB_OFFLINE=1 counts as unreachable. Costs at most `timeout`, never transformers' retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline_alternatives() -> str:
    return ", ".join(sorted(PACKAGED_MODELS))


def resolve_spec(spec: str, *, offline: bool | None = None) -> ModelSource:
    """Resolve `spec`; `offline=None` checks the hub only when a hub id or alias needs it."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError("empty model spec; run `layerpolicy models` to list models")
    lowered = spec.lower()
    if lowered.startswith(TINY_PREFIX) and lowered[len(TINY_PREFIX) :] in TINY_ARCHITECTURES:
        return ModelSource(spec, "tiny", lowered[len(TINY_PREFIX) :], lowered)
    if lowered in PACKAGED_MODELS:
        return ModelSource(spec, "packaged", lowered, lowered)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}; check the path")
        return ModelSource(spec, "gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json; point --model at a Hugging Face model directory"
            )
        return ModelSource(spec, "local", str(path.resolve()), path.resolve().name)
    if lowered in ALIASES:
        return _resolve_alias(spec, lowered, offline)
    if _looks_like_hub_id(spec):
        if offline or (offline is None and not hub_reachable()):
            why = "--offline was given" if offline else "the Hugging Face hub cannot be reached"
            raise OfflineError(
                f"{spec} needs the hub but {why}; use a packaged model "
                f"({_offline_alternatives()}), a local directory or a .gguf file"
            )
        return ModelSource(spec, "hub", spec, spec)
    close = difflib.get_close_matches(lowered, known_names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelNotFoundError(
        f"unknown model {spec!r}: not an alias, packaged name, directory, .gguf file or hub id; "
        f"{hint}run `layerpolicy models` to list models"
    )


def _resolve_alias(spec: str, alias: str, offline: bool | None) -> ModelSource:
    hub_id = ALIASES[alias]
    if not offline and (offline is False or hub_reachable()):
        return ModelSource(spec, "hub", hub_id, hub_id)
    packaged = FAMILY_FALLBACK[ALIAS_FAMILY[alias]]
    why = "--offline" if offline else "hub unreachable"
    note = (
        f"{alias} -> {packaged} ({why}; the packaged model of the same family instead of {hub_id})"
    )
    return ModelSource(spec, "packaged", packaged, packaged, note)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))
