"""A resumed trial continues from its newest checkpoint that exists, or starts afresh: never an error for a checkpoint
Tune's saved state names but the storage no longer holds.

Tune saves its experiment state every few seconds; between two saves a trial's checkpoint manager may register epoch
k+1 and delete epoch k's checkpoint (num_to_keep=1). A driver killed then leaves a state naming a deleted checkpoint,
and `--resume` ended that trial in `ValueError: Could not recover from checkpoint as it does not exist on storage
anymore` (its epochs lost, its row an error). `MissingCheckpointGuard` runs before each step of Tune's loop, before any
trial is restored, and points such a trial at what exists.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from pyarrow.fs import FileSelector, FileType
from ray.train import Checkpoint
from ray.tune import Callback

from search.tuning.ray_private import checkpoint_results, set_checkpoint_results, training_result

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's trial checkpoint folders: checkpoint_000000, checkpoint_000001, ...


def _exists(checkpoint: Any) -> bool:
    return checkpoint.filesystem.get_file_info(checkpoint.path).type == FileType.Directory


def _on_storage(trial: Any) -> Optional[Any]:
    """The newest checkpoint folder under the trial's storage path (the state may not know it yet), as a Tune
    training result with no metrics, or None."""
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    infos = fs.get_file_info(FileSelector(folder, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == FileType.Directory and i.base_name.startswith(
        CHECKPOINT_PREFIX))
    if not names:
        return None
    return training_result(Checkpoint(f"{folder}/{names[-1]}", filesystem=fs))


def repoint(trial: Any) -> Optional[str]:
    """When the trial's latest checkpoint is gone: drop every missing one from its checkpoint manager and make the
    newest that exists (the manager's, else the storage's) its latest, or none (it starts afresh). Returns a line
    saying what changed, None when nothing was missing. The manager's lists are private: search/tuning/ray_private.py."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None or _exists(latest.checkpoint):
        return None
    kept = [r for r in checkpoint_results(manager) if _exists(r.checkpoint)]  # in the manager's order
    newest = max(kept, key=lambda r: r.checkpoint.path) if kept else _on_storage(trial)
    set_checkpoint_results(manager, kept, newest)
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()
    where = f"continues from {newest.checkpoint.path}" if newest else "starts afresh (no checkpoint of it is left)"
    return f"trial {trial.trial_id}: its saved checkpoint {latest.checkpoint.path} is gone; it {where}"


class MissingCheckpointGuard(Callback):
    """Checks each trial once per driver, before Tune's loop restores it. Tune pickles it for `--resume`: what it
    checked is not pickled, so a resumed driver checks every trial again."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.checked: set = set()
        self.say = say  # the search's console

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.checked, self.say = set(), print

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:
            if trial.trial_id in self.checked or trial.status not in ("PENDING", "PAUSED"):
                continue
            self.checked.add(trial.trial_id)
            try:
                line = repoint(trial)
            except Exception as failure:  # noqa: BLE001 - an unreachable storage: Tune reports the restore itself
                line = f"warning: could not check the checkpoints of trial {trial.trial_id}: {failure}"
            if line:
                self.say(f"resume: {line}")


__all__ = ["MissingCheckpointGuard", "repoint"]
