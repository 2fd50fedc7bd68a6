"""What every command checks before it writes: a folder it can create, a --storage that takes a file, the decode
cache folder, the Optuna study's storage. Each problem is a ValueError with one line naming the flag, file or value.

    check_cli_inputs(results="results", decode_cache=True)   # evaluate.py and report.py, before any decoding
    check_storage("s3://leuk/tune")                          # run.py, before Ray starts
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Optional

from leukmodels.data import default_cache_dir
from search.board import storage as stored
from search.board.paths import optuna_url
from search.board.study_storage import open_storage, sqlite_path

SQLITE_HEADER = b"SQLite format 3\x00"


def existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing ancestor: what decides whether the rest can be created."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(folder: Path) -> Optional[str]:
    """Why `folder` cannot be created or written (its nearest existing ancestor decides), or None."""
    existing = existing_ancestor(folder)
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_storage(storage: str) -> None:
    """--storage must take a file: a folder we can write, or a URI whose bucket is reached and takes, gives back and
    deletes a small object (search/board/storage.py's probe), before anything is decoded."""
    why = stored.probe(storage) if stored.is_uri(storage) else unwritable(Path(storage))
    if why:
        raise ValueError(f"--storage {storage}: cannot write there ({why})")


def check_cache_folder() -> Path:
    """The decode cache folder must be a folder we can write (LEUKTUNE_CACHE may point at a file)."""
    folder = default_cache_dir()
    why = unwritable(folder)
    if why:
        named = f"LEUKTUNE_CACHE={os.environ['LEUKTUNE_CACHE']}" if os.environ.get("LEUKTUNE_CACHE") else str(folder)
        raise ValueError(f"{named}: cannot write the decode cache there ({why})")
    return folder


def check_optuna_storage(url: str) -> None:
    """The study's storage (--optuna-storage): a SQLite file is looked at without changing it; a database server or
    a journal file is opened (its tables made), so a wrong URL, password or missing driver fails now, not once the
    data are decoded and Ray is up."""
    path = sqlite_path(url)
    if path is None:
        open_storage(url)  # ValueError: one line, the URL's password masked
        return
    _check_sqlite_file(path)


def _check_sqlite_file(path: Path) -> None:
    """The SQLite file holds the Optuna study of every search: a file that is not SQLite would fail the search only
    once its data are decoded and Ray is up, so look at it now (header, then a read of its schema)."""
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path} is not a file; it must be the SQLite database of the Optuna studies")
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        return  # an empty file: SQLite makes it a new database
    why = None if header == SQLITE_HEADER else "no SQLite header"
    if why is None:  # a damaged file can still carry the header: read its schema
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as error:
            why = str(error)
    if why:
        raise ValueError(f"{path} is not a usable SQLite database ({why}); it holds the Optuna studies: move it "
                         f"aside or pass another --results")


def check_cli_inputs(results: Optional[str | Path] = None, decode_cache: bool = False,
                     cache_dir: Optional[str] = None, optuna_storage: Optional[str] = None) -> None:
    """`results`: the study's storage (`optuna_storage`, else its optuna.db, when there is one) must be usable. `decode_cache`: the command decodes images, so
    the decode cache folder (`cache_dir` when given, else $LEUKTUNE_CACHE or its default) must be writable."""
    if results is not None:
        check_optuna_storage(optuna_storage or optuna_url(results))
    if decode_cache and cache_dir is not None:
        why = unwritable(Path(cache_dir).expanduser())
        if why:
            raise ValueError(f"--cache-dir {cache_dir}: cannot write the decode cache there ({why})")
    elif decode_cache:
        check_cache_folder()
