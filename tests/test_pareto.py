"""Multi-objective search (search/board/pareto.py), without Ray: the front on fixed numbers, the flags on leaderboard rows,
the pick within one point, the --objectives flag, the leaderboard columns and the report section. The real search
is in test_warm_and_pareto_e2e.py."""
from __future__ import annotations

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from search.board import leaderboard as lb
from search.board.pareto import (check_objectives, front_lines, mark_front, marked_search, pareto_flags, pick_line,
                           searcher_objectives, smallest_within)
from search.cli.flags import parse_args
from search.board.paths import leaderboard_path
from search.cli.run import main
from search.board.settings import METRICS
from board_rows import make_row


# -- the front on fixed numbers ---------------------------------------------------------------------------------------
def test_front_of_accuracy_up_and_size_down():
    points = [[0.81, 210_000],   # the most accurate: on the front
              [0.80, 9_000],     # smaller, nearly as good: on the front
              [0.79, 40_000],    # worse and larger than the one above: dominated
              [0.80, 9_000],     # equal to a front point: neither dominates the other, both on it
              [0.70, 2_000],     # the smallest: on the front however poor
              [0.81, 300_000],   # as accurate as the first but larger: dominated
              [math.nan, 100],   # no score: never on the front
              [0.90, None]]      # no size: never on the front
    assert pareto_flags(points, ["max", "min"]) == [True, True, False, True, True, False, False, False]


def test_front_with_three_objectives_and_a_loss():
    # balanced accuracy (max), val_loss (min), size (min)
    points = [[0.8, 0.40, 1000], [0.8, 0.50, 1000], [0.7, 0.30, 5000], [0.7, 0.35, 5000], [0.9, 0.60, 9000]]
    assert pareto_flags(points, ["max", "min", "min"]) == [True, False, True, False, True]


def test_only_finished_and_stopped_rows_can_be_on_the_front():
    rows = [dict(trial_id="err", status="error", balanced_accuracy=0.99, num_parameters=10),
            dict(trial_id="cut", status="time_budget", balanced_accuracy=0.95, num_parameters=10),
            dict(trial_id="big", status="finished", balanced_accuracy=0.90, num_parameters=1000),
            dict(trial_id="small", status="stopped", balanced_accuracy=0.60, num_parameters=100),
            dict(trial_id="worse", status="finished", balanced_accuracy=0.59, num_parameters=200)]
    flags = {row["trial_id"]: row["pareto"] for row in mark_front(rows, ["balanced_accuracy", "num_parameters"])}
    assert flags == {"err": False, "cut": False, "big": True, "small": True, "worse": False}


def frame(*rows: tuple) -> pd.DataFrame:
    """Leaderboard-like rows of one multi-objective search: (trial_id, balanced_accuracy, num_parameters, status)."""
    records = [dict(search="mo", trial_id=t, family="resnet", metric="balanced_accuracy", status=s,
                    balanced_accuracy=v, num_parameters=n, objectives="balanced_accuracy,num_parameters")
               for t, v, n, s in rows]
    return pd.DataFrame(mark_front(records, ["balanced_accuracy", "num_parameters"]))


def test_the_smallest_model_within_one_point_of_the_best():
    rows = frame(("best", 0.81, 400_000, "finished"), ("edge", 0.80, 50_000, "finished"),
                 ("close", 0.805, 120_000, "stopped"), ("tiny", 0.79, 3_000, "finished"),
                 ("error", 0.99, 10, "error"))
    best, small = smallest_within(rows)
    assert best["trial_id"] == "best" and small["trial_id"] == "edge"  # exactly one point below counts
    assert pick_line(rows) == ("smallest model within 0.01 of the best balanced_accuracy (0.810, best, 400.0k "
                               "parameters): edge (resnet), 50.0k parameters, balanced_accuracy 0.800, 8.0x smaller")
    low = frame(("best", 0.13, 400_000, "finished"), ("edge", 0.12, 50_000, "finished"))
    assert smallest_within(low)[1]["trial_id"] == "edge"  # 0.13 - 0.01 is above 0.12 in floating point
    alone = frame(("best", 0.81, 1_000, "finished"), ("big", 0.80, 5_000, "finished"))
    assert pick_line(alone).endswith("the best itself")


def test_console_lines_list_the_front_smallest_first():
    rows = frame(("best", 0.81, 400_000, "finished"), ("mid", 0.80, 50_000, "finished"),
                 ("tiny", 0.70, 3_000, "finished"), ("bad", 0.60, 60_000, "finished"))
    lines = front_lines(rows)
    assert lines[0] == ("pareto front of mo (balanced_accuracy max, num_parameters min): 3 of 4 trials, "
                        "smallest first")
    assert [line.split()[0] for line in lines[1:4]] == ["tiny", "mid", "best"]
    assert "3.0k parameters" in lines[1] and "balanced_accuracy 0.700" in lines[1]
    assert lines[4].startswith("smallest model within 0.01")
    single = rows.assign(objectives=None, pareto=None)
    assert front_lines(single) == []


def test_flags_are_set_over_the_rows_already_in_the_leaderboard_too(tmp_path):
    path = leaderboard_path(tmp_path)
    first = dict(objectives="balanced_accuracy,num_parameters", metric="balanced_accuracy")
    lb.append_rows(path, [make_row("earlier", search="mo", balanced_accuracy=0.9, num_parameters=1000, **first),
                          make_row("other-search", search="x", balanced_accuracy=0.1, num_parameters=1)])
    rows = marked_search(path, "mo", [make_row("now", search="mo", balanced_accuracy=0.8, num_parameters=100,
                                               **first)], ["balanced_accuracy", "num_parameters"])
    assert {row["trial_id"]: row["pareto"] for row in rows} == {"earlier": True, "now": True}
    got = lb.append_rows(path, rows).set_index("trial_id")["pareto"]  # the rows of the search written
    assert got["earlier"] and got["now"] and "other-search" not in got.index
    assert pd.isna(lb.read(path).set_index("trial_id").loc["other-search", "pareto"])  # another search's untouched


# -- the flag and the searcher -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("objectives, message", [
    (["balanced_accuracy", "latency_ms"], "--objectives latency_ms: unknown objective"),
    (["num_parameters", "balanced_accuracy"], "--objectives num_parameters first: the first objective is the metric"),
    (["val_loss", "num_parameters"], "--objectives val_loss first"),
    (["balanced_accuracy"], "give two or more different objectives"),
])
def test_bad_objectives_are_one_line_and_exit_2(tmp_path, capsys, objectives, message):
    code = main(["--family", "resnet", "--objectives", *objectives, "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "searches").exists()


def test_objectives_set_the_metric_and_a_different_metric_is_refused(tmp_path, capsys):
    args = parse_args(["--family", "resnet", "--objectives", "roc_auc", "num_parameters", "val_loss"])
    assert args.metric == "roc_auc"
    assert searcher_objectives(args.metric, args.objectives) == (["roc_auc", "num_parameters", "val_loss"],
                                                                 ["max", "min", "min"])
    plain = parse_args(["--family", "resnet"])
    assert searcher_objectives(plain.metric, plain.objectives) == ("balanced_accuracy", "max")
    code = main(["--family", "resnet", "--objectives", "roc_auc", "num_parameters", "--metric", "weighted_f1",
                 "--results", str(tmp_path)])
    assert code == 2 and "--metric weighted_f1 contradicts --objectives" in capsys.readouterr().err
    check_objectives(["weighted_f1", "num_parameters"], METRICS)  # any metric first, any column after


def test_a_multi_objective_searcher_gets_both_directions():
    from search.tuning.spaces import SearchSpace
    from search.tuning.ray_private import optuna_study
    from search.tuning.rows import SearchRun
    from search.tuning.strategies import make_searcher

    searcher = make_searcher("tpe", search="mo", run=SearchRun(), space=SearchSpace(["resnet"]), metric=["balanced_accuracy",
                             "num_parameters"], mode=["max", "min"], storage=None, seed=0, num_samples=4,
                             max_epochs=2)
    directions = [d.name for d in optuna_study(searcher).directions]
    assert directions == ["MAXIMIZE", "MINIMIZE"]


# -- the leaderboard columns -------------------------------------------------------------------------------------------
def test_objectives_and_pareto_round_trip(tmp_path):
    path = leaderboard_path(tmp_path)
    board = lb.append_rows(path, [make_row("a", objectives=["balanced_accuracy", "num_parameters"], pareto=True),
                                  make_row("b")])
    got = board.set_index("trial_id")
    assert got.loc["a", "objectives"] == "balanced_accuracy,num_parameters" and bool(got.loc["a", "pareto"])
    assert pd.isna(got.loc["b", "objectives"]) and pd.isna(got.loc["b", "pareto"])


def test_a_version_2_file_written_before_the_new_columns_reads_with_them_empty(tmp_path):
    path = leaderboard_path(tmp_path)
    lb.append_rows(path, [make_row("a")])
    file = lb.search_file(path, "s1")
    table = pq.read_table(file)
    older = table.drop_columns(["objectives", "pareto"]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(older, file)
    got = lb.read(path)
    assert got["trial_id"].tolist() == ["a"] and got["pareto"].isna().all()
    assert set(lb.append_rows(path, [make_row("b")])["trial_id"]) == {"a", "b"}
    assert {"objectives", "pareto"} <= set(pq.read_schema(file).names)
    missing_more = table.drop_columns(["pareto", "notes"]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(missing_more, file)
    with pytest.raises(lb.LeaderboardError, match=r"does not have the version-\d+ columns"):
        lb.read(path)


# -- the report --------------------------------------------------------------------------------------------------------
def test_report_draws_the_front_and_names_the_pick(tmp_path):
    from search.reporting.report import build_report

    rows = frame(("best", 0.81, 400_000, "finished"), ("mid", 0.805, 50_000, "finished"),
                 ("tiny", 0.70, 3_000, "stopped"), ("bad", 0.60, 60_000, "finished"))
    board = pd.DataFrame([{**make_row(r["trial_id"], search="mo"), **r} for r in rows.to_dict("records")])
    page = build_report(board, "mo", None, None, storage=None, study="mo")
    section = page.split("Small and accurate: the Pareto front</h2>")[1].split("<h2>")[0]
    assert "smallest model within 0.01 of the best balanced_accuracy (0.810, best" in section
    assert "mid (resnet), 50.0k parameters" in section
    assert section.count("data:image/png;base64,") == 1
    assert section.index(">tiny<") < section.index(">mid<") < section.index(">best<")  # the front, smallest first
    assert ">bad<" not in section
    single = board.assign(objectives=None, pareto=None)
    assert "Pareto front" not in build_report(single, "mo", None, None, storage=None, study="mo")
