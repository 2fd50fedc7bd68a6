"""One search per name at a time: a lock on results/searches/<name>.lock, held by the driver for its whole life.

    lock = claim_name(results, name)   # ValueError (one line) when another driver holds it; before anything is decoded
    ...
    lock.release()                     # or the process ends: the kernel frees an flock with its last descriptor

The settings file that marks a name as taken is written only once Ray is up and the data are decoded, so two drivers
started together both passed the "name exists" check and ran into one study and one Tune experiment. An `fcntl.flock`
is atomic, and a crashed or SIGKILLed driver frees it (no stale lock to clean up); `--resume` takes the same lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from search.board.paths import SEARCHES

LOCK_SUFFIX = ".lock"  # as long as paths.SETTINGS_SUFFIX: search.cli.preflight.check_name's limit covers it


class NameLock:
    """The open, locked file; its text is the holder's pid (for the message another driver prints)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):  # the file stays: removing it would race a third driver's open
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def lock_path(results: str, name: str) -> Path:
    return Path(results) / SEARCHES / f"{name}{LOCK_SUFFIX}"


def claim_name(results: str, name: str) -> NameLock:
    """Lock the name for this process, or a ValueError naming the driver that holds it."""
    path = lock_path(results, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"--name {name}: another search of that name is running (pid {holder}, lock {path}); "
                         f"wait for it to end, or pick another --name") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return NameLock(path, fd)


__all__ = ["LOCK_SUFFIX", "NameLock", "claim_name", "lock_path"]
