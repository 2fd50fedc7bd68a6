"""Small and accurate: the objectives of a multi-objective search and the Pareto front of its leaderboard rows.

    check_objectives(["balanced_accuracy", "num_parameters"])    # ValueError naming --objectives when bad
    metric, mode = searcher_objectives(metric, objectives)   # "balanced_accuracy", "max"
                                                             # or [..., "num_parameters"], ["max", "min"]
    pareto_flags([[0.81, 2.1e5], [0.80, 9e3], [0.79, 4e4]], ["max", "min"])   # -> [True, True, False]
    rows = marked_search(board_path, "mo-1", rows, objectives)  # every row of the search, `pareto` set

The first objective is a validation metric, maximised: the scheduler (ASHA) stops trials on it and the leaderboard
ranks by it. The others are metric columns (val_loss minimised, the rest maximised) or `num_parameters` (minimised).
The front is taken over the search's finished and stopped trials, with each row's values (the metrics at its best
epoch by the first objective, whose checkpoint is kept), so it can differ from the Optuna study's own front, which
holds each trial's last epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from leukmodels.metrics import LOWER_IS_BETTER, SCALAR_METRICS
from leukmodels.values import finite_or
from search.board import leaderboard

SIZE = "num_parameters"
OBJECTIVES = (*SCALAR_METRICS, "val_loss", SIZE)  # what --objectives accepts
FRONT_STATUSES = ("finished", "stopped")  # an errored or time-budget-cut trial is never on the front
TOLERANCE = 0.01  # "within one point": the smallest model at most this far below the best first objective


def direction(objective: str) -> str:
    """"min" for the size and the losses, "max" for every other metric."""
    return "min" if objective == SIZE or objective in LOWER_IS_BETTER else "max"


def check_objectives(objectives: Sequence[str], first_choices: Sequence[str]) -> None:
    """ValueError naming --objectives and the bad value: unknown, repeated, fewer than two, or a first objective
    that is not a maximised validation metric (`first_choices`)."""
    unknown = [name for name in objectives if name not in OBJECTIVES]
    if unknown:
        raise ValueError(f"--objectives {unknown[0]}: unknown objective; choose from {', '.join(OBJECTIVES)} "
                         f"(latency is not measured: see --help)")
    if len(set(objectives)) < 2:
        raise ValueError(f"--objectives {' '.join(objectives)}: give two or more different objectives "
                         f"(one objective is --metric)")
    if objectives[0] not in first_choices:
        raise ValueError(f"--objectives {objectives[0]} first: the first objective is the metric ASHA stops on and "
                         f"the leaderboard ranks by; choose one of {', '.join(first_choices)}")


def searcher_objectives(metric: str, objectives: Optional[list[str]]) -> tuple[Any, Any]:
    """(metric, mode) for OptunaSearch: `metric` and "max", or, with --objectives, a list of each."""
    objectives = list(objectives or [])
    if not objectives:
        return metric, "max"
    return objectives, [direction(name) for name in objectives]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b in every objective and better in one (values already signed: larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_flags(points: Sequence[Sequence[Any]], modes: Sequence[str]) -> list[bool]:
    """For N points of K objective values (with K modes "max"/"min"): whether each is on the Pareto front, i.e. no
    other point dominates it. A point with a missing or non-finite value is never on it; equal points all are.
    O(N^2 K): a search has tens to hundreds of trials."""
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    signed = []
    for point in points:
        values = [finite_or(v) for v in point]
        signed.append(None if None in values else [s * v for s, v in zip(signs, values)])
    return [a is not None and not any(b is not None and dominates(b, a) for b in signed) for a in signed]


def mark_front(rows: list[dict], objectives: Sequence[str]) -> list[dict]:
    """The rows with `pareto` set over those whose status is finished or stopped (the others get False)."""
    eligible = [row for row in rows if row.get("status") in FRONT_STATUSES]
    flags = pareto_flags([[row.get(name) for name in objectives] for row in eligible],
                         [direction(name) for name in objectives])
    on_front = {id(row) for row, flag in zip(eligible, flags) if flag}
    return [{**row, "pareto": id(row) in on_front} for row in rows]


def marked_search(board_path: Path, search: str, rows: list[dict], objectives: Sequence[str]) -> list[dict]:
    """Every row of `search` to write back once it ends: the ones already in the leaderboard (trials that ended in
    an earlier run of a resumed search) overlaid with `rows`, each with its `pareto` flag."""
    earlier = []
    if leaderboard.exists(board_path):
        earlier = leaderboard.search_rows(board_path, search).to_dict("records")
    merged = {row["trial_id"]: row for row in earlier}
    merged.update({row["trial_id"]: row for row in rows})
    return mark_front(list(merged.values()), objectives)


# -- what a person reads: the front, size against the first objective ------------------------------------------------
def front_of(rows: Any) -> Any:
    """A search's rows (a leaderboard frame) on its front, smallest model first."""
    flagged = rows[rows["pareto"].fillna(False).astype(bool)] if "pareto" in rows else rows.iloc[:0]
    return flagged.sort_values(SIZE, kind="stable")


def smallest_within(rows: Any, tolerance: float = TOLERANCE) -> Optional[tuple[Any, Any]]:
    """(the best row by the first objective, the smallest row at most `tolerance` below it) over the finished and
    stopped rows with a size; None when there are none. Ties in size go to the better score."""
    metric = rows["metric"].iloc[0] if len(rows) else None
    usable = rows[rows["status"].isin(FRONT_STATUSES)].dropna(subset=[SIZE, metric]) if metric else rows
    if not len(usable):
        return None
    best = usable.sort_values(metric, ascending=False, kind="stable").iloc[0]
    close = usable[usable[metric] >= best[metric] - tolerance - 1e-12]  # 0.13 - 0.01 > 0.12 in floating point
    smallest = close.sort_values([SIZE, metric], ascending=[True, False], kind="stable").iloc[0]
    return best, smallest


def _size(count: Any) -> str:
    count = int(count)
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k" if count >= 1e3 else str(count)


def pick_line(rows: Any, tolerance: float = TOLERANCE) -> Optional[str]:
    """One sentence naming the smallest model within `tolerance` of the best first objective."""
    found = smallest_within(rows, tolerance)
    if found is None:
        return None
    best, small = found
    metric = str(best["metric"])
    ratio = int(best[SIZE]) / max(1, int(small[SIZE]))
    same = small["trial_id"] == best["trial_id"]
    return (f"smallest model within {tolerance:g} of the best {metric} ({best[metric]:.3f}, {best['trial_id']}, "
            f"{_size(best[SIZE])} parameters): " + ("the best itself" if same else
            f"{small['trial_id']} ({small['family']}), {_size(small[SIZE])} parameters, {metric} "
            f"{small[metric]:.3f}, {ratio:.1f}x smaller"))


def front_lines(rows: Any, tolerance: float = TOLERANCE) -> list[str]:
    """Console lines for a multi-objective search's rows: its front, smallest first, and the pick."""
    if not len(rows) or "pareto" not in rows or not rows["objectives"].notna().any():
        return []
    objectives = str(rows["objectives"].dropna().iloc[0]).split(",")
    front = front_of(rows)
    lines = [f"pareto front of {rows['search'].iloc[0]} ({', '.join(f'{o} {direction(o)}' for o in objectives)}): "
             f"{len(front)} of {len(rows)} trials, smallest first"]
    for _, row in front.iterrows():
        values = ", ".join(f"{o} {row[o]:.3f}" for o in objectives if o != SIZE)
        lines.append(f"  {row['trial_id']} {row['family']:<10} {_size(row[SIZE]):>8} parameters  {values}")
    pick = pick_line(rows, tolerance)
    return lines + ([pick] if pick else [])


__all__ = ["OBJECTIVES", "SIZE", "TOLERANCE", "direction", "check_objectives", "searcher_objectives",
           "pareto_flags", "mark_front", "marked_search", "front_of", "smallest_within", "pick_line",
           "front_lines"]
