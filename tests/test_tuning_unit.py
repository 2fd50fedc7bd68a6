"""The Ray layer's decisions that need no running Ray: what a trial asks Tune for, the Tuner's settings per kind of
trial, what a trial reports, how a trial ended, and what a search says and tidies at its end."""
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from search.board.paths import leaderboard_path, optuna_url
from search.board.settings import SearchSettings
from search.cli.profiles import PROFILES
from search.tuning.plan import DRIVER_MEMORY_BYTES, DRIVER_NODE_RESOURCE, DRIVER_NODE_SHARE, Plan, TrialResources
from search.tuning.rows import SearchRun, TrialRecord
from search.tuning.trial import ORIGIN_FILE, TrialSettings, _Reporter, run_trial
from search.tuning.tuner import close_open_optuna_trials, next_steps, run_config, summary_line, trial_request, tune_config


def settings(**changes) -> SearchSettings:
    """The resolved settings of a search (what search/cli/run.py hands search/tuning/tuner.py)."""
    base = dict(PROFILES["cpu"], name=f"unit-{uuid.uuid4().hex[:8]}", storage="/storage/ray",
                results=str(Path("results").resolve()), family=["resnet"], profile="cpu", num_samples=6)
    return SearchSettings(**{**base, **changes})


def plan(workers: int, gpus: float = 0.0) -> Plan:
    return Plan(max_concurrent_trials=3, per_trial=TrialResources(workers, 1.0, gpus), reason="")


def test_a_one_worker_trial_asks_for_its_worker_and_a_ddp_trial_for_its_driver_only():
    in_place = TrialSettings(TrialResources(1, 2.0, 0.5))
    assert trial_request(in_place, nodes=[]) == {"CPU": 2.0, "GPU": 0.5}
    ddp = TrialSettings(TrialResources(2, 1.0, 1.0))
    assert trial_request(ddp, nodes=[{"CPU": 4.0, "GPU": 2.0}]) == {"CPU": 0.0, "memory": DRIVER_MEMORY_BYTES}
    with_head = [{"CPU": 2.0, DRIVER_NODE_RESOURCE: 1000.0}, {"CPU": 8.0, "GPU": 4.0}]  # clusters/*.yaml's head
    assert trial_request(ddp, nodes=with_head)[DRIVER_NODE_RESOURCE] == DRIVER_NODE_SHARE


@pytest.mark.parametrize("workers, scheduler, reuse_actors, tune_retries, kept, at_once", [
    (1, "asha", True, 2, 1, 3),  # trains in its Tune trial: Tune retries it and reuses its process
    (2, "asha", True, 0, 1, 3),  # DDP: Ray Train retries its workers; a stopped trial aborts its run (train_stop)
    (1, "pbt", True, 2, None, None),  # PBT: the whole population at once, every checkpoint kept for exploits
    (2, "pbt", False, 0, None, None),  # PBT's DDP trials are paused and restored: an actor each
])
def test_the_tuner_per_kind_of_trial(workers, scheduler, reuse_actors, tune_retries, kept, at_once):
    args = settings(scheduler=scheduler)
    config = tune_config(args, plan(workers), searcher=None, scheduler=None)
    assert config.reuse_actors is reuse_actors and config.max_concurrent_trials == at_once
    assert config.num_samples == args.num_samples
    run = run_config(args, plan(workers), callbacks=[])
    assert run.failure_config.max_failures == tune_retries
    assert run.checkpoint_config.num_to_keep == kept
    assert (run.checkpoint_config.checkpoint_score_attribute, run.checkpoint_config.checkpoint_score_order) == (
        "balanced_accuracy", "max")
    assert (run.name, run.storage_path) == (args.name, args.storage)


def test_a_report_carries_where_and_how_long_and_a_restart_says_once_what_came_before(monkeypatch):
    monkeypatch.delenv("LEUKTUNE_FAULT_DIR", raising=False)
    sent = []
    reporter = _Reporter(lambda metrics, folder: sent.append((metrics, folder)), "t1", rank=0, world_size=2,
                         nodes="n1,n2", placement_group="pg", actor_started=1234.5)
    reporter.prior_epochs, reporter.exploited_from = json.dumps([{"epoch": 1}]), "d0nor_00001@1"
    reporter.on_epoch({"epoch": 2, "balanced_accuracy": 0.6}, None)
    reporter.on_epoch({"epoch": 3, "balanced_accuracy": 0.7}, None)
    (first, _), (second, _) = sent
    assert first["prior_epochs"] == json.dumps([{"epoch": 1}]) and first["exploited_from"] == "d0nor_00001@1"
    assert first["actor_started_at"] == 1234.5  # the first trial of a new actor: its start-up is this trial's
    assert "prior_epochs" not in second and "exploited_from" not in second and "actor_started_at" not in second
    for report in (first, second):
        assert (report["nodes"], report["world_size"], report["placement_group"]) == ("n1,n2", 2, "pg")
    assert 0 <= first["train_seconds"] <= second["train_seconds"] and first["reported_at"] <= second["reported_at"]
    reporter.finish(SimpleNamespace(history=[{"epoch": 3}]))  # it reported: nothing more to say
    assert len(sent) == 2


def test_fault_injection_is_chosen_once_per_trial_and_absent_from_a_production_epoch(tmp_path, monkeypatch):
    for name in ("LEUKTUNE_FAULT_DIR", "LEUKTUNE_FAULT_KILL", "LEUKTUNE_FAULT_HOLD"):
        monkeypatch.delenv(name, raising=False)
    assert _Reporter(lambda *_: None, "t1", rank=0, world_size=1, nodes="n").fault is None  # nothing runs per epoch
    monkeypatch.setenv("LEUKTUNE_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("LEUKTUNE_FAULT_RAISE", "0:2")
    reporter = _Reporter(lambda *_: None, "t1", rank=0, world_size=1, nodes="n")
    reporter.on_epoch({"epoch": 1}, None)  # trial index 0 claims its slot; epoch 1 is before the fault
    with pytest.raises(RuntimeError, match="injected fault: trial 0 raises at epoch 2"):
        reporter.on_epoch({"epoch": 2}, None)
    assert (tmp_path / "faults" / "slot-0").read_text() == "t1"


def test_each_checkpoint_names_its_trial_and_a_resumed_trial_with_nothing_left_still_reports(tmp_path, monkeypatch):
    monkeypatch.delenv("LEUKTUNE_FAULT_DIR", raising=False)
    origins, sent = [], []

    def send(metrics: dict, folder) -> None:
        sent.append((metrics, folder))
        if folder:
            origins.append(json.loads((Path(folder) / ORIGIN_FILE).read_text()))

    folder = tmp_path / "epoch_0004"
    folder.mkdir()
    _Reporter(send, "t2", rank=0, world_size=1, nodes="n").on_epoch({"epoch": 4}, str(folder))
    assert origins == [{"trial_id": "t2", "epoch": 4}]
    assert not folder.exists()  # persisted to storage by the report: the local copy goes
    _Reporter(send, "t3", rank=0, world_size=1, nodes="n").finish(SimpleNamespace(history=[{"epoch": 3},
                                                                                          {"epoch": 4}]))
    assert sent[-1][0]["epoch"] == 4 and sent[-1][1] is None


def test_a_trial_refuses_an_image_size_the_search_did_not_decode_and_a_config_that_cannot_build():
    with pytest.raises(ValueError, match="image_size=32 was not decoded"):
        run_trial({"family": "baseline", "image_size": 32}, data_refs={64: {}})
    with pytest.raises(ValueError, match="image_size=16"):
        run_trial({"family": "baseline", "depth": 5, "image_size": 16}, data_refs={16: {}})
    with pytest.raises(ValueError, match="unknown config key"):
        run_trial({"family": "baseline", "colour": "violet"}, data_refs={})


def test_how_a_trial_ended():
    run = SearchRun()

    def status(trial_id, history, error=None):
        return run.status(TrialRecord(trial_id, history, error), max_epochs=4)

    assert status("t", [{"epoch": 4}], "RuntimeError: boom") == "error"
    assert status("t", [{"epoch": 4}]) == "finished"
    assert status("t", [{"epoch": 2}]) is None  # interrupted: --resume continues it, no row yet
    assert status("t", [{"epoch": 2, "prior_epochs": json.dumps([{"epoch": 3}, {"epoch": 4}])}]) == "finished"
    run.early_stops.add("t")  # the epochs before a restart count (above); the scheduler stopped t
    assert status("t", [{"epoch": 2}]) == "stopped"
    run.deadline = time.time() - 1
    assert status("u", [{"epoch": 2}]) == "time_budget"
    assert status("t", [{"epoch": 2}]) == "stopped"  # stopped before the budget ran out


def test_the_summary_line():
    rows = pd.DataFrame({"train_seconds": [10.0, 20.0, None], "overhead_seconds": [2.0, 4.0, None]})
    assert summary_line(rows, wall_s=61.4, slot_seconds=60.0) == (
        "wall time 61 s for 3 trials; per trial median 15.0 s training and 3.0 s overhead (17% of trial time); "
        "50% of the trial slots' time was not training")
    unmeasured = rows.assign(overhead_seconds=None)
    assert "overhead not measured (no trial ended on its own)" in summary_line(unmeasured, 61.4, 60.0)
    assert summary_line(rows.iloc[:0], wall_s=5.2, slot_seconds=0.0) == "wall time 5 s; no trial reported"


def test_next_steps_name_the_search_and_its_folders(tmp_path):
    here = settings(name="s1", storage="s3://bucket/ray/")
    lines = next_steps(here).splitlines()
    assert lines[0] == "next:" and "  python search/evaluate.py --search s1 --top 3   #" in lines[1]
    report = Path(here.results) / "s1" / "report.html"
    assert lines[2] == f"  python search/report.py --search s1   # HTML report: {report}"
    assert lines[3].startswith(f"  optuna-dashboard {optuna_url(here.results)}   ")
    assert lines[4].startswith("  tensorboard --logdir s3://bucket/ray/s1   ")
    elsewhere = next_steps(settings(name="s2", results=str(tmp_path), scheduler="pbt"))
    assert f"--search s2 --top 3 --leaderboard {leaderboard_path(tmp_path)}" in elsewhere
    assert "optuna-dashboard" not in elsewhere  # a PBT search has no Optuna study


@pytest.mark.parametrize("budget_spent, states", [(False, ["FAIL", "FAIL", "COMPLETE"]),
                                                  (True, ["PRUNED", "FAIL", "COMPLETE"])])
def test_open_optuna_trials_are_closed_by_what_ended_them(budget_spent, states, tmp_path):
    args = settings(results=str(tmp_path))
    study = optuna.create_study(study_name=args.name, storage=optuna_url(tmp_path))
    trained, _never_trained, done = study.ask(), study.ask(), study.ask()
    trained.report(0.6, step=1)
    study.tell(done, 0.7)
    said = []
    assert close_open_optuna_trials(args, budget_spent, said.append) == 2
    study = optuna.load_study(study_name=args.name, storage=optuna_url(tmp_path))
    assert [trial.state.name for trial in study.trials] == states
    assert any(("cut by the time budget" if budget_spent else "orphans of an interrupted driver") in line
               for line in said)


def test_next_steps_paste_into_a_shell_whatever_the_folders_are_called(tmp_path):
    """Each printed command, pasted into a shell, gives its program the search's own name and paths (issue 20.8: a
    results folder `A2 ü x` gave `unrecognized arguments: x ü x/leaderboard.parquet`)."""
    import shlex

    from search.evaluation import evaluate

    from search.reporting import report

    results = tmp_path / "A2 ü x"
    here = settings(name="my search", results=str(results), storage=str(results / "ray"))
    commands = {line.split()[1] if line.split()[0] == "python" else line.split()[0]: shlex.split(line.split("   #")[0])
                for line in next_steps(here).splitlines()[1:]}
    board = str(leaderboard_path(results))
    evaluated = evaluate.parse_args(commands["search/evaluate.py"][2:])
    assert (evaluated.search, evaluated.leaderboard, evaluated.top) == ("my search", board, 3)
    reported = report.parse_args(commands["search/report.py"][2:])
    assert (reported.search, reported.leaderboard) == ("my search", board)
    assert commands["optuna-dashboard"][1:] == [optuna_url(results)]
    assert commands["tensorboard"][1:] == ["--logdir", f"{results / 'ray'}/my search"]


def test_the_console_table_of_one_search_ranks_within_that_search(tmp_path):
    from board_rows import make_row

    from search.board import leaderboard
    from search.tuning.tuner import ranked_within

    rows = [make_row("a1", search="old", f1=0.9), make_row("a2", search="old", f1=0.8),
            make_row("b1", search="new", f1=0.7), make_row("b2", search="new", f1=0.85)]
    table = leaderboard.append_rows(tmp_path / "lb.parquet", rows)
    mine = ranked_within(table, "new")
    assert list(mine["trial_id"]) == ["b2", "b1"] and list(mine["rank"]) == [1, 2]  # the file ranks them 2 and 4
    assert list(leaderboard.rank_table(table, search="new")["rank"]) == [2, 4]


def test_a_ddp_trials_thread_returns_when_tune_stops_it_and_a_fit_aborted_on_request_is_no_error(monkeypatch):
    """fit_unless_stopped: Tune waits 2 s for a stopped trial's thread before it reuses the actor, so the thread
    returns at Tune's stop and leaves the run to the driver's flag; a fit that fails because it was aborted is not the
    trial's error, any other failure is; a flag left from an earlier run of the trial is cleared at its start."""
    import threading

    from search.tuning import train_stop

    flags: set = {"rerun"}  # a killed driver's flag, on a cluster that outlived it
    monkeypatch.setattr(train_stop, "clear_stop", flags.discard)
    monkeypatch.setattr(train_stop, "stop_requested", lambda trial_id: trial_id in flags)
    stopping = threading.Event()
    monkeypatch.setattr(train_stop, "tune_stop_event", lambda: stopping)

    class Trainer:
        def __init__(self, fit) -> None:
            self.fit = fit

    train_stop.fit_unless_stopped(Trainer(lambda: None), "rerun")  # a run that ends: returns, its stale flag gone
    assert flags == set()
    with pytest.raises(RuntimeError, match="workers died"):
        train_stop.fit_unless_stopped(Trainer(lambda: (_ for _ in ()).throw(RuntimeError("workers died"))), "t1")
    released = threading.Event()
    threading.Timer(0.2, stopping.set).start()  # Tune stops the trial while its run trains on
    train_stop.fit_unless_stopped(Trainer(lambda: released.wait(30)), "t2")
    assert not released.is_set() and flags == set()  # returned at once; the flag is the driver's to set
    released.set()

    def fit_aborted_by_the_driver() -> None:
        flags.add("t3")  # the driver asked while the run trained: the run's failure is the stop, not an error
        raise RuntimeError("aborted")

    stopping.clear()
    train_stop.fit_unless_stopped(Trainer(fit_aborted_by_the_driver), "t3")
