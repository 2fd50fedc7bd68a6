"""Pins each behaviour of Ray's private internals that search/tuning/ray_private.py relies on (Ray 2.60), and the one
public behaviour the best-epoch rule copies (of two equal checkpoints Ray keeps the later), so a Ray upgrade that
changes one fails here, not in a search. No Ray cluster: Tune's objects are built directly."""
from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
from ray import tune
from ray.train import Checkpoint
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.result_grid import ResultGrid

from leukmodels.metrics import best_report
from search.board.paths import optuna_url
from search.tuning.pbt import SearchPBT, make_pbt
from search.tuning.ray_private import (checkpoint_results, completed_trials, grid_trials, next_pbt_round, optuna_study,
                                       optuna_trials, pbt_interval, restored_configs, set_checkpoint_results,
                                       set_next_pbt_round, set_pbt_round, training_result, TorchOnWorkers,
                                       ddp_trainer)
from search.tuning.rows import SearchRun
from search.tuning.spaces import SearchSpace
from search.tuning.strategies import (BudgetAwareOptunaSearch, BudgetStopper, RecordingASHA, attach_run, make_scheduler,
                                      make_searcher, write_deadline)


class Marker(tune.Callback):
    pass


def _trainable(config):
    return None


def test_a_restored_tuner_runs_with_the_configs_reached_here_and_takes_new_callbacks_and_a_run(tmp_path):
    built = SearchRun()
    scheduler = make_scheduler("asha", run=built, metric="balanced_accuracy", max_epochs=4, grace_epochs=1)
    searcher = make_searcher("random", search="r", run=built, space=SearchSpace(["resnet"]), metric="balanced_accuracy",
                             mode="max", storage=None, seed=0, num_samples=2, max_epochs=4)
    tune.Tuner(_trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=2),
               run_config=tune.RunConfig(name="r", storage_path=str(tmp_path), callbacks=[Marker()],
                                         stop=BudgetStopper(tmp_path / "deadline.json")))
    tuner = tune.Tuner.restore(str(tmp_path / "r"), trainable=_trainable)
    run_config, tune_config = restored_configs(tuner)
    # what Tune pickled in tuner.pkl when the Tuner was built: copies, with an empty run each
    assert [type(c) for c in run_config.callbacks] == [Marker] and isinstance(run_config.stop, BudgetStopper)
    assert isinstance(tune_config.scheduler, RecordingASHA) and isinstance(tune_config.search_alg,
                                                                           BudgetAwareOptunaSearch)
    assert tune_config.scheduler.run is not built
    live = SearchRun(early_stops={"x"})
    run_config.callbacks = [Marker()]
    attach_run([tune_config.scheduler, tune_config.search_alg], live)
    again_run, again_tune = restored_configs(tuner)  # the same objects: what tuner.fit() will use
    assert again_tune.scheduler.run is live and again_tune.search_alg.run is live


def test_a_resumed_tune_puts_back_the_stopper_pickled_in_its_experiment_state():
    """Why BudgetStopper reads its deadline from a file: Tune's controller saves its `_stopper` with its state and a
    resume restores it over the stopper the RunConfig gives (Ray 2.60: TuneController.__getstate__ drops the
    callbacks, the scheduler and the searcher, which come back fresh, but keeps the stopper)."""
    import inspect

    from ray.tune.execution.tune_controller import TuneController

    dropped = inspect.getsource(TuneController.__getstate__)
    assert '"_callbacks"' in dropped and '"_scheduler_alg"' in dropped and '"_search_alg"' in dropped
    assert '"_stopper"' not in dropped


def test_a_restored_stopper_ends_the_search_at_the_deadline_its_resumed_driver_wrote(tmp_path):
    deadline = tmp_path / "s" / "deadline.json"
    write_deadline(deadline, None)  # the first run had no budget
    stopper = BudgetStopper(deadline)
    assert not stopper.stop_all()
    restored = pickle.loads(pickle.dumps(stopper))  # what a resumed Tune runs with
    write_deadline(deadline, time.time() - 1)  # the resumed run's --time-budget, already spent
    assert restored.stop_all()
    old = BudgetStopper.__new__(BudgetStopper)
    old.__setstate__({"search": "s"})  # pickled by a version whose stopper held its search's name
    assert not old.stop_all()


def test_a_search_run_pickles_empty_and_is_shared_by_copies():
    import copy

    run = SearchRun(deadline=1.0, early_stops={"t"})
    run.record("t").add({"epoch": 1}, None)
    restored = pickle.loads(pickle.dumps(run))  # what Tune saves of the callbacks, stopper, scheduler, searcher
    assert (restored.deadline, restored.early_stops, restored.trials) == (None, set(), {})
    assert copy.deepcopy(run) is run


def test_the_trials_behind_a_result_grid(tmp_path):
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="g", trial_dir_name="run_trial_ab_1")
    trial = Trial("run_trial", config={"lr": 0.1}, trial_id="ab", storage=storage, stub=True)
    trial.set_status(Trial.TERMINATED)

    class Analysis:  # the attributes ResultGrid reads of Tune's ExperimentAnalysis
        trials, trial_dataframes, _fs = [trial], {}, storage.storage_filesystem

    trials = grid_trials(ResultGrid(Analysis()))
    assert trials == [trial] and trials[0].status == "TERMINATED" and trials[0].config == {"lr": 0.1}
    assert grid_trials([]) == []  # a plain list of results: no trials to read


def _searcher(run: SearchRun, tmp_path) -> BudgetAwareOptunaSearch:
    return make_searcher("random", search="o", run=run, space=SearchSpace(["resnet"]), metric="balanced_accuracy",
                         mode="max", storage=optuna.storages.RDBStorage(optuna_url(tmp_path)), seed=0,
                         num_samples=3, max_epochs=4)


def test_the_optuna_searchers_study_trials_and_closed_ids(tmp_path):
    run = SearchRun()
    searcher = _searcher(run, tmp_path)
    assert searcher.suggest("done") is not None and searcher.suggest("cut") is not None
    assert set(optuna_trials(searcher)) == {"done", "cut"}
    searcher.on_trial_complete("done", {"balanced_accuracy": 0.7, "epoch": 4})
    assert "done" in completed_trials(searcher)
    run.deadline = 0.0  # the budget is spent: "cut" trained one epoch of four
    searcher.on_trial_result("cut", {"balanced_accuracy": 0.6, "epoch": 1, "training_iteration": 1})
    searcher.on_trial_complete("cut", {"balanced_accuracy": 0.6, "epoch": 1})
    assert [t.state for t in optuna_study(searcher).trials] == [optuna.trial.TrialState.COMPLETE,
                                                                optuna.trial.TrialState.PRUNED]
    assert completed_trials(searcher) == {"done", "cut"}


def test_a_restored_searcher_keeps_this_drivers_run(tmp_path):
    searcher = _searcher(SearchRun(), tmp_path)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))  # OptunaSearch saves and restores its whole __dict__
    live = SearchRun(early_stops={"a"})
    fresh = _searcher(live, tmp_path)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.run is live and set(optuna_trials(fresh)) == {"a"}


def _result(folder, score):
    folder.mkdir()
    return _TrainingResult(checkpoint=Checkpoint(str(folder)), metrics={"roc_auc": score})


def test_the_checkpoint_manager_keeps_the_later_of_two_equal_scores_and_its_lists_can_be_replaced(tmp_path):
    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="roc_auc",
                                                       checkpoint_score_order="max"))
    reports = [{"epoch": 1, "roc_auc": 0.8}, {"epoch": 2, "roc_auc": 0.8}, {"epoch": 3, "roc_auc": 0.5}]
    results = [_result(tmp_path / f"e{r['epoch']}", r["roc_auc"]) for r in reports]
    for result in results:
        manager.register_checkpoint(result)
    # the best kept is epoch 2's, the later of the tie: the rule leukmodels.metrics.best_report follows
    assert manager.best_checkpoint_results[-1] is results[1]
    assert best_report(reports, "roc_auc")["epoch"] == 2
    assert manager.latest_checkpoint_result is results[2]
    assert checkpoint_results(manager) == [results[2], results[1]]  # ascending score, the latest kept besides
    set_checkpoint_results(manager, [results[1]], results[1])
    assert manager.latest_checkpoint_result is results[1] and manager.best_checkpoint_results == [results[1]]
    empty = training_result(Checkpoint(str(tmp_path / "e1")))
    assert empty.metrics == {} and empty.checkpoint.path == str(tmp_path / "e1")


def test_pbt_round_state_of_a_trial(tmp_path):
    scheduler = make_pbt(metric="balanced_accuracy", max_epochs=8)
    assert isinstance(scheduler, SearchPBT) and pbt_interval(scheduler) == 2
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="p", trial_dir_name="run_trial_p_1")
    trial = Trial("run_trial", config={"lr": 0.1}, trial_id="p", storage=storage, stub=True)
    trial.run_metadata.last_result = {"epoch": 5}  # a trial restored by --resume after epoch 5
    # SearchPBT puts it back on the rounds: its last at 4, the next at 6
    scheduler.on_trial_add(SimpleNamespace(search_alg=None), trial)
    assert next_pbt_round(scheduler) == 6
    assert scheduler._trial_state[trial].last_train_time == 4 == scheduler._trial_state[trial].last_perturbation_time
    set_pbt_round(scheduler, trial, 2)
    set_next_pbt_round(scheduler, 4)
    assert (scheduler._trial_state[trial].last_train_time, next_pbt_round(scheduler)) == (2, 4)


def test_a_ddp_trials_trainer_has_trains_default_callbacks_less_the_placement_group_cleaner():
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    def kinds(trainer_class: type) -> list:
        trainer = trainer_class(_trainable, backend_config=TorchOnWorkers(),
                                scaling_config=ScalingConfig(num_workers=2))
        return [type(callback) for callback in trainer._create_default_callbacks()]

    stock, ours = kinds(DataParallelTrainer), kinds(ddp_trainer())
    assert PlacementGroupCleanerCallback in stock  # the actor a Ray upgrade may rename or drop: then revisit this
    assert ours == [kind for kind in stock if kind is not PlacementGroupCleanerCallback]
    assert issubclass(ddp_trainer(), DataParallelTrainer)


def test_torch_on_workers_calls_torch_configs_own_steps_with_their_parameters():
    from ray.train._internal.utils import get_address_and_port
    from ray.train.torch import TorchConfig
    from ray.train.torch import config as torch_config

    assert {"backend", "world_rank", "world_size", "init_method", "timeout_s"} <= set(
        inspect.signature(torch_config._setup_torch_process_group).parameters)
    assert "destroy_process_group" in inspect.signature(torch_config._shutdown_torch).parameters
    assert callable(torch_config._set_torch_distributed_env_vars) and callable(get_address_and_port)
    stock, ours = TorchConfig(backend="gloo"), TorchOnWorkers(backend="gloo")
    assert stock.init_method == "env" and stock.timeout_s == ours.timeout_s
    assert stock.backend_cls.share_cuda_visible_devices == ours.backend_cls.share_cuda_visible_devices
    assert (stock.framework, stock.to_dict()) == (ours.framework, ours.to_dict())
    assert ours.train_func_context is stock.train_func_context is torch_config.TorchConfigContextManager


def test_a_ddp_trials_train_controller_unpickles_its_config_and_callbacks_without_importing_torch():
    """What the controller receives of a DDP trial: the backend config and the trial's Train callbacks."""
    import cloudpickle

    from search.tuning.timeline_train import TrainTimeline
    from search.tuning.train_stop import StopWhenAsked

    sent = cloudpickle.dumps([TorchOnWorkers(backend="nccl"), StopWhenAsked("t1"), TrainTimeline("t1")])
    code = ("import pickle, sys; config = pickle.loads(sys.stdin.buffer.read())[0]; "
            "print(config.backend, config.backend_cls.__name__, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], input=sent, capture_output=True, check=True)
    assert done.stdout.decode().split() == ["nccl", "_TorchOnWorkersBackend", "False"]


