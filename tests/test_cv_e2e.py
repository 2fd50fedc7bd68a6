"""End to end with Ray: a --cv search whose rows keep every fold's figures and whose checkpoint evaluate.py and
predict.py use as a fold ensemble, and --rerank-top's second stage linked to the trials it re-trains."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukmodels.crossval import FoldEnsemble
from leukmodels.data import load_image
from leukmodels.metrics import predict_proba
from search.evaluation import evaluate, predict
from search.board import leaderboard
from search.board.paths import leaderboard_path
from search.cli import run


def _argv(tiny_cnmc, tmp_path, name: str, *extra: str) -> list[str]:
    return ["--smoke-test", "--data", str(tiny_cnmc), "--name", name, "--results", str(tmp_path / "results"),
            "--storage", str(tmp_path / "ray"), *extra]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cv_search_keeps_each_fold_and_its_checkpoint_is_a_fold_ensemble(tiny_cnmc, tmp_path, ray_2cpu, capsys):
    assert run.main(_argv(tiny_cnmc, tmp_path, "cvs", "--cv", "2")) == 0
    said = capsys.readouterr().out
    assert "cross-validation: 2 folds over the train+val patients" in said and "pooled out-of-fold" in said
    board_path = leaderboard_path(tmp_path / "results")
    rows = leaderboard.rank_table(leaderboard.read(board_path), search="cvs")
    assert len(rows) == 2 and (rows["cv_folds"] == 2).all() and (rows["stage"] == "search").all()
    for _, row in rows.iterrows():
        folds = json.loads(row["fold_metrics"])
        assert len(folds["balanced_accuracy"]) == 2 and all(0 <= v <= 1 for v in folds["weighted_f1"])

    assert evaluate.main(["--leaderboard", str(board_path), "--search", "cvs", "--top", "1", "--tta", "off"]) == 0
    tested = pd.read_parquet(tmp_path / "results" / "test_metrics.parquet")
    assert list(tested["trial_id"]) == [rows["trial_id"].iloc[0]] and tested["weighted_f1"].between(0, 1).all()

    model, config, _ = predict.load_trial_model(rows["checkpoint"].iloc[0])
    assert isinstance(model, FoldEnsemble) and len(model.folds) == 2
    images = sorted((tiny_cnmc / "training_data").rglob("*.bmp"))[:3]
    out = tmp_path / "preds.csv"
    assert predict.main(["--checkpoint", rows["checkpoint"].iloc[0], "--out", str(out), *map(str, images)]) == 0
    decoded = np.stack([load_image(str(path), config.image_size) for path in images])
    mean = np.mean([predict_proba(fold, decoded) for fold in model.folds], axis=0)  # the folds' mean P(ALL)
    assert pd.read_csv(out)["prob_all"].to_numpy() == pytest.approx(mean, abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerank_retrains_the_top_trials_with_folds_and_links_its_rows(tiny_cnmc, tmp_path, ray_2cpu, capsys):
    argv = _argv(tiny_cnmc, tmp_path, "rr", "--max-epochs", "1", "--rerank-top", "2", "--rerank-folds", "2")
    assert run.main(argv) == 0
    said = capsys.readouterr().out
    board = leaderboard.read(leaderboard_path(tmp_path / "results"))
    first, second = (leaderboard.rank_table(board, search=name) for name in ("rr", "rr-rerank"))
    assert len(second) == 2 and (second["stage"] == "rerank").all() and (second["cv_folds"] == 2).all()
    assert set(second["reranked_from"]) == set(first["trial_id"])  # each re-trains one trial of the search
    for _, row in second.iterrows():
        origin = first[first["trial_id"] == row["reranked_from"]].iloc[0]
        assert (row["lr"], row["filters"], row["depth"]) == (origin["lr"], origin["filters"], origin["depth"])
    winner = second.iloc[0]
    assert f"winner chosen on the 2-fold cross-validated balanced_accuracy: {winner['trial_id']}" in said
    assert f"the config of {winner['reranked_from']}" in said
    assert (tmp_path / "results" / "rr-rerank" / "split.json").is_file()  # evaluate.py finds the split
