"""--time-budget ends a search honestly (issue 10): a trial it cuts short says so in its row and in the Optuna study,
rows hold the settings each trial was given, and a search in which nothing trained does not exit 0.

Each case is a real `python -m search.run` (its own local Ray). In the first, the test-only fault hook parks trial 0
after its first epoch, so the budget surely ends while it runs; the other trials wait for its slot or finish."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from processes import kill_group
from search.board import leaderboard
from search.board.paths import leaderboard_path, optuna_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _search(tiny_cnmc: Path, tmp: Path, name: str, budget: str, env: dict) -> tuple[int, str]:
    argv = ["--family", "resnet", "--data", str(tiny_cnmc), "--image-sizes", "24", "--num-samples", "3",
            "--max-epochs", "40", "--grace-epochs", "40", "--time-budget", budget, "--results", str(tmp / "results"),
            "--storage", str(tmp / "ray"), "--name", name, "--cpus-per-worker", "2"]  # one trial at a time
    log = tmp / f"{name}.log"
    with open(log, "w") as stream:
        search = subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=tmp, env={**os.environ, **env},
                                  stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = search.wait(timeout=500)
        finally:
            kill_group(search)
    return code, log.read_text()


def test_a_trial_the_budget_cuts_short_says_so_and_keeps_its_sampled_settings(tiny_cnmc, tmp_path):
    env = {"LEUKTUNE_FAULT_DIR": str(tmp_path / "faults"), "LEUKTUNE_FAULT_HOLD": "0:1"}
    code, log = _search(tiny_cnmc, tmp_path, "budget", "45", env)
    assert code == 0, log[-3000:]
    rows = leaderboard.read(leaderboard_path(tmp_path / "results"))
    cut = rows[rows["status"] == "time_budget"]
    assert len(cut) == 1 and cut["epochs_run"].iloc[0] >= 1 and not cut["early_stopped"].iloc[0]
    assert "cut by the time budget" in log
    study = optuna.load_study(study_name="budget", storage=optuna_url(tmp_path / "results"))
    states = {t.number: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states.values()
    assert optuna.trial.TrialState.COMPLETE not in states.values()  # nothing ran to its end
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == 1 and pruned[0].params["lr"] == pytest.approx(cut["lr"].iloc[0])  # the sampled settings


def test_a_budget_in_which_nothing_trains_is_an_error(tiny_cnmc, tmp_path):
    code, log = _search(tiny_cnmc, tmp_path, "no-time", "1", {})
    assert code == 1, log[-3000:]
    assert "error: no trial of no-time trained a single epoch within --time-budget 1 s" in log
    board = leaderboard_path(tmp_path / "results")
    rows = leaderboard.read(board) if board.exists() else None
    assert rows is None or (rows["epochs_run"].fillna(0) == 0).all()
