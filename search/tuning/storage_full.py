"""A `--storage` that fills up: every trial still gets its row, the search its summary, and one line says how much the
storage would need.

    grid, full = fit_or_full(tuner, settings, run)   # full: "--storage DIR is full (...)", or None

On a full disk each trial fails writing its checkpoint (`[Errno 28] No space left on device`, its row says so), and
Tune then writes each trial's `error.pkl` on the same disk, truncated. `Tuner.fit` builds its ResultGrid by unpickling
those files and raises (`EOFError`, `pickle.UnpicklingError`) after every trial ended, so the rows the
LeaderboardCallback wrote as the trials ended are the search's record; the driver goes on with an empty grid.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from search.board import leaderboard
from search.board.paths import leaderboard_path
from search.board.settings import SearchSettings
from search.board.storage import is_uri
from search.tuning.rows import SearchRun
from search.tuning.spaces import check_buildable, train_config
from search.tuning.storage_lost import lost_line
from search.tuning.warmstart import row_config

NO_SPACE = "No space left on device"  # strerror(ENOSPC), in the rows of trials that could not write
BYTES_PER_VALUE = 4  # float32 weights and optimizer state
CHECKPOINTS_AT_ONCE = 2  # a trial keeps one checkpoint (best), and holds the next while Tune writes it


def _chain(failure: BaseException):
    while failure is not None:
        yield failure
        failure = failure.__cause__ or failure.__context__


def out_of_space(failure: BaseException, rows: Any) -> bool:
    """Whether the search failed for want of space: ENOSPC in the exception's chain or in a trial's row."""
    if any(isinstance(cause, OSError) and cause.errno == errno.ENOSPC for cause in _chain(failure)):
        return True
    return bool(len(rows)) and rows["error"].fillna("").astype(str).str.contains(NO_SPACE).any()


def checkpoint_bytes(row: dict) -> int:
    """About how large a trial's checkpoint.pt is: weights plus the optimizer's state (Adam's two moments, SGD's
    momentum) in float32, from the parameter count of the row's config built on the meta device."""
    parameters = check_buildable(train_config(row_config(row)))
    slots = 2 if str(row.get("optimizer", "adamw")).startswith("adam") else 1
    return parameters * BYTES_PER_VALUE * (1 + slots)


def _free_bytes(location: str) -> int | None:
    if is_uri(location):
        return None
    path = Path(location)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def full_line(storage: str, rows: Any, num_samples: int, kept_per_trial: int = CHECKPOINTS_AT_ONCE) -> str:
    """'--storage DIR is full (F MiB free): ... needs about N MiB (...)', from the largest sampled trial's checkpoint."""
    sizes = []
    for _, row in rows.iterrows():
        try:
            sizes.append(checkpoint_bytes(row.to_dict()))
        except (TypeError, ValueError, KeyError):  # a row too damaged to rebuild its model: size unknown
            continue
    free = _free_bytes(storage)
    free_text = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
    head = f"--storage {storage} is full{free_text}: its trials could not write their checkpoints"
    if not sizes:
        return f"{head}; free space there or pass another --storage"
    need = max(sizes) * kept_per_trial * num_samples
    return (f"{head}; this search needs about {need / 2**20:.0f} MiB there ({num_samples} trials x up to "
            f"{kept_per_trial} checkpoints of up to {max(sizes) / 2**20:.1f} MiB, weights and optimizer state); "
            f"free space there or pass another --storage")


def fit_or_full(tuner: Any, settings: SearchSettings, run: SearchRun) -> tuple[Any, str | None]:
    """Tune's ResultGrid and None; or, when the storage filled up or a storage URI stopped working, an empty grid (the
    rows are in the leaderboard already) and the line that says so. Any other failure is raised as it was."""
    try:
        grid = tuner.fit()
    except Exception as failure:
        rows = leaderboard.search_rows(leaderboard_path(settings.results), settings.name)
        if not out_of_space(failure, rows):
            lost = lost_line(settings, run, failure)  # a bucket gone mid-search: Tune cannot read it either
            if lost is None:
                raise
            return [], lost
        kept = settings.max_epochs if settings.scheduler == "pbt" else CHECKPOINTS_AT_ONCE  # PBT: every epoch's
        return [], full_line(settings.storage, rows, settings.num_samples, kept)
    return grid, lost_line(settings, run)


__all__ = ["checkpoint_bytes", "fit_or_full", "full_line", "out_of_space"]
