"""The parquet leaderboard: one row per trial, from every search, ranked; and its CLI. Its columns: search/schema.py.

    python search/leaderboard.py --top 10 --family resnet --markdown results/leaderboard.md

`append_rows` merges rows under an exclusive lock (two searches writing at once keep both sets), replaces a row with
the same (search, trial_id) (a resumed search adds no duplicates), and writes a temporary file, fsyncs it and renames
it over the old one (a reader never sees half a file; a failed write leaves the old one). A file of a newer schema
version is refused, never overwritten; an older one is upgraded and written back as the current version.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

if __package__ in (None, ""):  # run as `python search/leaderboard.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from search.paths import RESULTS, leaderboard_path
from search.schema import (COLUMNS, METRIC_COLUMNS, SCHEMA, SCHEMA_VERSION, VERSION_KEY, missing, normalise_row, ranked,
                           upgraded)

DEFAULT_PATH = str(leaderboard_path(RESULTS))


class LeaderboardError(RuntimeError):
    """The leaderboard file cannot be read or written; the message is one line and names the file."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus `git describe` of this checkout when there is one, e.g. "0.1.0+git.b41bc5b-dirty"."""
    try:
        version = importlib.metadata.version("leukemia-tune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return version
    try:
        described = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--tags"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+git.{described}" if described else version


# -- file access ----------------------------------------------------------------------------------------------------
def _why(error: BaseException) -> str:
    return " ".join(str(getattr(error, "strerror", None) or error).split())  # one line


def _read_table(path: Path) -> pa.Table:
    try:  # one open file: read_table(path) may open the name twice (footer, pages) and straddle a rename
        with open(path, "rb") as handle:
            table = pq.read_table(pa.BufferReader(handle.read()))
    except FileNotFoundError:
        raise LeaderboardError(f"no leaderboard at {path} (run a search first, or pass --path)") from None
    except (OSError, pa.ArrowException) as error:
        raise LeaderboardError(f"cannot read leaderboard {path}: {_why(error)}") from None
    meta = table.schema.metadata or {}
    version = meta.get(VERSION_KEY, b"?").decode()
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise LeaderboardError(f"leaderboard {path} has schema version {version}; this code reads versions up to "
                               f"{SCHEMA_VERSION} (upgrade leukemia-tune or write elsewhere); the file is left as is")
    table = upgraded(table, int(version))
    if set(table.schema.names) != set(COLUMNS):
        raise LeaderboardError(f"leaderboard {path} does not have the version-{SCHEMA_VERSION} columns; "
                               f"the file is left as is")
    try:
        return table.select(list(COLUMNS)).cast(SCHEMA)
    except pa.ArrowException as error:
        raise LeaderboardError(f"leaderboard {path} has unexpected column types: {_why(error)}") from None


def _to_frame(table: pa.Table) -> pd.DataFrame:
    nullable = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    frame = table.to_pandas(types_mapper=nullable.get)
    return frame.sort_values(["metric", "rank"], kind="stable").reset_index(drop=True)


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing threads that create files meanwhile)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS): the only other way to read it
    os.umask(mask)
    return mask


def _write_atomically(table: pa.Table, path: Path) -> None:
    """Write next to `path`, fsync, rename over it; on any failure remove the temporary file, keep the old one."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise LeaderboardError(f"cannot write leaderboard {path}: {_why(error)}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o666 & ~_umask())  # not mkstemp's 0600: the group reads it as it reads optuna.db
            pq.write_table(table, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise LeaderboardError(f"cannot write leaderboard {path}: {_why(error)}; "
                                   f"the previous file is intact") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive inter-process lock on `path.lock` (fcntl.flock: released by the kernel if the holder dies)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise LeaderboardError(f"cannot write leaderboard {path}: {_why(error)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Merge `rows` into the leaderboard at `path` (created if absent); a row whose (search, trial_id) is already
    there replaces it. Returns the whole ranked leaderboard. ValueError for a bad row (nothing is written),
    LeaderboardError when the file cannot be read or written (the old file is then intact). With no rows it rewrites
    the file (an empty one if absent): a search calls that before launch to fail early on unwritable storage."""
    path = Path(path)
    new = [normalise_row(row) for row in rows]
    with _locked(path):
        old = _read_table(path).to_pylist() if path.exists() else []
        merged = {(row["search"], row["trial_id"]): row for row in old}
        for row in new:
            merged[(row["search"], row["trial_id"])] = row
        table = pa.Table.from_pylist(ranked(list(merged.values())), schema=SCHEMA)
        _write_atomically(table, path)  # even with no new rows: `append_rows(path, [])` is a pre-flight write check
    return _to_frame(table)


def read(path: str | os.PathLike = DEFAULT_PATH) -> pd.DataFrame:
    """The leaderboard, best first (within each ranking metric). No lock needed: files are replaced atomically."""
    return _to_frame(_read_table(Path(path)))


def rank_table(df: pd.DataFrame, top: Optional[int] = None, family: Optional[str] = None,
               search: Optional[str] = None, data: Optional[str] = None) -> pd.DataFrame:
    """Filter a leaderboard frame; `data` is "generated", "real" or a data fingerprint (a prefix is enough)."""
    keep = pd.Series(True, index=df.index)
    if family is not None:
        keep &= df["family"] == family
    if search is not None:
        keep &= df["search"] == search
    if data == "generated":
        keep &= df["data_generated"].fillna(False).astype(bool)
    elif data == "real":
        keep &= ~df["data_generated"].fillna(True).astype(bool)
    elif data is not None:
        keep &= df["data_fingerprint"].fillna("").str.startswith(data)
    out = df[keep].sort_values(["metric", "rank"], kind="stable").reset_index(drop=True)
    return out if top is None else out.head(top)


# -- CLI ------------------------------------------------------------------------------------------------------------
KEY_COLUMNS = ("rank", "search", "trial_id", "family", "weighted_f1", "accuracy", "balanced_accuracy", "roc_auc",
               "epochs_run", "status", "filters", "depth", "lr", "batch_size", "image_size", "dropout", "optimizer")


def _cell(name: str, value: Any) -> str:
    if missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if name in METRIC_COLUMNS else f"{value:.3g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _display(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({name: [_cell(name, v) for v in df[name].tolist()] for name in columns}, dtype=object)


def render(table: pd.DataFrame, columns: Optional[list[str]] = None) -> str:
    """Rows as an aligned text table (the CLI's), showing `columns` (default: the key columns)."""
    return _display(table, _columns(columns, table)).to_string(index=False)


def to_markdown(shown: pd.DataFrame) -> str:
    """A GitHub Markdown table (no `tabulate` dependency)."""
    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    rows = [line(shown.columns), line("---" for _ in shown.columns)]
    return "\n".join(rows + [line(values) for values in shown.itertuples(index=False)]) + "\n"


def _columns(requested: Optional[list[str]], df: pd.DataFrame) -> list[str]:
    if not requested:
        extra = [m for m in sorted(df["metric"].unique()) if m not in KEY_COLUMNS]  # show what ranked the rows
        return list(KEY_COLUMNS[:4]) + extra + list(KEY_COLUMNS[4:]) + (["metric"] if df["metric"].nunique() > 1 else [])
    names = [name for item in requested for name in item.split(",") if name]
    if names == ["all"]:
        return list(COLUMNS)
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise ValueError(f"--columns {','.join(unknown)}: unknown column(s); known: {','.join(COLUMNS)}")
    return names


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python search/leaderboard.py",
        description="Print the ranked leaderboard of every search (best first) and export it as CSV or Markdown.")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"leaderboard parquet (default: {DEFAULT_PATH})")
    parser.add_argument("--top", type=int, help="show only the best K rows")
    parser.add_argument("--family", help="only this model family (e.g. resnet)")
    parser.add_argument("--search", help="only this search name")
    parser.add_argument("--storage", help="a search's --storage (folder or URI): its stored rows are merged into "
                        "--path first (needs --search)")
    parser.add_argument("--data", help="'generated', 'real', or a data fingerprint (prefix)")
    parser.add_argument("--columns", nargs="+", help="columns to show/export (space or comma separated; 'all')")
    parser.add_argument("--csv", metavar="OUT", help="also write the rows as CSV (all columns unless --columns)")
    parser.add_argument("--markdown", metavar="OUT", help="also write the shown table as Markdown")
    args = parser.parse_args(argv)
    try:
        if args.top is not None and args.top < 1:
            raise ValueError(f"--top {args.top} must be >= 1")
        if args.storage:
            from search import search_files  # it reads and appends through this module

            print(search_files.for_reading(args.storage, args.search, Path(args.path)))
        table = rank_table(read(args.path), top=args.top, family=args.family, search=args.search, data=args.data)
        if table.empty:
            print(f"no rows in {args.path} match the filters")
            return 0
        columns = _columns(args.columns, table)
        shown = _display(table, columns)
        print(render(table, columns))
        for out, text in ((args.csv, None), (args.markdown, to_markdown(shown))):
            if out:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                if text is None:
                    table[columns if args.columns else list(COLUMNS)].to_csv(out, index=False)
                else:
                    Path(out).write_text(text)
                print(f"wrote {out}")
    except (LeaderboardError, ValueError, OSError) as error:
        print(f"error: {_why(error) if isinstance(error, OSError) else error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
