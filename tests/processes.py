"""Process helpers for the tests that start a real `python -m search.run` and kill it."""
from __future__ import annotations

import os
import signal
import subprocess


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the search driver and every process of its session (its local Ray: GCS, raylet, workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)
