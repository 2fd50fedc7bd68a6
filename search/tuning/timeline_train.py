"""The Ray Train side of search/tuning/timeline.py: the controller's and the workers' steps of a DDP trial's run
(Ray Train V2 callbacks, search/tuning/ray_private.py)."""
from __future__ import annotations

from typing import Any

from search.tuning.ray_private import TrainCallbacks
from search.tuning.timeline import mark


class TrainTimeline(TrainCallbacks.Controller, TrainCallbacks.WorkerGroup, TrainCallbacks.Worker):
    """Marks the steps search/benchmark/trial_timeline.py reads, under the trial's id: the controller's start, each
    worker's train context (after its start-up), the worker group's start (after torch's process group). Built in the
    trial's actor, pickled to the controller and the workers."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def after_controller_start(self, train_run_context: Any) -> None:
        mark(self.trial_id, "controller_start", with_process_start=True)

    def after_worker_group_start(self, worker_group: Any) -> None:
        mark(self.trial_id, "worker_group_started")

    def after_init_train_context(self) -> None:
        mark(self.trial_id, "worker_context", with_process_start=True)
