"""Two real `python -m search.run` with the same --name started at the same moment (issue 20): exactly one runs, the
other exits 2 in one line before it decodes anything, and what the one that ran leaves (leaderboard rows, Optuna
study, Tune experiment) is what a single run leaves. While it runs, every server of its local Ray listens on the
loopback interface only."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray  # noqa: F401 - puts Ray's bundled psutil on the path

import psutil

from processes import checkout_env, kill_group
from search.board import leaderboard
from search.board.paths import leaderboard_path, optuna_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NAME = "same"
SAMPLES = 2
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening(groups: set[int]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of the processes in these process groups (the
    drivers and the local Ray each started: its GCS, raylet, dashboard, agents and workers)."""
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.pid:
            continue
        try:
            if os.getpgid(conn.pid) in groups:
                found.add((psutil.Process(conn.pid).name(), conn.laddr.ip, conn.laddr.port))
        except (ProcessLookupError, psutil.Error):
            continue  # ended meanwhile
    return found


@pytest.fixture(scope="module")
def pair(tiny_cnmc, tmp_path_factory):
    """Both drivers started together; returns (tmp, [(exit code, output)] in start order, listening sockets seen)."""
    tmp = tmp_path_factory.mktemp("same-name")
    argv = [sys.executable, "-m", "search.run", "--family", "resnet", "--data", str(tiny_cnmc), "--image-sizes",
            "24", "--num-samples", str(SAMPLES), "--max-epochs", "1", "--grace-epochs", "1", "--results",
            str(tmp / "results"), "--storage", str(tmp / "ray"), "--name", NAME]
    logs = [tmp / f"driver-{i}.log" for i in range(2)]
    streams = [open(log, "w") for log in logs]
    drivers = [subprocess.Popen(argv, cwd=tmp, env=checkout_env(), stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True) for stream in streams]
    listening = set()
    try:
        deadline = time.time() + 500
        while time.time() < deadline and any(d.poll() is None for d in drivers):
            listening |= _listening({d.pid for d in drivers})
            time.sleep(0.5)
    finally:
        for driver in drivers:
            kill_group(driver)
        for stream in streams:
            stream.close()
    return tmp, [(d.returncode, log.read_text()) for d, log in zip(drivers, logs)], listening


def test_two_same_name_searches_started_together_run_once(pair):
    tmp, ended, _ = pair
    codes = sorted(code for code, _ in ended)
    assert codes == [0, 2], ended
    refused = next(out for code, out in ended if code == 2).strip()
    assert len(refused.splitlines()) == 1, refused  # one line, before the console, Ray or decoding said anything
    assert refused.startswith(f"error: --name {NAME}: another search of that name is running"), refused
    rows = leaderboard.read(leaderboard_path(tmp / "results"))
    rows = rows[rows["search"] == NAME]
    assert len(rows) == SAMPLES and rows["trial_id"].is_unique and set(rows["status"]) == {"finished"}
    study = optuna.load_study(study_name=NAME, storage=optuna_url(tmp / "results"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * SAMPLES  # no FAIL orphans
    assert len(list(Path(tmp / "ray" / NAME).glob("experiment_state*.json"))) == 1  # one Tune experiment


def test_a_local_search_listens_on_loopback_only(pair):
    _, _, listening = pair
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the search's own Ray was seen while it ran
    exposed = sorted(entry for entry in listening if entry[1] not in LOOPBACK)
    assert not exposed, f"listening beyond this machine: {exposed}"
