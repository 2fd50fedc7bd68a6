"""A search whose --storage fills up (issue 20.4): every trial gets its row, the search prints its summary and one
line saying the storage is full and how much it needs; no traceback. The storage is a real small filesystem (tmpfs)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from processes import checkout_env, kill_group

from search.board import leaderboard
from search.board.paths import leaderboard_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NAME = "full"
SAMPLES = 2
SIZE = "1m"  # below one checkpoint of any trial the seed draws (2.3 and 7.6 MiB): each trial fails, whatever the order


def _mount_tmpfs(folder) -> None:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}): needs root")


def test_a_storage_that_fills_up_gives_every_row_the_summary_and_one_line(tiny_cnmc, tmp_path):
    storage, results = tmp_path / "small", tmp_path / "results"
    _mount_tmpfs(storage)
    argv = [sys.executable, "-m", "search.run", "--family", "baseline", "--data", str(tiny_cnmc), "--image-sizes",
            "24", "--num-samples", str(SAMPLES), "--max-epochs", "2", "--max-failures", "0", "--results",
            str(results), "--storage", str(storage), "--name", NAME]
    try:
        driver = subprocess.Popen(argv, cwd=tmp_path, env=checkout_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = driver.communicate(timeout=540)
        finally:
            kill_group(driver)  # its local Ray too: nothing may hold the filesystem open
    finally:
        if subprocess.run(["umount", str(storage)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(storage)], check=False, capture_output=True)

    assert "Traceback" not in output, output
    assert driver.returncode == 1, output  # nothing trained
    full = [line for line in output.splitlines() if f"--storage {storage} is full" in line]
    assert len(full) == 1, output
    assert full[0].startswith("error: ") and "MiB free" in full[0] and "needs about" in full[0], full[0]
    rows = leaderboard.search_rows(leaderboard_path(results), NAME)
    assert len(rows) == SAMPLES and set(rows["status"]) == {"error"}, rows[["trial_id", "status", "error"]]
    assert rows["error"].str.contains("No space left on device").all(), rows["error"].tolist()
    assert f"leaderboard of {NAME} ({SAMPLES} trials" in output and "wall time" in output, output
