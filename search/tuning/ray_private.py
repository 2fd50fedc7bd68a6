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
- `ddp_trainer()`: a DataParallelTrainer whose run does not start Train's PlacementGroupCleaner (a detached actor
  per run, `_create_default_callbacks`; no setting turns it off). That actor is one more process importing Ray Train
  while the workers start, it asks the State API every second, and the run waits up to a second for it to stop at its
  end. The driver frees a DDP trial's placement group itself when the trial ends (search/tuning/rows.py).
- `TorchOnWorkers`: TorchConfig's process-group setup (`ray.train.torch.config`'s `_setup_torch_process_group`,
  `_set_torch_distributed_env_vars`, `_shutdown_torch`, `TorchConfigContextManager`; `ray.train._internal.utils`'s
  `get_address_and_port`; the shutdown timeout `ray.train.constants` reads from the environment), with each step
  imported on the worker that runs it. TorchConfig's module imports torch,
  and the Train controller unpickles the config: every DDP trial's controller paid torch's import (1-2 s on a small
  machine) only to relay calls to its workers.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray._private.ray_constants import env_integer
from ray.exceptions import GetTimeoutError
from ray.experimental import internal_kv
from ray.train.backend import Backend, BackendConfig
from ray.train._internal.session import _TrainingResult, get_session
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerCallback, WorkerGroupCallback
from ray.train.v2._internal.util import TrainingFramework

logger = logging.getLogger(__name__)


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


# -- a DDP trial's Ray Train run --------------------------------------------------------------------------------------
@functools.cache
def ddp_trainer() -> type:
    """DataParallelTrainer, less the PlacementGroupCleanerCallback among its default callbacks."""
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class DataParallelTrainerWithoutPgCleaner(DataParallelTrainer):
        def _create_default_callbacks(self) -> list:
            return [callback for callback in super()._create_default_callbacks()
                    if not isinstance(callback, PlacementGroupCleanerCallback)]

    return DataParallelTrainerWithoutPgCleaner


def _set_master(address: str, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)


def _set_torch_env_vars() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()  # RANK, WORLD_SIZE, LOCAL_RANK, ... as torchrun sets them


def _init_process_group(**kwargs: Any) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _shutdown_process_group(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class _TorchOnWorkersBackend(Backend):
    """TorchConfig's backend for a Train V2 worker group with the env:// init method; the controller only relays."""

    share_cuda_visible_devices = True

    def on_start(self, worker_group: Any, backend_config: "TorchOnWorkers") -> None:
        from ray.train._internal.utils import get_address_and_port

        address, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, address=address, port=port)
        worker_group.execute(_set_torch_env_vars)
        ray.get([worker_group.execute_single_async(rank, _init_process_group, backend=backend_config.backend,
                                                   world_rank=rank, world_size=len(worker_group),
                                                   init_method="env://", timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group: Any, backend_config: "TorchOnWorkers") -> None:
        done = worker_group.execute_async(_shutdown_process_group, destroy_process_group=len(worker_group) > 1)
        timeout_s = env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(done, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %s s", timeout_s)


@dataclass
class TorchOnWorkers(BackendConfig):
    """TorchConfig(backend=...) whose module the Train controller imports without torch."""

    backend: str = "gloo"  # "nccl" for GPU workers
    timeout_s: int = 1800  # collective operations

    @property
    def backend_cls(self) -> type:
        return _TorchOnWorkersBackend

    @property
    def train_func_context(self) -> type:
        """Sets each worker's CUDA device around the train function; read only where the trainer is built."""
        from ray.train.torch.config import TorchConfigContextManager  # the trial's process, which has torch

        return TorchConfigContextManager

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


__all__ = ["restored_configs", "grid_trials", "optuna_study", "optuna_trials", "completed_trials",
           "checkpoint_results", "set_checkpoint_results", "training_result", "pbt_interval", "set_pbt_round",
           "next_pbt_round", "set_next_pbt_round", "kv_put", "kv_exists", "kv_delete", "tune_stop_event", "TrainCallbacks",
           "ddp_trainer", "TorchOnWorkers"]
