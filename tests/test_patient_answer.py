"""The patient's answer in search/evaluate.py and the report (issue 21): patient calls and intervals in
test_metrics.parquet and test_patients.parquet, the threshold chosen without test labels, the calibration columns,
and the opt-in transductive patient correction. The tiny search is tests/tiny_search.py; `evaluated` ran evaluate on
it without --patient-correction."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


def test_every_row_has_patient_calls_and_intervals_over_patients(tiny_search, evaluated):
    table = evaluated["metrics"]
    patients = pd.read_parquet(evaluated["out"].with_name("test_patients.parquet"))
    preds = evaluated["predictions"]
    for _, row in table.iterrows():
        for name in ("weighted_f1", "balanced_accuracy", "roc_auc", "patient_roc_auc", "patient_sensitivity",
                     "patient_specificity"):
            low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
            assert 0 <= low <= high <= 1, (row["trial_id"], name, low, high)
        key = ((patients["trial_id"] == row["trial_id"]) & (patients["tta"] == row["tta"])
               & (patients["retrained"] == row["retrained"]))
        mine = patients[key]
        assert set(mine["patient"]) == set(json.loads(row["test_patients"])) == tiny_search["splits"]["test"]
        cells = preds[(preds["trial_id"] == row["trial_id"]) & (preds["tta"] == row["tta"])
                      & (preds["retrained"] == row["retrained"])]
        mean = cells.groupby("patient")["prob_all_calibrated"].mean()
        assert mine.set_index("patient")["mean_prob_all"].to_dict() == pytest.approx(mean.to_dict())
        assert ((mine["mean_prob_all"] > row["patient_threshold"]).astype(int) == mine["call"]).all()
        assert (mine["call"] == mine["label"]).sum() == row["patients_correct"]
        assert "validation patients" in row["patient_threshold_from"]
        if row["retrained"]:
            assert "before retraining" in row["patient_threshold_from"]


def test_the_correction_is_not_applied_unless_asked(evaluated):
    from leukmodels.calibration import apply_temperature

    table, preds = evaluated["metrics"], evaluated["predictions"]
    assert (table["method"] == "plain").all() and not table["transductive"].any()
    assert (preds["method"] == "plain").all()
    assert "correction_strength" not in table
    single = table[table["n_members"] == 1]
    for _, row in single.iterrows():  # the calibrated column is the plain P(ALL) at the checkpoint's T, no more
        cells = preds[(preds["trial_id"] == row["trial_id"]) & (preds["tta"] == row["tta"])
                      & (preds["retrained"] == row["retrained"])]
        np.testing.assert_allclose(cells["prob_all_calibrated"], apply_temperature(cells["prob_all"],
                                                                                   row["temperature"]), atol=1e-12)


def test_temperatures_come_from_training_and_calibration_is_measured(evaluated):
    from leukmodels.checkpoint import load_checkpoint

    table = evaluated["metrics"]
    for _, row in table[table["n_members"] == 1].iterrows():
        extra = load_checkpoint(row["checkpoint"])["extra"]
        if row["retrained"]:  # it trained on the validation patients: no temperature is fitted on them
            assert "temperature" not in extra and row["temperature"] == 1.0
            assert row["ece"] == pytest.approx(row["ece_calibrated"])
        else:
            assert row["temperature"] == pytest.approx(extra["temperature"]) and row["temperature"] != 1.0
        assert 0 <= row["ece"] <= 1 and 0 <= row["ece_calibrated"] <= 1
    assert table.loc[table["family"] == "ensemble", "temperature"].isna().all()  # each member has its own


# -- the threshold never sees test labels ----------------------------------------------------------------------------
def synthetic_test_set(test_labels_flipped: bool = False):
    """A TestSet of 6 test and 6 validation patients (3 ALL, 3 HEM each, 10 cells each) built in memory; the test
    patients separate best at a threshold near 0.75, the validation ones near 0.5."""
    from search.evaluation.heldout import TestSet

    def frame(prefix: str, centres: list[float], labels: list[int]) -> pd.DataFrame:
        rows = [{"patient": f"{prefix}{i}", "label": lab, "image_id": f"{prefix}{i}_{j}", "path": "", "centre": c}
                for i, (c, lab) in enumerate(zip(centres, labels)) for j in range(10)]
        return pd.DataFrame(rows)

    test = frame("t", [0.62, 0.66, 0.70, 0.80, 0.85, 0.9], [0, 0, 0, 1, 1, 1])
    val = frame("v", [0.2, 0.3, 0.45, 0.55, 0.7, 0.8], [0, 0, 0, 1, 1, 1])
    if test_labels_flipped:
        test["label"] = 1 - test["label"]
    test_set = TestSet(test, {}, {"train": val.iloc[:0], "val": val, "test": test}, "memory", True)
    return test_set, test["centre"].to_numpy(), val["centre"].to_numpy()


def scored_model(test_set, test_prob, val_prob):
    from search.evaluation.scoring import Scored, score

    rng = np.random.default_rng(0)
    test_prob = np.clip(test_prob + rng.normal(0, 0.02, test_prob.size), 0.01, 0.99)
    val_prob = np.clip(val_prob + rng.normal(0, 0.02, val_prob.size), 0.01, 0.99)
    return Scored("m", False, False, test_prob, score(test_set, test_prob), {"family": "baseline", "val_rank": 1},
                  val_prob_all=val_prob, temperature=1.0, prob_calibrated=test_prob, val_calibrated=val_prob)


@pytest.mark.parametrize("correction", [False, True])
def test_the_patient_threshold_and_the_correction_never_read_test_labels(correction):
    from leukmodels.patients import choose_threshold, patient_table
    from search.evaluation.patient_scoring import patient_answers

    answers = []
    for flipped in (False, True):  # poisoned test labels: every test patient's label turned around
        test_set, test_prob, val_prob = synthetic_test_set(flipped)
        s = scored_model(test_set, test_prob, val_prob)
        models, extra, _ = patient_answers([s], test_set, correction=correction, n_boot=200)
        answers.append((extra[-1]["patient_threshold"], models[-1].fields.get("correction_strength"),
                        extra[-1]["patient_roc_auc"]))
    assert answers[0][:2] == answers[1][:2]  # the same threshold and strength whatever the test labels say
    assert answers[0][2] == 1.0 and answers[1][2] == 0.0  # ...while the labels are read to score
    test_set, test_prob, _ = synthetic_test_set()
    on_test = patient_table(test_set.labels, scored_model(test_set, test_prob, test_prob).prob_all,
                            test_set.patients)
    assert abs(choose_threshold(on_test["mean_prob_all"], on_test["label"]) - answers[0][0]) > 0.1  # would differ


# -- the opt-in transductive rows ----------------------------------------------------------------------------------
def test_patient_correction_adds_transductive_rows_apart_from_the_plain_ones(tiny_search, tmp_path):
    from leukmodels.patients import shrink_to_patient
    from search.evaluation import evaluate
    from search.reporting import report

    out = tmp_path / "test_metrics.parquet"
    assert evaluate.main(["--leaderboard", str(tiny_search["leaderboard"]), "--top", "1", "--tta", "off",
                          "--patient-correction", "--out", str(out), "--cache-dir", str(tiny_search["cache"])]) == 0
    table = pd.read_parquet(out).set_index("method")
    assert sorted(table.index) == ["patient-shrinkage", "plain"]
    assert table.loc["patient-shrinkage", "transductive"] and not table.loc["plain", "transductive"]
    preds = pd.read_parquet(out.with_name("test_predictions.parquet"))
    plain = preds[preds["method"] == "plain"].set_index("image_id")
    fixed = preds[preds["method"] == "patient-shrinkage"].set_index("image_id").loc[plain.index]
    strength = table.loc["patient-shrinkage", "correction_strength"]
    np.testing.assert_allclose(fixed["prob_all"], shrink_to_patient(plain["prob_all"], plain["patient"], strength))

    # a plain re-run replaces the plain row only; the report shows the corrected one under its own heading
    assert evaluate.main(["--leaderboard", str(tiny_search["leaderboard"]), "--top", "1", "--tta", "off",
                          "--out", str(out), "--cache-dir", str(tiny_search["cache"])]) == 0
    assert sorted(pd.read_parquet(out)["method"]) == ["patient-shrinkage", "plain"]
    page = tmp_path / "report.html"
    assert report.main(["--leaderboard", str(tiny_search["leaderboard"]), "--test-metrics", str(out),
                        "--out", str(page)]) == 0
    text = page.read_text()
    assert text.count("TRANSDUCTIVE: test-time patient correction") == 1
    assert "The patient&#x27;s answer" in text or "The patient's answer" in text
    assert "reliability diagram" in text
    before, after = text.split("TRANSDUCTIVE: test-time patient correction")
    assert "patient-shrinkage" not in before and "patient-shrinkage" in after


def test_a_file_written_before_the_method_key_is_read_as_plain(tmp_path):
    from search.evaluation.evaluate import KEY_COLUMNS, write_parquet_atomic

    path = tmp_path / "test_metrics.parquet"
    key = {"search": "s", "tta": False, "retrained": False}
    old = pd.DataFrame([{**key, "trial_id": "a", "weighted_f1": 0.1}, {**key, "trial_id": "b", "weighted_f1": 0.2}])
    old.to_parquet(path, index=False)  # no `method` column, as evaluate wrote it before
    write_parquet_atomic(pd.DataFrame([{**key, "trial_id": "a", "method": "plain", "weighted_f1": 0.9}]), path,
                         KEY_COLUMNS)
    merged = pd.read_parquet(path).set_index("trial_id")
    assert merged["weighted_f1"].to_dict() == {"b": 0.2, "a": 0.9} and (merged["method"] == "plain").all()
