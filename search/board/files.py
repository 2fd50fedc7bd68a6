"""Where the leaderboard's rows live: a parquet dataset with one file per search, so that appending a trial's row
rewrites only its own search's rows, however many searches the leaderboard holds.

    results/leaderboard/search=<NAME>/part-0.parquet    # NAME percent-encoded; the file lacks the `search` column
    results/leaderboard.lock                            # the writers' lock (flock)
    results/leaderboard.parquet                         # the single file of versions before the dataset, if any

Hive partitioning: `pd.read_parquet("results/leaderboard")` (or pyarrow, Spark, DuckDB, s3://...) reads the whole
dataset as one table, `search` coming from the folder names. Hidden files (a `.` prefix: temporaries) are skipped by
those readers. A path given as `X.parquet` means the dataset folder `X` beside it, so `--leaderboard
results/leaderboard.parquet` keeps working; the old single file is read alongside the dataset (the dataset's row wins
for a (search, trial_id) in both) until the next write moves its rows into the dataset and renames it
`X.parquet.migrated`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from leukmodels.atomic import atomic_path
from search.board.schema import COLUMNS, SCHEMA, SCHEMA_VERSION, VERSION_KEY, upgraded

PART = "part-0.parquet"  # a search's rows; written whole, replaced atomically
PARTITION = "search="  # hive partitioning by search name
MIGRATED_SUFFIX = ".migrated"  # the old single file once its rows are in the dataset


class LeaderboardError(RuntimeError):
    """The leaderboard cannot be read or written; the message is one line and names the file."""


@dataclass(frozen=True)
class BoardFiles:
    """The dataset folder, and the single-file leaderboard of older versions beside it."""
    folder: Path
    legacy: Path

    @property
    def lock(self) -> Path:
        return self.folder.with_name(self.folder.name + ".lock")

    def search_file(self, search: str) -> Path:
        return self.folder / f"{PARTITION}{urllib.parse.quote(search, safe='')}" / PART

    def search_files(self) -> dict[str, Path]:
        """search name -> its file, for every search in the dataset (folders whose file is not written yet skipped)."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for entry in sorted(self.folder.iterdir()):
            if entry.name.startswith(PARTITION) and (entry / PART).is_file():
                found[urllib.parse.unquote(entry.name[len(PARTITION):])] = entry / PART
        return found

    def exists(self) -> bool:
        return self.folder.is_dir() or self.legacy.is_file()


def board_files(path: str | os.PathLike) -> BoardFiles:
    """`results/leaderboard` and `results/leaderboard.parquet` both name the dataset `results/leaderboard` (with the
    old file `results/leaderboard.parquet`); an existing folder is the dataset whatever its name."""
    path = Path(path)
    folder = path.with_suffix("") if path.suffix == ".parquet" and not path.is_dir() else path
    return BoardFiles(folder, folder.with_name(folder.name + ".parquet"))


def why(error: BaseException) -> str:
    return " ".join(str(getattr(error, "strerror", None) or error).split())  # one line


# -- reading ----------------------------------------------------------------------------------------------------------
def read_file(path: Path, search: Optional[str] = None) -> pa.Table:
    """One file in the current schema (a search's file gets its `search` column back); LeaderboardError naming it."""
    try:  # one open file: read_table(path) may open the name twice (footer, pages) and straddle a rename
        with open(path, "rb") as handle:
            table = pq.read_table(pa.BufferReader(handle.read()))
    except FileNotFoundError:
        raise LeaderboardError(f"no leaderboard at {path} (run a search first, or pass --path)") from None
    except (OSError, pa.ArrowException) as error:
        raise LeaderboardError(f"cannot read leaderboard {path}: {why(error)}") from None
    version = (table.schema.metadata or {}).get(VERSION_KEY, b"?").decode()
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise LeaderboardError(f"leaderboard {path} has schema version {version}; this code reads versions up to "
                               f"{SCHEMA_VERSION} (upgrade leukemia-tune or write elsewhere); the file is left as is")
    if search is not None and "search" not in table.schema.names:
        table = table.append_column(SCHEMA.field("search"), pa.array([search] * len(table), pa.string()))
    table = upgraded(table, int(version))
    if set(table.schema.names) != set(COLUMNS):
        raise LeaderboardError(f"leaderboard {path} does not have the version-{SCHEMA_VERSION} columns; "
                               f"the file is left as is")
    try:
        return table.select(list(COLUMNS)).cast(SCHEMA)
    except pa.ArrowException as error:
        raise LeaderboardError(f"leaderboard {path} has unexpected column types: {why(error)}") from None


def _legacy_rows(files: BoardFiles, search: Optional[str], dataset: list[pa.Table]) -> list[pa.Table]:
    """The old single file's rows (of `search`, when given) whose (search, trial_id) the dataset lacks."""
    if not files.legacy.is_file():
        return []
    table = read_file(files.legacy)
    have = {key for part in dataset for key in zip(part.column("search").to_pylist(),
                                                     part.column("trial_id").to_pylist())}
    keys = zip(table.column("search").to_pylist(), table.column("trial_id").to_pylist())
    keep = [(search is None or name == search) and (name, trial) not in have for name, trial in keys]
    return [table.filter(pa.array(keep, pa.bool_()))]


def read_tables(files: BoardFiles, search: Optional[str] = None) -> pa.Table:
    """Every row (or those of `search`), unranked: the dataset's files plus the rows only the old file has."""
    if not files.exists():
        raise LeaderboardError(f"no leaderboard at {files.folder} (run a search first, or pass --path)")
    found = files.search_files()
    if search is not None:
        found = {search: found[search]} if search in found else {}
    tables = [read_file(path, name) for name, path in found.items()]
    tables += _legacy_rows(files, search, tables)
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


# -- writing ----------------------------------------------------------------------------------------------------------
def write_atomically(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` through leukmodels/atomic.py (durably: fsynced); on any failure the old file stays.
    Readers see the old file or the new one, never half of one."""
    try:
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as out:
            pq.write_table(table, out)
    except OSError as error:
        intact = "; the previous file is intact" if path.is_file() else ""
        raise LeaderboardError(f"cannot write leaderboard {path}: {why(error)}{intact}") from None


def write_search(files: BoardFiles, search: str, table: pa.Table) -> None:
    """Replace the file of `search` with `table` (its rows, in SCHEMA; stored without the `search` column)."""
    write_atomically(table.drop_columns(["search"]), files.search_file(search))


@contextlib.contextmanager
def locked(files: BoardFiles) -> Iterator[None]:
    """Exclusive inter-process lock of the writers (fcntl.flock: released by the kernel if the holder dies)."""
    try:
        files.folder.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise LeaderboardError(f"cannot write leaderboard {files.folder}: {why(error)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def migrate(files: BoardFiles, say=print) -> int:
    """Under the lock: move the old single file's rows into the dataset, one search at a time (readers meanwhile
    read both, so every row stays visible), then rename the old file. Returns the rows moved (0: nothing to do)."""
    if not files.legacy.is_file():
        return 0
    old = read_file(files.legacy)
    present = files.search_files()
    for search in sorted(set(old.column("search").to_pylist())):
        mine = old.filter(pc.equal(old.column("search"), search))
        if search in present:  # a row the dataset has already wins
            newer = read_file(present[search], search)
            keys = set(newer.column("trial_id").to_pylist())
            mine = mine.filter(pa.array([t not in keys for t in mine.column("trial_id").to_pylist()], pa.bool_()))
            mine = pa.concat_tables([newer, mine])
        write_search(files, search, mine)
    moved = files.legacy.with_name(files.legacy.name + MIGRATED_SUFFIX)
    try:
        os.replace(files.legacy, moved)
    except OSError as error:
        raise LeaderboardError(f"cannot rename {files.legacy} after moving its rows to {files.folder}: "
                               f"{why(error)}") from None
    say(f"leaderboard: moved the {len(old)} rows of {files.legacy} into {files.folder}/ (one file per search); "
        f"the old file is kept as {moved}")
    return len(old)


__all__ = ["BoardFiles", "LeaderboardError", "MIGRATED_SUFFIX", "PART", "board_files", "locked", "migrate",
           "read_file", "read_tables", "write_atomically", "write_search"]
