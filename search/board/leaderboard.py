"""The parquet leaderboard: one row per trial, from every search, ranked; and its CLI. Its columns: search/board/schema.py.

    python search/leaderboard.py --top 10 --family resnet --markdown results/leaderboard.md

`append_rows` merges rows under an exclusive lock (two searches writing at once keep both sets), replaces a row with
the same (search, trial_id) (a resumed search adds no duplicates), and writes a temporary file, fsyncs it and renames
it over the old one (a reader never sees half a file; a failed write leaves the old one). A file of a newer schema
version is refused, never overwritten; an older one is upgraded and written back as the current version.
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
import pyarrow as pa

from leukmodels.metrics import LOWER_IS_BETTER
from leukmodels.values import missing
from search.board import search_files
from search.board.files import (LeaderboardError, board_files, locked, migrate, read_file, read_tables,
                                write_atomically, write_search, why)
from search.board.paths import RESULTS, leaderboard_path
from search.board.schema import CLI_COLUMNS, COLUMNS, METRIC_COLUMNS, SCHEMA, normalise_row, ranked

DEFAULT_PATH = str(leaderboard_path(RESULTS))


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus `git describe` of this checkout when there is one, e.g. "0.1.0+git.b41bc5b-dirty"."""
    try:
        version = importlib.metadata.version("leukemia-tune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return version
    try:
        described = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--tags"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+git.{described}" if described else version


# -- reading and appending --------------------------------------------------------------------------------------------
def ranked_frame(table: pa.Table) -> pd.DataFrame:
    """The rows as a frame, `rank` set over these rows (schema.ranked's order: 1 = best within each ranking metric),
    best first. Vectorised: a leaderboard of 100,000 rows ranks in well under a second."""
    nullable = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    frame = table.to_pandas(types_mapper=nullable.get)
    parts = []
    for metric, group in frame.groupby("metric", sort=True):
        sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
        value, accuracy = group[metric].astype(float), group["accuracy"].astype(float)
        key = pd.DataFrame({"error": group["status"].eq("error"), "no_value": value.isna(),
                            "value": (sign * value).fillna(0.0), "no_accuracy": accuracy.isna(),
                            "accuracy": (-accuracy).fillna(0.0), "search": group["search"],
                            "trial_id": group["trial_id"]})
        group = group.loc[key.sort_values(list(key.columns), kind="stable").index]
        parts.append(group.assign(rank=pd.array(range(1, len(group) + 1), dtype=pd.Int64Dtype())))
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[0:0].reset_index(drop=True)


def exists(path: str | os.PathLike) -> bool:
    """Whether there is a leaderboard at `path` (the dataset folder, or an old single file not yet moved)."""
    return board_files(path).exists()


def search_file(path: str | os.PathLike, search: str) -> Path:
    """The file that holds the rows of `search` (it may not exist yet): what a copy of one search's rows copies."""
    return board_files(path).search_file(search)


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Merge `rows` into the leaderboard at `path` (created if absent): each search's file is rewritten with its
    rows, a row whose (search, trial_id) is already there replaced. Costs what the searches written hold, not the
    whole leaderboard. Returns the ranked rows of the searches written. ValueError for a bad row (nothing is
    written), LeaderboardError when a file cannot be read or written (the old file is then intact). With no rows it
    writes a probe file and removes it: a search calls that before launch to fail early on unwritable storage. An
    old single-file leaderboard is moved into the dataset on the first call (one line printed)."""
    files = board_files(path)
    new = [normalise_row(row) for row in rows]
    by_search: dict[str, list[dict[str, Any]]] = {}
    for row in new:
        by_search.setdefault(row["search"], []).append(row)
    written = []
    with locked(files):
        migrate(files)
        if not new:
            probe = files.folder / ".probe"
            write_atomically(SCHEMA.empty_table(), probe)
            probe.unlink()
        for search, mine in by_search.items():
            target = files.search_file(search)
            old = read_file(target, search).to_pylist() if target.is_file() else []
            merged = {row["trial_id"]: row for row in old}
            merged.update((row["trial_id"], row) for row in mine)
            table = pa.Table.from_pylist(ranked(list(merged.values())), schema=SCHEMA)  # ranks within the search
            write_search(files, search, table)
            written.append(table)
    return ranked_frame(pa.concat_tables(written) if written else SCHEMA.empty_table())


def read(path: str | os.PathLike = DEFAULT_PATH, search: Optional[str] = None) -> pd.DataFrame:
    """The leaderboard, best first within each ranking metric, ranked over the whole of it; with `search`, only that
    search's rows, ranked among themselves (reads one file). No lock needed: files are replaced atomically."""
    files = board_files(path)
    if not files.exists():
        raise LeaderboardError(f"no leaderboard at {path} (run a search first, or pass --path)")
    return ranked_frame(read_tables(files, search))


def search_rows(path: str | os.PathLike, search: str) -> pd.DataFrame:
    """The rows of one search, ranked among themselves (empty when it has none)."""
    return read(path, search=search)


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
        extra = [m for m in sorted(df["metric"].unique()) if m not in CLI_COLUMNS]  # show what ranked the rows
        return list(CLI_COLUMNS[:4]) + extra + list(CLI_COLUMNS[4:]) + (["metric"] if df["metric"].nunique() > 1 else [])
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
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"leaderboard dataset folder, or the parquet file of "
                        f"earlier versions (default: {DEFAULT_PATH})")
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
        print(f"error: {why(error) if isinstance(error, OSError) else error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
