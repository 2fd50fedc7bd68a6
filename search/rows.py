"""Leaderboard rows from Tune trials, written as each trial ends and again from the ResultGrid at the end.

    context = SearchContext(search="resnet-20261127-2342", metric="balanced_accuracy", max_epochs=4, ...)
    row = build_row(context, trial_id, config, history, error=None)

`history` is the trial's reports in order (one dict per epoch: fit's metrics plus `nodes`, `train_seconds`,
`checkpoint_path`, and Tune's `timestamp`). The row holds every TrainConfig field, the metrics of the best epoch by
the search's metric (ties: the later epoch, as Ray's checkpoint manager keeps it), the epochs run, how the trial ended
and where it ran.

Status: "error" (the trial raised), "stopped" (the scheduler stopped it early), "time_budget" (the search's time
budget ended it before max_epochs), "finished" (it ran max_epochs).

PBT (`--scheduler pbt`) may replace a trial's weights with a better trial's checkpoint and change its lr, weight
decay and augmentation ("exploit"). One rule: a row describes the weights the trial ended with. Its config is the
one it last trained with; its metrics, best epoch and checkpoint come from the epochs it trained since its last
exploit (the earlier ones belong to weights it threw away, trained with another config); `epochs_run` is the epoch
those weights reached, the donors' epochs included; `notes` says `exploited_from <donor>@<epoch> ...`, every exploit
in order (the weights up to the last such epoch are that donor's); `train_seconds` counts all its training.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from ray.tune import Callback

from leukmodels.metrics import LOWER_IS_BETTER, is_single_class
from search.schema import METRIC_COLUMNS
from search.spaces import FAMILY_PREFIX_SEP, train_config
from search.strategies import search_run
from search.trial import EXPLOITED_FROM, PRIOR_EPOCHS


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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_report(history: list[dict], metric: str) -> Optional[dict]:
    """The report with the best finite `metric`; ties go to the later epoch, as Ray's checkpoint manager breaks them
    (it keeps the later of two equal checkpoints), so the row's epoch is the one whose weights exist."""
    scored = [r for r in history if _finite(r.get(metric))]
    if not scored:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return max(scored, key=lambda r: (sign * r[metric], r.get("epoch", 0)))


def epochs_run(history: list[dict]) -> int:
    return max((int(r["epoch"]) for r in with_prior_epochs(history) if _finite(r.get("epoch"))), default=0)


def ending(context: SearchContext, trial_id: str, history: list[dict], error: Optional[str]) -> Optional[str]:
    """How a trial that Tune reports as ended ended: a leaderboard status, or None when it is not over (an interrupt
    cut it short: `--resume` continues it, so it gets no row now)."""
    run = search_run(context.search)
    if error:
        return "error"
    if epochs_run(history) >= context.max_epochs:
        return "finished"
    if trial_id in run.early_stops:
        return "stopped"
    if run.budget_spent():
        return "time_budget"
    return None


def is_over(context: SearchContext, trial_id: str, history: list[dict], error: Optional[str]) -> bool:
    return ending(context, trial_id, history, error) is not None


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
        if not _finite(value):
            continue
        if last is not None and value < last:
            total += last
        last = float(value)
    return None if last is None else total + last


def checkpoint_exists(path: Optional[str]) -> bool:
    """Whether a reported checkpoint folder still holds its file (a local folder or a pyarrow-readable URI)."""
    from leukmodels.checkpoint import CHECKPOINT_FILE

    if not path:
        return False
    if "://" not in path:
        import os

        return os.path.isfile(os.path.join(path, CHECKPOINT_FILE))
    import pyarrow.fs

    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        return fs.get_file_info(f"{inner.rstrip('/')}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File
    except Exception:  # noqa: BLE001 - unreachable storage: say the weights cannot be found
        return False


def _config_fields(config: dict) -> tuple[dict, Optional[str]]:
    """The TrainConfig columns of a trial's config, and an error when the config is not a valid TrainConfig."""
    try:
        return train_config(config).to_dict(), None
    except (TypeError, ValueError) as bad:  # e.g. an impossible sampled value: keep what the config says
        return {k: v for k, v in config.items() if FAMILY_PREFIX_SEP not in k}, f"config invalid: {bad}"


def build_row(context: SearchContext, trial_id: str, config: dict, history: list[dict], error: Optional[str] = None,
              wall_seconds: Optional[float] = None) -> dict[str, Any]:
    """One leaderboard row (see the module docstring). `wall_seconds`: the trial's time as the driver saw it, from
    its start to its end; minus the time in the training function it is the trial's overhead."""
    train_fields, config_error = _config_fields(config)
    error = error or config_error
    exploited, train_seconds = exploits(history), trained_seconds(history)
    # after an exploit the donor's epochs (the first report's prior_epochs) are not this trial's: see the docstring
    history = since_last_exploit(history) if exploited else with_prior_epochs(history)
    history = sorted(history, key=lambda r: (r.get("epoch", 0), r.get("timestamp", 0)))
    best = best_report(history, context.metric) or {}
    last = history[-1] if history else {}
    status = ending(context, trial_id, history, error) or "stopped"
    notes = [f"exploited_from {' '.join(exploited)}"] if exploited else []
    checkpoint = best.get("checkpoint_path") or last.get("checkpoint_path")
    if checkpoint and not checkpoint_exists(checkpoint):
        notes.append(f"best checkpoint missing: {checkpoint}")
        checkpoint = None
    nodes = sorted({n for r in history for n in str(r.get("nodes") or "").split(",") if n})
    speeds = [r["images_per_s"] for r in history if _finite(r.get("images_per_s"))]
    finished = float(last["timestamp"]) if _finite(last.get("timestamp")) else time.time()
    return {
        "search": context.search, "trial_id": trial_id, "metric": context.metric, "status": status,
        **train_fields,
        **{key: best.get(key) for key in METRIC_COLUMNS},
        "best_epoch": best.get("epoch"), "epochs_run": epochs_run(history), "early_stopped": status == "stopped",
        "predicted_all": best.get("predicted_all"),
        "single_class": is_single_class(best["predicted_all"]) if _finite(best.get("predicted_all")) else None,
        "error": error, "notes": "; ".join(notes) or None, "num_parameters": last.get("num_parameters"),
        "train_seconds": train_seconds,
        "overhead_seconds": (max(0.0, wall_seconds - (train_seconds or 0.0)) if wall_seconds is not None else None),
        # rank 0's training images/s times the workers: the trial's throughput (every rank runs the same steps)
        "images_per_s": (sum(speeds) / len(speeds)) * int(last.get("world_size") or 1) if speeds else None,
        "nodes": ",".join(nodes) or None, "checkpoint": checkpoint,
        "searcher": context.searcher or None, "scheduler": context.scheduler or None,
        "objectives": context.objectives or None,  # its `pareto` flag is set once the search ends (search.pareto)
        "data_fingerprint": context.data_fingerprint, "data_generated": context.data_generated,
        "data_root": context.data_root, "code_version": context.code_version,
        "started_at": finished - wall_seconds if wall_seconds is not None else _started(last), "finished_at": finished,
    }


def _started(last: dict) -> Optional[float]:
    """When a trial started, from Tune's record of its last report (a trial restored by --resume: no wall clock)."""
    if _finite(last.get("timestamp")) and _finite(last.get("time_total_s")):
        return float(last["timestamp"]) - float(last["time_total_s"])
    return None


def short_error(error: Any) -> Optional[str]:
    """A one-line message: the last non-empty line of a traceback or exception text (parquet cells stay small)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


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


def rows_from_grid(context: SearchContext, grid: Any, walls: Optional[dict] = None) -> list[dict]:
    """One row per ended trial of a Tune ResultGrid (its per-epoch metrics_dataframe gives the best epoch); trials
    that are not over get no row, so an earlier row of theirs (written before a kill) stays as it was."""
    analysis = getattr(grid, "_experiment_analysis", None)
    unfinished = {t.trial_id for t in getattr(analysis, "trials", []) if t.status not in ("TERMINATED", "ERROR")}
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if isinstance(frame, pd.DataFrame) and len(frame) else []
        history = with_checkpoint_paths(history, result.path)
        trial_id = (result.metrics or {}).get("trial_id") or trial_id_from_path(result.path)
        error = short_error(result.error) if result.error else None
        if trial_id in unfinished or not is_over(context, trial_id, history, error):
            continue
        rows.append(build_row(context, trial_id, dict(result.config or {}), history, error,
                              wall_seconds=(walls or {}).get(trial_id)))
    return rows


def trial_id_from_path(path: Optional[str]) -> str:
    """Tune names a trial folder `<trainable>_<trial id>_<index>_<config...>`; with a search algorithm the id is
    8 hex digits (`run_trial_374596e2_1_...`), with Tune's own generator (PBT's population) `<5 hex>_<5 digits>`."""
    import os
    import re

    name = os.path.basename(str(path or "").rstrip("/"))
    match = re.search(r"_([0-9a-f]{8}(?:_\d{5})?|[0-9a-f]{5}_\d{5})_", name)
    return match.group(1) if match else name or "unknown"


RELEASE_DELAY_S = 5.0  # a stopped DDP trial's driver and Train controller are gone well within this


@dataclass
class LeaderboardCallback(Callback):
    """Appends each trial's row to the leaderboard the moment the trial ends, so an interrupted search keeps what
    is finished, and frees a DDP trial's worker placement group. Picklable (Tune saves it for `--resume`)."""

    context: SearchContext
    leaderboard_path: str
    history: dict = field(default_factory=dict)  # trial id -> reports seen by this process

    to_release: list = field(default_factory=list)  # (when, placement group id, trial id) of ended DDP trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # kept in this process's search_run, not here: `--resume` restores a pickled copy of this callback
        search_run(self.context.search).trial_started.setdefault(trial.trial_id, time.time())

    def on_step(self, iteration: int, trials: list, **info: Any) -> None:
        self.release_placement_groups(older_than=RELEASE_DELAY_S)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.release_placement_groups(older_than=0.0)

    def release_placement_groups(self, older_than: float) -> None:
        """Free the worker placement groups of DDP trials that ended `older_than` seconds ago or more. A trial Tune
        stops dies with its Train controller, which never frees its workers' group; freed while the controller still
        lives, the controller would retry the workers in a new group."""
        from search.trial import release_placement_group

        due = [entry for entry in self.to_release if time.time() - entry[0] >= older_than]
        self.to_release = [entry for entry in self.to_release if entry not in due]
        for _, group, trial_id in due:
            try:
                release_placement_group(group)
            except Exception as failure:  # noqa: BLE001 - never let cleanup take the search down
                print(f"warning: could not free the placement group of trial {trial_id}: {failure}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        keep = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}  # drop config/ nested dicts
        self.history.setdefault(trial.trial_id, []).extend(with_checkpoint_paths([keep], trial.path))

    def _ended(self, trial: Any, error: Optional[str]) -> None:
        from search import leaderboard

        history = self.history.pop(trial.trial_id, [])
        if not history and trial.last_result and "epoch" in trial.last_result:
            history = with_checkpoint_paths([trial.last_result], trial.path)
        last = history[-1] if history else (trial.last_result or {})
        if last.get("placement_group"):  # a DDP trial: its Train controller may die before freeing it
            self.to_release.append((time.time(), str(last["placement_group"]), trial.trial_id))
        run = search_run(self.context.search)
        if trial.trial_id in run.trial_started:
            run.trial_walls[trial.trial_id] = time.time() - run.trial_started.pop(trial.trial_id)
        if is_over(self.context, trial.trial_id, history, error):
            row = build_row(self.context, trial.trial_id, dict(trial.config), history, error,
                            wall_seconds=run.trial_walls.get(trial.trial_id))
            leaderboard.append_rows(self.leaderboard_path, [row])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, trial_error(trial))


def trial_error(trial: Any) -> str:
    """The one-line cause of a trial's failure."""
    try:
        return short_error(trial.get_pickled_error() or trial.get_error()) or "trial failed (no error recorded)"
    except Exception:  # noqa: BLE001 - the row matters more than the message
        return "trial failed (no error message recorded)"


__all__ = ["SearchContext", "LeaderboardCallback", "build_row", "rows_from_grid", "best_report", "is_over",
           "ending", "checkpoint_exists", "short_error", "trial_error", "exploits", "since_last_exploit",
           "trained_seconds"]
