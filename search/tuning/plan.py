"""How many trials can run at once, from the cluster's declared (logical) resources and what one trial needs.

Tune accounts only for each trial's driver, so `max_concurrent_trials` comes from this plan (or trials wait forever
for workers), and a request no node can ever satisfy is refused before launch. A worker's CPUs and GPUs come from one
node; a trial's workers may spread over nodes. Why a driver costs 0 CPU: docs/ray-notes.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ray

UNITS = 10_000  # Ray stores resource amounts as fixed point with 4 decimals; we count in those units, exactly
DEFAULT_DRIVER_CPUS = 0.0
DRIVER_MEMORY_BYTES = 1 << 20  # token `memory` so Tune accepts a 0-CPU driver; no worker asks for `memory`
# A custom resource that only the head node of clusters/*.yaml declares (1000 units): trial drivers ask for a sliver
# of it, so they and their Train controllers stay on the head. A driver on a GPU node dies with that node, and Tune
# does not retry trials (Train's retries only cover its workers); workers on a lost node are retried by Train.
DRIVER_NODE_RESOURCE = "leukemia_tune_driver"
DRIVER_NODE_SHARE = 0.01


@dataclass(frozen=True)
class TrialResources:
    workers: int  # Ray Train workers (DDP ranks) per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def validate(self) -> None:
        """Raise ValueError naming the CLI flag for a request that is wrong whatever the cluster."""
        if int(self.workers) != self.workers or self.workers < 1:
            raise ValueError(f"--workers-per-trial {self.workers} must be a whole number >= 1")
        for flag, amount in (("--cpus-per-worker", self.cpus_per_worker), ("--gpus-per-worker", self.gpus_per_worker)):
            if not math.isfinite(amount) or amount < 0:
                raise ValueError(f"{flag} {amount:g} must be >= 0")
            if amount > 1 and amount != int(amount):
                raise ValueError(f"{flag} {amount:g}: amounts above 1 must be whole numbers (Ray's rule)")
            if amount != round(amount * UNITS) / UNITS:
                raise ValueError(f"{flag} {amount!r}: Ray resolves resources to 0.0001")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ValueError("--cpus-per-worker 0 with --gpus-per-worker 0: a worker must ask for some CPU or GPU")
        if 0 < self.gpus_per_worker < 1 and self.workers > 1:
            raise ValueError(f"--gpus-per-worker {self.gpus_per_worker:g} is fractional: fractional GPUs are only "
                             f"allowed with --workers-per-trial 1")

    @property
    def in_process(self) -> bool:
        """One worker trains inside its Tune trial; two or more are a Ray Train (DDP) run."""
        return self.workers == 1

    def worker_resources(self) -> dict[str, float]:
        """`ScalingConfig(resources_per_worker=...)` for Ray Train."""
        resources = {"CPU": float(self.cpus_per_worker)}
        if self.gpus_per_worker:
            resources["GPU"] = float(self.gpus_per_worker)
        return resources


@dataclass(frozen=True)
class Plan:
    max_concurrent_trials: int
    per_trial: TrialResources
    reason: str  # one line a user can check: nodes, workers that fit, arithmetic
    driver_cpus: float = DEFAULT_DRIVER_CPUS


def driver_resources(driver_cpus: float = DEFAULT_DRIVER_CPUS, nodes: list[dict] | None = None) -> dict[str, float]:
    """Resource dict for `tune.with_resources(trial_fn, ...)`: the driver's CPUs, and a token of `memory` so that
    a 0-CPU request is not all zeros (Tune rejects those); plus a share of DRIVER_NODE_RESOURCE where a node of
    `nodes` declares it (the head of clusters/*.yaml), which pins drivers to that node."""
    resources = {"CPU": float(driver_cpus), "memory": DRIVER_MEMORY_BYTES}
    if any(node.get(DRIVER_NODE_RESOURCE, 0) > 0 for node in nodes or []):
        resources[DRIVER_NODE_RESOURCE] = DRIVER_NODE_SHARE
    return resources


def cluster_nodes() -> list[dict[str, Any]]:
    """Declared resources of every alive node of the running Ray (`ray.init()` first), e.g. [{"CPU": 16, "GPU": 4}]."""
    if not ray.is_initialized():
        raise RuntimeError("cluster_nodes() needs a running Ray: call ray.init() first")
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def plan_for_cluster(trial: TrialResources, driver_cpus: float = DEFAULT_DRIVER_CPUS) -> Plan:
    return plan_concurrency(cluster_nodes(), trial, driver_cpus=driver_cpus)


def _units(amount: float) -> int:
    return int(round(float(amount) * UNITS))


def _fits(free_cpu: int, free_gpu: int, cpu: int, gpu: int) -> int:
    """Whole workers of (cpu, gpu) units that fit in (free_cpu, free_gpu) units."""
    counts = [free // need for free, need in ((free_cpu, cpu), (free_gpu, gpu)) if need > 0]
    return max(0, min(counts))


def _fmt(units: int) -> str:
    return f"{units / UNITS:g}"


def _refuse(trial: TrialResources, cpus: list[int], gpus: list[int], slots: list[int]) -> ValueError:
    """The one-line error for a trial no arrangement of this cluster can ever run; names the binding flag."""
    cpu, gpu = _units(trial.cpus_per_worker), _units(trial.gpus_per_worker)
    shortages = []  # (workers that fit counting only this resource, flag, name, per-worker units, per-node units)
    for flag, name, need, have in (("--gpus-per-worker", "GPU", gpu, gpus), ("--cpus-per-worker", "CPU", cpu, cpus)):
        if need > 0:
            shortages.append((sum(h // need for h in have), flag, name, need, have))
    # the scarcest resource explains the refusal; on a tie, a missing GPU says more than too few CPUs
    fit, flag, name, need, have = min(shortages, key=lambda s: (s[0], s[2] != "GPU"))
    if max(have) < need:
        none = "none" if max(have) == 0 else f"{_fmt(max(have))}"
        return ValueError(f"{flag} {_fmt(need)} needs {_fmt(need)} {name}s on one node but the largest node has "
                          f"{none} (cluster total {_fmt(sum(have))})")
    total_need = need * trial.workers
    head = f"--workers-per-trial {trial.workers} with {flag} {_fmt(need)} needs {_fmt(total_need)} {name}s"
    where = f"the cluster has {_fmt(sum(have))} (largest node {_fmt(max(have))})"
    if sum(have) < total_need:
        return ValueError(f"{head} but {where}")
    return ValueError(f"{head}, each worker's on one node: {where} but only {sum(slots)} such workers fit "
                      f"(CPUs and GPUs of a worker must share a node)")


def _whole_trials(cpus: list[int], gpus: list[int], cpu: int, gpu: int, driver: int, workers: int) -> int:
    """Place whole trials one after another: the driver where it costs the fewest worker slots, then the workers
    packed onto the fullest-fitting nodes (Train's default PACK strategy). With a 0-CPU driver this is exactly
    sum(slots) // workers; with a CPU-using driver it counts the slots the drivers take away."""
    free_cpu, free_gpu = list(cpus), list(gpus)
    trials = 0
    while True:
        cpu_after, gpu_after = list(free_cpu), list(free_gpu)
        if driver:
            candidates = [i for i, c in enumerate(cpu_after) if c >= driver]
            if not candidates:
                return trials

            def slots_lost(i: int) -> tuple[int, int]:
                before = _fits(cpu_after[i], gpu_after[i], cpu, gpu)
                return before - _fits(cpu_after[i] - driver, gpu_after[i], cpu, gpu), -cpu_after[i]
            cpu_after[min(candidates, key=slots_lost)] -= driver
        to_place = workers
        for i in sorted(range(len(cpus)), key=lambda i: -_fits(cpu_after[i], gpu_after[i], cpu, gpu)):
            take = min(to_place, _fits(cpu_after[i], gpu_after[i], cpu, gpu))
            cpu_after[i] -= take * cpu
            gpu_after[i] -= take * gpu
            to_place -= take
        if to_place:
            return trials
        free_cpu, free_gpu, trials = cpu_after, gpu_after, trials + 1


def plan_concurrency(nodes: list[dict[str, Any]], trial: TrialResources,
                     driver_cpus: float = DEFAULT_DRIVER_CPUS) -> Plan:
    """Trials that can run at once on `nodes` (per-node declared resources, e.g. ray.nodes()[i]["Resources"]).

    Raises ValueError (naming the flag and what the largest node has) when not even one trial can ever run.
    """
    trial.validate()
    if driver_cpus < 0:
        raise ValueError(f"driver_cpus {driver_cpus:g} must be >= 0")
    if not nodes:
        raise ValueError("no alive Ray nodes to plan on")
    cpu, gpu, driver = _units(trial.cpus_per_worker), _units(trial.gpus_per_worker), _units(driver_cpus)
    cpus = [_units(node.get("CPU", 0)) for node in nodes]
    gpus = [_units(node.get("GPU", 0)) for node in nodes]
    slots = [_fits(c, g, cpu, gpu) for c, g in zip(cpus, gpus)]  # workers per node, each wholly on its node
    if sum(slots) < trial.workers:
        raise _refuse(trial, cpus, gpus, slots)

    trials = _whole_trials(cpus, gpus, cpu, gpu, driver, trial.workers)
    worker = f"{trial.cpus_per_worker:g} CPU" + (f" + {trial.gpus_per_worker:g} GPU" if gpu else "")
    driver_note = (f" plus a {driver_cpus:g}-CPU driver" if driver else
                   " (each trains in its Tune trial)" if trial.workers == 1 else " (Ray Train DDP, driver: 0 CPU)")
    if trials == 0:
        raise ValueError(f"--workers-per-trial {trial.workers} of {worker} each{driver_note} never fit: the trial "
                         f"driver's CPUs take the room the workers need (cluster CPUs {_fmt(sum(cpus))}, "
                         f"largest node {_fmt(max(cpus))})")
    reason = (f"{len(nodes)} node(s) fit {sum(slots)} workers of {worker} (per node {slots}); "
              f"{trial.workers} worker(s) per trial{driver_note} -> {trials} trial(s) at once")
    return Plan(max_concurrent_trials=trials, per_trial=trial, reason=reason, driver_cpus=float(driver_cpus))


__all__ = ["DRIVER_NODE_RESOURCE", "TrialResources", "Plan", "plan_concurrency", "plan_for_cluster", "cluster_nodes",
           "driver_resources", "DEFAULT_DRIVER_CPUS"]
