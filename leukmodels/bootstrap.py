"""95% intervals from a bootstrap over patients: how much a metric would move with another draw of test patients.

Cells of one patient are not independent (per-patient accuracy on C-NMC runs from 0.26 to 1.0), so resampling cells
would give intervals far too narrow; the unit resampled is the patient, with all its cells. The resampling is
stratified by the patient's class (ALL patients and HEM patients each drawn with replacement to their own count), as
pROC does for ROC AUC (Robin et al. 2011, BMC Bioinformatics 12:77): every resample keeps both classes, so AUC,
sensitivity and specificity are defined in each. The interval is the percentile one.

All resamples are scored at once: a resample is a count per patient (B x P), each cell weighs its patient's count,
and every metric is a function of weighted sums (confusion counts; for ROC AUC, pairs ranked right). scipy's
`bootstrap` resamples observations, not groups stratified by class, hence this small module.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from leukmodels.labels import ALL, HEM

N_BOOT = 2000
LEVEL = 0.95
CELL_METRICS = ("weighted_f1", "balanced_accuracy", "accuracy", "roc_auc", "sensitivity", "specificity")


def patient_counts(patient_labels: Sequence[int], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """int64 B x P: how often each patient is drawn in each resample, drawn within its class."""
    y = np.asarray(patient_labels).astype(np.int64).ravel()
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, y.size), dtype=np.int64)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=n_boot)
    return counts


def weighted_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC (B,) of `scores` (N,) for 0/1 `labels` (N,) under each row of `weights` (B x N): the weighted share of
    (ALL, HEM) pairs ranked right, ties counting one half (as sklearn's roc_auc_score with sample_weight). nan where a
    row weighs only one class."""
    _, group = np.unique(scores, return_inverse=True)  # tied scores share a group, groups in increasing score
    n_groups = group.max() + 1 if group.size else 0
    pos = np.zeros((weights.shape[0], n_groups))
    neg = np.zeros((weights.shape[0], n_groups))
    np.add.at(pos.T, group[labels == ALL], weights[:, labels == ALL].T)
    np.add.at(neg.T, group[labels == HEM], weights[:, labels == HEM].T)
    below = np.cumsum(neg, axis=1) - neg  # HEM weight strictly below each group
    right = (pos * (below + 0.5 * neg)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)


def weighted_metrics(weights: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                     threshold: float = 0.5) -> dict[str, np.ndarray]:
    """CELL_METRICS (each (B,)) of samples called ALL when score > threshold, each sample weighted by a row of
    `weights` (B x N); the same definitions as leukmodels.metrics.classification_metrics (weighted F1 over the two
    classes weighted by support, F1 of a class with no predictions 0)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64)
    pred = s > threshold
    tp, fn = w @ ((y == ALL) & pred), w @ ((y == ALL) & ~pred)
    tn, fp = w @ ((y == HEM) & ~pred), w @ ((y == HEM) & pred)
    positives, negatives = tp + fn, tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_all = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_hem = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
        sensitivity = tp / positives
        specificity = tn / negatives
        return {"weighted_f1": (positives * f1_all + negatives * f1_hem) / (positives + negatives),
                "balanced_accuracy": (sensitivity + specificity) / 2, "accuracy": (tp + tn) / (positives + negatives),
                "roc_auc": weighted_auc(w, y, s), "sensitivity": sensitivity, "specificity": specificity}


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) percentiles of the finite samples; (nan, nan) when there are none."""
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def cell_intervals(labels: Sequence[int], prob_all: Sequence[float], patients: Sequence, threshold: float = 0.5,
                   n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Cell-level CELL_METRICS' intervals, resampling patients (with all their cells) within their class."""
    names, cell_patient = np.unique(np.asarray(patients).astype(str).ravel(), return_inverse=True)
    cells_all = np.bincount(cell_patient, weights=np.asarray(labels, dtype=np.float64).ravel(), minlength=names.size)
    patient_label = cells_all >= np.bincount(cell_patient, minlength=names.size) / 2  # a patient's majority label
    counts = patient_counts(patient_label, n_boot, seed)  # B x P
    samples = weighted_metrics(counts[:, cell_patient], labels, prob_all, threshold)  # cell weight = its patient's
    return {name: percentile_interval(values, level) for name, values in samples.items()}


def patient_intervals(patient_labels: Sequence[int], patient_scores: Sequence[float], threshold: float,
                      n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Patient-level intervals of roc_auc, sensitivity, specificity, balanced_accuracy and accuracy (one sample per
    patient, the patient's score against its call threshold), resampling patients within their class."""
    counts = patient_counts(patient_labels, n_boot, seed)
    samples = weighted_metrics(counts, patient_labels, patient_scores, threshold)
    return {name: percentile_interval(samples[name], level)
            for name in ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")}


__all__ = ["CELL_METRICS", "LEVEL", "N_BOOT", "cell_intervals", "patient_counts", "patient_intervals",
           "percentile_interval", "weighted_auc", "weighted_metrics"]
