"""Metrics against hand-computed cases (including a single-class batch and ties) and test-time augmentation."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from leukmodels.metrics import _dihedral_views, classification_metrics, predict_proba


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 6 ALL (label 1), 4 HEM (label 0); P(ALL) > 0.5 is called ALL
    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    prob = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.55, 0.35]
    # predictions:   1    1    1    1    0    0    0    0    1     0  -> TP 4, FN 2, TN 3, FP 1
    m = classification_metrics(labels, prob)
    f1_all = 2 * 4 / (2 * 4 + 1 + 2)  # 8 / 11
    f1_hem = 2 * 3 / (2 * 3 + 2 + 1)  # 6 / 9
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m["macro_f1"] == pytest.approx((f1_all + f1_hem) / 2)
    assert m["weighted_f1"] == pytest.approx((6 * f1_all + 4 * f1_hem) / 10)
    # AUC = share of (ALL, HEM) pairs ranked correctly: the HEM scores 0.55 and 0.35 beat some ALL scores
    pairs = [(p, q) for p, y in zip(prob, labels) if y == 1 for q, z in zip(prob, labels) if z == 0]
    hand_auc = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs) / len(pairs)
    assert hand_auc == pytest.approx(21 / 24)  # 0.6..0.9 beat all 4 HEM; 0.4 loses to 0.55; 0.3 to 0.55 and 0.35
    assert m["roc_auc"] == pytest.approx(hand_auc)
    assert "per_patient_accuracy" not in m


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_scikit_learns_on_random_batches_with_ties_and_single_classes(seed):
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    labels = rng.integers(0, 2, n) if seed % 5 else np.full(n, seed % 2)  # every fifth batch holds one class
    prob = np.round(rng.random(n), 1)  # one decimal: many tied scores, some exactly at the 0.5 threshold
    pred = (prob > 0.5).astype(int)
    m = classification_metrics(labels, prob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {"weighted_f1": f1_score(labels, pred, average="weighted", zero_division=0),
                    "macro_f1": f1_score(labels, pred, average="macro", zero_division=0),
                    "accuracy": accuracy_score(labels, pred),
                    "balanced_accuracy": balanced_accuracy_score(labels, pred),
                    "sensitivity": recall_score(labels, pred, pos_label=1, zero_division=np.nan),
                    "specificity": recall_score(labels, pred, pos_label=0, zero_division=np.nan),
                    "roc_auc": roc_auc_score(labels, prob) if len(set(labels)) == 2 else math.nan}
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, nan_ok=True), name


def test_single_class_batch_does_not_crash_and_gives_nan_where_undefined():
    labels = [1, 1, 1, 1]
    prob = [0.9, 0.8, 0.3, 0.7]  # TP 3, FN 1, no HEM at all
    with np.errstate(all="raise"):
        m = classification_metrics(labels, prob)
    assert math.isnan(m["roc_auc"])
    assert math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(3 / 4)
    f1_all = 2 * 3 / (2 * 3 + 0 + 1)
    assert m["weighted_f1"] == pytest.approx(f1_all)  # HEM has no support, so weight 0
    assert m["macro_f1"] == pytest.approx(f1_all / 2)  # HEM is predicted once, never right: F1 0
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)  # recall averaged over the classes present

    only_hem = classification_metrics([0, 0], [0.1, 0.2])  # all right, one class
    assert only_hem["accuracy"] == 1.0 and only_hem["weighted_f1"] == 1.0 and only_hem["specificity"] == 1.0
    assert math.isnan(only_hem["sensitivity"]) and math.isnan(only_hem["roc_auc"])


def test_ties_in_probabilities():
    equal = classification_metrics([0, 1, 0, 1, 1], [0.5] * 5)
    assert equal["roc_auc"] == pytest.approx(0.5)  # all scores equal: every pair is a tie
    assert equal["sensitivity"] == 0.0 and equal["specificity"] == 1.0  # a tie at the threshold goes to HEM
    assert equal["weighted_f1"] == pytest.approx((2 * (2 * 2 / (2 * 2 + 3))) / 5)  # only HEM F1 = 4/7, weight 2/5

    partial = classification_metrics([0, 0, 1, 1], [0.2, 0.6, 0.6, 0.9])
    # pairs (HEM, ALL): (0.2, 0.6) 1, (0.2, 0.9) 1, (0.6, 0.6) 0.5, (0.6, 0.9) 1 -> 3.5 / 4
    assert partial["roc_auc"] == pytest.approx(3.5 / 4)


def test_per_patient_accuracy_and_threshold():
    labels = [1, 1, 0, 0, 1]
    prob = [0.9, 0.4, 0.3, 0.8, 0.6]
    patients = ["57", "57", "H3", "H3", "12"]
    m = classification_metrics(labels, prob, patients=patients)
    assert m["per_patient_accuracy"] == {"12": 1.0, "57": 0.5, "H3": 0.5}
    strict = classification_metrics(labels, prob, threshold=0.85)  # only 0.9 is called ALL
    assert strict["sensitivity"] == pytest.approx(1 / 3) and strict["specificity"] == 1.0


def test_bad_inputs_raise_valueerror():
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="labels must be 0"):
        classification_metrics([0, -1], [0.5, 0.5])
    with pytest.raises(ValueError, match="patients"):
        classification_metrics([0, 1], [0.5, 0.5], patients=["a"])


class RotationInvariant(nn.Module):
    """Pointwise conv, then a global average: blind to any permutation of pixels, so to every dihedral view."""

    def __init__(self):
        super().__init__()
        self.pointwise = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # N x 3 x S x S
        return self.head(torch.relu(self.pointwise(x)).mean(dim=(2, 3)))  # N x 2


class PositionSensitive(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.linear = nn.Linear(3 * size * size, 2)

    def forward(self, x):
        return self.linear(x.flatten(1))


def _images(n=6, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_tta_of_a_rotation_invariant_model_equals_plain_prediction():
    torch.manual_seed(0)
    model = RotationInvariant()
    images = _images()
    plain = predict_proba(model, images, batch_size=4)
    tta = predict_proba(model, images, batch_size=4, tta=True)
    assert plain.shape == (6,) and plain.dtype == np.float64
    assert np.all((plain > 0) & (plain < 1))
    np.testing.assert_allclose(tta, plain, rtol=0, atol=1e-6)


def test_tta_averages_the_eight_dihedral_views_and_keeps_training_mode():
    torch.manual_seed(0)
    model = PositionSensitive(8).train()
    images = _images()
    tta = predict_proba(model, torch.from_numpy(images), batch_size=5, tta=True)
    assert model.training  # restored after prediction
    # the 8 views are 8 distinct images of an asymmetric input (4 rotations x flip = the dihedral group)
    x = torch.from_numpy(images[:1]).float()
    views = _dihedral_views(x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    by_hand = np.mean([predict_proba(model, v.to(torch.uint8), batch_size=8) for v in
                       _dihedral_views(torch.from_numpy(images))], axis=0)
    np.testing.assert_allclose(tta, by_hand, rtol=0, atol=1e-6)
    assert not np.allclose(tta, predict_proba(model, images), atol=1e-3)  # it does change this model's output


def test_read_only_arrays_predict_without_warnings():
    import warnings

    images = _images()
    images.flags.writeable = False  # as Ray's object store and read-only memory maps hand them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prob = predict_proba(RotationInvariant(), images)
    assert prob.shape == (6,)
