"""The search's settings follow the cluster it runs on, not the driver's machine (issue 11).

A `ray.cluster_utils.Cluster` stands in for `clusters/gpu.yaml`: a head without GPUs (where the driver runs) and two
worker nodes that declare 4 logical GPUs and 16 CPUs each. Logical GPUs cannot run CUDA, so the test stops at
`--dry-run`: the profile, the settings and the plan, not training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from search.cli.run import main
from search.tuning.plan import TrialResources, plan_concurrency
from search.cli.profiles import PROFILES, apply_profile, choose_profile, gpu_node_types, nodes_to_plan_on

REPO = Path(__file__).resolve().parents[1]


def _args(**given) -> argparse.Namespace:
    """Parsed flags that give none of the profile's settings, except `given`."""
    defaults = dict(smoke_test=False, gpus_per_worker=None, cpus_per_worker=None)
    return argparse.Namespace(**{**defaults, **{key: None for key in PROFILES["cpu"]}, **given})


def _filled(flags: argparse.Namespace, profile: str, nodes: list, types=None) -> argparse.Namespace:
    return argparse.Namespace(**apply_profile(vars(flags), profile, nodes, types))


def test_autoscaler_gpu_node_types_are_read_from_the_cluster_file():
    """clusters/gpu.yaml is what `ray up` copies to the head as ~/ray_bootstrap_config.yaml."""
    types = gpu_node_types(str(REPO / "clusters" / "gpu.yaml"))
    assert types == {"gpu_4x_a10g": {"CPU": 48.0, "GPU": 4.0, "max_workers": 4}}  # opt-in types: max_workers 0
    profile, why = choose_profile(_args(), [{"CPU": 8.0}], types)
    assert profile == "gpu" and "no GPU node is up yet" in why and "up to 4 x gpu_4x_a10g (4 GPUs each)" in why
    args = _filled(_args(), profile, [{"CPU": 8.0}], types)
    assert args.gpus_per_worker == 1.0 and args.cpus_per_worker == 4.0 and args.image_sizes == [64, 96, 128]
    # the plan counts the GPU nodes the autoscaler may start: one GPU per trial, 4 nodes x 4 GPUs
    plan = plan_concurrency(nodes_to_plan_on([{"CPU": 8.0}], types), TrialResources(1, 4.0, 1.0))
    assert plan.max_concurrent_trials == 16


def test_no_gpu_anywhere_is_the_cpu_profile_and_the_flags_win():
    assert choose_profile(_args(), [{"CPU": 2.0}], {})[0] == "cpu"
    assert choose_profile(_args(gpus_per_worker=0.0), [{"CPU": 8.0}, {"CPU": 48, "GPU": 4}], {}) == \
        ("cpu", "--gpus-per-worker 0")
    assert choose_profile(_args(gpus_per_worker=0.5), [{"CPU": 2.0}], {})[0] == "gpu"
    narrow = _filled(_args(), "gpu", [{"CPU": 4.0, "GPU": 4.0}])  # 1 CPU per GPU on that node
    assert narrow.cpus_per_worker == 1.0


@pytest.fixture(scope="module")
def gpu_cluster():
    """A 0-GPU head and two worker nodes with 16 CPUs and 4 GPUs each (logical)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=16, num_gpus=4)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_gpu_cluster_gets_the_gpu_profile_and_plans_a_trial_per_gpu(gpu_cluster, tmp_path, capsys):
    code = main(["--family", "resnet", "--address", gpu_cluster.address, "--dry-run", "--results",
                 str(tmp_path / "results"), "--storage", str(tmp_path / "ray"), "--name", "gpu-plan"])
    out = capsys.readouterr().out
    assert code == 0, out
    print(out)
    assert "profile: gpu (the cluster has 8 GPU(s) on 2 of its 3 node(s))" in out
    assert "-> 8 trial(s) at once" in out  # one 4-CPU + 1-GPU worker per GPU
    assert "gpus_per_worker=1.0" in out and "cpus_per_worker=4.0" in out and "image_sizes=64 96 128" in out
    assert f"num_samples={PROFILES['gpu']['num_samples']}" in out
    # nothing decoded, trained or written for the search
    assert not (tmp_path / "ray").exists() and not (tmp_path / "results" / "searches").exists()
