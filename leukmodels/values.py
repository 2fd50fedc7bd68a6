"""Missing and non-finite values, decided in one place: a leaderboard cell, a Tune report or a metric may be None,
pandas' NA/NaT, NaN or infinite, and every reader asks one of the questions here.

    missing(float("nan")), missing(pd.NA), missing(None)  # True: no value
    finite_or(np.float64(0.5)), finite_or(math.inf)       # 0.5, None: a finite number as float, else the default
    plain(np.int64(3)), plain(pd.NA)                      # 3, None: a cell as the plain Python value
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

import numpy as np


def missing(value: Any) -> bool:
    """None, pandas' NA or NaT, or a NaN (Python or numpy float): a cell or report with no value."""
    return value is None or _pandas_missing(value) or (
        isinstance(value, (float, np.floating)) and math.isnan(value))


def _pandas_missing(value: Any) -> bool:
    """pandas' NA or NaT. Only a process that imported pandas can hold one, so this module does not import it:
    a Train worker, which checks every report with `finite_or`, starts 0.2 s sooner."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def finite_or(value: Any, default: Optional[float] = None) -> Optional[float]:
    """`value` as a float when it is a finite number (int, float or a numpy number; a bool is not), else `default`:
    for a missing value, NaN, +-inf, text or anything else."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return default
    number = float(value)
    return number if math.isfinite(number) else default


def plain(value: Any) -> Any:
    """A parquet or pandas cell as the plain Python value (numpy scalars unwrapped), None for a missing one."""
    value = value.item() if hasattr(value, "item") else value
    return None if missing(value) else value


__all__ = ["finite_or", "missing", "plain"]
