"""A search whose --storage is a bucket, end to end through the CLIs, against a real S3 protocol server (moto).

The README's "Cloud storage" commands, in order: a search with `--storage s3://...` is SIGKILLed on its head (its
driver and its local Ray) once a row reached the bucket; the head's disk is wiped (the results folder and Tune's
local staging); `--resume` on the emptied results folder restores the search's files from the bucket and finishes
it without training a finished trial again; then, from an empty folder and the bucket alone, evaluate.py tests the
top 2, predict.py reads an s3:// checkpoint and report.py writes its page.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from processes import kill_group
from search.evaluation import evaluate, predict
from search.board import leaderboard, storage
from search.board.paths import TEST_METRICS, leaderboard_path
from search.reporting import report
from search.board.search_files import FOLDER, ROWS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "cloud-e2e"
REPO = Path(__file__).resolve().parents[1]


def _search(argv: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), **env})  # this checkout's code


def _wipe_local_trial_folders(results: Path) -> None:
    """What a lost head loses: its results folder and Tune's local staging of this search's trials."""
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir()
    for staged in glob.glob(f"/tmp/ray/session_*/artifacts/*/{NAME}") + glob.glob(
            os.path.expanduser(f"~/ray_results/{NAME}")):
        shutil.rmtree(staged, ignore_errors=True)


def _stored_rows(s3, prefix: str) -> pd.DataFrame:
    key = f"{prefix}/{NAME}/{FOLDER}/{ROWS}"
    if key not in s3.keys(key):
        return pd.DataFrame()
    body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    return pd.read_parquet(__import__("io").BytesIO(body))


def _modified(s3, prefix: str, trial_id: str) -> list[float]:
    """When each checkpoint object of a trial was written (seconds since the epoch)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{prefix}/{NAME}/")
    return [item["LastModified"].timestamp() for page in pages for item in page.get("Contents", [])
            if f"_{trial_id}_" in item["Key"] and "/checkpoint_" in item["Key"]]


def test_search_on_a_bucket_survives_its_head(s3, tiny_cnmc, tmp_path, capsys):
    prefix, results = "e2e", tmp_path / "results"
    bucket_storage = s3.uri(prefix)
    argv = ["--family", "resnet", "--data", str(tiny_cnmc), "--image-sizes", "24", "--num-samples", "3",
            "--max-epochs", "2", "--grace-epochs", "2", "--workers-per-trial", "1", "--seed", "0",
            "--results", str(results), "--storage", bucket_storage, "--name", NAME]
    # trial 2 parks after its first epoch (the test-only fault hook): the search is still running when a row of it
    # has reached the bucket, and the kill lands mid-search
    first = _search(argv, tmp_path, tmp_path / "first.log", LEUKTUNE_FAULT_DIR=str(tmp_path / "faults"),
                    LEUKTUNE_FAULT_HOLD="2:1")
    try:
        deadline = time.time() + 500
        while time.time() < deadline and first.poll() is None and not len(_stored_rows(s3, prefix)):
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        before = _stored_rows(s3, prefix)
        assert len(before) >= 1
    finally:
        kill_group(first)
    killed_at = time.time()
    assert len(before) < 3  # really interrupted

    _wipe_local_trial_folders(results)  # a new head: nothing but the bucket
    resumed = _search(["--resume", "--name", NAME, "--results", str(results), "--storage", bucket_storage], tmp_path,
                      tmp_path / "resumed.log")
    try:
        code = resumed.wait(timeout=500)
    finally:
        if resumed.poll() is None:
            kill_group(resumed)
    log = (tmp_path / "resumed.log").read_text()
    assert code == 0, log[-4000:]
    assert "restored from" in log
    board = leaderboard.read(leaderboard_path(results))
    rows = board[board["search"] == NAME]
    assert len(rows) == 3 and rows["trial_id"].is_unique  # every trial once: none lost, none duplicated
    for _, row in before.iterrows():  # finished before the kill: not trained again
        again = rows[rows["trial_id"] == row["trial_id"]].iloc[0]
        assert (again["epochs_run"], again["best_epoch"]) == (row["epochs_run"], row["best_epoch"])
        written = _modified(s3, prefix, row["trial_id"])
        assert written and max(written) < killed_at
    finished = rows[rows["status"].isin(["finished", "stopped"])]
    assert len(finished) >= 2
    for uri in finished["checkpoint"]:  # the rows name the bucket, and the weights are there
        assert uri.startswith(f"{bucket_storage}/{NAME}/") and storage.exists(uri, "checkpoint.pt")
    stored = _stored_rows(s3, prefix)  # the end of the search copied every row to the bucket
    assert set(stored["trial_id"]) == set(rows["trial_id"])

    # the bucket alone: a fresh folder, no local trial folder anywhere
    _wipe_local_trial_folders(results)
    fresh = leaderboard_path(tmp_path / "fresh")
    reading = ["--storage", bucket_storage, "--search", NAME, "--leaderboard", str(fresh)]
    assert evaluate.main([*reading, "--top", "2", "--tta", "off", "--device", "cpu"]) == 0
    tested = pd.read_parquet(fresh.parent / TEST_METRICS)
    assert len(tested) == 2 and all(str(c).startswith("s3://") for c in tested["checkpoint"])
    cell = next(Path(tiny_cnmc).rglob("*.bmp"))
    capsys.readouterr()
    assert predict.main(["--checkpoint", finished["checkpoint"].iloc[0], str(cell)]) == 0
    assert str(cell) in capsys.readouterr().out
    assert report.main(reading) == 0
    assert (fresh.parent / NAME / "report.html").stat().st_size > 10_000


def test_an_endpoint_that_goes_down_mid_search_ends_it_with_every_row_and_the_resume_line(tiny_cnmc, tmp_path):
    """The S3 server stops while a trial trains (held after its first epoch by the test-only fault hook, then
    killed): its retry cannot restore from the bucket, the search stops starting trials, the head's leaderboard keeps
    the finished trial's row (its checkpoint an s3:// URI) and the failed trial's one-line error, and the last line
    says what failed and the --resume command."""
    from s3_server import S3Server
    from search.board.paths import leaderboard_path

    server = S3Server.start(bucket="down")  # its own server: this test stops it
    results, faults = tmp_path / "results", tmp_path / "faults"
    where = server.uri("tune")
    argv = ["--family", "baseline", "--data", str(tiny_cnmc), "--image-sizes", "24", "--num-samples", "3",
            "--max-epochs", "2", "--grace-epochs", "2", "--workers-per-trial", "1", "--seed", "0",
            "--results", str(results), "--storage", where, "--name", "going-down"]
    search = _search(argv, tmp_path, tmp_path / "search.log", LEUKTUNE_FAULT_DIR=str(faults),
                     LEUKTUNE_FAULT_HOLD="1:1")
    try:
        deadline = time.time() + 300
        board = leaderboard_path(results)
        while time.time() < deadline and search.poll() is None and not (
                (faults / "hold-1.pid").exists() and board.exists() and len(leaderboard.read(board))):
            time.sleep(0.5)
        assert search.poll() is None, (tmp_path / "search.log").read_text()[-3000:]
        finished_before = leaderboard.read(board)
        server.stop()  # the endpoint is down from here on
        os.kill(int((faults / "hold-1.pid").read_text()), 9)  # the held trial dies: Tune retries it from the bucket
        code = search.wait(timeout=240)
    finally:
        kill_group(search)
        server.close()
    log = (tmp_path / "search.log").read_text()
    assert code == 1, log[-3000:]
    last_error = [line for line in log.splitlines() if "stopped working during the search" in line]
    assert len(last_error) == 1 and "(endpoint unreachable)" in last_error[0], log[-3000:]
    assert f"--resume --name going-down --results {results} --storage {where}" in last_error[0]
    rows = leaderboard.read(board)
    assert rows["trial_id"].is_unique and len(rows) >= len(finished_before)
    for _, row in finished_before.iterrows():  # nothing finished is lost
        kept = rows[rows["trial_id"] == row["trial_id"]].iloc[0]
        assert kept["status"] == row["status"] and kept["checkpoint"] == row["checkpoint"]
        assert str(kept["checkpoint"]).startswith(f"{where}/going-down/")
    for error in rows.loc[rows["status"] == "error", "error"]:  # a failed trial says why, in one line
        assert "\n" not in error and ("connect" in error.lower() or "network" in error.lower())
