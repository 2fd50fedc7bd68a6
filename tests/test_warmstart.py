"""Warm start (search/tuning/warmstart.py), without Ray: an earlier search's leaderboard rows mapped onto a new space
(dropped, clipped, moved to the nearest offered, prefixed), how many are carried, and the CLI's one-line refusals.
The real search that runs them first is in test_warm_and_pareto_e2e.py."""
from __future__ import annotations

import json
import warnings

import optuna
import pandas as pd
import pytest

from leukmodels.config import TrainConfig
from search.board import leaderboard
from search.cli.flags import parse_args
from search.board.paths import SEARCHES, leaderboard_path
from search.cli.run import main
from search.tuning.spaces import SearchSpace
from search.tuning.warmstart import NotCarried, carried_limit, map_config, points_from_rows, ranked_rows, row_config


def row(trial_id: str, score: float, search: str = "old", status: str = "finished", **config) -> dict:
    """A leaderboard row of a ResNet trial at 32 px (every TrainConfig field, as the leaderboard holds them)."""
    fields = dict(family="resnet", filters=24, depth=2, block="basic", stages=3, image_size=32, batch_size=32,
                  lr=3e-3, weight_decay=1e-4, dropout=0.1, optimizer="adamw", aug_strength=0.5, epochs=8)
    return {**TrainConfig(**{**fields, **config}).to_dict(), "search": search, "trial_id": trial_id,
            "metric": "balanced_accuracy", "status": status, "balanced_accuracy": score}


def board(tmp_path, rows: list[dict]) -> pd.DataFrame:
    return leaderboard.append_rows(leaderboard_path(tmp_path), rows)


# -- one config -----------------------------------------------------------------------------------------------------
def test_a_row_carries_only_what_its_family_searched():
    adamw = row_config(row("a", 0.7))
    assert set(adamw) == {"family", "image_size", "batch_size", "filters", "depth", "block", "stages", "lr",
                          "weight_decay", "dropout", "optimizer", "aug_strength"}  # no momentum, kernel_size, epochs
    assert "momentum" in row_config(row("b", 0.7, optimizer="sgd", momentum=0.95))


def test_same_family_new_image_size_is_one_note_and_every_value_kept():
    config = row_config(row("a", 0.7))
    point, trial_config, notes = map_config(config, SearchSpace(["resnet"], image_sizes=[48], batch_sizes=[32, 64]))
    assert notes == ["image_size 32 -> 48 (fixed in this search)"]
    assert point == {k: v for k, v in config.items() if k not in ("family", "image_size")}
    assert trial_config["image_size"] == 48 and trial_config["family"] == "resnet"


def test_values_outside_the_new_ranges_are_clipped_and_said():
    config = {**row_config(row("a", 0.7)), "lr": 0.5, "filters": 200}
    point, _, notes = map_config(config, SearchSpace(["resnet"], image_sizes=[32], batch_sizes=[32]))
    assert point["lr"] == pytest.approx(3e-2) and point["filters"] == 64
    assert "lr 0.5 -> 0.03 (outside [0.0001, 0.03]: clipped)" in notes
    assert "filters 200 -> 64 (outside [8, 64]: clipped)" in notes


def test_a_depth_the_bottleneck_branch_does_not_offer_is_clipped_on_that_branch():
    config = {**row_config(row("a", 0.7, block="bottleneck")), "depth": 4}  # basic allows 4, bottleneck 3
    point, _, notes = map_config(config, SearchSpace(["resnet"], image_sizes=[32], batch_sizes=[32]))
    assert point["depth"] == 3 and notes == ["depth 4 -> 3 (outside [1, 3]: clipped)"]


def test_choices_not_offered_move_to_the_nearest_size_or_go_to_the_sampler():
    config = {**row_config(row("a", 0.7)), "optimizer": "rmsprop"}
    point, _, notes = map_config(config, SearchSpace(["resnet"], image_sizes=[24, 64], batch_sizes=[64, 128]))
    assert point["image_size"] == 24 and point["batch_size"] == 64 and "optimizer" not in point
    assert notes[0] == "image_size 32 -> 24 (not offered [24, 64]: the nearest)"
    assert "optimizer 'rmsprop' dropped (not offered ['adamw', 'sgd']): the sampler chooses" in notes


def test_several_families_prefix_the_carried_params_and_another_family_is_not_carried():
    config = row_config(row("a", 0.7))
    point, trial_config, notes = map_config(config, SearchSpace(["baseline", "resnet"], image_sizes=[32],
                                                                batch_sizes=[32]))
    assert notes == [] and point["family"] == "resnet"
    assert point["resnet:filters"] == 24 and point["resnet:block"] == "basic" and "filters" not in point
    assert trial_config["filters"] == 24  # the space maps the prefixed value back onto the TrainConfig name
    with pytest.raises(NotCarried, match="family resnet is not searched here"):
        map_config(config, SearchSpace(["baseline"], image_sizes=[32], batch_sizes=[32]))
    with pytest.raises(NotCarried, match="family resnet"):
        map_config(config, SearchSpace(["baseline", "inception"], image_sizes=[32], batch_sizes=[32]))


def test_a_prefixed_config_of_a_multi_family_search_lands_unprefixed_in_a_one_family_search():
    old = row("a", 0.7, family="baseline", filters=40, kernel_size=5, fc_layers=2, depth=3, image_size=64)
    point, _, notes = map_config(row_config(old), SearchSpace(["baseline"], image_sizes=[64], batch_sizes=[32]))
    assert notes == [] and (point["filters"], point["kernel_size"], point["fc_layers"]) == (40, 5, 2)


def test_parameters_the_new_space_lacks_are_dropped_with_a_note():
    def lr_only(trial):  # a space without the family's fields (a newer space that lost some, say)
        trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        return {"family": "resnet", "image_size": 32, "batch_size": 32}

    point, _, notes = map_config(row_config(row("a", 0.7)), lr_only)
    assert point == {"lr": 3e-3}
    assert "filters 24 dropped: not a parameter of this search" in notes and len(notes) == 8


def test_a_mapped_point_is_what_optuna_asks_first_without_a_warning():
    space = SearchSpace(["resnet", "inception"], image_sizes=[24, 48], batch_sizes=[32, 64])
    point, _, _ = map_config(row_config(row("a", 0.7, optimizer="sgd", momentum=0.93)), space)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(point)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns about a fixed value outside its distribution
        trial = study.ask()
        space(trial)
    assert trial.params == point


# -- the earlier search's rows ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples, carried", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (12, 3), (32, 3)])
def test_the_top_three_at_most_half_the_trials_are_carried(num_samples, carried):
    assert carried_limit(num_samples) == carried


def test_rows_are_carried_best_first_skipping_errors_other_families_duplicates_and_unbuildable(tmp_path):
    rows = [row("best", 0.80), row("same-as-best", 0.79), row("error", 0.99, status="error"),
            row("base", 0.78, family="baseline"), row("deep", 0.77, stages=4, depth=4, lr=1e-3),
            row("third", 0.70, lr=1e-3), row("fourth", 0.60, lr=2e-3), row("other", 0.9, search="another")]
    ranked = ranked_rows(board(tmp_path, rows), "old")
    assert list(ranked["trial_id"])[:2] == ["best", "same-as-best"] and "error" not in set(ranked["trial_id"])
    space = SearchSpace(["resnet"], image_sizes=[16], batch_sizes=[32])  # 4 stages do not fit 16 px
    points, lines = points_from_rows(ranked, space, limit=2)
    # best, then deep: with one image size the space offers only the stages that build (search/tuning/feasible.py), so
    # deep's 4 stages are clipped to 3 like any value outside the space, instead of dropped as unbuildable
    assert [(p["lr"], p["stages"]) for p in points] == [(pytest.approx(3e-3), 3), (pytest.approx(1e-3), 3)]
    assert "deep (resnet, balanced_accuracy 0.770): stages 4 -> 3 (outside [2, 3]: clipped)" in lines
    assert lines[0] == "best (resnet, balanced_accuracy 0.800): image_size 32 -> 16 (fixed in this search)"
    summary = lines[-1]
    assert summary.startswith("skipped ") and "1 config(s): family baseline is not searched here" in summary
    assert "1 config(s): the same point as a better config once mapped" in summary


# -- the CLI ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--warm-start", "nope"], "--warm-start nope: no such search in "),
    (["--warm-start", "old", "--family", "baseline"], "--warm-start old: its trials are resnet; this search has "
                                                      "baseline"),
    (["--warm-start", "new"], "--warm-start new: that is this search's own name"),
])
def test_a_bad_warm_start_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    board(tmp_path, [row("a", 0.7)])
    argv = ["--name", "new", "--results", str(tmp_path), "--storage", str(tmp_path / "ray"), *extra]
    code = main((["--family", "resnet"] if "--family" not in extra else []) + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / SEARCHES).exists() and not (tmp_path / "ray").exists()


def test_a_warm_start_without_a_scored_trial_is_refused(tmp_path, capsys):
    board(tmp_path, [row("a", 0.7, status="error")])
    code = main(["--family", "resnet", "--warm-start", "old", "--results", str(tmp_path)])
    assert code == 2 and "--warm-start old: none of its trials has a score" in capsys.readouterr().err


def test_the_warm_start_and_the_objectives_are_saved_and_resume_keeps_them(tmp_path, capsys):
    from search.cli.profiles import PROFILES
    from search.cli.run import resolve_settings, resumed_flags
    from search.board.settings import read_saved, save_settings

    settings, _ = resolve_settings(parse_args(["--family", "resnet", "--name", "new", "--results", str(tmp_path),
                                               "--warm-start", "old", "--objectives", "roc_auc", "num_parameters"]),
                                   [{"CPU": 2.0}], {})
    saved = json.loads(save_settings(settings, warm_start_points=[{"lr": 1e-3}]).read_text())
    assert saved["warm_start"] == "old" and saved["warm_start_points"] == [{"lr": 1e-3}]
    resumed, _ = resumed_flags(parse_args(["--resume", "--name", "new", "--results", str(tmp_path)]))
    assert resumed.warm_start == "old" and read_saved(str(tmp_path), "new")["warm_start_points"] == [{"lr": 1e-3}]
    assert resumed.objectives == ["roc_auc", "num_parameters"] and resumed.metric == "roc_auc"
    assert resumed.num_samples == PROFILES["cpu"]["num_samples"]
    code = main(["--resume", "--name", "new", "--results", str(tmp_path), "--warm-start", "other"])
    assert code == 2 and "--warm-start other (saved: old)" in capsys.readouterr().err


def test_a_stepped_range_moves_the_value_onto_its_grid():
    def stepped(trial):
        trial.suggest_int("filters", 8, 64, step=8)
        trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
        return {}

    point, _, notes = map_config({"filters": 30, "dropout": 0.27}, stepped)
    assert point == {"filters": 32, "dropout": pytest.approx(0.3)}
    assert notes == ["filters 30 -> 32 (onto the step-8 grid)", "dropout 0.27 -> 0.3 (onto the step-0.1 grid)"]
