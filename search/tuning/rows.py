"""A trial as the search saw it and its leaderboard row: one record per trial, turned from Tune's reports in one
place, the run that holds the records, and the rows built from them (as each trial ends and from the ResultGrid at
the end).

    run = SearchRun(deadline=time.time() + 3600)     # created by the search (tuner.run_search; rerank its own)
    callbacks = [TrialRecorder(run), LeaderboardCallback(context, path, run), ConsoleCallback(..., run=run)]
    record = run.trials["374596e2"]                   # its reports, best epoch, status, times, error, exploits
    row = build_row(context, run, record, config)     # context: what every row of the search shares

`TrialRecorder` (first in the callback list: Tune calls callbacks in list order) files each report and start and end
into the trial's `TrialRecord`; the console, the leaderboard row written when a trial ends and the rows written from
the ResultGrid at the end (`record_of_result`) all read a record. The run also holds what the scheduler and the
searcher decide (early stops) and the deadline. A record's reports are in the order Tune delivered them (a restarted
trial's first report carries the epochs before the restart); a row ranks the reports since the last PBT exploit.

A row holds every TrainConfig field, the metrics of the best epoch by the search's metric (ties: the later epoch, as
Ray's checkpoint manager keeps it), the epochs run, how the trial ended (`SearchRun.status`) and where it ran. After a
PBT exploit a row describes the weights the trial ended with: its last config, the epochs since its last exploit, and
`notes` naming every donor (README, "Population-based training").
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

from leukmodels.checkpoint import CHECKPOINT_FILE
from leukmodels.metrics import best_report, interval_keys, is_single_class  # best_report: the one best-epoch rule
from leukmodels.values import finite_or
from search.board import leaderboard, storage
from search.board.schema import METRIC_COLUMNS
from search.board.search_files import BackgroundCopies
from search.tuning.crossval import config_key, row_fields
from search.tuning.ray_private import grid_trials
from search.tuning.spaces import FAMILY_PREFIX_SEP, train_config
from search.tuning.train_stop import clear_stop, request_stop
from search.tuning.trial import ACTOR_STARTED, EXPLOITED_FROM, PRIOR_EPOCHS, release_placement_group


# -- a trial's reports ------------------------------------------------------------------------------------------------
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



# -- one record per trial, and the run that holds them ----------------------------------------------------------------
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
    storage_lost: Optional[str] = None  # why the --storage URI stopped working mid-search (storage_lost.py)

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


ACTOR_START_MAX_S = 60.0  # an actor started longer before its trial waited in Ray's worker pool, not for this trial


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
        record = self.run.record(trial.trial_id)
        record.add(result, trial.path)
        actor_started = finite_or(result.get(ACTOR_STARTED))
        if record.started is not None and actor_started is not None:  # a new actor's start is this trial's wait
            record.started -= min(max(0.0, record.started - actor_started), ACTOR_START_MAX_S)

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


# -- rows ------------------------------------------------------------------------------------------------------------
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
    searcher: str = ""
    scheduler: str = ""
    objectives: str = ""  # a multi-objective search's objectives, comma-separated ("" for one objective)
    stage: str = "search"  # "rerank": the K-fold re-training of an earlier search's top trials (tuning/rerank.py)
    origins: dict = field(default_factory=dict)  # rerank: config_key(config) -> the trial whose config it re-trains
    storage: str = ""  # --storage: Tune's scheme-less checkpoint paths inside it become URIs in the rows


def is_over(run: SearchRun, context: SearchContext, record: TrialRecord) -> bool:
    return run.status(record, context.max_epochs) is not None


def checkpoint_exists(path: Optional[str]) -> bool:
    """Whether a reported checkpoint folder still holds its file (a local folder or a URI, through the filesystem
    Tune wrote with)."""
    return bool(path) and storage.exists(path, CHECKPOINT_FILE)


def _config_fields(config: dict) -> tuple[dict, Optional[str]]:
    """The TrainConfig columns of a trial's config, and an error when the config is not a valid TrainConfig."""
    try:
        return train_config(config).to_dict(), None
    except (TypeError, ValueError) as bad:  # e.g. an impossible sampled value: keep what the config says
        return {k: v for k, v in config.items() if FAMILY_PREFIX_SEP not in k}, f"config invalid: {bad}"


def build_row(context: SearchContext, run: SearchRun, record: TrialRecord, config: dict) -> dict[str, Any]:
    """One leaderboard row (see the module docstring) of a trial's record."""
    train_fields, config_error = _config_fields(config)
    if config_error and not record.error:
        record = TrialRecord(record.trial_id, record.reports, config_error, wall_seconds=record.wall_seconds)
    exploited, history = record.exploits(), record.ranked_reports()
    best = record.best(context.metric) or {}
    last = history[-1] if history else {}
    status = run.status(record, context.max_epochs) or "stopped"
    notes = [f"exploited_from {' '.join(exploited)}"] if exploited else []
    checkpoint = storage.storage_uri(context.storage, best.get("checkpoint_path") or last.get("checkpoint_path"))
    if checkpoint and not checkpoint_exists(checkpoint):
        notes.append(f"best checkpoint missing: {checkpoint}")
        checkpoint = None
    nodes = sorted({n for r in history for n in str(r.get("nodes") or "").split(",") if n})
    speeds = [r["images_per_s"] for r in history if finite_or(r.get("images_per_s")) is not None]
    finished = finite_or(last.get("timestamp"), time.time())
    wall_seconds = record.wall_seconds
    return {
        "search": context.search, "trial_id": record.trial_id, "metric": context.metric, "status": status,
        **train_fields,
        **{key: best.get(key) for key in METRIC_COLUMNS},
        "best_epoch": best.get("epoch"), "epochs_run": record.epochs_run(), "early_stopped": status == "stopped",
        "predicted_all": best.get("predicted_all"),
        "single_class": is_single_class(best["predicted_all"]) if finite_or(best.get("predicted_all")) is not None
        else None,
        "error": record.error, "notes": "; ".join(notes) or None, "num_parameters": last.get("num_parameters"),
        "train_seconds": record.trained_seconds(), "overhead_seconds": record.overhead_seconds(),
        # rank 0's training images/s times the workers: the trial's throughput (every rank runs the same steps)
        "images_per_s": (sum(speeds) / len(speeds)) * int(last.get("world_size") or 1) if speeds else None,
        "nodes": ",".join(nodes) or None, "checkpoint": checkpoint,
        "searcher": context.searcher or None, "scheduler": context.scheduler or None,
        "objectives": context.objectives or None,  # its `pareto` flag is set once the search ends (search.board.pareto)
        **row_fields(best), "stage": context.stage, "reranked_from": context.origins.get(config_key(train_fields)),
        **dict(zip(("metric_lo", "metric_hi"), (best.get(key) for key in interval_keys(context.metric)))),
        "data_fingerprint": context.data_fingerprint, "data_generated": context.data_generated,
        "data_root": context.data_root, "code_version": context.code_version,
        "started_at": finished - wall_seconds if wall_seconds is not None else _started(last), "finished_at": finished,
    }


def _started(last: dict) -> Optional[float]:
    """When a trial started, from Tune's record of its last report (a trial restored by --resume: no wall clock)."""
    stamp, total = finite_or(last.get("timestamp")), finite_or(last.get("time_total_s"))
    if stamp is not None and total is not None:
        return stamp - total
    return None


def rows_from_grid(context: SearchContext, run: SearchRun, grid: Any) -> list[dict]:
    """One row per ended trial of a Tune ResultGrid (its per-epoch metrics_dataframe gives the best epoch); trials
    that are not over get no row, so an earlier row of theirs (written before a kill) stays as it was."""
    trials = grid_trials(grid)
    unfinished = {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}
    # a Result's config is read from its last report: a trial that never reported (the time budget ended it in its
    # first epoch) has none, and its row took TrainConfig's defaults. The trial itself holds what was sampled.
    sampled = {str(t.path): t.config for t in trials}
    rows = []
    for result in grid:
        record = record_of_result(run, result, short_error(result.error) if result.error else None)
        if record.trial_id in unfinished or not is_over(run, context, record):
            continue
        config = result.config or sampled.get(str(result.path)) or {}
        rows.append(build_row(context, run, record, dict(config)))
    return rows


def kept_checkpoints(record: TrialRecord, context: SearchContext) -> tuple[str, ...]:
    """The checkpoint folders (paths or URIs) of a DDP trial to keep once its run is over: its best epoch's (the row
    points at it) and its latest (report.py reads the history there)."""
    best, latest = record.best(context.metric), (record.reports[-1] if record.reports else None)
    return tuple(sorted({storage.storage_uri(context.storage, str(r["checkpoint_path"]))
                         for r in (best, latest) if r and r.get("checkpoint_path")}))


def prune_train_checkpoints(keep: tuple[str, ...]) -> None:
    """Delete the other checkpoint folders of the Train run that holds `keep`. A DDP trial's run keeps every epoch
    (trial.py): its workers may report an epoch or two past the one at which Tune stopped the trial, and Train's
    keep-one rule would then have deleted the checkpoint of the epoch Tune ranked."""
    if not keep:
        return
    names = {storage.folder_name(folder) for folder in keep}
    for folder in storage.siblings(keep[0]):
        name = storage.folder_name(folder)
        if name.startswith("checkpoint_") and name not in names:
            storage.delete_folder(folder)


RELEASE_DELAY_S = 5.0  # a stopped DDP trial's driver and Train controller are gone well within this


@dataclass
class LeaderboardCallback(Callback):
    """Appends each trial's row to the leaderboard the moment the trial ends (from the record `TrialRecorder`, before
    it in the callback list, has filed), so an interrupted search keeps what is finished, and frees a DDP trial's
    worker placement group. Picklable (Tune saves it for `--resume`; a resumed driver uses new callbacks)."""

    context: SearchContext
    leaderboard_path: str
    run: SearchRun
    copies: Optional[BackgroundCopies] = None  # the search's files to its --storage, in the background
    to_release: list = field(default_factory=list)  # (when, placement group id, trial id) of ended DDP trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.copies:  # the study now holds this trial: its copy in the storage should too
            self.copies.soon()

    def on_step(self, iteration: int, trials: list, **info: Any) -> None:
        self.release_placement_groups(older_than=RELEASE_DELAY_S)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.release_placement_groups(older_than=0.0)

    def release_placement_groups(self, older_than: float) -> None:
        """Free the worker placement groups of DDP trials that ended `older_than` seconds ago or more. A trial Tune
        stops dies with its Train controller, which never frees its workers' group; freed while the controller still
        lives, the controller would retry the workers in a new group."""
        due = [entry for entry in self.to_release if time.time() - entry[0] >= older_than]
        self.to_release = [entry for entry in self.to_release if entry not in due]
        for _, group, trial_id, keep in due:
            try:
                clear_stop(trial_id)  # its controller has seen the flag by now
                release_placement_group(group)
                prune_train_checkpoints(keep)
            except Exception as failure:  # noqa: BLE001 - never let cleanup take the search down
                print(f"warning: could not free the placement group or prune the checkpoints of trial {trial_id}: "
                      f"{failure}")

    def _ended(self, trial: Any) -> None:
        record = record_of(self.run, trial)
        last = record.reports[-1] if record.reports else (trial.last_result or {})
        if last.get("placement_group"):  # a DDP trial: its Train controller may die before freeing it
            if record.epochs_run() < self.context.max_epochs:  # stopped mid-run: end its Train run now
                request_stop(trial.trial_id)
            self.to_release.append((time.time(), str(last["placement_group"]), trial.trial_id,
                                    kept_checkpoints(record, self.context)))
        if is_over(self.run, self.context, record):
            row = build_row(self.context, self.run, record, dict(trial.config))
            leaderboard.append_rows(self.leaderboard_path, [row])
            if self.copies:  # the row reaches the storage too, without holding up the search
                self.copies.soon()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)


__all__ = ["SearchRun", "TrialRecord", "TrialRecorder", "record_of", "record_of_result", "best_report", "epochs_run",
           "exploits", "since_last_exploit", "trained_seconds", "result_trial_id", "trial_id_from_path",
           "with_checkpoint_paths", "with_prior_epochs", "short_error", "trial_error", "SearchContext",
           "LeaderboardCallback", "build_row", "rows_from_grid", "is_over", "checkpoint_exists"]
