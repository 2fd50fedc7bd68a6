"""Start (or join) the Ray a search runs in: the one start the main job (search/cli/run.py) and the benchmark (all of
its searches in one Ray) share, so that the benchmark does not reach into the main job's module for it.

    start_ray(None)      # a new local Ray, listening on 127.0.0.1 only (search/cli/loopback.py)
    start_ray("auto")    # join the Ray cluster this machine belongs to (--address)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import ray

from search.cli.loopback import LOOPBACK, loopback_only
from search.cli.preflight import ray_start_error

REPO = Path(__file__).resolve().parents[2]
# Ray Train settings for DDP trials: poll workers every 0.25 s instead of 2 s (a report and the end of a run are
# seen sooner; measured 10.5 -> 7.1 s per 2-worker trial here), no metrics exporter.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_METRICS_ENABLED": "0",
             # a search may take a minute to start a worker group on a busy small machine (Ray's default: 60 s)
             "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # no spot preemption on one machine


def start_ray(address: Optional[str]) -> bool:
    """Start a local Ray (`address` None) or join the cluster at `address`; True if this call started or joined it,
    False when Ray was already up (a test or a notebook started it). ValueError, one line, when Ray does not come up."""
    if ray.is_initialized():
        return False
    env = {**TRAIN_ENV, **({} if address else LOCAL_TRAIN_ENV)}
    for key, value in env.items():
        os.environ.setdefault(key, value)  # inherited by a local Ray's processes
    try:
        if address:  # a job's runtime_env reaches every process of the job on a cluster
            ray.init(address=address, runtime_env={"env_vars": env})
        else:  # a new local Ray ("local": never attach to another one running here); workers import this checkout
            with loopback_only():  # its servers listen on 127.0.0.1 only, not on every interface
                ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                             p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}})
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exception or RuntimeError when it cannot come up
        raise ValueError(ray_start_error(address, error)) from None
    return True


__all__ = ["LOCAL_TRAIN_ENV", "REPO", "TRAIN_ENV", "start_ray"]
