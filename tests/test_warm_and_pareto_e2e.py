"""Real searches on the tiny tree (one local 2-CPU Ray for the module): a multi-objective search that ends with a
Pareto front in its rows, then a search warm-started from it whose first trials are its best configs."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.board import leaderboard
from search.board.pareto import pareto_flags
from search.board.paths import SEARCH_LOG, leaderboard_path, optuna_url, settings_path
from search.cli.run import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
OBJECTIVES = ["balanced_accuracy", "num_parameters"]


def _common(data: Path, tmp: Path, name: str, size: int) -> list[str]:
    return ["--family", "resnet", "--data", str(data), "--image-sizes", str(size), "--max-epochs", "1",
            "--grace-epochs", "1", "--workers-per-trial", "1", "--results", str(tmp / "results"),
            "--storage", str(tmp / "ray"), "--name", name]


def _rows(tmp: Path, name: str) -> pd.DataFrame:
    board = leaderboard.read(leaderboard_path(tmp / "results"))
    return board[board["search"] == name].sort_values("rank").reset_index(drop=True)


def _study(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna_url(tmp / "results"))


@pytest.fixture(scope="module")
def searches(ray_2cpu, tiny_cnmc, tmp_path_factory):
    """'mo': 3 trials, balanced accuracy up and size down, 24 px. 'warm': 4 trials at 32 px warm-started from it
    (so its top 2 run first)."""
    tmp = tmp_path_factory.mktemp("warm-mo")
    codes = {"mo": main(_common(tiny_cnmc, tmp, "mo", 24) + ["--num-samples", "3", "--objectives", *OBJECTIVES])}
    codes["warm"] = main(_common(tiny_cnmc, tmp, "warm", 32) + ["--num-samples", "4", "--warm-start", "mo"])
    return tmp, codes


def test_a_multi_objective_search_ends_with_its_pareto_front_in_the_rows(searches):
    tmp, codes = searches
    assert codes["mo"] == 0
    rows = _rows(tmp, "mo")
    assert len(rows) == 3 and (rows["objectives"] == ",".join(OBJECTIVES)).all()
    assert rows["pareto"].notna().all() and rows["pareto"].sum() >= 1
    ended = rows["status"].isin(["finished", "stopped"])
    expected = pareto_flags(rows.loc[ended, OBJECTIVES].values.tolist(), ["max", "min"])
    assert rows.loc[ended, "pareto"].astype(bool).tolist() == expected
    assert not rows.loc[~ended, "pareto"].astype(bool).any()
    study = _study(tmp, "mo")  # Optuna searched both objectives, the size minimised
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and sorted(t.values[1] for t in done) == sorted(rows["num_parameters"])
    log = (tmp / "results" / "mo" / SEARCH_LOG).read_text()
    assert "pareto front of mo (balanced_accuracy max, num_parameters min)" in log
    assert "smallest model within 0.01 of the best balanced_accuracy" in log
    assert json.loads(settings_path(tmp / "results", "mo").read_text())["objectives"] == OBJECTIVES


def test_the_first_trials_of_a_warm_started_search_are_the_earlier_best(searches):
    tmp, codes = searches
    assert codes["warm"] == 0
    old, new = _rows(tmp, "mo"), _rows(tmp, "warm")
    assert len(new) == 4 and new["pareto"].isna().all()
    saved = json.loads(settings_path(tmp / "results", "warm").read_text())
    assert saved["warm_start"] == "mo" and len(saved["warm_start_points"]) == 2  # half of 4 trials
    first = sorted(_study(tmp, "warm").trials, key=lambda t: t.number)[:2]
    assert [t.params for t in first] == saved["warm_start_points"]
    searched = ["filters", "depth", "block", "stages", "lr", "weight_decay", "dropout", "optimizer",
                "aug_strength", "batch_size"]
    for trial, (_, best) in zip(first, old.head(2).iterrows()):
        ran = new[new["lr"] == trial.params["lr"]].iloc[0]  # the trial's leaderboard row
        assert ran[searched].tolist() == best[searched].tolist() and ran["image_size"] == 32
    log = (tmp / "results" / "warm" / SEARCH_LOG).read_text()
    assert "warm start: the first 2 of 4 trials are the top configs of search mo by its balanced_accuracy" in log
    assert f"warm start: {old['trial_id'][0]} (resnet, balanced_accuracy " in log
    assert "image_size 24 -> 32 (fixed in this search)" in log


def test_the_report_of_the_multi_objective_search_draws_its_front_and_its_study(searches, tmp_path):
    from search.reporting import report

    tmp, _ = searches
    out = tmp_path / "report.html"
    assert report.main(["--leaderboard", str(leaderboard_path(tmp / "results")), "--search", "mo",
                        "--out", str(out)]) == 0
    page = out.read_text()
    assert "Small and accurate: the Pareto front" in page and "smallest model within 0.01" in page
    optuna_part = page.split("Optuna: optimisation history")[1].split("<h2>")[0]
    assert 'alt="optimisation history"' in optuna_part  # a two-objective study, plotted by its first objective
