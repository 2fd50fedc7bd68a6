"""The Ray-free statistics of the patient's answer: temperature scaling, ECE, the patient call and its threshold, the
bootstrap over patients and the test-time patient correction (leukmodels/calibration.py, patients.py, bootstrap.py)."""
from __future__ import annotations

import numpy as np
import pytest

from leukmodels.bootstrap import cell_intervals, patient_counts, weighted_auc, weighted_metrics
from leukmodels.calibration import (apply_temperature, expected_calibration_error, fit_temperature, logit,
                                    reliability_bins)
from leukmodels.patients import choose_strength, choose_threshold, patient_calls, patient_table, shrink_to_patient


def calibrated_sample(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from sigmoid(z): a perfectly calibrated model (true temperature 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_a_known_temperature_is_recovered_within_ten_percent(true_t):
    z, y = calibrated_sample()
    fitted = fit_temperature(z * true_t, y)  # logits sharpened (or softened) by true_t: fitting T should undo it
    assert fitted == pytest.approx(true_t, rel=0.10)
    prob = 1 / (1 + np.exp(-z * true_t))
    before = expected_calibration_error(y, prob)
    after = expected_calibration_error(y, apply_temperature(prob, fitted))
    assert after < before / 2 and after < 0.02


def test_temperature_keeps_every_call_and_one_leaves_probabilities_alone():
    prob = np.array([0.01, 0.3, 0.5, 0.7, 0.999])
    assert apply_temperature(prob, 1.0) == pytest.approx(prob)
    softened = apply_temperature(prob, 3.0)
    assert ((softened > 0.5) == (prob > 0.5)).all() and softened[2] == pytest.approx(0.5)
    assert np.all(np.abs(softened - 0.5) < np.abs(prob - 0.5) + 1e-12)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(prob, 0.0)
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(logit(prob), [1, 1, 1, 1, 1])


def test_ece_by_hand():
    # two bins used: [0.0, 1/15) with P 0.05, 0.05 and no ALL -> gap 0.05; [14/15, 1] with P 1.0, 1.0 and one ALL
    # -> gap 0.5; ECE = 0.5 * 0.05 + 0.5 * 0.5
    labels, prob = [0, 0, 1, 0], [0.05, 0.05, 1.0, 1.0]
    assert expected_calibration_error(labels, prob) == pytest.approx(0.275)
    bins = reliability_bins(labels, prob)
    assert list(bins["cells"]) == [2, 2] and bins["bin_high"].iloc[-1] == pytest.approx(1.0)


# -- patients ------------------------------------------------------------------------------------------------------
def test_patient_table_and_calls():
    labels = [1, 1, 1, 0, 0]
    prob = [0.9, 0.6, 0.2, 0.4, 0.7]
    table = patient_table(labels, prob, ["a", "a", "a", "b", "b"])
    assert list(table["patient"]) == ["a", "b"] and list(table["cells"]) == [3, 2]
    assert table["called_all_share"].tolist() == pytest.approx([2 / 3, 0.5])
    assert table["mean_prob_all"].tolist() == pytest.approx([17 / 30, 0.55])
    calls = patient_calls(table, threshold=0.56)
    assert calls["call"].tolist() == [1, 0] and calls["correct"].all()


def test_threshold_sits_mid_gap_between_separable_patients_and_needs_both_classes():
    assert choose_threshold([0.2, 0.3, 0.6, 0.8], [0, 0, 1, 1]) == pytest.approx(0.45)
    assert choose_threshold([0.7, 0.75, 0.9, 0.95], [0, 0, 1, 1]) == pytest.approx(0.825)
    assert choose_threshold([0.7, 0.9], [1, 1]) == 0.5  # one class: nothing to choose on


def test_correction_strength_zero_is_identity_and_one_gives_each_cell_its_patients_answer():
    prob = np.array([0.9, 0.6, 0.2, 0.4, 0.1])
    patients = ["a", "a", "a", "b", "b"]
    assert shrink_to_patient(prob, patients, 0.0) == pytest.approx(prob)
    full = shrink_to_patient(prob, patients, 1.0)
    assert full[0] == pytest.approx(full[1]) == pytest.approx(full[2])
    assert full[3] == pytest.approx(full[4]) and full[3] < 0.5
    # patient a's cell at 0.2 is outvoted by its two ALL-looking cells only with enough strength
    labels = [1, 1, 1, 0, 0]
    assert choose_strength(labels, prob, patients) > 0
    assert choose_strength([1, 1, 0, 0, 0], prob, patients) == 0.0  # already right: no correction is chosen


# -- bootstrap over patients ---------------------------------------------------------------------------------------
def test_resamples_keep_each_class_count():
    counts = patient_counts([1, 1, 1, 0, 0], n_boot=500, seed=1)
    assert (counts[:, :3].sum(axis=1) == 3).all() and (counts[:, 3:].sum(axis=1) == 2).all()
    assert counts[:, 0].std() > 0


def test_weighted_metrics_match_sklearn_with_sample_weights():
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 2)  # rounded: ties on purpose
    w = rng.integers(0, 4, (3, 300)).astype(float)
    got = weighted_metrics(w, y, s)
    for row in range(3):
        pred = (s > 0.5).astype(int)
        assert got["roc_auc"][row] == pytest.approx(roc_auc_score(y, s, sample_weight=w[row]))
        assert got["weighted_f1"][row] == pytest.approx(f1_score(y, pred, average="weighted", sample_weight=w[row]))
        assert got["balanced_accuracy"][row] == pytest.approx(balanced_accuracy_score(y, pred, sample_weight=w[row]))
    assert np.isnan(weighted_auc(np.ones((1, 3)), np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))[0]


def test_intervals_over_patients_are_wider_than_over_cells_and_hold_the_estimate():
    from leukmodels.metrics import classification_metrics

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(12), 50).astype(str)
    labels = np.repeat(np.arange(12) % 2, 50)
    shift = np.repeat(rng.normal(0, 1.5, 12), 50)  # a patient effect: cells of one patient err together
    prob = 1 / (1 + np.exp(-((2 * labels - 1) + shift + rng.normal(0, 1, 600))))
    by_patient = cell_intervals(labels, prob, patients)
    by_cell = cell_intervals(labels, prob, np.arange(600).astype(str))  # every cell its own "patient"
    estimate = classification_metrics(labels, prob)
    for name in ("weighted_f1", "roc_auc", "sensitivity", "specificity"):
        low, high = by_patient[name]
        assert low <= estimate[name] <= high
        assert high - low > 1.5 * (by_cell[name][1] - by_cell[name][0]), name
