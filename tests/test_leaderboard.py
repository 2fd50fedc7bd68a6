"""The parquet leaderboard: types, ranking, de-duplication, locking, atomic writes, schema versions, the dataset
layout (a file per search, the old single file moved in), the CLI."""
import datetime as dt
import errno
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leukmodels.config import config_fields
from search.board import files as bf
from search.board import leaderboard as lb
from search.board import schema
from search.board.paths import LEGACY_LEADERBOARD, leaderboard_path
from board_rows import make_row

REPO = Path(__file__).resolve().parents[1]


def test_every_column_round_trips_with_stable_types(tmp_path):
    path = leaderboard_path(tmp_path / "results")  # the folder is created
    row = make_row("t0")
    assert set(row) | {"rank", "schema_version"} == set(lb.COLUMNS)
    assert set(config_fields()) <= set(lb.COLUMNS)
    lb.append_rows(path, [row])
    schema_after_one = pq.read_schema(lb.search_file(path, "s1"))
    lb.append_rows(path, [make_row("t1", nodes=None, roc_auc=None, early_stopped=None, finished_at=None)])
    # nulls never change a column's type
    assert pq.read_schema(lb.search_file(path, "s1")).equals(schema_after_one, check_metadata=True)

    got = lb.read(path).set_index("trial_id").loc["t0"]
    for name, value in row.items():
        if name == "finished_at":
            assert got[name] == pd.Timestamp("2024-05-01T12:03:00Z")
        elif value is None:  # pretrained, error
            assert pd.isna(got[name]), name
        elif name != "trial_id":
            assert got[name] == value, name
    assert got["schema_version"] == schema.SCHEMA_VERSION and got["rank"] == 1
    assert str(lb.read(path)["started_at"].dtype) == "datetime64[us, UTC]"


def test_nodes_given_as_a_list_are_joined_and_naive_times_are_utc(tmp_path):
    path = tmp_path / "lb.parquet"
    epoch = np.int64(pd.Timestamp("2024-01-01T09:00:00Z").timestamp())  # Tune's `timestamp`: seconds, maybe numpy
    df = lb.append_rows(path, [make_row("t0", nodes=["n2", "n1", "n2"], started_at=dt.datetime(2024, 1, 1, 8),
                                        finished_at=epoch)])
    assert df.loc[0, "nodes"] == "n1,n2"
    assert df.loc[0, "started_at"] == pd.Timestamp("2024-01-01T08:00:00Z")
    assert df.loc[0, "finished_at"] == pd.Timestamp("2024-01-01T09:00:00Z")


def test_ranking_puts_errors_last_orders_by_metric_and_breaks_ties_by_accuracy(tmp_path):
    rows = [make_row("err", f1=0.99, status="error"), make_row("low", f1=0.6),
            make_row("tie_lo", f1=0.8, accuracy=0.70), make_row("tie_hi", f1=0.8, accuracy=0.75, status="stopped"),
            make_row("none", f1=None), make_row("best", f1=0.9)]
    df = lb.append_rows(tmp_path / "lb.parquet", rows)
    assert df["trial_id"].tolist() == ["best", "tie_hi", "tie_lo", "low", "none", "err"]
    assert df["rank"].tolist() == [1, 2, 3, 4, 5, 6]


def test_loss_metric_ranks_ascending_and_each_metric_ranks_on_its_own(tmp_path):
    rows = [make_row("a", metric="val_loss", val_loss=0.5), make_row("b", metric="val_loss", val_loss=0.2),
            make_row("c", f1=0.7)]
    df = lb.append_rows(tmp_path / "lb.parquet", rows)
    ranks = {(m, t): r for m, t, r in zip(df["metric"], df["trial_id"], df["rank"])}
    assert ranks == {("val_loss", "b"): 1, ("val_loss", "a"): 2, ("weighted_f1", "c"): 1}


def test_re_appending_a_search_adds_no_duplicates_and_the_newer_row_wins(tmp_path):
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("t0", f1=0.5), make_row("t1", f1=0.6)])
    lb.append_rows(path, [make_row("t0", f1=0.5), make_row("t1", f1=0.7), make_row("t0", search="other", f1=0.1)])
    df = lb.read(path)
    assert len(df) == 3 and not df.duplicated(["search", "trial_id"]).any()
    assert df.set_index(["search", "trial_id"]).loc[("s1", "t1"), "weighted_f1"] == 0.7


def _append_many(path: str, search: str, count: int) -> None:
    for i in range(count):  # one append per row: many chances to interleave with the other process
        lb.append_rows(path, [make_row(f"t{i}", search=search, f1=i / count)])


def test_two_processes_appending_at_once_keep_both_sets_and_readers_never_fail(tmp_path):
    path = str(tmp_path / "lb.parquet")
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_append_many, args=(path, name, 12)) for name in ("search_a", "search_b")]
    for proc in procs:
        proc.start()
    reads = 0
    while any(proc.is_alive() for proc in procs):  # a reader never sees a half-written file
        if lb.exists(path):
            assert lb.read(path)["schema_version"].eq(schema.SCHEMA_VERSION).all()
            reads += 1
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    df = lb.read(path)
    assert sorted(df.groupby("search").size().items()) == [("search_a", 12), ("search_b", 12)]
    assert [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name] == []


@pytest.fixture
def existing(tmp_path):
    """A leaderboard of one search, the file that holds its rows, that file's bytes and the board as read."""
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("t0"), make_row("t1", f1=0.7)])
    file = lb.search_file(path, "s1")
    return file, file.read_bytes(), lb.read(path)


def _assert_intact(file, old_bytes, old_frame):
    assert file.read_bytes() == old_bytes
    pd.testing.assert_frame_equal(lb.read(file.parents[1]), old_frame)
    assert [p.name for p in file.parents[1].rglob("*") if ".tmp" in p.name] == []


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_a_crash_in_the_middle_of_a_write_leaves_the_old_file_and_no_temporary(existing, monkeypatch, failure):
    file, old_bytes, old_frame = existing
    real_write = bf.pq.write_table

    def half_write(table, where, **kwargs):
        real_write(table, where, **kwargs)
        where.truncate(100)  # a torn file on disk, then the crash
        raise failure

    monkeypatch.setattr(bf.pq, "write_table", half_write)
    with pytest.raises(lb.LeaderboardError if isinstance(failure, OSError) else KeyboardInterrupt):
        lb.append_rows(file.parents[1], [make_row("t2")])
    _assert_intact(file, old_bytes, old_frame)


def test_a_full_disk_is_one_clear_line_naming_the_file_and_the_old_file_survives(existing, monkeypatch):
    file, old_bytes, old_frame = existing

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bf.os, "replace", disk_full)
    with pytest.raises(lb.LeaderboardError) as error:
        lb.append_rows(file.parents[1], [make_row("t2")])
    message = str(error.value)
    assert str(file) in message and "No space left on device" in message and "\n" not in message
    monkeypatch.undo()
    _assert_intact(file, old_bytes, old_frame)


def test_storage_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the results folder should be")  # root ignores chmod; this stops root too
    path = leaderboard_path(blocker)
    with pytest.raises(lb.LeaderboardError, match=f"cannot write leaderboard {path}"):
        lb.append_rows(path, [make_row("t0")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_clear_error_and_the_old_file_survives(existing):
    file, old_bytes, old_frame = existing
    file.parent.chmod(0o555)
    try:
        with pytest.raises(lb.LeaderboardError, match=str(file)):
            lb.append_rows(file.parents[1], [make_row("t2")])
    finally:
        file.parent.chmod(0o755)
    _assert_intact(file, old_bytes, old_frame)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"])
def test_the_file_is_as_readable_as_any_new_file_under_the_umask(tmp_path, umask, mode):
    """Like optuna.db beside it (0666 less the umask), not a private 0600 temporary: the group can read what the umask
    allows."""
    path = tmp_path / "lb"
    file = lb.search_file(path, "s1")
    old = os.umask(umask)
    try:
        lb.append_rows(path, [make_row("t0")])
        assert file.stat().st_mode & 0o777 == mode
        file.chmod(0o600)  # a file written by an older version: the next write fixes it
        lb.append_rows(path, [make_row("t1")])
    finally:
        os.umask(old)
    assert file.stat().st_mode & 0o777 == mode


def test_a_newer_schema_version_is_refused_and_never_overwritten(existing):
    file, _, _ = existing
    path = file.parents[1]
    table = pq.read_table(file)
    newer_version = str(schema.SCHEMA_VERSION + 1).encode()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, schema.VERSION_KEY: newer_version}), file)
    newer = file.read_bytes()
    for attempt in (lambda: lb.append_rows(path, [make_row("t2")]), lambda: lb.read(path)):
        with pytest.raises(lb.LeaderboardError, match=f"schema version {schema.SCHEMA_VERSION + 1}; this code reads"):
            attempt()
    assert file.read_bytes() == newer
    lb.append_rows(path, [make_row("t0", search="s2")])  # another search's file is its own: it is written
    assert lb.read(path, search="s2")["trial_id"].tolist() == ["t0"]


def test_a_version_1_file_is_read_and_upgraded_with_its_rows_kept(tmp_path):
    """Version 1 called early stops `asha_stopped` and had no overhead, notes, searcher or scheduler columns."""
    path = tmp_path / LEGACY_LEADERBOARD  # a single file, as versions before the dataset wrote it
    new_columns = {"notes", "overhead_seconds", "searcher", "scheduler"}
    row = {k: v for k, v in schema.normalise_row(make_row("old", status="stopped")).items() if k not in new_columns}
    row["asha_stopped"] = row.pop("early_stopped")
    row["rank"], row["schema_version"] = 1, 1
    fields = [pa.field("asha_stopped" if f.name == "early_stopped" else f.name, f.type) for f in schema.SCHEMA
              if f.name not in new_columns]
    old_schema = pa.schema(fields, metadata={schema.VERSION_KEY: b"1"})
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), path)
    got = lb.read(path).iloc[0]
    assert got["early_stopped"] and pd.isna(got["overhead_seconds"]) and got["trial_id"] == "old"
    board = lb.append_rows(path, [make_row("new")])
    assert set(board["trial_id"]) == {"old", "new"} and (board["schema_version"] == schema.SCHEMA_VERSION).all()
    file = lb.search_file(path, "s1")
    assert pq.read_schema(file).metadata[schema.VERSION_KEY] == str(schema.SCHEMA_VERSION).encode()


def test_a_version_2_file_reads_without_the_interval_columns(tmp_path):
    """Version 3 added metric_lo / metric_hi: a version-2 file's rows read with them empty and keep the rest."""
    path = tmp_path / LEGACY_LEADERBOARD  # a single file, as version 2 wrote it
    row = {k: v for k, v in schema.normalise_row(make_row("old")).items() if k not in ("metric_lo", "metric_hi")}
    row["rank"], row["schema_version"] = 1, 2
    old_schema = pa.schema([f for f in schema.SCHEMA if f.name not in ("metric_lo", "metric_hi")],
                           metadata={schema.VERSION_KEY: b"2"})
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), path)
    got = lb.read(path).iloc[0]
    assert pd.isna(got["metric_lo"]) and pd.isna(got["metric_hi"]) and got["weighted_f1"] == 0.8
    board = lb.append_rows(path, [make_row("new")])
    assert board.set_index("trial_id").loc["new", "metric_lo"] == 0.74


def test_a_parquet_that_is_not_a_leaderboard_is_refused(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(path)
    with pytest.raises(lb.LeaderboardError, match="schema version"):
        lb.append_rows(path, [make_row("t0")])
    path.write_bytes(b"not parquet at all")
    with pytest.raises(lb.LeaderboardError, match=f"cannot read leaderboard {path}"):
        lb.read(path)


@pytest.mark.parametrize("change, message", [
    ({"weigthed_f1": 0.9}, r"unknown column\(s\) \['weigthed_f1'\]"),
    ({"status": "done"}, "status 'done' must be one of"),
    ({"metric": "f1"}, "metric 'f1' must be one of"),
    ({"epochs_run": 2.5}, "column epochs_run=2.5 is not int64"),
    ({"early_stopped": "yes"}, "column early_stopped='yes' is not bool"),
    ({"trial_id": None}, "column trial_id is required"),
])
def test_bad_rows_are_refused_before_anything_is_written(tmp_path, change, message):
    path = tmp_path / "lb.parquet"
    with pytest.raises(ValueError, match=message):
        lb.append_rows(path, [make_row("t0"), {**make_row("t1"), **change}])
    assert not lb.exists(path)


def test_rank_table_filters_by_family_search_and_data(tmp_path):
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("r1", f1=0.9), make_row("r2", f1=0.8),
                          make_row("b1", family="baseline", f1=0.95, data_generated=False, data_fingerprint="fff0"),
                          make_row("x1", search="s2", f1=0.5)])
    df = lb.read(path)
    assert lb.rank_table(df, family="resnet")["trial_id"].tolist() == ["r1", "r2", "x1"]
    assert lb.rank_table(df, family="resnet", top=1)["trial_id"].tolist() == ["r1"]
    assert lb.rank_table(df, search="s2")["trial_id"].tolist() == ["x1"]
    assert lb.rank_table(df, data="real")["trial_id"].tolist() == ["b1"]
    assert lb.rank_table(df, data="generated")["trial_id"].tolist() == ["r1", "r2", "x1"]
    assert lb.rank_table(df, data="fff")["trial_id"].tolist() == ["b1"]


def test_cli_prints_the_ranked_table_and_exports_csv_and_markdown(tmp_path, capsys):
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("second", f1=0.7), make_row("first", f1=0.9), make_row("bad", status="error")])
    csv, markdown = tmp_path / "out" / "top.csv", tmp_path / "top.md"
    assert lb.main(["--path", str(path), "--top", "2", "--csv", str(csv), "--markdown", str(markdown)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("first") < printed.index("second") and "bad" not in printed
    assert "weighted_f1" in printed and "balanced_accuracy" in printed and "0.9000" in printed

    exported = pd.read_csv(csv)
    assert exported["trial_id"].tolist() == ["first", "second"] and list(exported.columns) == list(lb.COLUMNS)
    lines = markdown.read_text().splitlines()
    assert lines[0].startswith("| rank | search | trial_id | family | weighted_f1") and set(lines[1]) <= set("|- ")
    assert "| 1 | s1 | first | resnet | 0.9000 |" in lines[2] and len(lines) == 4

    assert lb.main(["--path", str(path), "--columns", "trial_id,status", "--csv", str(csv)]) == 0
    assert list(pd.read_csv(csv).columns) == ["trial_id", "status"]
    assert lb.main(["--path", str(path), "--columns", "nope"]) == 1
    assert "--columns nope: unknown column" in capsys.readouterr().err


def test_cli_runs_as_a_script_and_a_missing_file_is_one_clear_line(tmp_path):
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("t0")])
    script = [sys.executable, "search/leaderboard.py"]
    shown = subprocess.run(script + ["--path", str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "t0" in shown.stdout, shown.stderr
    missing = tmp_path / "nowhere.parquet"
    failed = subprocess.run(script + ["--path", str(missing)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"error: no leaderboard at {missing} (run a search first, or pass --path)"


def test_code_version_names_the_package_version():
    assert lb.code_version().split("+")[0] in ("0.1.0", "unknown")


# -- the dataset: a file per search --------------------------------------------------------------------------------
def test_an_append_rewrites_only_its_own_search_file(tmp_path):
    path = leaderboard_path(tmp_path)
    lb.append_rows(path, [make_row("t0"), make_row("t0", search="s2"), make_row("t1", search="s2")])
    other = lb.search_file(path, "s2")
    before = (other.stat().st_ino, other.stat().st_mtime_ns, other.read_bytes())
    mine = lb.search_file(path, "s1")
    mine_before = mine.stat().st_ino
    got = lb.append_rows(path, [make_row("t1", f1=0.95)])
    assert (other.stat().st_ino, other.stat().st_mtime_ns, other.read_bytes()) == before
    assert mine.stat().st_ino != mine_before  # replaced by a rename
    assert set(got["search"]) == {"s1"} and got["trial_id"].tolist() == ["t1", "t0"]  # what was written, ranked


def test_pandas_reads_the_dataset_as_one_table_whatever_the_search_names(tmp_path):
    path = leaderboard_path(tmp_path)
    names = ["resnet+baseline-1", "_underscore", "sp ace%", "é=1"]
    lb.append_rows(path, [make_row(f"t{i}", search=name) for i, name in enumerate(names)])
    lb.append_rows(path, [])  # the pre-flight write check leaves nothing behind
    plain = pd.read_parquet(path)  # hive partitioning: `search` from the folder names
    assert sorted(zip(plain["search"].astype(str), plain["trial_id"])) == sorted(
        (name, f"t{i}") for i, name in enumerate(names))
    assert sorted(lb.read(path)["search"]) == sorted(names)
    assert lb.search_rows(path, "sp ace%")["trial_id"].tolist() == ["t2"]
    assert lb.search_rows(path, "never-ran").empty
    assert sorted(p.name for p in path.iterdir()) == sorted(lb.search_file(path, n).parent.name for n in names)


def test_ranks_are_computed_when_reading_over_the_whole_table_or_one_search(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        value = None if i % 11 == 0 else float(rng.choice([0.5, 0.7, 0.9]))  # ties and missing values
        rows.append(make_row(f"t{i}", search=f"s{i % 3}", f1=value, accuracy=float(rng.choice([0.6, 0.8])),
                             status="error" if i % 7 == 0 else "finished",
                             metric="val_loss" if i % 5 == 0 else "weighted_f1", val_loss=float(rng.random())))
    path = tmp_path / "lb"
    for i in range(0, 60, 20):  # several appends: the stored per-search ranks are not what a read shows
        lb.append_rows(path, rows[i:i + 20])
    expected = schema.ranked([schema.normalise_row(row) for row in rows])  # the reference order, row by row
    got = lb.read(path)
    assert list(zip(got["metric"], got["trial_id"], got["rank"])) == [
        (r["metric"], r["trial_id"], r["rank"]) for r in expected]
    one = lb.read(path, search="s1")
    expected_one = schema.ranked([schema.normalise_row(row) for row in rows if row["search"] == "s1"])
    assert list(zip(one["trial_id"], one["rank"])) == [(r["trial_id"], r["rank"]) for r in expected_one]


def test_the_old_single_file_is_read_alongside_then_moved_in_on_the_first_write(tmp_path, capsys):
    legacy = tmp_path / LEGACY_LEADERBOARD
    old_rows = [schema.normalise_row(make_row(t, search=s, f1=0.6)) for s, t in
                (("s1", "t0"), ("s1", "old"), ("s2", "t0"))]
    pq.write_table(pa.Table.from_pylist(schema.ranked(old_rows), schema=schema.SCHEMA), legacy)
    dataset = leaderboard_path(tmp_path)
    assert lb.read(legacy)["trial_id"].tolist() == ["old", "t0", "t0"]  # before any write: the old file is read
    lb.append_rows(legacy.parent / "elsewhere", [])  # another leaderboard: this one is untouched
    assert legacy.is_file() and not dataset.exists()

    bf.write_search(bf.board_files(dataset), "s1",  # the dataset already has s1/t0, newer: it wins
                    pa.Table.from_pylist([schema.normalise_row(make_row("t0", f1=0.9))], schema=schema.SCHEMA))
    both = lb.read(dataset)  # read alongside, each (search, trial_id) once
    assert sorted(zip(both["search"], both["trial_id"], both["weighted_f1"])) == [
        ("s1", "old", 0.6), ("s1", "t0", 0.9), ("s2", "t0", 0.6)]
    capsys.readouterr()

    lb.append_rows(legacy, [make_row("new", search="s2")])  # the old file's path still names the leaderboard
    line = capsys.readouterr().out.strip()
    assert line == (f"leaderboard: moved the 3 rows of {legacy} into {dataset}/ (one file per search); the old "
                    f"file is kept as {legacy}{bf.MIGRATED_SUFFIX}")
    assert not legacy.exists() and (tmp_path / f"{LEGACY_LEADERBOARD}{bf.MIGRATED_SUFFIX}").is_file()
    after = lb.read(dataset)
    assert sorted(zip(after["search"], after["trial_id"], after["weighted_f1"])) == [
        ("s1", "old", 0.6), ("s1", "t0", 0.9), ("s2", "new", 0.8), ("s2", "t0", 0.6)]
    pd.testing.assert_frame_equal(lb.read(legacy), after)
    lb.append_rows(dataset, [make_row("again")])
    assert capsys.readouterr().out == ""  # moved once
