"""Timestamps of one trial's start-up and end, to find where a DDP trial's overhead goes (docs/ray-notes.md).

    LEUKTUNE_TIMELINE=/tmp/tl python search/run.py ... --workers-per-trial 2
    python -m search.benchmark.trial_timeline /tmp/tl            # one line per event, seconds from Tune's start of the trial

Inert unless $LEUKTUNE_TIMELINE names a folder (a local Ray's processes inherit it): every process of a trial (Tune's
driver, the trial's actor, each Train worker) appends JSON lines {"trial", "event", "t", "pid", "rank"} to
<folder>/<trial id>.jsonl. A process's own start time (/proc) comes with its first event.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

ENV = "LEUKTUNE_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def process_started() -> Optional[float]:
    """This process's start, epoch seconds (Linux /proc; 10 ms resolution); None elsewhere."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime") as uptime:
            since_boot = float(uptime.read().split()[0])
        return time.time() - since_boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def mark(trial_id: str, event: str, rank: Optional[int] = None, with_process_start: bool = False, **extra: Any) -> None:
    """Append one event of `trial_id` (no-op unless $LEUKTUNE_TIMELINE is set)."""
    folder = os.environ.get(ENV)
    if not folder or not trial_id:
        return
    line = {"trial": trial_id, "event": event, "t": time.time(), "pid": os.getpid(), "rank": rank, **extra}
    if with_process_start:
        line["process_started"] = process_started()
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{trial_id}.jsonl"), "a") as out:
            out.write(json.dumps(line) + "\n")
    except OSError:
        pass


__all__ = ["ENV", "enabled", "mark", "process_started"]
