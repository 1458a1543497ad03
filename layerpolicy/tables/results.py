"""What reports and tables read from a result: the protocols an analysis and a comparison meet.

Reports and tables name these, never the result classes (`layerpolicy.analysis`,
`layerpolicy.comparison`), so the API modules can draw and tabulate without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd


class RunTables(Protocol):
    """One analysis: its token table, summary (docs/tables.md), run.json record and directory."""

    tokens: pd.DataFrame
    summary: pd.DataFrame
    record: dict[str, Any]
    path: Path | None


class ComparisonTables(Protocol):
    """One comparison: its shape table, reading, runs, notes and figures."""

    comparison: pd.DataFrame
    reading: str
    runs: Mapping[str, Path]
    notes: list[str]
    figures: list[Path]
