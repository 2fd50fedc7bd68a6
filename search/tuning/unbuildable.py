"""A sampled config that cannot be built fails once: Tune retries a crashed node, not a deterministic config error.

With several `--image-sizes` the size is drawn after the family's fields, so a config such as baseline depth 5 at
24 px can still be drawn; `run_trial` refuses it on the meta device (`check_buildable`, milliseconds). Tune 2.60 has
no non-retryable exception: every failure is retried while `trial.max_failures` allows, so the trial was started
`--max-failures` + 1 times before it became an error. `NoRetryForUnbuildable` runs the same check on the driver when
a trial starts and sets that trial's own `max_failures` to 0: its first failure ends it as ERROR, and Tune tells the
searcher (`on_trial_complete(error=True)`), which records the Optuna trial as FAIL (infeasible).
"""
from __future__ import annotations

from typing import Any

from ray.tune import Callback

from search.tuning.spaces import check_buildable, train_config


def build_error(config: dict) -> str | None:
    """Why the sampled `config` cannot be built ("image_size=24 is too small for baseline with depth=5"), or None."""
    try:
        check_buildable(train_config(config))
    except ValueError as failure:
        return str(failure)
    return None


class NoRetryForUnbuildable(Callback):
    """Gives a trial whose config cannot be built no retries (Tune reads `trial.max_failures` on each failure).
    Holds no state: Tune pickles it for `--resume`."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if build_error(dict(trial.config)) is not None:
            trial.max_failures = 0


__all__ = ["NoRetryForUnbuildable", "build_error"]
