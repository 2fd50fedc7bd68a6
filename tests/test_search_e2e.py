"""End-to-end searches on a local 2-CPU Ray: Tune + Optuna + ASHA over Ray Train DDP trials on a tiny generated set.

Kept few and small (24 px images, 1-3 epochs): each Ray Train trial spends most of its time starting its workers.
The resume test runs first, in subprocesses with their own Ray, before this module's in-process Ray is started.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from processes import checkout_env, kill_group
from search.board import leaderboard
from search.board.paths import leaderboard_path, optuna_url, settings_path
from search.cli.run import main
from search.tuning.train_stop import stop_requested

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def _common(data: Path, tmp: Path, name: str) -> list[str]:
    return ["--family", "resnet", "--data", str(data), "--image-sizes", "24", "--results", str(tmp / "results"),
            "--storage", str(tmp / "ray"), "--name", name]


def _rows(tmp: Path, name: str) -> pd.DataFrame:
    board = leaderboard.read(leaderboard_path(tmp / "results"))
    return board[board["search"] == name].reset_index(drop=True)


def test_killed_search_resumes_without_rerunning_or_duplicating(tiny_cnmc, tmp_path):
    name = "resume-me"
    argv = _common(tiny_cnmc, tmp_path, name) + ["--num-samples", "3", "--max-epochs", "3", "--grace-epochs", "3",
                                                 "--workers-per-trial", "1"]
    log = open(tmp_path / "first.log", "w")
    # trial 2 parks after its first epoch (the test-only fault hook), so the search is surely still running when a
    # row exists: one-worker trials train in seconds, and the search could otherwise end before the kill
    env = checkout_env(LEUKTUNE_FAULT_DIR=str(tmp_path / "faults"), LEUKTUNE_FAULT_HOLD="2:1")
    first = subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=tmp_path, stdout=log, env=env,
                             stderr=subprocess.STDOUT, start_new_session=True)
    board = leaderboard_path(tmp_path / "results")
    named = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None:
            named = _held_trial_checkpoint(tmp_path / "faults", tmp_path / "ray" / name)
            if named and board.exists() and len(_rows(tmp_path, name)):
                break
            time.sleep(0.5)
        assert first.poll() is None, f"the search ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        assert named, "Tune's saved state never named the held trial's checkpoint"
        before = _rows(tmp_path, name)
        assert len(before) >= 1
    finally:
        kill_group(first)
    killed_at = time.time()
    assert len(_rows(tmp_path, name)) < 3  # the search really was interrupted
    # the race of issue 20.11, made certain: Tune's checkpoint manager deleted the checkpoint the saved state names
    # (it registered a newer one after the last state save); the resumed trial must not error for it
    shutil.rmtree(named)

    with open(tmp_path / "resumed.log", "w") as log:
        resumed = subprocess.Popen([sys.executable, "-m", "search.run", "--resume", "--name", name, "--results",
                                    str(tmp_path / "results"), "--storage", str(tmp_path / "ray")],
                                   cwd=tmp_path, env=checkout_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = resumed.wait(timeout=450)
        finally:
            if resumed.poll() is None:
                kill_group(resumed)
    assert code == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    after = _rows(tmp_path, name)
    assert len(after) == 3 and after["trial_id"].is_unique  # every trial once: none lost, none duplicated
    assert set(after["status"]) <= {"finished", "stopped"}, after[["trial_id", "status", "error"]]
    held = after[after["trial_id"] == (tmp_path / "faults" / "slot-2").read_text()].iloc[0]
    assert held["epochs_run"] == 3 and held["status"] == "finished"  # restarted cleanly: every epoch, once
    assert "is gone; it " in (tmp_path / "resumed.log").read_text()  # the console says what happened
    for _, row in before.iterrows():  # finished before the kill: not trained again (no checkpoint written since,
        # same epochs and metrics; if the kill beat Tune's state save the trial only re-reports its last epoch)
        again = after[after["trial_id"] == row["trial_id"]].iloc[0]
        assert (again["epochs_run"], again["best_epoch"]) == (row["epochs_run"], row["best_epoch"])
        assert again["weighted_f1"] == pytest.approx(row["weighted_f1"])
        checkpoints = list((tmp_path / "ray" / name).glob(f"*{row['trial_id']}*/checkpoint_*"))  # its Tune folder
        assert checkpoints and all(p.stat().st_mtime < killed_at for p in checkpoints)


def _held_trial_checkpoint(faults: Path, experiment: Path) -> Path | None:
    """The checkpoint folder of the held trial (fault slot 2) that Tune's saved experiment state names, once it does:
    the state pickles the trial's checkpoint manager, so the folder's name appears hex-encoded in the trial's entry."""
    slot = faults / "slot-2"
    if not (faults / "hold-2.pid").exists() or not slot.exists():
        return None
    trial_id = slot.read_text()
    for state in experiment.glob("experiment_state*.json"):
        try:
            entries = json.loads(state.read_text()).get("trial_data", [])
        except (OSError, ValueError):
            continue  # being replaced
        for entry in map(json.dumps, entries):
            if trial_id not in entry and trial_id.encode().hex() not in entry:
                continue
            for folder in sorted(experiment.glob(f"*{trial_id}*/checkpoint_*"), reverse=True):
                if folder.name.encode().hex() in entry:
                    return folder
    return None


@pytest.fixture(scope="module")
def first_search(ray_2cpu, tiny_cnmc, tmp_path_factory):
    """Search A: 3 trials of 2 DDP workers each (one at a time on 2 CPUs), ASHA grace 1, max 3 epochs, factor 3.

    With one trial at a time, each trial meets ASHA's rung at epoch 1 after the earlier trials recorded theirs:
    the 2nd is stopped if it is below the 1st, the 3rd if below the 67th percentile of the two before. roc_auc on
    the tiny validation set is continuous (no ties), and the seeded TPE and seeded training make the run repeatable.
    """
    tmp = tmp_path_factory.mktemp("search-a")
    argv = _common(tiny_cnmc, tmp, "search-a") + [
        "--num-samples", "3", "--max-epochs", "3", "--grace-epochs", "1", "--reduction-factor", "3",
        "--workers-per-trial", "2", "--metric", "roc_auc", "--seed", "0"]
    code = main(argv)
    return tmp, code


def test_search_ranks_every_ddp_trial_and_asha_stops_some(first_search):
    tmp, code = first_search
    assert code == 0
    rows = _rows(tmp, "search-a")
    assert len(rows) == 3 and rows["trial_id"].is_unique
    assert list(rows["rank"]) == [1, 2, 3] and (rows["metric"] == "roc_auc").all()
    assert rows["roc_auc"].is_monotonic_decreasing
    for column in ("lr", "weight_decay", "filters", "depth", "batch_size", "optimizer", "weighted_f1", "accuracy",
                   "balanced_accuracy", "roc_auc", "best_epoch", "epochs_run", "nodes", "checkpoint",
                   "data_fingerprint", "num_parameters", "train_seconds", "started_at", "finished_at"):
        assert rows[column].notna().all(), column
    assert rows["data_generated"].all() and (rows["image_size"] == 24).all()
    assert all(Path(path, "checkpoint.pt").is_file() for path in rows["checkpoint"])
    assert rows["early_stopped"].sum() >= 1
    stopped = rows[rows["early_stopped"]]
    assert (stopped["status"] == "stopped").all() and (stopped["epochs_run"] < 3).all()
    assert (rows.loc[~rows["early_stopped"], "epochs_run"] == 3).all()
    # each trial trained with 2 DDP workers: every report says so
    progress = [pd.read_csv(p) for p in (tmp / "ray" / "search-a").glob("*/progress.csv")]
    assert len(progress) == 3 and all((frame["world_size"] == 2).all() for frame in progress)
    # one actor ran all three (Tune reused it, also after ASHA stopped a trial: its Train run was aborted), and the
    # stop flags told to the stopped trials' controllers are gone
    assert len({int(pid) for frame in progress for pid in frame["pid"]}) == 1
    assert not any(stop_requested(trial_id) for trial_id in rows["trial_id"])
    # each run kept every epoch while it ran; once it ended, only its best and latest checkpoints remain
    for path in rows["checkpoint"]:
        assert 1 <= len(list(Path(path).parent.glob("checkpoint_*"))) <= 2
    # the Optuna study (SQLite, study = search name) holds every trial; ASHA-stopped ones count as complete
    study = optuna.load_study(study_name="search-a", storage=optuna_url(tmp / "results"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # Optuna is told each trial's last reported value (ASHA-stopped ones: the value they were stopped at)
    assert sorted(t.params["lr"] for t in complete) == pytest.approx(sorted(rows["lr"]))
    stopped_lr = set(stopped["lr"])
    assert all(t.value == pytest.approx(float(stopped.loc[stopped["lr"] == t.params["lr"], "roc_auc"].iloc[0]))
               for t in complete if t.params["lr"] in stopped_lr)


def test_second_search_in_the_same_ray_session_runs_all_trials(first_search, tiny_cnmc, ray_2cpu):
    tmp, _ = first_search
    deadline = time.time() + 60  # finished trials' placement groups are given back
    while time.time() < deadline and ray_2cpu.available_resources().get("CPU", 0) < 2:
        time.sleep(1)
    assert ray_2cpu.available_resources().get("CPU", 0) == 2
    code = main(_common(tiny_cnmc, tmp, "search-b") + ["--num-samples", "2", "--max-epochs", "1",
                                                        "--grace-epochs", "1", "--workers-per-trial", "1"])
    assert code == 0
    assert len(_rows(tmp, "search-a")) == 3 and len(_rows(tmp, "search-b")) == 2
    assert set(_rows(tmp, "search-b")["status"]) == {"finished"}


def test_impossible_resources_fail_before_launch(first_search, tiny_cnmc, ray_2cpu, capsys):
    tmp, _ = first_search
    code = main(_common(tiny_cnmc, tmp, "too-big") + ["--workers-per-trial", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    # lines Ray forwards from the worker processes of the searches before this one in the shared Ray ("(run_trial
    # pid=...) ...", e.g. a cached trial actor shut down late) are not this command's output
    ours = [line for line in err if not line.startswith("\x1b[36m(")]
    assert code == 2 and len(ours) == 1 and "--workers-per-trial" in ours[0], err
    assert not (tmp / "ray" / "too-big").exists() and not settings_path(tmp / "results", "too-big").exists()
