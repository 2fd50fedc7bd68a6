"""The benchmark's figures: best validation metric so far against epochs or seconds, one line per strategy (median
over seeds) with its min-max band. Pure: frames in, a matplotlib figure out.
"""
from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A step curve (x ascending) read at `grid`: the last y at or before each point (held after the curve ends, as
    the search's best stays what it found); NaN before its first point."""
    index = np.searchsorted(np.asarray(x, dtype=float), grid, side="right") - 1
    values = np.asarray(y, dtype=float)[np.clip(index, 0, None)] if len(x) else np.full(len(grid), np.nan)
    return np.where(index >= 0, values, np.nan)


def bands(curves: pd.DataFrame, x: str, grid: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """strategy -> (median, min, max) over its seeds of the best-so-far curve read at `grid` (each len(grid)); NaN
    past the strategy's last point on any seed, so a line ends where the strategy stopped training."""
    out = {}
    for strategy, mine in curves.groupby("strategy", sort=False):
        stacked = np.vstack([on_grid(c[x].to_numpy(), c["best"].to_numpy(), grid) for _, c in mine.groupby("seed")])
        stacked[:, grid > mine[x].max()] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any seed's first point
            out[strategy] = (np.nanmedian(stacked, axis=0), np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0))
    return out


def curve_figure(curves: pd.DataFrame, x: str, metric: str, title: str, baseline: str, target: float = math.nan):
    """Best-so-far validation metric against `x` ("epochs" or "seconds"): one line per strategy (median over seeds)
    with the min-max band over seeds, and the baseline's final best (median over seeds) as a dotted line."""
    end = float(curves[x].max()) if len(curves) else 1.0
    grid = np.arange(1, int(end) + 1, dtype=float) if x == "epochs" else np.linspace(0.0, end, 400)
    figure, axes = plt.subplots(figsize=(8, 5))
    for strategy, (median, low, high) in bands(curves, x, grid).items():
        line, = axes.step(grid, median, where="post", label=strategy)
        axes.fill_between(grid, low, high, step="post", alpha=0.1, color=line.get_color())
        last = np.flatnonzero(~np.isnan(median))
        if len(last):  # where its longest seed ended
            axes.plot(grid[last[-1]], median[last[-1]], "o", color=line.get_color())
    if math.isfinite(target):
        axes.axhline(target, linestyle=":", color="black", label=f"{baseline}'s final best (median over seeds)")
    axes.set_xlabel("epochs trained (all trials, cumulative)" if x == "epochs" else "wall seconds since the first "
                    "trial began")
    axes.set_ylabel(f"best validation {metric} so far")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


__all__ = ["bands", "curve_figure", "on_grid"]
