"""The parquet leaderboard: types, ranking, de-duplication, locking, atomic writes, schema versions, the CLI."""
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
from search import leaderboard as lb
from search import schema
from board_rows import make_row

REPO = Path(__file__).resolve().parents[1]


def test_every_column_round_trips_with_stable_types(tmp_path):
    path = tmp_path / "results" / "leaderboard.parquet"  # the folder is created
    row = make_row("t0")
    assert set(row) | {"rank", "schema_version"} == set(lb.COLUMNS)
    assert set(config_fields()) <= set(lb.COLUMNS)
    lb.append_rows(path, [row])
    schema_after_one = pq.read_schema(path)
    lb.append_rows(path, [make_row("t1", nodes=None, roc_auc=None, early_stopped=None, finished_at=None)])
    assert pq.read_schema(path).equals(schema_after_one, check_metadata=True)  # nulls never change a column's type

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
        if os.path.exists(path):
            assert lb.read(path)["schema_version"].eq(schema.SCHEMA_VERSION).all()
            reads += 1
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    df = lb.read(path)
    assert sorted(df.groupby("search").size().items()) == [("search_a", 12), ("search_b", 12)]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "lb.parquet"
    lb.append_rows(path, [make_row("t0"), make_row("t1", f1=0.7)])
    return path, path.read_bytes(), lb.read(path)


def _assert_intact(path, old_bytes, old_frame):
    assert path.read_bytes() == old_bytes
    pd.testing.assert_frame_equal(lb.read(path), old_frame)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_a_crash_in_the_middle_of_a_write_leaves_the_old_file_and_no_temporary(existing, monkeypatch, failure):
    path, old_bytes, old_frame = existing
    real_write = lb.pq.write_table

    def half_write(table, where, **kwargs):
        real_write(table, where, **kwargs)
        where.truncate(100)  # a torn file on disk, then the crash
        raise failure

    monkeypatch.setattr(lb.pq, "write_table", half_write)
    with pytest.raises(lb.LeaderboardError if isinstance(failure, OSError) else KeyboardInterrupt):
        lb.append_rows(path, [make_row("t2")])
    _assert_intact(path, old_bytes, old_frame)


def test_a_full_disk_is_one_clear_line_naming_the_file_and_the_old_file_survives(existing, monkeypatch):
    path, old_bytes, old_frame = existing

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lb.os, "replace", disk_full)
    with pytest.raises(lb.LeaderboardError) as error:
        lb.append_rows(path, [make_row("t2")])
    message = str(error.value)
    assert str(path) in message and "No space left on device" in message and "\n" not in message
    monkeypatch.undo()
    _assert_intact(path, old_bytes, old_frame)


def test_storage_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the results folder should be")  # root ignores chmod; this stops root too
    path = blocker / "leaderboard.parquet"
    with pytest.raises(lb.LeaderboardError, match=f"cannot write leaderboard {path}"):
        lb.append_rows(path, [make_row("t0")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_clear_error_and_the_old_file_survives(existing):
    path, old_bytes, old_frame = existing
    path.parent.chmod(0o555)
    try:
        with pytest.raises(lb.LeaderboardError, match=str(path)):
            lb.append_rows(path, [make_row("t2")])
    finally:
        path.parent.chmod(0o755)
    _assert_intact(path, old_bytes, old_frame)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"])
def test_the_file_is_as_readable_as_any_new_file_under_the_umask(tmp_path, umask, mode):
    """Like optuna.db beside it (0666 less the umask), not mkstemp's 0600: the group can read what the umask allows."""
    path = tmp_path / "lb.parquet"
    old = os.umask(umask)
    try:
        lb.append_rows(path, [make_row("t0")])
        assert path.stat().st_mode & 0o777 == mode
        path.chmod(0o600)  # a file written by an older version: the next write fixes it
        lb.append_rows(path, [make_row("t1")])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_newer_schema_version_is_refused_and_never_overwritten(existing):
    path, _, _ = existing
    table = pq.read_table(path)
    newer_version = str(schema.SCHEMA_VERSION + 1).encode()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, schema.VERSION_KEY: newer_version}), path)
    newer = path.read_bytes()
    for attempt in (lambda: lb.append_rows(path, [make_row("t2")]), lambda: lb.read(path)):
        with pytest.raises(lb.LeaderboardError, match=f"schema version {schema.SCHEMA_VERSION + 1}; this code reads"):
            attempt()
    assert path.read_bytes() == newer


def test_a_version_1_file_is_read_and_upgraded_with_its_rows_kept(tmp_path):
    """Version 1 called early stops `asha_stopped` and had no overhead, notes, searcher or scheduler columns."""
    path = tmp_path / "leaderboard.parquet"
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
    assert pq.read_schema(path).metadata[schema.VERSION_KEY] == str(schema.SCHEMA_VERSION).encode()


def test_a_version_2_file_reads_without_the_interval_columns(tmp_path):
    """Version 3 added metric_lo / metric_hi: a version-2 file's rows read with them empty and keep the rest."""
    path = tmp_path / "leaderboard.parquet"
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
    assert not path.exists()


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
