"""The run format: its version, the check of recorded settings, and the versions run.json records.

Format 2 records every setting that changes results (`layerpolicy.spec.RunSpec.settings`) with
"format_version"; a record of another format is refused with one line naming the fix.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from .errors import RunDirectoryError

FORMAT_VERSION = 2
PACKAGES = ("layerpolicy", "torch", "transformers", "transformer-lens", "pandas", "numpy")


def check_settings(
    previous: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    where: str,
    allowed: Iterable[str] = (),
    fix: str = "use another --out or --force to overwrite it",
) -> None:
    """Raise one line naming the keys whose values differ (keys in `allowed` may differ); a
    record of another format is refused first. `where`: e.g. "runs/x holds a run"."""
    check_format(previous, where)
    skip = set(allowed)
    changed = sorted(
        key
        for key in {**previous, **current}
        if key not in skip and previous.get(key) != current.get(key)
    )
    if changed:
        raise RunDirectoryError(f"{where} with other settings ({', '.join(changed)}); {fix}")


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that decide the numbers."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_format(recorded: Mapping[str, Any], where: str) -> None:
    """Raise one line unless `recorded` (run.json, or its settings) is of this format; `where`:
    e.g. "runs/x holds a run"."""
    settings = recorded.get("settings", recorded)
    version = settings.get("format_version", recorded.get("format_version", 1))
    if version != FORMAT_VERSION:
        raise RunDirectoryError(
            f"{where} of format {version} (this layerpolicy reads format "
            f"{FORMAT_VERSION}); rerun the command that made it with --force"
        )
