"""A killed trial process's temporary checkpoint folders are deleted by the next trial process (search/tuning/scratch.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from search.tuning.scratch import scratch_folder, sweep_dead_processes


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_trial_process_deletes_the_folders_of_killed_ones_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"leuk-ckpt-{_dead_pid()}-abc123"
    (dead / "epoch_0003").mkdir(parents=True)
    (dead / "epoch_0003" / "checkpoint.pt").write_bytes(b"weights")
    live = tmp_path / f"leuk-sending-{os.getppid()}-def456"  # a running process's (pytest's parent)
    live.mkdir()
    unrelated = [tmp_path / "leuk-ckpt-old_style", tmp_path / f"other-{_dead_pid()}-x"]
    for folder in unrelated:
        folder.mkdir()
    dead_file = tmp_path / f"leuk-cv-{_dead_pid()}-file"  # not a folder: not ours
    dead_file.write_text("x")

    mine = scratch_folder("ckpt")

    assert not dead.exists()
    assert live.is_dir() and all(folder.is_dir() for folder in unrelated) and dead_file.is_file()
    assert os.path.dirname(mine) == str(tmp_path)
    assert os.path.basename(mine).startswith(f"leuk-ckpt-{os.getpid()}-")
    assert sweep_dead_processes() == []  # its own folder is kept while this process runs


def test_a_missing_temporary_folder_sweeps_nothing(tmp_path):
    assert sweep_dead_processes(str(tmp_path / "gone")) == []
