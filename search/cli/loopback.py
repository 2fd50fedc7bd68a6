"""A local Ray that listens on this machine only (127.0.0.1), never on every interface.

    with loopback_only():
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, ...)

Ray's GCS, raylet and workers bind their gRPC servers to every interface ("::") unless the node's IP is 127.0.0.1,
and `ray.init` turns a 127.0.0.1 it is given into the machine's network address (`resolve_ip_for_localhost`) except
where Ray clusters are off (macOS and Windows: `ray_constants.ENABLE_RAY_CLUSTER`, read when `ray.init` runs). Turning
that off for the duration of the call gives every process of the new Ray 127.0.0.1 (measured with `ss -ltn`: GCS,
raylet, dashboard and its agents, runtime-env agent, workers). A search on a cluster (`--address`) is not touched: a
user who wants more starts Ray with `ray start` and passes `--address`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    from ray._private import ray_constants  # private: the one switch Ray reads for this (Ray 2.60)

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


__all__ = ["LOOPBACK", "loopback_only"]
