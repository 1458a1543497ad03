"""Single values of the tables: the one missing-value test and the one interval format."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def is_missing(value: object) -> bool:
    """True for None, pd.NA and NaN (an undefined statistic or an empty cell)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def interval(mean: float, low: float, high: float, fmt: str = ".2f") -> str:
    """`mean [low, high]`, e.g. a mean with its 95% CI."""
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
