"""The search driver's side of search/tuning/timeline.py: Tune's start, results and end of each trial (a module of its own so
that Train workers, which import search/tuning/timeline.py, do not import Ray Tune)."""
from __future__ import annotations

from typing import Any

from ray.tune import Callback

from search.tuning.timeline import mark


class TimelineCallback(Callback):
    """Marks each trial's start, results and end as the search's driver sees them."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mark(trial.trial_id, "tune_trial_start")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        mark(trial.trial_id, "tune_result", epoch=result.get("epoch"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mark(trial.trial_id, "tune_trial_end")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mark(trial.trial_id, "tune_trial_end", error=True)


__all__ = ["TimelineCallback"]
