"""A trial process's temporary folders (epoch checkpoints on their way to the storage), named after the process, so
that the folders of a process that was killed are found and deleted by the next trial process on that machine.

    folder = scratch_folder("ckpt")   # <tmp>/leuk-ckpt-<pid>-XXXXXXXX; first deletes those of dead processes

A process that ends normally deletes its own folders (a `finally`). One that is killed first leaves them: a Train
worker of a run Tune stopped, a PBT trial's actor, a crash. Left alone they fill a node's disk: one checkpoint per
folder, tens of MB for a small model on a 2-core machine, hundreds of MB for a torchvision backbone.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Optional

PREFIX = "leuk-"
_NAME = re.compile(rf"{PREFIX}[a-z]+-(\d+)-[^/]+")  # leuk-<kind>-<pid>-<mkdtemp's random part>


def scratch_folder(kind: str) -> str:
    """A new temporary folder of this process (`kind`: a lowercase word naming its use)."""
    sweep_dead_processes()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-")


def sweep_dead_processes(root: Optional[str] = None) -> list[str]:
    """Delete the scratch folders under `root` (default: the temporary folder) whose process is gone; their paths."""
    root = root or tempfile.gettempdir()
    swept = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return swept
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            swept.append(entry.path)
    return swept


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


__all__ = ["scratch_folder", "sweep_dead_processes"]
