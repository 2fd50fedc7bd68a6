"""Population-based training: fit's exploit (another run's weights, new lr / weight decay / augmentation), the PBT
settings, the leaderboard rule for exploited trials, the refusal with DDP, and one small end-to-end PBT search whose
exploited trial is checked against the donor's checkpoint."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from leukmodels.checkpoint import load_checkpoint
from leukmodels.config import TrainConfig
from leukmodels.train import EXPLOIT_CHANGES, fit
from search.board import leaderboard
from search.board.paths import SEARCHES, leaderboard_path
from search.tuning.pbt import clip_to_space, make_pbt, perturbation_interval, population
from search.tuning.rows import SearchRun, TrialRecord
from search.tuning.rows import SearchContext, build_row
from search.cli.run import main
from search.tuning.spaces import SearchSpace
from search.tuning.trial import ORIGIN_FILE, donor_of
from cell_sets import cell_set, tiny_config


@pytest.fixture(scope="module")
def small_sets():
    return cell_set(3, 3, 8, seed=1), cell_set(2, 2, 6, seed=2, first_patient=100)


def _without_speed(history):
    return [{k: v for k, v in m.items() if k != "images_per_s"} for m in history]


# -- fit: an exploit continues another run's weights with the new rates ----------------------------------------------
def test_exploit_continues_the_donor_weights_with_its_own_lr_decay_and_augmentation(tmp_path, small_sets):
    train, val = small_sets
    donor_config = tiny_config(epochs=3)  # adamw, weight_decay 1e-4, aug 0.5
    donor = fit(donor_config, train, val, checkpoint_dir=tmp_path / "donor", log=None)
    start = tmp_path / "donor" / "epoch_0001"
    mutated = donor_config.replace(lr=2 * donor_config.lr, weight_decay=0.05, aug_strength=0.1)

    with pytest.raises(ValueError, match="lr"):  # an ordinary resume must not change them
        fit(mutated, train, val, resume_from=start, log=None)
    with pytest.raises(ValueError, match="dropout"):  # an exploit changes only EXPLOIT_CHANGES
        fit(mutated.replace(dropout=0.2), train, val, resume_from=start, exploit=True, log=None)

    # the exploit path with the donor's own config replays the donor exactly: it starts from its weights and state
    same = fit(donor_config, train, val, resume_from=start, exploit=True, log=None)
    assert _without_speed(same.history) == _without_speed(donor.history)

    got = fit(mutated, train, val, checkpoint_dir=tmp_path / "exploit", resume_from=start, exploit=True, log=None)
    assert [m["epoch"] for m in got.history] == [1, 2, 3] and got.history[0] == donor.history[0]
    for before, after in zip(donor.history[1:], got.history[1:]):  # same schedule position, twice the base rate
        assert after["lr"] == pytest.approx(2 * before["lr"], rel=1e-9)
    assert got.history[-1]["val_loss"] != donor.history[-1]["val_loss"]
    saved = load_checkpoint(tmp_path / "exploit" / "epoch_0003")
    groups = saved["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # biases and norms stay undecayed
    assert all(g["initial_lr"] == mutated.lr for g in groups)
    assert saved["scheduler"]["base_lrs"] == [mutated.lr] * len(groups)
    assert saved["config"] == mutated.to_dict()


def test_a_longer_resumed_run_stretches_the_schedule_of_every_param_group(tmp_path, small_sets):
    train, val = small_sets
    fit(tiny_config(epochs=2), train, val, checkpoint_dir=tmp_path, log=None)
    longer = fit(tiny_config(epochs=4), train, val, resume_from=tmp_path / "epoch_0001", log=None,
                 checkpoint_dir=tmp_path / "longer")
    groups = load_checkpoint(tmp_path / "longer" / "epoch_0004")["optimizer"]["param_groups"]
    assert longer.history[-1]["lr"] > 0 and groups[0]["lr"] == groups[1]["lr"]


# -- PBT settings ----------------------------------------------------------------------------------------------------
def test_pbt_settings_for_short_searches():
    assert [perturbation_interval(n) for n in (1, 2, 3, 4, 8, 20)] == [1, 1, 1, 1, 2, 5]
    assert clip_to_space({"lr": 1.0, "weight_decay": 0.0, "aug_strength": 1.2, "filters": 8}) == {
        "lr": 3e-2, "weight_decay": 1e-6, "aug_strength": 1.0, "filters": 8}
    scheduler = make_pbt(metric="roc_auc", max_epochs=8)
    assert set(scheduler._hyperparam_mutations) == EXPLOIT_CHANGES and scheduler._synch
    assert scheduler._perturbation_interval == 2 and scheduler._quantile_fraction == 0.25
    pickle.loads(pickle.dumps(scheduler))  # Tune saves it for --resume


class _RestoredTrial:
    """What PBT reads of a Tune trial when it is added: its config, last result and checkpoint settings."""

    def __init__(self, epoch: int) -> None:
        self.config = {"lr": 1e-3, "weight_decay": 1e-4, "aug_strength": 0.5}
        self.last_result, self.experiment_tag, self.evaluated_params = ({"epoch": epoch} if epoch else {}), "", {}
        self.run_metadata = SimpleNamespace(checkpoint_manager=SimpleNamespace(
            checkpoint_config=SimpleNamespace(num_to_keep=None)))


def test_resumed_trials_are_put_back_on_the_grid_of_rounds():
    """A search killed in its round at epoch 4 (interval 2): trials at epochs 5, 6 (waiting for the round at 6), 4,
    and one never started. Tune restores them with PBT's state as built; without the grid the synchronous rounds
    left every trial paused forever."""
    scheduler, controller = make_pbt(metric="balanced_accuracy", max_epochs=8), SimpleNamespace(search_alg=None)
    trials = [_RestoredTrial(epoch) for epoch in (5, 6, 4, 0)]
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    assert [scheduler._trial_state[t].last_train_time for t in trials] == [4, 6, 4, 0]
    assert [scheduler._trial_state[t].last_perturbation_time for t in trials] == [4, 6, 4, 0]
    assert scheduler._next_perturbation_sync == 6  # the earliest next round: trials at 4-5 train on to it
    fresh = make_pbt(metric="balanced_accuracy", max_epochs=8)
    fresh.on_trial_add(controller, _RestoredTrial(0))
    assert fresh._next_perturbation_sync == 2  # a new search starts at the first round


def test_population_is_drawn_from_the_search_space_and_builds():
    space = SearchSpace(["resnet"], image_sizes=[24], batch_sizes=[32], epochs=3, seed=0)
    generator, param_space = population(space, 6, seed=1)
    points = generator._points_to_evaluate
    assert len(points) == 6 and points == population(space, 6, seed=1)[0]._points_to_evaluate
    assert set(param_space) == set(points[0]) and param_space["family"] == "resnet"  # constants stay constants
    assert sorted(param_space["lr"].categories) == sorted(p["lr"] for p in points)
    assert len({p["lr"] for p in points}) == 6
    assert all(TrainConfig.from_dict(p).family == "resnet" and p["epochs"] == 3 for p in points)


def test_donor_is_read_from_the_checkpoint_origin(tmp_path):
    assert donor_of(str(tmp_path), "mine") is None  # an older checkpoint says nothing: it is the trial's own
    (tmp_path / ORIGIN_FILE).write_text(json.dumps({"trial_id": "mine", "epoch": 2}))
    assert donor_of(str(tmp_path), "mine") is None
    assert donor_of(str(tmp_path), "other") == "mine@2"


# -- the leaderboard row of an exploited trial -----------------------------------------------------------------------
def test_row_of_an_exploited_trial_describes_the_weights_it_ended_with(tmp_path):
    def report(epoch, score, seconds, **extra):
        folder = tmp_path / f"checkpoint_{len(list(tmp_path.iterdir())):06d}"  # one per report, as Tune's
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(b"x")
        return {"epoch": epoch, "balanced_accuracy": score, "weighted_f1": score, "train_seconds": seconds,
                "checkpoint_path": str(folder), "timestamp": 1_700_000_000 + seconds, **extra}

    donor_epochs = [{"epoch": 1, "balanced_accuracy": 0.95}, {"epoch": 2, "balanced_accuracy": 0.97}]
    history = [report(1, 0.90, 3.0), report(2, 0.60, 6.0),  # its own weights, then the bottom of the population
               report(3, 0.70, 2.0, exploited_from="d0nor_00001@2", prior_epochs=json.dumps(donor_epochs)),
               report(4, 0.80, 4.0)]
    context = SearchContext(search="pbt-rows", metric="balanced_accuracy", max_epochs=4)
    config = tiny_config(epochs=4, lr=0.02).to_dict()  # Tune's final config of the trial
    row = build_row(context, SearchRun(), TrialRecord("t1", history), config)
    # best of the epochs trained since the exploit, not its own discarded epoch 1 (0.90) nor the donor's (0.97)
    assert (row["best_epoch"], row["balanced_accuracy"]) == (4, 0.80)
    assert row["checkpoint"] == history[3]["checkpoint_path"] and row["lr"] == 0.02
    assert (row["epochs_run"], row["status"]) == (4, "finished")
    assert row["notes"] == "exploited_from d0nor_00001@2"
    assert row["train_seconds"] == 10.0  # 6 s before the exploit, 4 s after
    twice = build_row(context, SearchRun(), TrialRecord("t1", history + [
        report(3, 0.75, 1.0, exploited_from="other_00002@2"), report(4, 0.77, 3.0)]), config)
    assert twice["notes"] == "exploited_from d0nor_00001@2 other_00002@2" and twice["balanced_accuracy"] == 0.77


# -- the CLI ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flags", [
    (["--workers-per-trial", "2"], ("--scheduler pbt", "--workers-per-trial")),
    (["--searcher", "tpe"], ("--searcher tpe", "--scheduler pbt")),
])
def test_pbt_refuses_ddp_trials_and_a_searcher_before_anything_starts(argv, flags, tmp_path, capsys):
    code = main(["--family", "resnet", "--scheduler", "pbt", *argv, "--results", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and all(flag in err for flag in flags), err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "results" / SEARCHES).exists()


# -- end to end: one small PBT search --------------------------------------------------------------------------------
def _reports(folder: Path) -> pd.DataFrame:
    """Every report of the trial in `folder`, in order (Tune's result.json: progress.csv keeps only the first
    report's columns, so it has no `exploited_from`)."""
    lines = (folder / "result.json").read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])


def _trial_dirs(experiment: Path) -> dict[str, Path]:
    """trial id -> its folder."""
    return {str(_reports(folder)["trial_id"].iloc[0]): folder
            for folder in (path.parent for path in experiment.glob("*/result.json")) if len(_reports(folder))}


def _checkpoint_of(folder: Path, epoch: int) -> Path:
    """The checkpoint folder of `epoch` that the trial in `folder` wrote itself."""
    for origin in folder.glob(f"checkpoint_*/{ORIGIN_FILE}"):
        if json.loads(origin.read_text())["epoch"] == epoch:
            return origin.parent
    raise AssertionError(f"no checkpoint of epoch {epoch} in {folder}")


def _replay(config: TrainConfig, sets: dict, donor_checkpoint: Path, out: Path) -> dict:
    """What the exploited trial should have trained in its first epoch: the donor's checkpoint, `config`, one epoch."""
    torch.set_num_threads(1)  # as the trial (one CPU per worker): the same float reductions
    fit(config, sets["train"], sets["val"], resume_from=donor_checkpoint, exploit=True, checkpoint_dir=out, log=None)
    epoch = load_checkpoint(donor_checkpoint)["epoch"] + 1
    return load_checkpoint(out / f"epoch_{epoch:04d}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pbt_search_exploited_trial_continues_the_donor_weights_with_its_mutated_config(tiny_cnmc, tmp_path,
                                                                                        monkeypatch):
    """4 trials of 3 epochs: synchronous rounds at epochs 1 and 2, where the bottom trial of 4 takes a top one's
    checkpoint, so every run exploits at least once. The search's final pruning of checkpoints is held back until
    the checks have read the donor's."""
    from search.tuning import tuner
    from search.tuning.data import prepare_data

    held, prune = [], tuner.prune_checkpoints  # patched where the search calls it
    monkeypatch.setattr(tuner, "prune_checkpoints", lambda grid, rows: held.append((grid, rows)) or (0, 0))
    name = "pbt-e2e"
    code = main(["--family", "resnet", "--data", str(tiny_cnmc), "--image-sizes", "24", "--scheduler", "pbt",
                 "--num-samples", "4", "--max-epochs", "3", "--seed", "0", "--results", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "ray"), "--name", name])
    assert code == 0
    board = leaderboard.read(leaderboard_path(tmp_path / "results"))
    rows = board[board["search"] == name].reset_index(drop=True)
    assert len(rows) == 4 and set(rows["status"]) == {"finished"} and (rows["epochs_run"] == 3).all()
    assert set(rows["scheduler"]) == {"pbt"} and set(rows["searcher"]) == {"random"}
    exploited = rows[rows["notes"].fillna("").str.startswith("exploited_from ")]
    assert len(exploited) >= 1, rows[["trial_id", "notes"]]

    trials = _trial_dirs(tmp_path / "ray" / name)
    sets = prepare_data(str(tiny_cnmc), [24], split_seed=0, progress=False).sets[24]
    row = exploited.iloc[0]
    progress = _reports(trials[row["trial_id"]])
    events = progress[progress["exploited_from"].notna()] if "exploited_from" in progress else progress.iloc[:0]
    assert len(events) >= 1
    first = events.iloc[0]  # the first report after the exploit: epoch E+1 trained from the donor's epoch E
    donor, donor_epoch = first["exploited_from"].split("@")
    assert int(first["epoch"]) == int(donor_epoch) + 1 and donor in trials and donor != row["trial_id"]
    donor_checkpoint = _checkpoint_of(trials[donor], int(donor_epoch))
    own = load_checkpoint(trials[row["trial_id"]] / first["checkpoint_dir_name"])
    new_config, donor_config = TrainConfig.from_dict(own["config"]), TrainConfig.from_dict(
        load_checkpoint(donor_checkpoint)["config"])
    changed = {k for k, v in new_config.to_dict().items() if donor_config.to_dict()[k] != v}
    assert changed and changed <= EXPLOIT_CHANGES  # the donor's config with lr / decay / augmentation perturbed

    replay = _replay(new_config, sets, donor_checkpoint, tmp_path / "replay")  # donor weights + new config
    for key, value in own["model"].items():
        torch.testing.assert_close(value, replay["model"][key], rtol=0, atol=1e-5, msg=key)
    assert float(first["lr"]) == pytest.approx(replay["metrics"]["lr"], rel=1e-6)
    donor_progress = _reports(trials[donor])
    donor_next = donor_progress[donor_progress["epoch"] == int(first["epoch"])].iloc[-1]  # the donor's own epoch E+1
    assert float(first["lr"]) / new_config.lr == pytest.approx(float(donor_next["lr"]) / donor_config.lr, rel=1e-6)
    control = _replay(donor_config, sets, donor_checkpoint, tmp_path / "control")  # donor weights, donor config
    assert any(not torch.allclose(value, control["model"][key], atol=1e-5) for key, value in own["model"].items())

    # its row: the config it ended with, metrics from the epochs after its last exploit, every exploit named
    final = load_checkpoint(trials[row["trial_id"]] / progress["checkpoint_dir_name"].iloc[-1])["config"]
    assert (row["lr"], row["weight_decay"], row["aug_strength"]) == pytest.approx(
        (final["lr"], final["weight_decay"], final["aug_strength"]))
    assert row["notes"] == "exploited_from " + " ".join(events["exploited_from"])
    assert int(row["best_epoch"]) > int(events["exploited_from"].iloc[-1].split("@")[1])

    # the search's end keeps each trial's best and latest checkpoints, and nothing more
    assert len(held) == 1
    removed, _ = prune(*held[0])
    assert removed >= 1
    for _, kept in rows.iterrows():
        assert Path(kept["checkpoint"], "checkpoint.pt").is_file()
        assert 1 <= len(list(trials[kept["trial_id"]].glob("checkpoint_*"))) <= 2
