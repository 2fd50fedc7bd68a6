"""Cross-validated selection: fold assignment by patient, the pooled out-of-fold metric, fit_cv and its checkpoint,
the --cv / --rerank-top flags and the benchmark's selection figures (no Ray here; tests/test_cv_e2e.py runs it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukmodels.checkpoint import load_checkpoint, load_model
from leukmodels.config import TrainConfig
from leukmodels.crossval import FoldEnsemble, check_folds_array, fit_cv, pooled_metrics
from leukmodels.data import DataError, DecodedSet, discover
from leukmodels.data.folds import patient_folds
from leukmodels.metrics import classification_metrics, predict_log_proba, predict_proba
from search.benchmark import selection
from search.board.paths import LEGACY_LEADERBOARD
from search.cli.flags import parse_args


def _rows(cells: dict[str, tuple[int, int, str]]) -> pd.DataFrame:
    """Manifest rows: patient -> (label, images, source folder)."""
    rows = [(f"{p}/{i}.bmp", label, p, source, f"{p}_{i}") for p, (label, n, source) in cells.items()
            for i in range(n)]
    return pd.DataFrame(rows, columns=["path", "label", "patient", "source", "image_id"])


SKEWED = {f"A{i}": (1, n, f"fold_{i % 3}") for i, n in enumerate([40, 3, 5, 2, 30, 4, 6, 2, 3])} | {
    f"H{i}": (0, n, f"fold_{i % 3}") for i, n in enumerate([20, 2, 3, 15, 2, 4])}


@pytest.mark.parametrize("k", [2, 3])
def test_drawn_folds_put_every_training_patient_in_exactly_one_fold_with_both_classes(k):
    rows = _rows(SKEWED)
    folds = patient_folds(rows, k, seed=1)
    assert set(folds) == set(rows["patient"]) and set(folds.values()) == set(range(k))
    for fold in range(k):
        labels = {SKEWED[p][0] for p, f in folds.items() if f == fold}
        assert labels == {0, 1}
    assert patient_folds(rows, k, seed=1) == folds  # seeded
    image_folds = rows["patient"].map(folds)
    assert (image_folds.groupby(rows["patient"]).nunique() == 1).all()  # a patient's images never in two folds


def test_too_few_patients_of_a_class_for_k_folds_is_refused():
    with pytest.raises(DataError, match="needs at least 7 HEM training patients, found 6"):
        patient_folds(_rows(SKEWED), 7)
    with pytest.raises(DataError, match="k >= 2"):
        patient_folds(_rows(SKEWED), 1)


def test_official_folds_are_the_fold_folders_when_patient_disjoint():
    folds = patient_folds(_rows(SKEWED), "official")
    assert folds == {p: int(source[-1]) for p, (_, _, source) in SKEWED.items()}


def test_official_folds_sharing_a_patient_are_refused():
    rows = _rows(SKEWED)
    rows.loc[rows.index[rows["patient"] == "A0"][:5], "source"] = "fold_1"  # A0 now in fold_0 and fold_1
    with pytest.raises(DataError, match="not patient-disjoint .*patient A0 is in fold_0, fold_1"):
        patient_folds(rows, "official")


def test_official_folds_of_the_generated_tree_are_patient_disjoint(tiny_cnmc):
    manifest = discover(tiny_cnmc)
    training = manifest[manifest["source"].str.startswith("fold_")]
    folds = patient_folds(training, "official")
    assert set(folds.values()) == {0, 1, 2} and set(folds) == set(training["patient"])


def _decoded(n_patients: int = 8, per_patient: int = 6, size: int = 16, seed: int = 0) -> DecodedSet:
    """Random images whose red channel tells the classes apart; patients alternate ALL / HEM."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_patients) % 2, per_patient)
    images = rng.integers(0, 120, size=(len(labels), 3, size, size), dtype=np.uint8)
    images[labels == 1, 0] += 120
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    return DecodedSet(images, labels, patients, np.array([f"i{i}" for i in range(len(labels))]), "test")


def test_fold_array_is_checked_for_patients_in_two_folds_and_one_class_folds():
    data = _decoded()
    folds = np.repeat([0, 0, 1, 1, 0, 0, 1, 1], 6)
    assert (check_folds_array(folds, data) == folds).all()
    split_patient = folds.copy()
    split_patient[0] = 1
    with pytest.raises(ValueError, match="patient p0 is in folds \\[0, 1\\]"):
        check_folds_array(split_patient, data)
    with pytest.raises(ValueError, match="fold 0 holds one class only"):
        check_folds_array(np.repeat([0, 1, 0, 1, 0, 1, 0, 1], 6), data)


def test_pooled_metric_is_the_metric_of_all_out_of_fold_predictions_and_keeps_each_fold():
    rng = np.random.default_rng(3)
    labels = np.repeat([1, 0, 1, 0, 1, 1], 5)
    folds = np.repeat([0, 0, 1, 1, 2, 2], 5)
    patients = np.repeat(list("abcdef"), 5)
    prob = np.clip(labels * 0.4 + rng.random(len(labels)) * 0.6, 0.01, 0.99)
    log_prob = np.log(np.stack([1 - prob, prob], axis=1))
    got = pooled_metrics(labels, log_prob, patients, folds)
    whole = classification_metrics(labels, prob, patients=patients)
    assert got["balanced_accuracy"] == pytest.approx(whole["balanced_accuracy"])
    assert got["per_patient_accuracy"] == whole["per_patient_accuracy"] and got["cv_folds"] == 3
    assert got["val_loss"] == pytest.approx(float(-np.log(np.where(labels == 1, prob, 1 - prob)).mean()))
    per_fold = json.loads(got["fold_metrics"])
    for fold in range(3):
        mask = folds == fold
        assert per_fold["weighted_f1"][fold] == pytest.approx(
            classification_metrics(labels[mask], prob[mask])["weighted_f1"], abs=1e-6)
    # the pooled figure is not the mean of the folds' (each patient counts once, wherever it sits)
    assert len(per_fold["balanced_accuracy"]) == 3


def test_fit_cv_reports_the_out_of_fold_predictions_of_the_checkpointed_fold_models(tmp_path):
    data = _decoded()
    folds = np.repeat([0, 1, 0, 1, 1, 0, 1, 0], 6)
    config = TrainConfig(family="baseline", filters=4, depth=2, image_size=16, epochs=2, batch_size=8,
                         warmup_epochs=0.0, aug_strength=0.0)
    seen = []
    fit_cv(config, data, folds, device="cpu", checkpoint_dir=tmp_path / "run", log=None,
           on_epoch=lambda metrics, folder: seen.append((metrics, folder)))
    assert [m["epoch"] for m, _ in seen] == [1, 2] and all(m["cv_folds"] == 2 for m, _ in seen)
    last = tmp_path / "run" / "epoch_0002" / "checkpoint.pt"
    payload = load_checkpoint(last)
    assert len(payload["folds"]) == 2 and payload["extra"]["history"][-1]["epoch"] == 2
    # every image scored by the fold model that never trained on it: the reported figure is theirs
    model, _ = load_model(last)
    assert isinstance(model, FoldEnsemble) and len(model.folds) == 2
    log_prob = np.zeros((len(folds), 2))
    for fold, fold_model in enumerate(model.folds):
        log_prob[folds == fold] = predict_log_proba(fold_model, data.images[folds == fold]).numpy()
    again = pooled_metrics(data.labels, log_prob, data.patients, folds)
    assert again["val_loss"] == pytest.approx(seen[-1][0]["val_loss"], abs=1e-5)
    assert again["fold_metrics"] == seen[-1][0]["fold_metrics"]
    # the ensemble is the mean P(ALL) of its fold models
    mean = np.mean([predict_proba(m, data.images[:5]) for m in model.folds], axis=0)
    assert predict_proba(model, data.images[:5]) == pytest.approx(mean, abs=1e-6)
    # a resumed run continues every fold model from the checkpoint, as an uninterrupted one would
    longer = fit_cv(config.replace(epochs=3), data, folds, device="cpu", checkpoint_dir=tmp_path / "run",
                    resume_from=last, log=None)
    assert [h["epoch"] for h in longer.history] == [1, 2, 3]


@pytest.mark.parametrize("argv, says", [
    (["--cv", "1"], "at least 2 folds"),
    (["--cv", "five"], "--cv five: give a fold count"),
    (["--cv", "3", "--workers-per-trial", "2"], "needs --workers-per-trial 1"),
    (["--cv", "3", "--rerank-top", "3"], "every trial is cross-validated already"),
    (["--rerank-top", "1"], "--rerank-top 1 must be >= 2"),
])
def test_bad_cv_flags_are_one_line_naming_the_flag(argv, says):
    with pytest.raises(ValueError, match=says):
        parse_args(["--family", "resnet", *argv])


def test_cv_flags_parse():
    assert parse_args(["--family", "resnet", "--cv", "official"]).cv == "official"
    assert parse_args(["--family", "resnet", "--cv", "off"]).cv == 0
    args = parse_args(["--family", "resnet", "--rerank-top", "4", "--rerank-folds", "5"])
    assert (args.cv, args.rerank_top, args.rerank_folds) == (0, 4, 5)  # the first stage: one split


def test_winner_rank_and_regret_are_measured_on_the_test_patients():
    trials = pd.DataFrame({"trial_id": list("abcde"), "test_weighted_f1": [0.70, 0.80, 0.75, np.nan, 0.60]})
    got = selection.winner_figures(trials, "c")
    assert got["winner_test_rank"] == 2 and got["regret"] == pytest.approx(0.05) and got["trials"] == 4
    assert got["median_test_weighted_f1"] == pytest.approx(0.725) and got["at_least_median"]
    assert not selection.winner_figures(trials, "e")["at_least_median"]


def test_rerank_winner_is_scored_as_the_one_split_trial_it_re_trains():
    from search.benchmark.runner import Search

    first = Search("random-fifo", 0, "b-random-fifo-s0", rerank=2)
    frame = pd.DataFrame({
        "search": [first.name] * 3 + [f"{first.name}-rerank"] * 2, "trial_id": ["a", "b", "c", "r1", "r2"],
        "rank": [1, 2, 3, 1, 2], "status": "finished", "val_metric": [0.9, 0.8, 0.7, 0.85, 0.6],
        "test_weighted_f1": [0.6, 0.8, 0.7, 0.79, 0.62], "train_seconds": [36.0] * 5,
        "reranked_from": [None, None, None, "b", "a"], "rule": ["one split"] * 3 + ["rerank2"] * 2})
    table = selection.selection_table(frame, [first]).set_index("rule")
    assert table.loc["one split", "winner"] == "a" and table.loc["one split", "regret"] == pytest.approx(0.2)
    assert table.loc["rerank2", "winner"] == "b" and table.loc["rerank2", "regret"] == 0
    assert table.loc["rerank2", "model_test_weighted_f1"] == pytest.approx(0.79)
    assert table.loc["rerank2", "cpu_hours"] == pytest.approx(5 * 36 / 3600)
    summary = selection.rule_summary(table.reset_index(), frame).set_index("rule")
    assert summary.loc["rerank2", "regret_saved_per_extra_cpu_hour"] == pytest.approx(0.2 / (2 * 36 / 3600))


def test_official_folds_sharing_a_patient_are_refused_before_ray_starts(tiny_cnmc, tmp_path, capsys):
    import shutil

    from search.cli import run

    tree = Path(shutil.copytree(tiny_cnmc, tmp_path / "C-NMC_Leukemia"))
    moved = sorted((tree / "training_data" / "fold_0" / "all").glob("*.bmp"))[0]  # one cell of a fold_0 patient
    (tree / "training_data" / "fold_1" / "all" / moved.name).write_bytes(moved.read_bytes())
    moved.unlink()
    patient = moved.name.split("_")[1]
    argv = ["--family", "resnet", "--data", str(tree), "--cv", "official", "--image-sizes", "24",
            "--results", str(tmp_path / "results"), "--storage", str(tmp_path / "ray")]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cv official" in err[0] and f"patient {patient} is in fold_0, fold_1" in err[0]


def test_a_version_2_leaderboard_reads_with_empty_cv_columns_and_is_upgraded(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from board_rows import make_row
    from search.board import leaderboard as lb
    from search.board import schema

    added = {"cv_folds", "fold_metrics", "stage", "reranked_from"}
    path = tmp_path / LEGACY_LEADERBOARD  # a single file, as version 2 wrote it
    row = {k: v for k, v in schema.normalise_row(make_row("old")).items() if k not in added}
    row["rank"], row["schema_version"] = 1, 2
    old = pa.schema([f for f in schema.SCHEMA if f.name not in added], metadata={schema.VERSION_KEY: b"2"})
    pq.write_table(pa.Table.from_pylist([row], schema=old), path)
    got = lb.read(path).iloc[0]
    assert got["trial_id"] == "old" and all(pd.isna(got[name]) for name in added)
    board = lb.append_rows(path, [make_row("new", cv_folds=3)])
    assert set(board["trial_id"]) == {"old", "new"} and (board["schema_version"] == 3).all()
    assert board.set_index("trial_id").loc["new", "cv_folds"] == 3
