"""A --storage URI that stops working during a search (its endpoint goes down, its bucket is deleted, its credentials
expire): the search stops starting trials, keeps every row on the head, and says in one line what failed and how to
continue.

    callbacks.append(StorageWatch(settings.storage, run, deadline_file))   # a trial fails or is retried: probe
    line = lost_line(settings, run)                        # None, or "--storage URI stopped working (...)"

Every trial that needs the storage fails while it is gone (its report cannot persist its checkpoint), so starting
the remaining trials would only record them as errors; when a failing trial's storage no longer passes the
pre-flight probe (search/board/storage.py), the search ends there, like a spent --time-budget (the watch sets the
run's deadline file, which BudgetStopper reads, to now), with the trials not yet started left to `--resume` (the
driver's own run keeps its deadline, so a trial cut short gets no row and is continued by `--resume`). Tune's own
end of run reads the bucket too, and raises: the rows the LeaderboardCallback wrote as trials ended are then the
search's record (search/tuning/storage_full.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from search.board import storage
from search.board.paths import leaderboard_path
from search.tuning.rows import SearchRun
from search.tuning.strategies import write_deadline


class StorageWatch(Callback):
    """When a trial fails (and before Tune retries it), probe a URI storage; if it no longer works, record why in
    the search's run (for the closing line) and end the search: the deadline file BudgetStopper reads says now."""

    def __init__(self, storage_uri: str, run: SearchRun, deadline_file: Path) -> None:
        self.storage_uri, self.run, self.deadline_file = storage_uri, run, Path(deadline_file)

    def _check(self) -> None:
        if not storage.is_uri(self.storage_uri) or self.run.storage_lost is not None:
            return
        self.run.storage_lost = storage.probe(self.storage_uri)
        if self.run.storage_lost is not None:
            write_deadline(self.deadline_file, time.time())

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()


def lost_line(settings: Any, run: SearchRun, failure: Optional[BaseException] = None) -> Optional[str]:
    """The line that says the storage stopped working and how to continue, or None when it works (or is local).
    `settings`: the search's SearchSettings (its storage, name and results folder).
    `failure`: what Tune's fit raised, if anything; the storage is probed again then."""
    if not storage.is_uri(settings.storage):
        return None
    why = run.storage_lost or (storage.probe(settings.storage) if failure is not None else None)
    if why is None:
        return None
    return (f"--storage {settings.storage} stopped working during the search ({why}): the trials that needed it "
            f"failed (their rows say why); every row is in {leaderboard_path(settings.results)}. Once it works again, "
            f"continue with: {settings.resume_command()}")


__all__ = ["StorageWatch", "lost_line"]
