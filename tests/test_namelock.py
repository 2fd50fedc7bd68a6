"""One driver per search name (search/board/namelock.py): a second driver of the same name is refused in one line before it
decodes anything, whoever holds the lock; a driver that ends, or dies, frees it. Fast: no Ray."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from search.cli.flags import parse_args
from search.board.namelock import claim_name, lock_path
from search.board.paths import settings_path
from search.cli.run import main
from search.cli.run import resolve_settings
from search.board.settings import save_settings

REPO = Path(__file__).resolve().parents[1]


def _argv(tmp_path, data, name="same"):
    return ["--family", "resnet", "--image-sizes", "24", "--name", name, "--results", str(tmp_path / "results"),
            "--storage", str(tmp_path / "ray"), "--data", str(data)]


def _holder(tmp_path, name="same") -> subprocess.Popen:
    """Another process that holds the name's lock until it is killed."""
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from search.board.namelock import claim_name; "
            f"claim_name({str(tmp_path / 'results')!r}, {name!r}); print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_driver_of_a_running_name_is_refused_in_one_line_before_anything(tiny_cnmc, tmp_path, capsys):
    holder = _holder(tmp_path)
    try:
        code = main(_argv(tmp_path, tiny_cnmc))
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "--name same: another search of that name is running" in err and f"pid {holder.pid}" in err
        assert str(lock_path(tmp_path / "results", "same")) in err
        assert not (tmp_path / "ray").exists() and not settings_path(tmp_path / "results", "same").exists()
        assert not (tmp_path / "results" / "same").exists()  # no log: refused before the console started
        saved = parse_args(_argv(tmp_path, tiny_cnmc))  # the running search's settings, as it saved them
        save_settings(resolve_settings(saved, [{"CPU": 2.0}], {})[0])
        resume = main(["--resume", *_argv(tmp_path, tiny_cnmc)[4:8]])  # --resume takes the same lock
        assert resume == 2 and "another search of that name is running" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10  # a killed holder frees the name: the kernel drops its lock with the process
    while time.time() < deadline:
        try:
            claim_name(str(tmp_path / "results"), "same").release()
            break
        except ValueError:
            time.sleep(0.1)
    else:
        raise AssertionError("the lock of a killed driver was not freed")


def test_the_lock_is_per_name_and_freed_on_release(tmp_path):
    first = claim_name(str(tmp_path), "a")
    other = claim_name(str(tmp_path), "b")  # another name runs alongside
    try:
        try:
            claim_name(str(tmp_path), "a")
            raise AssertionError("a name was claimed twice")
        except ValueError as refused:
            assert "--name a: another search of that name is running" in str(refused)
    finally:
        first.release()
        other.release()
    claim_name(str(tmp_path), "a").release()  # free again once released
