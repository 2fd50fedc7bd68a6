"""search/evaluate.py on a tiny generated search built without Ray (tests/tiny_search.py, fixtures in conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.board.paths import LEGACY_LEADERBOARD, leaderboard_path
from tiny_search import CONFIGS, ENSEMBLE, IMAGE_SIZE, SEARCH

def test_rows_for_every_trial_tta_and_the_retrained_winner(evaluated):
    table = evaluated["metrics"]
    got = set(zip(table["trial_id"], table["tta"], table["retrained"]))
    winner = table.loc[table["val_rank"] == 1, "trial_id"].iloc[0]
    expected = {(t, tta, False) for t in [*CONFIGS, ENSEMBLE] for tta in (False, True)} | {
        (winner, tta, True) for tta in (False, True)}
    assert got == expected
    for column in ("weighted_f1", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        assert table[column].between(0, 1).all(), column
    assert table["data_generated"].all()  # generated cells are labelled as such, never as C-NMC
    assert (table["search"] == SEARCH).all()


def test_test_patients_are_absent_from_training_and_validation(tiny_search, evaluated):
    table, preds = evaluated["metrics"], evaluated["predictions"]
    seen = tiny_search["train_patients"] | tiny_search["val_patients"]
    for patients in table["test_patients"]:
        tested = set(json.loads(patients))
        assert tested and not tested & seen
        assert tested == tiny_search["splits"]["test"]  # the official prelim test patients of the tree
    assert set(preds["patient"]) == tiny_search["splits"]["test"]
    assert (table["test_source"] == "prelim_test").all()
    assert table["split_check"].str.contains("fingerprint matches").all()
    per_patient = json.loads(table["per_patient_accuracy"].iloc[0])
    assert set(per_patient) == tiny_search["splits"]["test"]


def test_metrics_match_the_saved_predictions(evaluated):
    from leukmodels.metrics import classification_metrics

    table, preds = evaluated["metrics"], evaluated["predictions"]
    for _, row in table.iterrows():
        mine = preds[(preds["trial_id"] == row["trial_id"]) & (preds["tta"] == row["tta"])
                     & (preds["retrained"] == row["retrained"])]
        assert len(mine) == row["n_test_images"]
        again = classification_metrics(mine["label"], mine["prob_all"])
        assert again["weighted_f1"] == pytest.approx(row["weighted_f1"])
        assert again["balanced_accuracy"] == pytest.approx(row["balanced_accuracy"])


def test_tta_changes_the_probabilities(evaluated):
    preds = evaluated["predictions"]
    plain = preds[~preds["tta"] & ~preds["retrained"]].sort_values(["trial_id", "image_id"])
    tta = preds[preds["tta"] & ~preds["retrained"]].sort_values(["trial_id", "image_id"])
    assert (plain["image_id"].to_numpy() == tta["image_id"].to_numpy()).all()
    assert not np.allclose(plain["prob_all"], tta["prob_all"])


def test_rerun_replaces_rows_and_keeps_other_searches(tiny_search, evaluated, tmp_path):
    from search.evaluation import evaluate

    out = tmp_path / "test_metrics.parquet"
    other = evaluated["metrics"].head(1).assign(search="another_search")
    other.to_parquet(out, index=False)
    args = ["--leaderboard", str(tiny_search["leaderboard"]), "--top", "1", "--tta", "off", "--out", str(out),
            "--cache-dir", str(tiny_search["cache"])]
    assert evaluate.main(args) == 0
    assert evaluate.main(args) == 0
    table = pd.read_parquet(out)
    assert sorted(table["search"]) == ["another_search", SEARCH]


def test_a_split_that_is_not_the_searchs_is_refused(tiny_search, tmp_path):
    from leukmodels.data import DataError, discover
    from search.evaluation.heldout import held_out_test

    manifest = discover(tiny_search["root"])
    manifest = manifest[manifest["source"] != "prelim_test"]  # no official test: the split decides the test set
    with pytest.raises(DataError, match="not the search's split"):
        held_out_test(manifest, seed=0, recorded={"fingerprint": "0123456789abcdef", "val_fraction": 0.2})
    with pytest.raises(DataError, match="also in the train/val the search recorded"):
        test, _, _ = held_out_test(manifest, seed=0, recorded={})
        held_out_test(manifest, seed=0, recorded={"train": sorted(set(test["patient"]))})


def test_unknown_trial_id_is_a_clear_error(tiny_search, capsys):
    from search.evaluation import evaluate

    assert evaluate.main(["--leaderboard", str(tiny_search["leaderboard"]), "--trials", "nope"]) == 2
    err = capsys.readouterr().err
    assert "evaluate: error: --trials: trial id(s) ['nope'] not in search 'tiny'" in err and "Traceback" not in err


def board_with_a_gone_checkpoint(tiny_search, folder: Path, gone: int = 1) -> tuple[Path, list[str]]:
    """A copy of the tiny leaderboard whose `gone` best trials point at a deleted checkpoint folder, as when Ray's
    num_to_keep removed it; returns (leaderboard, trial ids in validation order)."""
    from search.board.leaderboard import append_rows, read

    rows = read(tiny_search["leaderboard"]).drop(columns=["rank", "schema_version"])
    order = list(rows.sort_values("weighted_f1", ascending=False)["trial_id"])
    rows.loc[rows["trial_id"].isin(order[:gone]), "checkpoint"] = str(folder / "deleted_by_num_to_keep")
    board = leaderboard_path(folder)
    append_rows(board, rows.to_dict("records"))
    return board, order


def test_a_trial_whose_checkpoint_is_gone_is_skipped_with_a_warning(tiny_search, tmp_path, capsys):
    from search.evaluation import evaluate

    board, order = board_with_a_gone_checkpoint(tiny_search, tmp_path)
    out = tmp_path / "test_metrics.parquet"
    assert evaluate.main(["--leaderboard", str(board), "--top", "2", "--tta", "off", "--out", str(out),
                          "--cache-dir", str(tiny_search["cache"])]) == 0
    assert f"skipping trial {order[0]}" in capsys.readouterr().err
    assert set(pd.read_parquet(out)["trial_id"]) == {order[1]}


def test_an_ensemble_larger_than_the_trials_that_load_says_the_k_it_used(tiny_search, tmp_path, capsys):
    from search.evaluation import evaluate

    board, order = board_with_a_gone_checkpoint(tiny_search, tmp_path)
    out = tmp_path / "test_metrics.parquet"
    assert evaluate.main(["--leaderboard", str(board), "--ensemble", "3", "--tta", "off", "--out", str(out),
                          "--cache-dir", str(tiny_search["cache"])]) == 0
    assert "--ensemble 3: only 2 trial(s) could be evaluated, so the ensemble uses K=2" in capsys.readouterr().err
    ensemble = pd.read_parquet(out).set_index("trial_id").loc["ensemble-top2"]
    assert json.loads(ensemble["members"]) == order[1:] and ensemble["n_members"] == 2


def test_no_loadable_trial_is_exit_1_and_an_ensemble_of_one_is_refused(tiny_search, tmp_path, capsys):
    from search.evaluation import evaluate

    board, _ = board_with_a_gone_checkpoint(tiny_search, tmp_path, gone=len(CONFIGS))
    args = ["--leaderboard", str(board), "--tta", "off", "--out", str(tmp_path / "m.parquet"),
            "--cache-dir", str(tiny_search["cache"])]
    assert evaluate.main(args) == 1
    assert "evaluate: error: no trial could be evaluated" in capsys.readouterr().err
    assert not (tmp_path / "m.parquet").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and one line, exit 2
        evaluate.main([*args, "--ensemble", "1"])
    assert exit_.value.code == 2 and "--ensemble must be >= 2" in capsys.readouterr().err


# -- the ensemble --------------------------------------------------------------------------------------------------
def test_ensemble_probability_is_the_mean_of_its_members_per_image(evaluated):
    table, preds = evaluated["metrics"], evaluated["predictions"]
    rows = table[table["trial_id"] == ENSEMBLE]
    assert len(rows) == 2 and (rows["family"] == "ensemble").all() and (rows["n_members"] == 3).all()
    ranked = list(table[~table["retrained"] & (table["n_members"] == 1)].sort_values("val_rank")["trial_id"]
                  .drop_duplicates())
    for _, row in rows.iterrows():
        assert json.loads(row["members"]) == ranked  # the top 3 by validation metric, best first
        sizes = {config["image_size"] for config in json.loads(row["config"])}
        assert sizes == {24, IMAGE_SIZE}  # members decoded at their own sizes
        mine = preds[~preds["retrained"] & (preds["tta"] == row["tta"])]
        per_image = mine.pivot(index="image_id", columns="trial_id", values="prob_all")
        assert per_image[ranked].mean(axis=1).to_numpy() == pytest.approx(per_image[ENSEMBLE].to_numpy())
        assert not np.allclose(per_image[ranked[0]], per_image[ENSEMBLE])


def test_ensemble_prob_is_a_plain_mean_called_all_above_one_half():
    from leukmodels.metrics import classification_metrics
    from search.evaluation.scoring import ensemble_prob

    prob = ensemble_prob([np.array([0.2, 0.9, 0.4]), np.array([0.6, 0.3, 0.6])])
    assert prob == pytest.approx([0.4, 0.6, 0.5])
    # 0.5 exactly is HEM, as for every single model: only the middle cell is called ALL
    assert classification_metrics([0, 1, 0], prob)["accuracy"] == 1.0


# -- bad input: one line naming it, exit 2 -------------------------------------------------------------------------
def test_a_corrupt_leaderboard_is_one_line_and_exit_2(tmp_path, capsys):
    from search.evaluation import evaluate

    board = tmp_path / LEGACY_LEADERBOARD
    board.write_text("not parquet\n")
    assert evaluate.main(["--leaderboard", str(board)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"evaluate: error: cannot read leaderboard {board}") and "\n" not in err


def test_a_missing_leaderboard_names_the_flag(tmp_path, capsys):
    from search.evaluation import evaluate

    assert evaluate.main(["--leaderboard", str(tmp_path / "none.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.parquet" in err and "--leaderboard" in err


def test_a_decode_cache_folder_that_is_a_file_is_one_line_and_exit_2(tiny_search, tmp_path, capsys, monkeypatch):
    """The same pre-flight as search/run.py (search/board/checks.py check_cli_inputs): it was a FileExistsError traceback."""
    from search.evaluation.evaluate import main

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / "a-file"))
    code = main(["--leaderboard", str(tiny_search["leaderboard"]), "--top", "1", "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err == (f"evaluate: error: LEUKTUNE_CACHE={tmp_path / 'a-file'}: cannot write the decode cache there "
                   f"({tmp_path / 'a-file'} is not a folder)")
    assert not (tmp_path / "m.parquet").exists()
