"""How sure one validation split is of each trial: the metric's patient-bootstrap interval as the console shows it,
and the trials statistically tied with the winner.

The interval of every validation metric comes with each epoch's report (`<metric>_lo`/`<metric>_hi`, computed by
leukmodels.metrics.patient_interval over the validation patients) and the leaderboard keeps the ranking metric's as
`metric_lo`/`metric_hi`. Tie rule (leukmodels.metrics.tied_with): a trial is tied with the winner when its value is at
or above the winner's lower bound, i.e. inside the winner's 95% interval; the validation patients cannot order them.
"""
from __future__ import annotations

from typing import Any, Optional

from leukmodels.metrics import interval_keys, tied_with
from leukmodels.values import finite_or

SHOWN_TIES = 8  # trial ids named in the tie line; the rest are counted


def interval_text(report: dict, metric: str) -> str:
    """" [0.741-0.883]" from a report's `<metric>_lo`/`<metric>_hi`, or "" when it has none (e.g. val_loss)."""
    lo, hi = (report.get(key) for key in interval_keys(metric))
    return f" [{lo:.3f}-{hi:.3f}]" if finite_or(lo) is not None and finite_or(hi) is not None else ""


def tie_line(mine: Any) -> Optional[str]:
    """One line naming the trials tied with the winner of a ranked search table (rows in rank order, the columns
    metric, metric_lo, metric_hi, status), or saying that none is; None without the winner's interval."""
    if not len(mine) or "metric_lo" not in mine.columns:
        return None
    winner = mine.iloc[0]
    metric = str(winner["metric"])
    lo, hi, value = winner["metric_lo"], winner["metric_hi"], winner[metric]
    if None in (finite_or(lo), finite_or(hi), finite_or(value)) or winner["status"] == "error":
        return None
    others = mine.iloc[1:]
    tied = [(row["trial_id"], float(row[metric])) for _, row in others.iterrows()
            if row["status"] != "error" and finite_or(row[metric]) is not None
            and tied_with(float(lo), float(row[metric]))]
    head = (f"winner {winner['trial_id']}: {metric} {value:.3f}, 95% patient-bootstrap interval {lo:.3f}-{hi:.3f}")
    if not tied:
        return f"{head}; no other trial reaches its lower bound"
    named = ", ".join(f"{trial} {score:.3f}" for trial, score in tied[:SHOWN_TIES])
    more = f" and {len(tied) - SHOWN_TIES} more" if len(tied) > SHOWN_TIES else ""
    return (f"{head}; TIED with it (at or above its lower bound, the validation patients cannot order them): "
            f"{named}{more}; --cv 3 validates on every patient")


__all__ = ["SHOWN_TIES", "interval_text", "tie_line"]
