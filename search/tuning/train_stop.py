"""Stop a DDP trial's Ray Train run when Tune stops the trial, so that Tune can hand the trial's actor to the next
trial (reuse_actors) instead of killing it, and with it the controller, to stop the run.

    the trial's actor:                fit_unless_stopped(trainer, trial_id)   # returns when Tune stops the trial
    driver (search/tuning/rows.py):   request_stop(trial_id)        # the scheduler stopped it: end its run now
    Train controller, every poll:     StopWhenAsked(trial_id)       # aborts the run within one poll (0.25 s)

A reused actor saves a DDP trial the actor's start (a process, Ray, torch, Ray Train: 3-4 s on a small machine). The
flag lives in the GCS, so it reaches a controller on any node. Only the driver sets it (in its trial-end callback,
before Tune hands the actor on) and clears it with the trial's placement group, in that order: set by the trial's
actor as well, a flag could land after the driver's last clear and outlive the search (seen at an experiment's end).
A trial clears its own flag when it starts: on a cluster that outlives searches, one left by a killed driver would
abort the trial's rerun under --resume, which keeps its trial id.
"""
from __future__ import annotations

import threading
from typing import Any

import ray

from search.tuning.ray_private import TrainCallbacks, kv_delete, kv_exists, kv_put, tune_stop_event

WAKE_S = 0.1  # how often the trial's thread looks at Tune's stop while the run trains


def _key(trial_id: str) -> str:
    return f"stop/{trial_id}"


def request_stop(trial_id: str) -> None:
    kv_put(_key(trial_id))


def stop_requested(trial_id: str) -> bool:
    return kv_exists(_key(trial_id))


def clear_stop(trial_id: str) -> None:
    kv_delete(_key(trial_id))


def fit_unless_stopped(trainer: Any, trial_id: str) -> None:
    """`trainer.fit()` in a thread of its own, so that this trial's thread returns as soon as Tune stops the trial:
    Tune waits 2 s for it before it reuses the actor. The run, told through the driver's flag, aborts behind it; a fit
    that fails because the run was aborted is no error of the trial's. A run Tune stops after its last epoch ends on
    its own."""
    clear_stop(trial_id)  # left from an earlier run of this trial: it would abort this one
    stopping = tune_stop_event()
    failures: list = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as failure:  # noqa: BLE001 - handed to the trial's thread
            failures.append(failure)

    fitting = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    fitting.start()
    while fitting.is_alive():
        fitting.join(WAKE_S)  # returns the moment fit does
        if stopping.is_set():
            return
    if failures and not stop_requested(trial_id):
        raise failures[0]


class StopWhenAsked(TrainCallbacks.WorkerGroup):
    """In the Train controller: after each poll of the workers, abort the run if the trial's stop was asked, as
    Ctrl-C does (the controller's `abort`: its workers and their placement group go, then the controller). An
    exception raised here would count as a failure, and FailureConfig would start the workers again."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.aborting = False

    def after_worker_group_poll_status(self, worker_group_status: Any) -> None:
        if not self.aborting and stop_requested(self.trial_id):
            self.aborting = True
            ray.get_runtime_context().current_actor.abort.remote()  # runs on the controller's loop, after this poll


__all__ = ["StopWhenAsked", "clear_stop", "fit_unless_stopped", "request_stop", "stop_requested"]
