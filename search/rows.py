"""Leaderboard rows from Tune trials, written as each trial ends and again from the ResultGrid at the end.

    context = SearchContext(search="resnet-20261127-2342", metric="weighted_f1", max_epochs=4, data=...)
    row = build_row(context, trial_id, config, history, error=None)

`history` is the trial's reports in order (one dict per epoch: fit's metrics plus `nodes`, `train_seconds`,
`checkpoint_path`, and Tune's `timestamp` / `time_total_s`). The row holds every TrainConfig field, the metrics of the
best epoch by the search's metric, epochs run, status and where the trial ran.

Status: "error" when the trial raised; "stopped" when it ended without error before `max_epochs` (ASHA's decision, or
the search's time budget); "finished" otherwise. `asha_stopped` is True when the scheduler (`RecordingASHA`) recorded a
stop decision below max_t for the trial, or, when no scheduler record is at hand (a resumed search's earlier trials),
when the trial stopped early and the search had no time budget.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.spaces import train_config

LOWER_IS_BETTER = {"val_loss"}
METRIC_KEYS = ("weighted_f1", "accuracy", "balanced_accuracy", "roc_auc", "macro_f1", "sensitivity", "specificity",
               "val_loss")


@dataclass
class SearchContext:
    """What every row of one search shares."""

    search: str
    metric: str
    max_epochs: int
    data_fingerprint: str = ""
    data_generated: bool = False
    data_root: str = ""
    code_version: str = ""
    time_budget_s: Optional[float] = None


_EARLY_STOPS: dict[str, set] = {}  # search name -> trial ids ASHA stopped before max_t (this driver process)


def early_stops(search: str) -> set:
    """Trial ids of `search` that the scheduler stopped early, as recorded in this process."""
    return _EARLY_STOPS.setdefault(search, set())


class RecordingASHA(ASHAScheduler):
    """ASHA that records which trials it stopped before `max_t` (a STOP at max_t is just the end of training).

    The record is a process-wide registry keyed by search name, not an attribute: Tune pickles the scheduler and the
    callbacks for `--resume` and restores copies, and both sides must still see the same record."""

    def __init__(self, *args: Any, search: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.search = search

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, math.inf) < self._max_t:
            early_stops(self.search).add(trial.trial_id)
        return decision


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_report(history: list[dict], metric: str) -> Optional[dict]:
    """The report with the best finite `metric` (ties: the earlier epoch); None when no report has one."""
    scored = [r for r in history if _finite(r.get(metric))]
    if not scored:
        return None
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return min(scored, key=lambda r: (sign * r[metric], r.get("epoch", 0)))


def is_over(context: SearchContext, trial_id: str, history: list[dict], error: Optional[str]) -> bool:
    """Whether a trial that Tune reports as ended is really over: errored, ran max_epochs, was stopped by ASHA, or
    was cut by the time budget. A trial cut short by an interrupt (Ctrl-C, a killed driver) is not: `--resume`
    continues it, so no row is written for it now."""
    if error:
        return True
    epochs = max((int(r["epoch"]) for r in with_prior_epochs(history) if _finite(r.get("epoch"))), default=0)
    return epochs >= context.max_epochs or trial_id in early_stops(context.search) or bool(context.time_budget_s)


def with_prior_epochs(history: list[dict]) -> list[dict]:
    """The reports plus the epochs before a restart that a resumed trial's first report carries (`prior_epochs`)."""
    seen = {r.get("epoch") for r in history}
    earlier = []
    for report in history:
        text = report.get("prior_epochs")
        if isinstance(text, str) and text:
            for epoch in json.loads(text):
                if epoch.get("epoch") not in seen:
                    seen.add(epoch.get("epoch"))
                    earlier.append({k: v for k, v in epoch.items() if not isinstance(v, (dict, list))})
    return earlier + list(history)


def build_row(context: SearchContext, trial_id: str, config: dict, history: list[dict], error: Optional[str] = None,
              asha_stopped: Optional[bool] = None) -> dict[str, Any]:
    """One leaderboard row (see the module docstring); `asha_stopped` None means infer it."""
    try:
        train_fields = train_config(config).to_dict()
    except (TypeError, ValueError) as bad:  # e.g. an impossible sampled value: keep what the config says
        train_fields = {k: v for k, v in config.items() if ":" not in k}
        error = error or f"config invalid: {bad}"
    history = sorted(with_prior_epochs(history), key=lambda r: (r.get("epoch", 0), r.get("timestamp", 0)))
    epochs_run = max((int(r["epoch"]) for r in history if _finite(r.get("epoch"))), default=0)
    best = best_report(history, context.metric) or {}
    last = history[-1] if history else {}
    if error:
        status = "error"
    elif epochs_run < context.max_epochs:
        status = "stopped"
    else:
        status = "finished"
    if asha_stopped is None:
        asha_stopped = trial_id in early_stops(context.search) or (status == "stopped" and not context.time_budget_s)
    nodes = sorted({n for r in history for n in str(r.get("nodes") or "").split(",") if n})
    world = int(last.get("world_size") or 1)
    speeds = [r["images_per_s"] for r in history if _finite(r.get("images_per_s"))]
    started = (last["timestamp"] - last["time_total_s"]) if _finite(last.get("timestamp")) and _finite(
        last.get("time_total_s")) else None
    row = {
        "search": context.search, "trial_id": trial_id, "metric": context.metric, "status": status,
        **train_fields,
        **{key: best.get(key) for key in METRIC_KEYS},
        "best_epoch": best.get("epoch"), "epochs_run": epochs_run, "asha_stopped": bool(asha_stopped and not error),
        "error": error, "num_parameters": last.get("num_parameters"),
        "train_seconds": last.get("train_seconds"),
        # rank 0's training images/s times the workers: the trial's throughput (every rank runs the same steps)
        "images_per_s": (sum(speeds) / len(speeds)) * world if speeds else None,
        "nodes": ",".join(nodes) or None, "checkpoint": best.get("checkpoint_path") or last.get("checkpoint_path"),
        "data_fingerprint": context.data_fingerprint, "data_generated": context.data_generated,
        "data_root": context.data_root, "code_version": context.code_version,
        "started_at": started, "finished_at": last.get("timestamp") if _finite(last.get("timestamp")) else time.time(),
    }
    return row


def _short_error(error: Any) -> Optional[str]:
    """A one-line message: the last non-empty line of a traceback or exception text (parquet cells stay small)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def rows_from_grid(context: SearchContext, grid: Any) -> list[dict]:
    """One row per ended trial of a Tune ResultGrid (its per-epoch metrics_dataframe gives the best epoch); trials
    that are not over (`is_over`) get no row, so an earlier row of theirs (written before a kill) stays as it was."""
    # skip trials an interrupt left pending or running: they are not over (--resume continues them)
    analysis = getattr(grid, "_experiment_analysis", None)
    unfinished = {t.trial_id for t in getattr(analysis, "trials", []) if t.status not in ("TERMINATED", "ERROR")}
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if isinstance(frame, pd.DataFrame) and len(frame) else []
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        error = _short_error(result.error) if result.error else None
        if trial_id in unfinished or not is_over(context, trial_id, history, error):
            continue
        rows.append(build_row(context, trial_id, dict(result.config or {}), history, error))
    return rows


def _trial_id_from_path(path: Optional[str]) -> str:
    """Tune names a trial folder `<trainable>_<trial id>_<index>_<config...>`; with a search algorithm the id is
    8 hex digits (`run_trial_374596e2_1_...`), otherwise `<8 hex>_<5 digits>`."""
    import os
    import re

    name = os.path.basename(str(path or "").rstrip("/"))
    match = re.search(r"_([0-9a-f]{8}(?:_\d{5})?)_", name)
    return match.group(1) if match else name or "unknown"


@dataclass
class LeaderboardCallback(Callback):
    """Appends each trial's row to the leaderboard the moment the trial ends, so an interrupted search keeps what
    is finished, and frees the trial's worker placement group (see search/trial.py).
    Picklable (Tune saves it with the experiment for `--resume`)."""

    context: SearchContext
    leaderboard_path: str
    history: dict = field(default_factory=dict)  # trial id -> reports seen by this process

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        keep = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}  # drop config/ nested dicts
        self.history.setdefault(trial.trial_id, []).append(keep)

    def _ended(self, trial: Any, error: Optional[str]) -> None:
        from search import leaderboard
        from search.trial import release_placement_group

        history = self.history.pop(trial.trial_id, [])
        if not history and trial.last_result and "epoch" in trial.last_result:
            history = [trial.last_result]
        last = history[-1] if history else (trial.last_result or {})
        # Tune stops a trial (ASHA below max_t, and also ASHA's STOP at max_t, which can beat the trial's own
        # return) by killing its actor, and with it the Train controller that would have removed the workers'
        # placement group. Free it here whatever the ending; removing a removed group is a no-op.
        if last.get("placement_group"):
            try:
                release_placement_group(str(last["placement_group"]))
            except Exception as failure:  # noqa: BLE001 - never let cleanup take the search down
                print(f"warning: could not free the placement group of trial {trial.trial_id}: {failure}")
        if is_over(self.context, trial.trial_id, history, error):
            row = build_row(self.context, trial.trial_id, dict(trial.config), history, error)
            leaderboard.append_rows(self.leaderboard_path, [row])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = None
        try:
            error = _short_error(trial.get_pickled_error() or trial.get_error())
        except Exception:  # noqa: BLE001 - the row matters more than the message
            pass
        self._ended(trial, error or "trial failed (no error message recorded)")


__all__ = ["SearchContext", "RecordingASHA", "LeaderboardCallback", "build_row", "rows_from_grid", "best_report",
           "early_stops", "is_over"]
