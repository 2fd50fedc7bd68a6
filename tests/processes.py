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


def checkout_env(**extra: str) -> dict:
    """The environment for a `python -m search.run` of this checkout: an editable install of another checkout (the
    venv's) would otherwise be imported from a tmp working directory."""
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
