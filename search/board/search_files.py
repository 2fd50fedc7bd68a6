"""A search's own files, copied beside Tune's state under --storage, so that nothing lives only on the head.

    <storage>/<name>/search_files/
        rows.parquet    this search's leaderboard rows        (from results/leaderboard/)
        optuna.db       the results folder's Optuna studies   (results/optuna.db, a consistent SQLite snapshot)
        settings.json   results/searches/<name>.json          (what --resume reads back)
        split.json      results/<name>/split.json             (the patient split evaluate tests on)
        search.log      results/<name>/search.log

    save(storage, name, results)      # at launch and at the end (save_now); after each trial's row in the
                                      # background (BackgroundCopies(storage, name, results).soon())
    restore(storage, name, results)   # --resume on a new head; leaderboard/evaluate/report --storage URI --search N

While a search runs its results folder is the source of truth and the storage holds a copy at most one trial behind;
once it ended (or was stopped) the copy in the storage is whole, and a new head's results folder is rebuilt from it.
"""
from __future__ import annotations

import sqlite3
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pyarrow as pa

from search.board import storage
from search.board.files import board_files, locked, read_file, write_search
from search.board.paths import OPTUNA_DB, SEARCH_LOG, SPLIT, in_storage, leaderboard_path, settings_path, split_path

FOLDER = "search_files"
READ_FLAG_HELP = ("a search's --storage (folder or URI): its files stored there (rows, split, study, settings) are "
                  "restored into the leaderboard's folder first, so the bucket alone is enough; needs --search")
ROWS, SETTINGS = "rows.parquet", "settings.json"


def folder(storage_location: str, name: str) -> str:
    return in_storage(storage_location, name, FOLDER)


def _local_files(name: str, results: Path) -> dict[str, Path]:
    """Stored name -> the results folder's file (the rows and the study are written to a snapshot first)."""
    return {SETTINGS: settings_path(results, name), SPLIT: split_path(results, name),
            SEARCH_LOG: results / name / SEARCH_LOG}


# -- the rows: the only code here that knows the leaderboard's format -------------------------------------------------
def rows_to_storage(board: Path, name: str, target: str, scratch: Path) -> None:
    """This search's rows of the leaderboard `board`: its own file of the dataset, copied as it is to `target`."""
    mine = board_files(board).search_file(name)
    if mine.is_file():
        storage.upload(mine, target)


def rows_from_storage(source: str, name: str, board: Path, scratch: Path) -> int:
    """The rows of search `name` stored at `source` merged into the leaderboard `board` (a row the head already has
    wins: it is the newer); returns how many came from the storage."""
    if not storage.download(source, scratch / ROWS):
        return 0
    files = board_files(board)
    stored = read_file(scratch / ROWS, name)
    with locked(files):
        target = files.search_file(name)
        if target.is_file():
            local = read_file(target, name)
            have = set(local.column("trial_id").to_pylist())
            keep = pa.array([t not in have for t in stored.column("trial_id").to_pylist()], pa.bool_())
            stored = pa.concat_tables([local, stored.filter(keep)])
        write_search(files, name, stored)
    return stored.num_rows


def _snapshot_study(results: Path, scratch: Path) -> Optional[Path]:
    """A consistent copy of results/optuna.db (SQLite's backup API: a search may be writing it), or None."""
    source = results / OPTUNA_DB
    if not source.is_file():
        return None
    copy = scratch / OPTUNA_DB
    with sqlite3.connect(source) as live, sqlite3.connect(copy) as out:
        live.backup(out)
    return copy


def _restore_study(source: str, name: str, results: Path, scratch: Path) -> Optional[str]:
    """Put the stored study file in place when the results folder has none; merge the study `name` into an existing
    one that lacks it (optuna.copy_study). Returns what was done, for the user."""
    import optuna  # here: measured +0.12-0.17 s on `search/leaderboard.py --help`, which imports this module

    local = results / OPTUNA_DB
    if not local.exists():
        return "optuna study" if storage.download(source, local) else None
    if not storage.download(source, scratch / OPTUNA_DB):
        return None
    target = f"sqlite:///{local}"
    if name in {s.study_name for s in optuna.get_all_study_summaries(target)}:
        return None  # the local study is the live one: keep it
    optuna.copy_study(from_study_name=name, from_storage=f"sqlite:///{scratch / OPTUNA_DB}", to_storage=target)
    return "optuna study (copied into the existing optuna.db)"


# -- save / restore --------------------------------------------------------------------------------------------------
def save(storage_location: str, name: str, results: str | Path) -> None:
    """Copy the search's files (see the module docstring) to <storage>/<name>/search_files/."""
    results, target = Path(results), folder(storage_location, name)
    with tempfile.TemporaryDirectory(prefix="leuk-search-files-") as scratch:
        scratch = Path(scratch)
        study = _snapshot_study(results, scratch)
        if study:
            storage.upload(study, storage.join(target, OPTUNA_DB))
        for stored, local in _local_files(name, results).items():
            if local.is_file():
                storage.upload(local, storage.join(target, stored))
        # the rows last: a reader that finds them finds the study and settings of the same moment or later
        rows_to_storage(leaderboard_path(results), name, storage.join(target, ROWS), scratch)


def restore(storage_location: str, name: str, results: str | Path) -> list[str]:
    """Bring the search's stored files into `results`: its rows merged into the leaderboard, its study, and the
    settings, split and log where the results folder has none. Returns what was restored (empty: nothing stored)."""
    results, source = Path(results), folder(storage_location, name)
    restored = []
    with tempfile.TemporaryDirectory(prefix="leuk-search-files-") as scratch:
        scratch = Path(scratch)
        count = rows_from_storage(storage.join(source, ROWS), name, leaderboard_path(results), scratch)
        restored += [f"{count} leaderboard row(s)"] if count else []
        study = _restore_study(storage.join(source, OPTUNA_DB), name, results, scratch)
        restored += [study] if study else []
        for stored, local in _local_files(name, results).items():
            if not local.exists() and storage.download(storage.join(source, stored), local):
                restored.append(local.name)
    return restored


def for_reading(storage_location: str, name: Optional[str], board: Path) -> str:
    """`--storage URI --search N` of leaderboard.py, evaluate.py and report.py: the search's stored files into the
    folder of the leaderboard `board` they read; returns a line saying what came; ValueError in one line when the
    search is not named, the storage cannot be read or holds nothing of it."""
    if not name:
        raise ValueError(f"--storage {storage_location}: also name the search with --search NAME")
    where = folder(storage_location, name)
    try:
        restored = restore(storage_location, name, Path(board).parent)
    except (OSError, ValueError) as error:
        raise ValueError(f"--storage {storage_location}: cannot read {where} ({storage.reason(error)})") from None
    if not restored:
        raise ValueError(f"--storage {storage_location}: no files of search {name!r} at {where}")
    return f"restored from {where}: {', '.join(restored)}"


# -- in the background while the search runs -----------------------------------------------------------------------
class BackgroundCopies:
    """A search's copies of its files to its storage while it runs, one at a time in a background thread; owned by
    the search (search/tuning/tuner.py) and its leaderboard callback. Inert without a storage."""

    def __init__(self, storage_location: str, name: str, results: str | Path) -> None:
        self.storage_location, self.name, self.results = storage_location, name, results
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-files")
        self._pending: Optional[Future] = None  # the latest queued or running copy
        self._queued = False  # a queued copy has not started yet (a later one would copy the same)
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:  # Tune pickles the callback holding it: a copy starts with no copy pending
        return BackgroundCopies, (self.storage_location, self.name, self.results)

    def soon(self) -> None:
        """`save` in the background (the driver goes on with the search); a copy that has not started yet already
        takes the latest files, so no second one is queued behind it."""
        with self._lock:
            if self.storage_location and not self._queued:
                self._queued = True
                self._pending = self._uploader.submit(self._save_quietly)

    def _save_quietly(self) -> None:
        with self._lock:
            self._queued = False
        try:
            save(self.storage_location, self.name, self.results)
        except Exception as failure:  # noqa: BLE001 - the search goes on; the final save says what failed
            print(f"warning: could not copy the search's files to {folder(self.storage_location, self.name)}: "
                  f"{storage.reason(failure)}")

    def now(self) -> Optional[str]:
        """Wait for the background copy, then copy once more; returns a one-line warning when the storage failed."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        return save_now(self.storage_location, self.name, self.results)


def save_now(storage_location: str, name: str, results: str | Path) -> Optional[str]:
    """Copy the search's files now; returns a one-line warning when the storage failed."""
    try:
        save(storage_location, name, results)
    except Exception as failure:  # noqa: BLE001 - the results folder still holds everything
        return (f"warning: could not copy the search's files to {folder(storage_location, name)} "
                f"({storage.reason(failure)}); they are in {results}")
    return None


__all__ = ["FOLDER", "folder", "for_reading", "restore", "rows_from_storage", "rows_to_storage", "save", "save_now", "BackgroundCopies"]
