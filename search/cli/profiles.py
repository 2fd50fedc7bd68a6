"""Hardware profiles and the profile a cluster gets (the file `--resume` reads back: search/board/settings.py).

    profile, why = choose_profile(flags, nodes, gpu_node_types())
    values = apply_profile(vars(flags), profile, nodes)   # every setting the user did not give, from the profile

The profile follows the cluster the search runs on (its nodes once Ray is up, or the GPU node types its autoscaler
can start), not the machine the driver runs on: on `clusters/gpu.yaml` the driver sits on a head without GPUs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml


# Defaults by profile. cpu: the default main job finishes in minutes on a 2-core laptop; gpu: one GPU per trial,
# image sizes and epochs worth a GPU; smoke: a real but tiny search for checks. ASHA's grace: 2 epochs on CPUs, where
# grace 1 stopped configs at epoch 1 or 2 that trained to the best by epoch 6-8 (python -m search.benchmark, README).
PROFILES = {
    "cpu": dict(num_samples=12, max_epochs=8, grace_epochs=2, image_sizes=[32], batch_sizes=[32, 64],
                workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0, cv=0),
    "gpu": dict(num_samples=32, max_epochs=20, grace_epochs=3, image_sizes=[64, 96, 128], batch_sizes=[64, 128, 256],
                workers_per_trial=1, cpus_per_worker=4.0, gpus_per_worker=1.0, cv=0),
    "smoke": dict(num_samples=2, max_epochs=2, grace_epochs=1, image_sizes=[24], batch_sizes=[32],
                  workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0, cv=0),
}
GPU_CPUS_PER_WORKER_MAX = 4  # a GPU worker's CPUs only move batches: more would cut the trials a GPU node runs
# Where `ray up` leaves the cluster file on the head node (the autoscaler reads it); $LEUKTUNE_AUTOSCALER_CONFIG moves it.
AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"

def gpu_node_types(config_path: Optional[str] = None) -> dict[str, dict[str, float]]:
    """GPU node types the cluster's autoscaler may start: name -> resources of one node ({} without such a file)."""
    path = Path(config_path or os.environ.get("LEUKTUNE_AUTOSCALER_CONFIG", AUTOSCALER_CONFIG)).expanduser()
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    types = config.get("available_node_types") or {}
    resources = {name: {**{k: float(v) for k, v in (spec.get("resources") or {}).items() if k in ("CPU", "GPU")},
                        "max_workers": int(spec.get("max_workers", 0) or 0)} for name, spec in types.items()}
    return {name: r for name, r in resources.items() if r.get("GPU", 0) > 0 and r["max_workers"] > 0}


def _one_node(node_type: dict[str, float]) -> dict[str, float]:
    """The resources of one node of an autoscaler node type (without its max_workers)."""
    return {key: value for key, value in node_type.items() if key != "max_workers"}


def nodes_to_plan_on(nodes: list[dict[str, Any]], node_types: dict[str, dict]) -> list[dict[str, Any]]:
    """The nodes that are up, plus, when none of them has a GPU, every GPU node the autoscaler may start (each type
    times its max_workers): Tune's waiting trials ask the autoscaler for them."""
    if any(float(node.get("GPU", 0)) > 0 for node in nodes):
        return nodes
    extra = [_one_node(spec) for spec in node_types.values() for _ in range(spec["max_workers"])]
    return nodes + extra


def choose_profile(args: Any, nodes: list[dict[str, Any]],
                   node_types: Optional[dict[str, dict]] = None) -> tuple[str, str]:
    """(profile, the reason in words): smoke when asked; gpu when the user asks for GPUs, the cluster has some, or
    its autoscaler can start GPU nodes; cpu otherwise."""
    if args.smoke_test:
        return "smoke", "--smoke-test"
    if (args.gpus_per_worker or 0) > 0:
        return "gpu", f"--gpus-per-worker {args.gpus_per_worker:g}"
    gpus = sum(float(node.get("GPU", 0)) for node in nodes)
    if gpus and args.gpus_per_worker is None:
        with_gpus = sum(1 for node in nodes if node.get("GPU", 0))
        return "gpu", f"the cluster has {gpus:g} GPU(s) on {with_gpus} of its {len(nodes)} node(s)"
    if node_types and args.gpus_per_worker is None:
        listed = ", ".join(f"up to {r['max_workers']} x {name} ({r['GPU']:g} GPUs each)" for name, r in node_types.items())
        return "gpu", (f"no GPU node is up yet, but the autoscaler can start {listed}: trials wait until it has "
                       f"started one (pass --gpus-per-worker 0 for a CPU search)")
    cpus = sum(float(node.get("CPU", 0)) for node in nodes)
    if args.gpus_per_worker == 0:
        return "cpu", "--gpus-per-worker 0"
    return "cpu", f"no GPU in the cluster ({cpus:g} CPUs on {len(nodes)} node(s)) and none its autoscaler can start"


def gpu_worker_cpus(nodes: list[dict[str, Any]]) -> float:
    """CPUs per GPU worker: what every GPU node can give each of its GPUs, at most GPU_CPUS_PER_WORKER_MAX."""
    shares = [math.floor(float(n.get("CPU", 0)) / float(n["GPU"])) for n in nodes if float(n.get("GPU", 0)) >= 1]
    return float(max(1, min([GPU_CPUS_PER_WORKER_MAX, *shares])))


def apply_profile(flags: Mapping[str, Any], profile: str, nodes: list[dict[str, Any]],
                  node_types: Optional[dict[str, dict]] = None) -> dict[str, Any]:
    """`flags` (setting -> value, None when not given) with every setting left unset filled from the profile, and
    `profile` set; a flag the user gave always wins. GPU workers get the CPUs each GPU node (up, or one the
    autoscaler can start) can give each of its GPUs."""
    defaults = dict(PROFILES[profile])
    if profile == "gpu":
        gpu_nodes = [n for n in nodes if float(n.get("GPU", 0)) >= 1] or [
            _one_node(spec) for spec in (node_types or {}).values()]
        defaults["cpus_per_worker"] = gpu_worker_cpus(gpu_nodes) if gpu_nodes else 1.0
    # a default grace follows the user's --max-epochs (and a default max the user's --grace-epochs): `--max-epochs 1`
    # alone was refused, once Ray was up, for a --grace-epochs 2 the user never gave
    max_epochs, grace_epochs = flags.get("max_epochs"), flags.get("grace_epochs")
    if max_epochs is not None and grace_epochs is None:
        defaults["grace_epochs"] = min(defaults["grace_epochs"], max_epochs)
    if grace_epochs is not None and max_epochs is None:
        defaults["max_epochs"] = max(defaults["max_epochs"], grace_epochs)
    filled = {key: list(value) if isinstance(value, list) else value  # never the PROFILES' own lists
              for key, value in defaults.items() if flags.get(key) is None}
    return {**flags, **filled, "profile": profile}


__all__ = ["PROFILES", "choose_profile", "apply_profile", "gpu_node_types", "nodes_to_plan_on"]
