"""Leaderboard rows from Tune trials, written as each trial ends and again from the ResultGrid at the end.

    context = SearchContext(search="resnet-20261127-2342", metric="balanced_accuracy", max_epochs=4, ...)
    row = build_row(context, run, record, config)     # run: the search's SearchRun; record: a TrialRecord

The trial's state (reports, best epoch, times, error) is its record (search/tuning/record.py); a row holds every
TrainConfig field, the metrics of the best epoch by the search's metric (ties: the later epoch, as
Ray's checkpoint manager keeps it), the epochs run, how the trial ended (`ending`) and where it ran. After a PBT
exploit a row describes the weights the trial ended with: its last config, the epochs since its last exploit, and
`notes` naming every donor (README, "Population-based training").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ray.tune import Callback

from leukmodels.metrics import interval_keys, is_single_class
from leukmodels.values import finite_or
from search.board import storage
from search.board.search_files import BackgroundCopies
from search.tuning.crossval import config_key, row_fields
from search.tuning.record import SearchRun, TrialRecord, record_of, record_of_result, short_error
from search.tuning.ray_private import grid_trials
from search.board.schema import METRIC_COLUMNS
from search.tuning.spaces import FAMILY_PREFIX_SEP, train_config


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
    stage: str = "search"  # "rerank": the K-fold re-training of an earlier search's top trials (search/tuning/rerank.py)
    origins: dict = field(default_factory=dict)  # rerank: config_key(config) -> the trial whose config it re-trains
    storage: str = ""  # --storage: Tune's scheme-less checkpoint paths inside it become URIs in the rows


def is_over(run: SearchRun, context: SearchContext, record: TrialRecord) -> bool:
    return run.status(record, context.max_epochs) is not None


def checkpoint_exists(path: Optional[str]) -> bool:
    """Whether a reported checkpoint folder still holds its file (a local folder or a URI, through the filesystem
    Tune wrote with)."""
    from leukmodels.checkpoint import CHECKPOINT_FILE

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
        from search.tuning.trial import release_placement_group

        due = [entry for entry in self.to_release if time.time() - entry[0] >= older_than]
        self.to_release = [entry for entry in self.to_release if entry not in due]
        for _, group, trial_id in due:
            try:
                release_placement_group(group)
            except Exception as failure:  # noqa: BLE001 - never let cleanup take the search down
                print(f"warning: could not free the placement group of trial {trial_id}: {failure}")

    def _ended(self, trial: Any) -> None:
        from search.board import leaderboard

        record = record_of(self.run, trial)
        last = record.reports[-1] if record.reports else (trial.last_result or {})
        if last.get("placement_group"):  # a DDP trial: its Train controller may die before freeing it
            self.to_release.append((time.time(), str(last["placement_group"]), trial.trial_id))
        if is_over(self.run, self.context, record):
            row = build_row(self.context, self.run, record, dict(trial.config))
            leaderboard.append_rows(self.leaderboard_path, [row])
            if self.copies:  # the row reaches the storage too, without holding up the search
                self.copies.soon()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)


__all__ = ["SearchContext", "LeaderboardCallback", "build_row", "rows_from_grid", "is_over", "checkpoint_exists"]
