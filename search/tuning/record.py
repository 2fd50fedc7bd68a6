"""One record per trial, turned from Tune's reports in one place, and the run that holds them: what a search knows.

    run = SearchRun(deadline=time.time() + 3600)     # created by the search (tuner.run_search; rerank its own)
    callbacks = [TrialRecorder(run), LeaderboardCallback(context, path, run), ConsoleCallback(..., run=run)]
    record = run.trials["374596e2"]                   # its reports, best epoch, status, times, error, exploits

`TrialRecorder` (first in the callback list: Tune calls callbacks in list order) files each report and start and end
into the trial's `TrialRecord`; the console, the leaderboard row written when a trial ends and the rows written from
the ResultGrid at the end (`record_of_result`) all read a record. The run also holds what the scheduler and the
searcher decide (early stops) and the deadline. A record's reports are in the order Tune delivered them (a restarted
trial's first report carries the epochs before the restart); a row ranks the reports since the last PBT exploit.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from leukmodels.values import finite_or
from leukmodels.metrics import best_report  # the one best-epoch rule, the core's (later epoch on ties)
from search.tuning.trial import EXPLOITED_FROM, PRIOR_EPOCHS


def epochs_run(history: list[dict]) -> int:
    epochs = (finite_or(r.get("epoch")) for r in with_prior_epochs(history))
    return max((int(epoch) for epoch in epochs if epoch is not None), default=0)


def with_prior_epochs(history: list[dict]) -> list[dict]:
    """The reports plus the epochs before a restart that a resumed trial's first report carries (`prior_epochs`)."""
    seen = {r.get("epoch") for r in history}
    earlier = []
    for report in history:
        text = report.get(PRIOR_EPOCHS)
        if isinstance(text, str) and text:
            for epoch in json.loads(text):
                if epoch.get("epoch") not in seen:
                    seen.add(epoch.get("epoch"))
                    earlier.append({k: v for k, v in epoch.items() if not isinstance(v, (dict, list))})
    return earlier + list(history)


def exploits(history: list[dict]) -> list[str]:
    """"<donor>@<epoch>" for each time PBT replaced the trial's weights, in report order."""
    return [report[EXPLOITED_FROM] for report in history if _is_exploit(report)]


def _is_exploit(report: dict) -> bool:
    return isinstance(report.get(EXPLOITED_FROM), str) and bool(report[EXPLOITED_FROM])  # NaN in a data frame


def since_last_exploit(history: list[dict]) -> list[dict]:
    """The reports (in report order) of the weights the trial ended with: those from its last exploit on."""
    marks = [i for i, report in enumerate(history) if _is_exploit(report)]
    return history[marks[-1]:] if marks else history


def trained_seconds(history: list[dict]) -> Optional[float]:
    """Seconds in the training function over all of a trial's runs, from reports in report order: `train_seconds`
    starts again from 0 with each run (a PBT round, a retry, a resume), so the last value of each run is added up."""
    total, last = 0.0, None
    for report in history:
        value = report.get("train_seconds")
        if finite_or(value) is None:
            continue
        if last is not None and value < last:
            total += last
        last = float(value)
    return None if last is None else total + last


def with_checkpoint_paths(history: list[dict], trial_path: Optional[str]) -> list[dict]:
    """Reports of a one-worker trial name their checkpoint by folder (`checkpoint_dir_name`, under the trial's
    storage path); DDP trials report the full `checkpoint_path`. Give every report a `checkpoint_path`."""
    out = []
    for report in history:
        name = report.get("checkpoint_dir_name")
        if not report.get("checkpoint_path") and isinstance(name, str) and name and trial_path:
            report = {**report, "checkpoint_path": f"{str(trial_path).rstrip('/')}/{name}"}
        out.append(report)
    return out


def result_trial_id(result: Any) -> str:
    """The trial id of a Tune Result: from its last report, else from its folder's name."""
    return (result.metrics or {}).get("trial_id") or trial_id_from_path(result.path)


def trial_id_from_path(path: Optional[str]) -> str:
    """Tune names a trial folder `<trainable>_<trial id>_<index>_<config...>`; with a search algorithm the id is
    8 hex digits (`run_trial_374596e2_1_...`), with Tune's own generator (PBT's population) `<5 hex>_<5 digits>`."""
    name = os.path.basename(str(path or "").rstrip("/"))
    match = re.search(r"_([0-9a-f]{8}(?:_\d{5})?|[0-9a-f]{5}_\d{5})_", name)
    return match.group(1) if match else name or "unknown"



@dataclass
class TrialRecord:
    """One trial as this search saw it: its reports (flat, in Tune's delivery order, each naming its checkpoint),
    its error, and its wall time from start to end as the driver saw it."""

    trial_id: str
    reports: list = field(default_factory=list)
    error: Optional[str] = None
    started: Optional[float] = None  # time.time() when this process saw it start; None once it ended
    wall_seconds: Optional[float] = None

    def add(self, result: dict, trial_path: Optional[str]) -> None:
        flat = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}  # drop config/ nested dicts
        self.reports.extend(with_checkpoint_paths([flat], trial_path))

    def exploits(self) -> list[str]:
        return exploits(self.reports)

    def ranked_reports(self) -> list[dict]:
        """The reports a row ranks, by epoch: after a PBT exploit those of the weights the trial ended with (the
        donor's epochs are not this trial's), else every epoch including those before a restart."""
        reports = since_last_exploit(self.reports) if self.exploits() else with_prior_epochs(self.reports)
        return sorted(reports, key=lambda r: (r.get("epoch", 0), r.get("timestamp", 0)))

    def best(self, metric: str) -> Optional[dict]:
        return best_report(self.ranked_reports(), metric)

    def epochs_run(self) -> int:
        return epochs_run(self.ranked_reports())

    def trained_seconds(self) -> Optional[float]:
        return trained_seconds(self.reports)

    def overhead_seconds(self) -> Optional[float]:
        """The trial's time as the driver saw it that was not spent in the training function."""
        if self.wall_seconds is None:
            return None
        return max(0.0, self.wall_seconds - (self.trained_seconds() or 0.0))


@dataclass
class SearchRun:
    """What this driver process knows of a running search: its trials' records, the trials its scheduler stopped
    early, its deadline. Owned by the search; the callbacks, scheduler, stopper and searcher that need it hold it.
    Pickled (Tune saves those objects for `--resume`) it is an empty one: a resumed driver hands its own run to the
    restored objects (search/tuning/tuner.py)."""

    deadline: Optional[float] = None  # wall-clock time (time.time()) at which the time budget ends the search
    launched: float = field(default_factory=time.time)  # when this process launched (or resumed) the search
    early_stops: set = field(default_factory=set)  # trial ids the scheduler stopped before max_epochs
    trials: dict = field(default_factory=dict)  # trial id -> TrialRecord

    def __reduce__(self) -> tuple:
        return SearchRun, ()

    def __deepcopy__(self, memo: dict) -> "SearchRun":
        return self  # one run per search: copies of its holders share it

    def budget_spent(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def record(self, trial_id: str) -> TrialRecord:
        return self.trials.setdefault(trial_id, TrialRecord(trial_id))

    def status(self, record: TrialRecord, max_epochs: int) -> Optional[str]:
        """How a trial that Tune reports as ended ended: a leaderboard status, or None when it is not over (an
        interrupt cut it short: `--resume` continues it, so it gets no row now)."""
        if record.error:
            return "error"
        if record.epochs_run() >= max_epochs:
            return "finished"
        if record.trial_id in self.early_stops:
            return "stopped"
        if self.budget_spent():
            return "time_budget"
        return None


def record_of(run: SearchRun, trial: Any) -> TrialRecord:
    """The run's record of a Tune trial; when this process saw no report of it (a trial restored by `--resume` that
    ended at once), its last result stands in."""
    record = run.record(trial.trial_id)
    if not record.reports and trial.last_result and "epoch" in trial.last_result:
        record.add(trial.last_result, trial.path)
    return record


def record_of_result(run: SearchRun, result: Any, error: Optional[str]) -> TrialRecord:
    """A record from a Tune Result of the ResultGrid: every report of the trial, also those of an earlier driver's
    run of the search (the run's own record has only this process's), with the wall time this process saw."""
    frame = result.metrics_dataframe
    trial_id = result_trial_id(result)
    mine = run.trials.get(trial_id)
    record = TrialRecord(trial_id, error=error, wall_seconds=mine.wall_seconds if mine else None)
    for report in (frame.to_dict("records") if frame is not None and len(frame) else []):
        record.reports.extend(with_checkpoint_paths([report], result.path))
    return record


class TrialRecorder(Callback):
    """Files Tune's reports, starts and ends into the run's records. First in the callback list, so the callbacks
    after it read an up-to-date record. Holds no state of its own."""

    def __init__(self, run: SearchRun) -> None:
        self.run = run

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.run.record(trial.trial_id)
        if record.started is None:  # PBT restarts a trial every round: its wall time runs from its first start
            record.started = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.run.record(trial.trial_id).add(result, trial.path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, trial_error(trial))

    def _ended(self, trial: Any, error: Optional[str]) -> None:
        record = record_of(self.run, trial)
        record.error = error
        if record.started is not None:
            record.wall_seconds, record.started = time.time() - record.started, None


def short_error(error: Any) -> Optional[str]:
    """A one-line message: the last non-empty line of a traceback or exception text (parquet cells stay small)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def trial_error(trial: Any) -> str:
    """The one-line cause of a trial's failure: from the trial's local error file (Tune writes it before it calls
    back; the copy in the storage may not be synced yet), else from the storage."""
    try:
        local = trial.error_file
        text = Path(local).read_text() if local and os.path.isfile(local) else None
        return short_error(text or trial.get_pickled_error() or trial.get_error()) or "trial failed (no error recorded)"
    except Exception:  # noqa: BLE001 - the row matters more than the message
        return "trial failed (no error message recorded)"


__all__ = ["SearchRun", "TrialRecord", "TrialRecorder", "record_of", "record_of_result", "best_report",
           "epochs_run", "exploits", "since_last_exploit", "trained_seconds", "result_trial_id", "trial_id_from_path",
           "with_checkpoint_paths", "with_prior_epochs", "short_error", "trial_error"]
