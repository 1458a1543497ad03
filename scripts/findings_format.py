"""The files `make figures` writes into figures/ and the prose formats every README block shares.

Entropies are in nats; numbers are quoted to three decimals, durations as prose quotes them.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from layerpolicy.tables.schema import COMPARISON_INT_COLUMNS, COMPARISON_TEXT_COLUMNS

RECORD, COMPARISON, SUMMARY = "record.json", "comparison.csv", "summary.csv"
SHOWCASE, SHOWCASE_LOG = "showcase.csv", "showcase_train_log.csv"
SHOWCASE_DIFFERENCE = "showcase_difference.csv"
ENTROPY_OUTPUT, COMPARE_OUTPUT = "entropy_output.txt", "compare_output.txt"
TERMINAL_WIDTH = 100  # columns of the terminal the Quick tour's outputs are rendered for
READOUTS = {"raw": "raw", "logit-lens": "logit lens"}
WIDTH = 100  # prose is wrapped at this many columns, as the rest of the README


def read_comparison(path: Path) -> pd.DataFrame:
    """comparison.csv with the dtypes `comparison_table` gives it (integers stay integers)."""
    columns = pd.read_csv(path, nrows=0).columns
    types = {c: "Int64" for c in COMPARISON_INT_COLUMNS} | {
        c: object for c in COMPARISON_TEXT_COLUMNS
    }
    return pd.read_csv(path, dtype={c: t for c, t in types.items() if c in columns})


def wrap(part: str) -> str:
    """A prose paragraph wrapped at WIDTH (code spans and links kept whole); tables, images,
    headings and code blocks kept as they are."""
    if part.startswith(("|", "<img", "#", "```")) or "\n```" in part:
        return part
    kept = re.sub(r"`[^`]*`|\[[^\]]*\]\([^)]*\)", lambda m: m[0].replace(" ", "\0"), part)
    wrapped = textwrap.fill(kept, WIDTH, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " ")


def thinking_phrase(models: list[dict[str, Any]]) -> str:
    """How the chat templates were applied, from each model's recorded thinking mode; a model
    packaged without a chat template (`chat_template` False) reads the problem as plain text."""
    plain = [m["name"] for m in models if m.get("chat_template") is False]
    templated = [m for m in models if m.get("chat_template") is not False]
    if not plain:
        return _template_phrase(models)
    without = (
        f"{', '.join(plain)} without one (a pretrained model with no chat template: the problem "
        "as plain text)"
    )
    return f"{_template_phrase(templated)}; {without}" if templated else without


def _template_phrase(models: list[dict[str, Any]]) -> str:
    """How the chat templates of `models` were applied, from their recorded thinking modes."""
    modes = {m["thinking"] for m in models}
    if modes == {None}:
        return "with the chat template, which has no thinking switch here (no thinking mode)"
    if modes == {False}:
        return "chat template in its no-thinking mode"
    words = {None: "no thinking switch", False: "no-thinking mode", True: "thinking mode"}
    return (
        "chat template applied ("
        + ", ".join(f"{m['name']}: {words[m['thinking']]}" for m in models)
        + ")"
    )


def lens_reads_raw_responses(models: list[dict[str, Any]]) -> bool:
    """True when every model's logit-lens run scored its raw run's saved responses."""
    return all(m.get("lens_reads_raw_responses") for m in models)


def count_word(n: int) -> str:
    """`n` as an English word where it is small ("three"), else as digits."""
    return {2: "two", 3: "three", 4: "four", 5: "five"}.get(n, str(n))


def img(name: str, width: str) -> str:
    """An image of figures/ at `width` of the page."""
    return f'<img src="figures/{name}" width="{width}">'


def device_phrase(device: str) -> str:
    """Where a run ran, as prose: "the CPU", "a GPU (cuda:0)"."""
    return "the CPU" if device == "cpu" else f"a GPU ({device})" if "cuda" in device else device


def duration(seconds: float) -> str:
    """A duration in s, min or h, rounded as prose quotes it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def ci(mean: float, low: float, high: float, *, signed: bool = False) -> str:
    """`mean [low, high]` to three decimals (with signs when `signed`)."""
    fmt = "+.3f" if signed else ".3f"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


CHANGE_WORDS = ("rose", "fell", "did not change measurably (CI includes 0)")


def change_word(low: float, high: float, words: tuple[str, str, str] = CHANGE_WORDS) -> str:
    """What an interval of a difference says: `words` for above 0, below 0, and including 0
    (default: after − before)."""
    if low > 0:
        return words[0]
    if high < 0:
        return words[1]
    return words[2]


def num(value: Any, missing_text: str) -> str:
    """`value` to three decimals, `missing_text` where there is none."""
    return missing_text if missing(value) else f"{value:.3f}"


def missing(value: Any) -> bool:
    """Whether a table cell holds no value (None, NA or NaN)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
