"""Every use of Ray's private internals in search/, in one place; each relies on Ray 2.60's behaviour as stated and is
pinned by tests/test_ray_private.py, so a Ray upgrade that changes one fails that test, not a search.

- `restored_configs(tuner)`: a Tuner restored by `Tuner.restore` runs with the RunConfig and TuneConfig pickled in
  its `tuner.pkl` when it was built (`Tuner._local_tuner`, a TunerInternal: `get_run_config()`, `_tune_config`);
  Tune offers no public way to give a restored Tuner new callbacks or to reach its scheduler and searcher.
- `grid_trials(grid)`: the Trials behind a ResultGrid (`ResultGrid._experiment_analysis.trials`): their status tells
  an ended trial from one an interrupt left, and their config is what was sampled even when the trial never reported
  (a Result's config comes from its last report). Tune's Result has neither.
- `optuna_study`, `optuna_trials`, `completed_trials`: OptunaSearch's study (`_ot_study`), its Optuna trial per Tune
  trial id (`_ot_trials`) and the ids it has closed (`_completed_trials`, a set): a trial the time budget cut is
  closed as PRUNED, which OptunaSearch's public `on_trial_complete` cannot say.
- `checkpoint_results`, `set_checkpoint_results`, `training_result`: a trial's checkpoint manager's list of kept
  checkpoints (`_checkpoint_results`) and its latest (`_latest_checkpoint_result`), and Train's `_TrainingResult`
  (a checkpoint with its metrics): search/tuning/resume_guard.py points a trial whose saved checkpoint is gone at one
  that exists.
- `pbt_round(scheduler, trial)`, `set_pbt_round(...)`, `next_pbt_round`, `set_next_pbt_round`: PopulationBasedTraining's
  per-trial state (`_trial_state[trial].last_perturbation_time`, `.last_train_time`), its `_perturbation_interval`
  and its synchronous rounds' next time (`_next_perturbation_sync`), which `--resume` does not restore
  (search/tuning/pbt.py puts restored trials back on the rounds).
- `kv_put`, `kv_exists`, `kv_delete`: the GCS's key-value store (`ray.experimental.internal_kv`), reachable from every
  process of the cluster: the search's driver tells a DDP trial's Train controller that Tune stopped the trial
  (search/tuning/train_stop.py). Ray offers no public cross-process flag that costs no actor.
- `tune_stop_event()`: the Tune session's `stop_event` (`ray.train._internal.session.get_session()`), which Tune
  sets when it stops a function trial, before it waits 2 s for the trial's thread to end so it can reuse the actor
  (FunctionTrainable.reset_config); a thread still alive then fails the next trial and hangs Tune 2.60. The session
  makes a new event for each trial, so a trial holds the one it started with.
- `TrainCallbacks`: Ray Train V2's controller, worker-group and worker callback bases
  (`ray.train.v2._internal.execution.callback`); RunConfig hands callbacks that are not UserCallbacks to the
  controller as they are, and only these see the controller's poll of its workers and its start.
- `torch_trainer_without_pg_cleaner()`: a TorchTrainer whose run does not start Train's PlacementGroupCleaner (a
  detached actor per run, `_create_default_callbacks`; no setting turns it off). That actor is one more process
  importing Ray Train while the workers start, it asks the State API every second, and the run waits up to a second
  for it to stop at its end. The driver frees a DDP trial's placement group itself when the trial ends
  (search/tuning/rows.py), stopped or not.
"""
from __future__ import annotations

import functools
from typing import Any

from ray.experimental import internal_kv
from ray.train._internal.session import _TrainingResult, get_session
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerCallback, WorkerGroupCallback


# -- Tuner.restore ----------------------------------------------------------------------------------------------------
def restored_configs(tuner: Any) -> tuple[Any, Any]:
    """(RunConfig, TuneConfig) a restored Tuner will run with: set `callbacks`/`stop` on the first, read `scheduler`
    and `search_alg` of the second."""
    internal = tuner._local_tuner
    return internal.get_run_config(), internal._tune_config


# -- ResultGrid -------------------------------------------------------------------------------------------------------
def grid_trials(grid: Any) -> list:
    """The Tune Trials of a ResultGrid (status, trial_id, path, config); none for a grid without an analysis."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return list(getattr(analysis, "trials", None) or [])


# -- OptunaSearch -----------------------------------------------------------------------------------------------------
def optuna_study(searcher: Any) -> Any:
    return searcher._ot_study


def optuna_trials(searcher: Any) -> dict:
    """Tune trial id -> the Optuna trial OptunaSearch asked for it."""
    return searcher._ot_trials


def completed_trials(searcher: Any) -> set:
    """The Tune trial ids OptunaSearch has told the study about (adding one keeps OptunaSearch from telling again)."""
    return searcher._completed_trials


# -- a trial's checkpoint manager ----------------------------------------------------------------------------------
def checkpoint_results(manager: Any) -> list:
    return list(manager._checkpoint_results)


def set_checkpoint_results(manager: Any, kept: list, latest: Any) -> None:
    """Make `kept` the manager's checkpoints and `latest` (one of them, one found on storage, or None) its latest."""
    manager._checkpoint_results = list(kept)
    manager._latest_checkpoint_result = latest


def training_result(checkpoint: Any) -> Any:
    """A checkpoint as the manager holds one: with no metrics."""
    return _TrainingResult(checkpoint=checkpoint, metrics={})


# -- PopulationBasedTraining --------------------------------------------------------------------------------------
def pbt_interval(scheduler: Any) -> float:
    return scheduler._perturbation_interval


def set_pbt_round(scheduler: Any, trial: Any, time: float) -> None:
    """The trial's last perturbation and last train time, as if its last round were at `time`."""
    state = scheduler._trial_state[trial]
    state.last_perturbation_time = state.last_train_time = time


def next_pbt_round(scheduler: Any) -> float:
    return scheduler._next_perturbation_sync


def set_next_pbt_round(scheduler: Any, time: float) -> None:
    scheduler._next_perturbation_sync = time


# -- the GCS's key-value store ---------------------------------------------------------------------------------------
KV_NAMESPACE = "leukemia-tune"


def kv_put(key: str) -> None:
    internal_kv._internal_kv_put(key, b"1", namespace=KV_NAMESPACE)


def kv_exists(key: str) -> bool:
    return bool(internal_kv._internal_kv_exists(key, namespace=KV_NAMESPACE))


def kv_delete(key: str) -> None:
    internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)


# -- Tune's function-trial session ----------------------------------------------------------------------------------
def tune_stop_event() -> Any:
    """The threading.Event Tune sets when it stops the trial running in this process."""
    return get_session().stop_event


# -- Ray Train V2's callbacks -----------------------------------------------------------------------------------------
class TrainCallbacks:
    """The bases a Train run's own callbacks derive from: `Controller` (start, end), `WorkerGroup` (start, every poll
    of the workers, shutdown), `Worker` (runs in each worker)."""

    Controller = ControllerCallback
    WorkerGroup = WorkerGroupCallback
    Worker = WorkerCallback


@functools.cache
def torch_trainer_without_pg_cleaner() -> type:
    """TorchTrainer, less the PlacementGroupCleanerCallback among its default callbacks (built on first use: it
    imports torch)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class TorchTrainerWithoutPgCleaner(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            return [callback for callback in super()._create_default_callbacks()
                    if not isinstance(callback, PlacementGroupCleanerCallback)]

    return TorchTrainerWithoutPgCleaner


__all__ = ["restored_configs", "grid_trials", "optuna_study", "optuna_trials", "completed_trials",
           "checkpoint_results", "set_checkpoint_results", "training_result", "pbt_interval", "set_pbt_round",
           "next_pbt_round", "set_next_pbt_round", "kv_put", "kv_exists", "kv_delete", "tune_stop_event", "TrainCallbacks",
           "torch_trainer_without_pg_cleaner"]
