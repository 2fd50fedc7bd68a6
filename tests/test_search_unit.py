"""Fast tests of the search layer without a Ray cluster: CLI flags and their errors, the search space, the data
preparation, and leaderboard rows built from fake trial histories."""
from __future__ import annotations

import pickle
import time
import shutil

import optuna
import pandas as pd
import pytest

from leukmodels.config import TrainConfig
from leukmodels.models import list_families
from search.board import leaderboard
from search.board.paths import optuna_url
from search.tuning.rows import SearchRun, TrialRecord, best_report
from search.tuning.rows import SearchContext, build_row, is_over, rows_from_grid
from search.cli.flags import parse_args
from search.cli.run import main
from search.cli.profiles import PROFILES
from search.cli.run import resolve_settings, resumed_flags
from search.tuning.spaces import SearchSpace, check_buildable, resolve_families, sample_configs, train_config


# -- CLI ------------------------------------------------------------------------------------------------------------
def _resolved(argv, nodes=({"CPU": 2.0},)):
    return resolve_settings(parse_args(argv), list(nodes), {})[0]


def test_defaults_follow_the_profile_of_the_cluster():
    args = _resolved(["--family", "resnet"])
    profile = PROFILES[args.profile]
    assert args.profile == "cpu" and args.family == ["resnet"]
    assert (args.num_samples, args.max_epochs, args.image_sizes) == (
        profile["num_samples"], profile["max_epochs"], profile["image_sizes"])
    assert args.metric == "balanced_accuracy" and args.name.startswith("resnet-")
    assert args.num_samples >= 8 and args.grace_epochs < args.max_epochs  # a real search with early stopping
    gpu = _resolved(["--family", "resnet", "--max-epochs", "5"], nodes=({"CPU": 8}, {"CPU": 48, "GPU": 4}))
    assert gpu.profile == "gpu" and gpu.gpus_per_worker == 1 and gpu.image_sizes == PROFILES["gpu"]["image_sizes"]
    assert gpu.max_epochs == 5  # a flag the user gave wins over the profile


def test_family_all_and_several():
    assert parse_args(["--family", "all"]).family == list_families()
    assert parse_args(["--family", "baseline", "resnet", "baseline"]).family == ["baseline", "resnet"]
    smoke = _resolved(["--smoke-test"])
    assert smoke.family == ["resnet"] and smoke.num_samples >= 2 and smoke.profile == "smoke"


@pytest.mark.parametrize("argv, flag", [
    (["--family", "transformer"], "--family"),
    ([], "--family"),
    (["--family", "resnet", "--num-samples", "0"], "--num-samples"),
    (["--family", "resnet", "--max-epochs", "-2"], "--max-epochs"),
    (["--family", "resnet", "--grace-epochs", "0"], "--grace-epochs"),
    (["--family", "resnet", "--max-epochs", "2", "--grace-epochs", "3"], "--grace-epochs"),
    (["--family", "resnet", "--time-budget", "0"], "--time-budget"),
    (["--family", "resnet", "--time-budget", "-5"], "--time-budget"),
    (["--family", "resnet", "--workers-per-trial", "0"], "--workers-per-trial"),
    (["--family", "resnet", "--workers-per-trial", "2", "--gpus-per-worker", "0.5"], "--gpus-per-worker"),
    (["--family", "resnet", "--cpus-per-worker", "-1"], "--cpus-per-worker"),
    (["--family", "resnet", "--image-sizes", "4"], "--image-sizes"),
    (["--family", "resnet", "--data", "/no/such/folder"], "--data"),
    (["--resume"], "--resume"),
])
def test_bad_flags_fail_with_one_line_before_anything_starts(argv, flag, tmp_path, capsys):
    code = main(argv + ["--results", str(tmp_path / "results"), "--storage", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "results" / "searches").exists()


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "examples:" in out and "--smoke-test" in out and "--resume" in out


def test_resume_of_an_unknown_search_is_refused(tmp_path, capsys):
    code = main(["--resume", "--name", "nothing-here", "--results", str(tmp_path)])
    assert code == 2 and "nothing-here" in capsys.readouterr().err


# -- search space ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [f for f in list_families() if f != "torchvision"])
def test_space_samples_buildable_configs_for_every_family(family):
    space = SearchSpace([family], image_sizes=[32, 48], batch_sizes=[32, 64], epochs=3, seed=7)
    configs = sample_configs(space, 25, seed=1)
    for config in configs:
        assert config.family == family and config.epochs == 3 and config.seed == 7
        assert 1e-4 <= config.lr <= 3e-2 and config.image_size in (32, 48)
        assert check_buildable(config) > 0
    optimizers = {c.optimizer for c in configs}
    assert optimizers == {"adamw", "sgd"}


def test_torchvision_space_is_buildable_at_its_sizes():
    space = SearchSpace(["torchvision"], image_sizes=[96], epochs=2)
    for config in sample_configs(space, 8, seed=0):
        assert check_buildable(config) > 0


def test_too_small_image_is_a_value_error_naming_the_size():
    with pytest.raises(ValueError, match="image_size"):
        check_buildable(TrainConfig(family="baseline", depth=5, image_size=16))


def test_several_families_prefix_their_params_and_map_back():
    space = SearchSpace(["baseline", "resnet"], image_sizes=[32], epochs=2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)
        family = trial.params["family"]
        seen.add(family)
        own = [name for name in trial.params if ":" in name]
        assert own and all(name.startswith(family + ":") for name in own)  # only the chosen family's params
        config = train_config({**trial.params, **constants})
        assert config.family == family and config.filters == trial.params[f"{family}:filters"]
        study.tell(trial, 0.0)
    assert seen == {"baseline", "resnet"}


def test_momentum_only_for_sgd_and_space_pickles():
    space = SearchSpace(["resnet"], image_sizes=[32])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial = study.ask()
        space(trial)
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert pickle.loads(pickle.dumps(space)) == space  # Tune pickles the searcher (and the space) for --resume


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown config key"):
        train_config({"family": "resnet", "learning_rate": 0.1})
    with pytest.raises(ValueError, match="transformer"):
        resolve_families(["resnet", "transformer"])


# -- data -----------------------------------------------------------------------------------------------------------
def test_prepare_data_uses_train_and_val_patients_only(tiny_cnmc, tmp_path):
    from leukmodels.data import discover, split_by_patient
    from search.tuning.data import prepare_data

    data = prepare_data(str(tiny_cnmc), image_sizes=[16, 24], split_seed=0, progress=False)
    assert data.generated and set(data.sets) == {16, 24}
    splits = split_by_patient(discover(tiny_cnmc), seed=0)
    test_patients = set(splits["test"]["patient"])
    for size, sets in data.sets.items():
        assert set(sets) == {"train", "val"}
        assert sets["train"].images.shape[1:] == (3, size, size)
        seen = set(sets["train"].patients) | set(sets["val"].patients)
        assert not seen & test_patients
        assert not set(sets["train"].patients) & set(sets["val"].patients)
    # the fingerprint names the images and the split, not the folder they sit in
    copy = shutil.copytree(tiny_cnmc, tmp_path / "elsewhere" / "C-NMC_Leukemia")
    assert prepare_data(str(copy), image_sizes=[16], progress=False).fingerprint == data.fingerprint
    assert prepare_data(str(tiny_cnmc), image_sizes=[16], split_seed=1, progress=False).fingerprint != \
        data.fingerprint


def test_split_record_is_what_evaluation_reads_back(tiny_cnmc, tmp_path):
    import pandas as pd

    from search.tuning.data import prepare_data
    from search.evaluation.heldout import recorded_split

    data = prepare_data(str(tiny_cnmc), image_sizes=[16], split_seed=3, progress=False)
    data.write_split(tmp_path / "s1" / "split.json")
    found = recorded_split(pd.Series({"search": "s1"}), tmp_path)
    assert found["seed"] == 3 and found["val_fraction"] == data.val_fraction
    assert set(found["train"]) == set(data.sets[16]["train"].patients)
    assert set(found["val"]) == set(data.sets[16]["val"].patients)
    assert not set(found["train"]) & set(found["val"])
    assert not list((tmp_path / "s1").glob(".*tmp*"))  # written atomically, nothing left over


# -- leaderboard rows -----------------------------------------------------------------------------------------------
CONFIG = {"family": "resnet", "filters": 8, "depth": 1, "stages": 2, "block": "basic", "image_size": 32,
          "epochs": 3, "lr": 1e-3, "resnet:filters": 8}


def _history(values, nodes=("n1",), world=2):
    return [{"epoch": i + 1, "weighted_f1": v, "accuracy": v, "balanced_accuracy": v, "roc_auc": v,
             "val_loss": 1 - v, "images_per_s": 100.0, "num_parameters": 1234, "train_seconds": 5.0 * (i + 1),
             "nodes": ",".join(nodes), "world_size": world, "checkpoint_path": f"/ckpt/epoch{i + 1}",
             "timestamp": 1_700_000_000 + 10 * i, "time_total_s": 30.0 + 10 * i} for i, v in enumerate(values)]


def test_row_takes_the_best_epoch_and_status(tmp_path):
    context = SearchContext(search="s", metric="weighted_f1", max_epochs=3, data_fingerprint="f", data_root="/d")
    history = _history([0.5, 0.8, 0.7], nodes=("a", "b"))
    for report in history:  # the weights of every epoch exist
        report["checkpoint_path"] = str(tmp_path / f"epoch{report['epoch']}")
        (tmp_path / f"epoch{report['epoch']}").mkdir()
        (tmp_path / f"epoch{report['epoch']}" / "checkpoint.pt").write_bytes(b"x")
    run = SearchRun()
    row = build_row(context, run, TrialRecord("t1", history, wall_seconds=20.0), CONFIG)
    assert row["status"] == "finished" and not row["early_stopped"] and row["notes"] is None
    assert (row["best_epoch"], row["weighted_f1"], row["epochs_run"]) == (2, 0.8, 3)
    assert row["checkpoint"] == str(tmp_path / "epoch2") and row["nodes"] == "a,b" and row["images_per_s"] == 200.0
    assert row["train_seconds"] == 15.0 and row["overhead_seconds"] == 5.0  # 20 s seen by the driver, 15 training
    assert "resnet:filters" not in row and row["filters"] == 8
    run.early_stops.add("t2")
    stopped = build_row(context, run, TrialRecord("t2", _history([0.4])), CONFIG)
    assert stopped["status"] == "stopped" and stopped["early_stopped"] and stopped["epochs_run"] == 1
    assert stopped["checkpoint"] is None and "best checkpoint missing: /ckpt/epoch1" in stopped["notes"]
    budget = build_row(context, SearchRun(deadline=0.0), TrialRecord("t3", _history([0.4])), CONFIG)  # budget spent
    assert budget["status"] == "time_budget" and not budget["early_stopped"]
    failed = build_row(context, run, TrialRecord("t4", [], "ValueError: image_size=8 is too small"), CONFIG)
    assert failed["status"] == "error" and failed["epochs_run"] == 0 and "image_size" in failed["error"]
    assert best_report(_history([0.5, 0.8]), "val_loss")["epoch"] == 2  # lower is better for losses
    # a tie goes to the later epoch, as Ray's checkpoint manager keeps the later of two equal checkpoints
    assert best_report(_history([0.5, 0.8, 0.6, 0.8]), "weighted_f1")["epoch"] == 4
    # a trial restarted from its epoch-2 checkpoint: Tune saw only epoch 3, whose report carries epochs 1-2
    import json
    full = _history([0.5, 0.9, 0.7])
    resumed = [{**full[2], "prior_epochs": json.dumps(full[:2])}]
    row = build_row(context, run, TrialRecord("t5", resumed), CONFIG)
    assert (row["best_epoch"], row["weighted_f1"], row["epochs_run"], row["status"]) == (2, 0.9, 3, "finished")


def test_rows_from_a_fake_result_grid_land_in_the_leaderboard_ranked(tmp_path):
    class FakeResult:
        def __init__(self, trial_id, values, error=None):
            self.metrics_dataframe = pd.DataFrame(_history(values)) if values else None
            self.metrics = {"trial_id": trial_id, **(_history(values)[-1] if values else {})}
            self.config, self.error = dict(CONFIG), error
            self.path = f"/storage/s/run_trial_{trial_id}_1_lr=0.001"

    grid = [FakeResult("aaaa0001", [0.5, 0.6, 0.9]), FakeResult("aaaa0002", [0.3]),
            FakeResult("aaaa0003", None, error=RuntimeError("Traceback...\nValueError: boom"))]
    grid.append(FakeResult("aaaa0004", [0.2, 0.3]))  # cut short by an interrupt: not over, no row (resume ends it)
    context = SearchContext(search="fake-grid", metric="weighted_f1", max_epochs=3)
    run = SearchRun(early_stops={"aaaa0002"})  # what RecordingASHA records when it stops a trial before max_t
    assert not is_over(run, context, TrialRecord("aaaa0004", _history([0.2, 0.3])))
    rows = rows_from_grid(context, run, grid)
    board = leaderboard.append_rows(tmp_path / "lb.parquet", rows)
    assert list(board["trial_id"]) == ["aaaa0001", "aaaa0002", "aaaa0003"]
    assert list(board["rank"]) == [1, 2, 3]
    assert list(board["status"]) == ["finished", "stopped", "error"]
    assert board["early_stopped"].tolist() == [False, True, False]
    assert board.loc[2, "error"] == "ValueError: boom"
    again = leaderboard.append_rows(tmp_path / "lb.parquet", rows)  # a resumed search writes the same keys again
    assert len(again) == 3


def test_one_record_per_trial_feeds_the_console_and_the_row_written_when_it_ends(tmp_path, capsys):
    """Tune's callbacks in a search's order: the recorder files each report once; the row and the console line read
    the same record (best epoch: the later of a tie, as Ray keeps it; the status from the run's early stops)."""
    from types import SimpleNamespace

    from search.board.paths import leaderboard_path
    from search.tuning.console import ConsoleCallback
    from search.tuning.rows import TrialRecorder
    from search.tuning.rows import LeaderboardCallback

    run = SearchRun(early_stops={"t2"})
    context = SearchContext(search="callbacks", metric="weighted_f1", max_epochs=3)
    board = leaderboard_path(tmp_path)
    callbacks = [TrialRecorder(run), LeaderboardCallback(context, str(board), run),
                 ConsoleCallback(run=run, metric="weighted_f1", num_samples=2, max_epochs=3)]
    for trial_id, values in (("t1", [0.5, 0.8, 0.8]), ("t2", [0.4])):
        trial = SimpleNamespace(trial_id=trial_id, config=dict(CONFIG), path=None, last_result=None)
        for callback in callbacks:
            callback.on_trial_start(0, [], trial)
        for report in _history(values):
            trial.last_result = {**report, "config": dict(CONFIG)}  # Tune's result holds the nested config too
            for callback in callbacks:
                callback.on_trial_result(0, [], trial, trial.last_result)
        for callback in callbacks:
            callback.on_trial_complete(0, [], trial)
    record = run.trials["t1"]
    assert len(record.reports) == 3 and "config" not in record.reports[0] and record.wall_seconds is not None
    rows = leaderboard.read(board).set_index("trial_id")
    assert (rows.loc["t1", "best_epoch"], rows.loc["t1", "status"], rows.loc["t1", "train_seconds"]) == (
        3, "finished", 15.0)
    assert rows.loc["t2", "status"] == "stopped" and rows.loc["t2", "overhead_seconds"] >= 0.0
    out = capsys.readouterr().out
    assert "t1 finished 3 epochs, best weighted_f1 0.800 (epoch 3)" in out
    assert "t2 stopped early after 1 epoch(s), best weighted_f1 0.400 (epoch 1)" in out and "2/2 trials, 4/6" in out


def test_a_one_class_model_on_an_imbalanced_validation_set_does_not_win(tmp_path):
    """Validation: 80% ALL. A model that calls every cell ALL scores weighted F1 0.71, more than a real model that
    is right on about three cells in four of either class; the search's default metric (balanced accuracy: 0.5 for
    the one-class model) ranks the real one first, and the one-class model's row is flagged."""
    import numpy as np

    from leukmodels.metrics import classification_metrics

    labels = np.array([1] * 80 + [0] * 20)
    all_alike = classification_metrics(labels, np.full(100, 0.9))
    rng = np.random.default_rng(0)
    right = rng.random(100) < 0.75  # right on about three cells in four of either class
    real = classification_metrics(labels, np.where(right, labels, 1 - labels).astype(float))
    assert all_alike["weighted_f1"] > real["weighted_f1"]  # the challenge metric alone would pick the one-class model
    metric = parse_args(["--family", "resnet"]).metric
    context = SearchContext(search="one-class", metric=metric, max_epochs=1)
    rows = [build_row(context, SearchRun(), TrialRecord(trial, [{"epoch": 1, **scores}]), CONFIG)
            for trial, scores in (("all-alike", all_alike), ("real", real))]
    board = leaderboard.append_rows(tmp_path / "lb.parquet", rows)
    assert list(board["trial_id"]) == ["real", "all-alike"]
    assert board.set_index("trial_id")["single_class"].to_dict() == {"real": False, "all-alike": True}


# -- flags given twice, --resume against the saved settings ---------------------------------------------------------
def test_a_list_flag_given_twice_is_merged_and_a_single_value_flag_twice_is_refused(tmp_path, capsys):
    assert parse_args(["--family", "resnet", "--family", "baseline"]).family == ["resnet", "baseline"]
    assert parse_args(["--family", "resnet", "--image-sizes", "32", "--image-sizes", "48"]).image_sizes == [32, 48]
    code = main(["--family", "resnet", "--num-samples", "4", "--num-samples", "8", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --num-samples given twice (4 and 8); give it once"


def _saved_search(tmp_path, *extra):
    from search.board.settings import save_settings

    args = _resolved(["--family", "resnet", "--name", "saved", "--results", str(tmp_path), *extra])
    save_settings(args)
    return args


def test_resume_refuses_flags_that_contradict_the_saved_search(tmp_path, capsys):
    _saved_search(tmp_path, "--image-sizes", "32")
    code = main(["--resume", "--name", "saved", "--results", str(tmp_path), "--family", "baseline",
                 "--image-sizes", "48"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--family baseline (saved: resnet)" in err and "--image-sizes 48 (saved: 32)" in err


def test_resume_applies_a_new_time_budget_and_keeps_every_other_saved_setting(tmp_path):
    saved = _saved_search(tmp_path, "--num-samples", "5", "--time-budget", "60")
    args, notes = resumed_flags(parse_args(["--resume", "--name", "saved", "--results", str(tmp_path),
                                            "--time-budget", "600", "--num-samples", "5"]))  # same as saved: no clash
    assert notes == ["--time-budget 600 replaces the saved 60"]
    assert args.time_budget == 600 and args.family == ["resnet"] and args.num_samples == 5
    assert args.image_sizes == saved.image_sizes and args.profile == saved.profile


# searches/<name>.json as an earlier version wrote it (before --objectives, --cv, --rerank-top, --optuna-storage and
# the warm start's record): every field it holds is a setting of the resumed search, the others today's defaults
OLD_SETTINGS = {"family": ["baseline"], "data": None, "num_samples": 3, "max_epochs": 4, "grace_epochs": 1,
                "reduction_factor": 3, "workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0,
                "image_sizes": [24], "batch_sizes": [16], "seed": 7, "metric": "weighted_f1", "time_budget": None,
                "max_failures": 1, "profile": "cpu", "storage": "/somewhere/ray", "searcher": "random",
                "scheduler": "median", "val_fraction": 0.25, "warm_start": None}


def test_resume_reads_a_settings_file_an_older_version_wrote(tmp_path):
    import dataclasses
    import json

    from search.board.paths import settings_path
    from search.board.settings import SearchSettings

    settings_path(tmp_path, "old").parent.mkdir(parents=True)
    settings_path(tmp_path, "old").write_text(json.dumps(OLD_SETTINGS, indent=2))
    flags, notes = resumed_flags(parse_args(["--resume", "--name", "old", "--results", str(tmp_path)]))
    settings, why = resolve_settings(flags, [{"CPU": 2.0, "GPU": 1.0}], {})  # a GPU now: the saved profile holds
    assert notes == [] and why == "the saved settings of the search"
    assert {key: getattr(settings, key) for key in OLD_SETTINGS} == OLD_SETTINGS
    assert (settings.objectives, settings.rerank_top, settings.warm_start) == (None, None, None)
    assert settings.optuna_storage == optuna_url(tmp_path)  # today's default: the study beside it
    assert settings.cv == 0 and settings.resume and settings.name == "old"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_samples = 9  # resolved once: nothing is set on it later
    assert isinstance(settings, SearchSettings)


def test_a_trial_the_budget_ends_before_its_first_report_keeps_its_sampled_settings(tmp_path):
    """Fast, on Tune's own ResultGrid: a trial that never reported (the budget ended it in its first epoch) has no
    config in its Result (Tune reads it from the last report); its time_budget row must still hold what was
    sampled, never TrainConfig's defaults (issue 20.2)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.result_grid import ResultGrid

    from leukmodels.config import TrainConfig
    from search.tuning.rows import SearchContext, rows_from_grid

    sampled = {"family": "resnet", "filters": 27, "lr": 0.02, "batch_size": 32, "image_size": 24, "epochs": 4}
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="cut",
                             trial_dir_name="run_trial_abcd0001_1")
    trial = Trial("run_trial", config=sampled, trial_id="abcd0001", storage=storage, stub=True)
    trial.set_status(Trial.TERMINATED)  # how Tune leaves a trial its stopper ended

    class Analysis:  # what ResultGrid reads of Tune's ExperimentAnalysis
        trials, trial_dataframes, _fs = [trial], {}, storage.storage_filesystem

    grid = ResultGrid(Analysis())
    assert next(iter(grid)).config is None  # Tune's side of the defect
    spent = SearchRun(deadline=time.time() - 1)  # the budget is spent
    rows = rows_from_grid(SearchContext(search="cut", metric="balanced_accuracy", max_epochs=4), spent, grid)
    assert len(rows) == 1 and rows[0]["status"] == "time_budget" and rows[0]["epochs_run"] == 0
    assert {key: rows[0][key] for key in sampled} == sampled
    assert rows[0]["filters"] != TrainConfig().filters


@pytest.mark.parametrize("argv, max_epochs, grace", [(["--max-epochs", "1"], 1, 1), (["--grace-epochs", "12"], 12, 12),
                                                     (["--max-epochs", "5"], 5, PROFILES["cpu"]["grace_epochs"])])
def test_a_default_grace_follows_the_users_max_epochs(argv, max_epochs, grace):
    """`--max-epochs 1` alone was refused (once Ray was up) for a --grace-epochs 2 the user never gave (issue 20.10)."""
    args = _resolved(["--family", "resnet", *argv])  # checked once the profile filled the rest
    assert (args.max_epochs, args.grace_epochs) == (max_epochs, grace)


@pytest.mark.parametrize("family, size", [("baseline", 24), ("resnet", 16), ("inception", 16)])
def test_the_space_never_proposes_a_depth_its_one_image_size_cannot_hold(family, size):
    """Baseline depth 5 at 24 px (5 halvings of 24) failed on the meta device and Tune retried it like a crashed node;
    with one candidate size the space caps depth and stages at what builds (issue 20.10). About 1 in 4 such configs
    failed before."""
    configs = sample_configs(SearchSpace([family], image_sizes=[size], epochs=2), 30, seed=1)
    for config in configs:
        assert check_buildable(config) > 0, config
    assert len({c.depth for c in configs}) > 1  # still a range, not one value


def test_a_trial_on_a_new_actor_counts_the_actors_start_up_as_its_own_wait():
    """Tune calls on_trial_start once the actor is up: the first report of a new actor says when its process started
    (a reused actor's says nothing); a process that waited in Ray's pool longer than a minute counts a minute."""
    import time
    from types import SimpleNamespace

    from search.tuning.rows import ACTOR_START_MAX_S, TrialRecorder
    from search.tuning.trial import ACTOR_STARTED

    run = SearchRun()
    recorder = TrialRecorder(run)
    for trial_id, actor_age in (("new", 3.0), ("reused", None), ("pooled", 500.0)):
        trial = SimpleNamespace(trial_id=trial_id, config={}, path=None, last_result=None)
        recorder.on_trial_start(0, [], trial)
        first = {"epoch": 1, **({ACTOR_STARTED: time.time() - actor_age} if actor_age else {})}
        recorder.on_trial_result(0, [], trial, first)
        recorder.on_trial_result(0, [], trial, {"epoch": 2})
        recorder.on_trial_complete(0, [], trial)
    walls = {trial_id: record.wall_seconds for trial_id, record in run.trials.items()}
    assert 3.0 <= walls["new"] < 4.0 and walls["reused"] < 1.0
    assert ACTOR_START_MAX_S <= walls["pooled"] < ACTOR_START_MAX_S + 1.0
