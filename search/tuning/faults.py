"""TEST-ONLY fault injection for tests/test_faults.py. Inert unless $LEUKTUNE_FAULT_DIR is set (never in a real run).

    hook = faults.hook()                   # once per trial: None unless $LEUKTUNE_FAULT_DIR is set
    hook(trial_id, epoch, rank)            # then after each epoch's report (search/tuning/trial.py's _Reporter)

Trials are told apart by the order their rank-0 worker first reports: trial index 0, 1, 2, ... (claimed with
O_EXCL files `<dir>/slot-<i>` holding the Tune trial id, so a retried or resumed trial keeps its index).

- LEUKTUNE_FAULT_KILL="<index>:<epoch>": on its FIRST attempt, trial <index>'s rank-0 worker writes its pid to
  `<dir>/kill-<index>.pid` after reporting (and persisting the checkpoint of) <epoch>, then waits there for the test to
  SIGKILL it: the kill lands after epoch <epoch>'s checkpoint and before epoch <epoch>+1 is done, deterministically.
- LEUKTUNE_FAULT_RAISE="<index>:<epoch>": trial <index>'s workers raise RuntimeError after reporting <epoch> or any
  later epoch, on every attempt (a retry resumes from the last checkpoint and raises again: retries cannot save it).
- LEUKTUNE_FAULT_HOLD="<index>:<epoch>": trial <index>'s rank-0 worker writes `<dir>/hold-<index>.pid` after <epoch>
  and waits (so the test can interrupt the search driver while that trial is surely still running).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

WAIT_S = 300.0  # a held worker waits at most this long for the test's signal, then carries on


def _target(variable: str) -> Optional[tuple[int, int]]:
    text = os.environ.get(variable, "")
    if not text:
        return None
    index, epoch = text.split(":")
    return int(index), int(epoch)


def _slot(folder: Path, trial_id: str) -> int:
    """This trial's index: the slot file naming it, or the next free one (claimed atomically)."""
    for path in sorted(folder.glob("slot-*")):
        if path.read_text() == trial_id:
            return int(path.name.split("-")[1])
    index = 0
    while True:
        try:
            fd = os.open(folder / f"slot-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if (folder / f"slot-{index}").read_text() == trial_id:
                return index
            index += 1
            continue
        os.write(fd, trial_id.encode())
        os.close(fd)
        return index


def _wait_here(path: Path) -> None:
    path.write_text(str(os.getpid()))
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        time.sleep(0.2)


def hook() -> Optional[Callable[[str, int, int], None]]:
    """The fault hook for a trial's reports, or None (a production run: its epochs call nothing)."""
    folder = os.environ.get("LEUKTUNE_FAULT_DIR")
    return None if not folder else lambda trial_id, epoch, rank: after_report(Path(folder), trial_id, epoch, rank)


def after_report(folder_path: Path, trial_id: str, epoch: int, rank: int) -> None:
    folder_path.mkdir(parents=True, exist_ok=True)
    index = _slot(folder_path, trial_id) if rank == 0 else None
    if rank != 0:  # other ranks learn the index from the slot rank 0 claimed before its first report
        index = next((int(p.name.split("-")[1]) for p in folder_path.glob("slot-*") if p.read_text() == trial_id),
                     None)
    if index is None:
        return
    raise_at = _target("LEUKTUNE_FAULT_RAISE")
    if raise_at is not None and raise_at[0] == index and epoch >= raise_at[1]:
        raise RuntimeError(f"injected fault: trial {index} raises at epoch {epoch} (LEUKTUNE_FAULT_RAISE)")
    kill_at = _target("LEUKTUNE_FAULT_KILL")
    marker = folder_path / f"kill-{index}.pid"
    if rank == 0 and kill_at == (index, epoch) and not marker.exists():  # first attempt only
        _wait_here(marker)
    hold_at = _target("LEUKTUNE_FAULT_HOLD")
    if rank == 0 and hold_at == (index, epoch):
        _wait_here(folder_path / f"hold-{index}.pid")
