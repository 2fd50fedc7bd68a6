"""The Ray Train side of search/tuning/timeline.py: the controller's and the workers' steps of a DDP trial's run
(Ray Train V2 callbacks, search/tuning/ray_private.py)."""
from __future__ import annotations

from typing import Any

from search.tuning.ray_private import TrainCallbacks
from search.tuning.timeline import mark


class TrainTimeline(TrainCallbacks.Controller, TrainCallbacks.WorkerGroup, TrainCallbacks.Worker):
    """Marks each step under the trial's id; built in the trial's actor, pickled to the controller and the workers."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def after_controller_start(self, train_run_context: Any) -> None:
        mark(self.trial_id, "controller_start", with_process_start=True)

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        mark(self.trial_id, "worker_group_start")

    def after_worker_group_start(self, worker_group: Any) -> None:
        mark(self.trial_id, "worker_group_started")

    def after_worker_group_training_start(self, worker_group: Any) -> None:
        mark(self.trial_id, "training_launched")

    def after_init_train_context(self) -> None:
        mark(self.trial_id, "worker_context", with_process_start=True)

    def before_worker_group_shutdown(self, worker_group: Any) -> None:
        mark(self.trial_id, "worker_group_shutdown")

    def after_worker_group_shutdown(self, worker_group_context: Any) -> None:
        mark(self.trial_id, "worker_group_shut")

    def after_controller_finish(self, result: Any) -> None:
        mark(self.trial_id, "controller_finish")
