"""Concurrency planning on declared (logical) resources: pure arithmetic, plus one slow check against a real Ray."""
import pytest

from search.tuning.plan import TrialResources, driver_resources, plan_concurrency


def test_four_nodes_of_four_gpus_two_gpu_workers_per_trial_run_eight_trials():
    nodes = [{"CPU": 16, "GPU": 4}] * 4
    plan = plan_concurrency(nodes, TrialResources(workers=2, cpus_per_worker=1, gpus_per_worker=1))
    assert plan.max_concurrent_trials == 8
    assert "16 workers" in plan.reason and "8 trial(s)" in plan.reason


def test_quarter_gpu_one_worker_trials_share_one_gpu_four_ways():
    plan = plan_concurrency([{"CPU": 8, "GPU": 1}], TrialResources(workers=1, cpus_per_worker=1, gpus_per_worker=0.25))
    assert plan.max_concurrent_trials == 4


def test_fractional_amounts_count_exactly():
    # 0.1 GPU ten times is exactly one GPU in Ray's fixed point; float subtraction would lose the tenth trial
    plan = plan_concurrency([{"CPU": 64, "GPU": 1}], TrialResources(workers=1, cpus_per_worker=0.5, gpus_per_worker=0.1))
    assert plan.max_concurrent_trials == 10


def test_two_core_cpu_machine_runs_one_two_worker_trial():
    plan = plan_concurrency([{"CPU": 2, "memory": 8e9}], TrialResources(workers=2, cpus_per_worker=1))
    assert plan.max_concurrent_trials == 1
    assert plan.driver_cpus == 0


def test_cpu_limits_gpu_nodes_too():
    # 4 GPUs but only 6 CPUs: with 2 CPUs per worker only 3 workers fit on the node
    plan = plan_concurrency([{"CPU": 6, "GPU": 4}], TrialResources(workers=1, cpus_per_worker=2, gpus_per_worker=1))
    assert plan.max_concurrent_trials == 3


def test_workers_of_one_trial_may_spread_over_nodes():
    # three one-GPU nodes, 2-worker trials: slots 1+1+1 = 3 -> one trial (the third slot idles)
    plan = plan_concurrency([{"CPU": 4, "GPU": 1}] * 3, TrialResources(workers=2, cpus_per_worker=1, gpus_per_worker=1))
    assert plan.max_concurrent_trials == 1


def test_worker_needing_more_gpus_than_any_node_is_refused_even_if_total_suffices():
    nodes = [{"CPU": 16, "GPU": 2}] * 4  # 8 GPUs in all, but no node has 4
    with pytest.raises(ValueError, match=r"--gpus-per-worker 4 needs 4 GPUs on one node but the largest node has 2"):
        plan_concurrency(nodes, TrialResources(workers=1, cpus_per_worker=1, gpus_per_worker=4))


def test_too_many_gpu_workers_for_the_cluster_names_flags_and_largest_node():
    with pytest.raises(ValueError) as error:
        plan_concurrency([{"CPU": 8, "GPU": 2}], TrialResources(workers=4, cpus_per_worker=1, gpus_per_worker=1))
    assert str(error.value) == "--workers-per-trial 4 with --gpus-per-worker 1 needs 4 GPUs but the cluster has 2 (largest node 2)"


def test_gpu_request_on_cpu_only_cluster_is_refused():
    with pytest.raises(ValueError, match=r"--gpus-per-worker 1 .* largest node has none"):
        plan_concurrency([{"CPU": 2}], TrialResources(workers=1, gpus_per_worker=1))


def test_more_cpu_workers_than_cores_is_refused():
    with pytest.raises(ValueError, match=r"--workers-per-trial 3 with --cpus-per-worker 1 needs 3 CPUs but the cluster has 2"):
        plan_concurrency([{"CPU": 2}], TrialResources(workers=3, cpus_per_worker=1))


def test_packing_refusal_when_totals_suffice_but_no_node_holds_enough():
    # 6 CPUs in all, 3 workers x 2 CPUs = 6, but each 3-CPU node fits only one 2-CPU worker
    with pytest.raises(ValueError, match=r"only 2 such workers fit"):
        plan_concurrency([{"CPU": 3}, {"CPU": 3}], TrialResources(workers=3, cpus_per_worker=2))


def test_fractional_gpu_with_several_workers_is_refused():
    with pytest.raises(ValueError) as error:
        plan_concurrency([{"CPU": 8, "GPU": 4}], TrialResources(workers=2, gpus_per_worker=0.5))
    assert str(error.value) == ("--gpus-per-worker 0.5 is fractional: fractional GPUs are only allowed with "
                                "--workers-per-trial 1")


@pytest.mark.parametrize("trial, flag", [
    (TrialResources(workers=0), "--workers-per-trial 0"),
    (TrialResources(workers=1, cpus_per_worker=-1), "--cpus-per-worker -1"),
    (TrialResources(workers=1, gpus_per_worker=1.5), "--gpus-per-worker 1.5"),
    (TrialResources(workers=1, cpus_per_worker=0, gpus_per_worker=0), "--cpus-per-worker 0"),
])
def test_impossible_requests_name_the_flag(trial, flag):
    with pytest.raises(ValueError, match=flag):
        plan_concurrency([{"CPU": 64, "GPU": 8}], trial)


def test_cpu_using_driver_takes_worker_room_and_is_counted():
    trial = TrialResources(workers=2, cpus_per_worker=1)
    assert plan_concurrency([{"CPU": 8}], trial, driver_cpus=1).max_concurrent_trials == 2  # 3 CPUs per trial
    with pytest.raises(ValueError, match="driver"):
        plan_concurrency([{"CPU": 2}], trial, driver_cpus=0.1)  # 1.9 CPUs left: the second worker never fits


def test_no_nodes_is_refused():
    with pytest.raises(ValueError, match="no alive Ray nodes"):
        plan_concurrency([], TrialResources(workers=1))


def test_driver_resources_are_not_all_zero_for_tune():
    resources = driver_resources()
    assert resources["CPU"] == 0 and resources["memory"] > 0


def test_drivers_are_pinned_to_the_node_that_declares_the_driver_resource():
    from search.tuning.plan import DRIVER_NODE_RESOURCE

    head, gpu_node = {"CPU": 8, DRIVER_NODE_RESOURCE: 1000}, {"CPU": 48, "GPU": 4}
    assert DRIVER_NODE_RESOURCE not in driver_resources(nodes=[gpu_node])  # a local Ray declares none
    pinned = driver_resources(nodes=[head, gpu_node])
    assert 0 < pinned[DRIVER_NODE_RESOURCE] <= 1000 / 1000  # a thousand drivers fit on the head


@pytest.mark.slow
def test_cluster_nodes_and_zero_cpu_drivers_on_a_real_ray(tmp_path):
    """Real Ray with 2 logical CPUs and 2 fake GPUs: the nodes are read back, and Tune runs two 0-CPU drivers at
    once next to a 2-CPU job, so a driver really takes no CPU from the workers."""
    ray = pytest.importorskip("ray")
    from ray import tune
    from search.tuning.plan import cluster_nodes, plan_for_cluster

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False)
    try:
        nodes = cluster_nodes()
        assert len(nodes) == 1 and nodes[0]["CPU"] == 2 and nodes[0]["GPU"] == 2
        plan = plan_for_cluster(TrialResources(workers=2, cpus_per_worker=1, gpus_per_worker=1))
        assert plan.max_concurrent_trials == 1

        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        @ray.remote(num_cpus=1)
        def busy() -> int:
            return 1

        def driver(config):  # like Train: the workers get their own 2 x 1-CPU placement group, beside the driver's
            group = placement_group([{"CPU": 1}] * 2)
            ray.get(group.ready(), timeout=60)  # times out if the drivers held CPU
            in_group = busy.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group))
            workers = sum(ray.get([in_group.remote(), in_group.remote()]))
            remove_placement_group(group)
            tune.report({"workers": workers})

        tuner = tune.Tuner(tune.with_resources(driver, driver_resources()),
                           param_space={"i": tune.grid_search([0, 1])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=2),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
        results = tuner.fit()
        assert not results.errors and sorted(r.metrics["workers"] for r in results) == [2, 2]
    finally:
        ray.shutdown()
