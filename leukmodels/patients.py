"""The patient's answer: cells grouped by patient, a patient call, and the opt-in test-time patient correction.

A patient's score is the mean P(ALL) of its cells. The patient is called ALL when that score is above a threshold
chosen on patients other than the ones judged (`choose_threshold`: the validation patients of the search's split, or
out-of-fold patients), never on the test patients: a threshold picked on the patients it is then scored on would
report the best case, not what a new patient gets.

`shrink_to_patient` is the test-time patient correction (transductive: a cell's answer uses the other cells of the
same patient, which a deployed model only has when a patient's cells arrive together). It follows the idea of the
ISBI 2019 C-NMC winner, the neighborhood-correction algorithm (Pan, Liu, Xia & Shen 2019, "Neighborhood-correction
algorithm for classification of normal and malignant cells", ISBI 2019 C-NMC Challenge, Lecture Notes in
Bioengineering, Springer, pp. 73-82; code github.com/YongshengPan/ISBI-NMC): it corrected each test cell's label by
majority voting among its most similar test cells (7 nearest by a Fisher-vector kernel of ResNet features, over all
test cells, whose patients the challenge's numbered test files did not name). Here the neighbours are named: the
cells of the same patient, and the vote is soft, a shrinkage of each cell's logit toward its patient's mean logit
with one strength chosen on validation patients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from leukmodels.calibration import logit, sigmoid
from leukmodels.labels import ALL, HEM
from leukmodels.metrics import classification_metrics

STRENGTHS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))  # the correction's grid: 0 (none) to 1 (the mean itself)


def patient_table(labels: Sequence[int], prob_all: Sequence[float], patients: Sequence,
                  threshold: float = 0.5) -> pd.DataFrame:
    """One row per patient (sorted by patient): patient, label (the majority of its cells' labels; every C-NMC
    patient is one class), cells, called_all_share (cells with P(ALL) > `threshold`), mean_prob_all (the score)."""
    frame = pd.DataFrame({"patient": np.asarray(patients).astype(str), "label": np.asarray(labels, dtype=np.int64),
                          "prob": np.asarray(prob_all, dtype=np.float64)})
    if frame.empty:
        raise ValueError("patient_table: no cells")
    frame["called"] = frame["prob"] > threshold
    table = frame.groupby("patient", sort=True).agg(label=("label", "mean"), cells=("prob", "size"),
                                                    called_all_share=("called", "mean"),
                                                    mean_prob_all=("prob", "mean")).reset_index()
    table["label"] = (table["label"] >= 0.5).astype(np.int64)
    return table


def choose_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The patient threshold (call ALL when score > threshold) with the best balanced accuracy (Youden's J) on these
    patients' scores and labels. Candidates are the midpoints between neighbouring distinct scores and 0 and 1, so
    when the classes separate the threshold sits mid-gap; among equally good candidates the one nearest 0.5.
    With one class only (or no patients) it returns 0.5, the cell-level default."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(np.int64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"choose_threshold: {s.size} scores and {y.size} labels")
    if np.unique(y).size < 2:
        return 0.5
    distinct = np.unique(s)
    candidates = np.unique(np.concatenate([[0.0, 1.0], (distinct[:-1] + distinct[1:]) / 2]))
    called = s[None, :] > candidates[:, None]  # C x P
    sensitivity = (called & (y == ALL)).sum(axis=1) / (y == ALL).sum()
    specificity = (~called & (y == HEM)).sum(axis=1) / (y == HEM).sum()
    j = sensitivity + specificity
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def patient_calls(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """`table` (patient_table) with the call (1 = ALL when mean_prob_all > threshold) and whether it is right."""
    out = table.copy()
    out["threshold"] = float(threshold)
    out["call"] = (out["mean_prob_all"] > threshold).astype(np.int64)
    out["correct"] = out["call"] == out["label"]
    return out


def shrink_to_patient(prob_all: Sequence[float], patients: Sequence, strength: float) -> np.ndarray:
    """Each cell's logit moved toward its patient's mean logit: z' = (1 - strength) z + strength mean_patient(z);
    returns P(ALL) = sigmoid(z'). strength 0 changes nothing, 1 gives every cell its patient's (logit-mean) answer.
    Logit space so that one confident cell does not outweigh many, and a patient of one cell is unchanged."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    z = logit(prob_all)
    groups = pd.Series(z).groupby(np.asarray(patients).astype(str)).transform("mean").to_numpy()
    return sigmoid((1.0 - strength) * z + strength * groups)


def choose_strength(labels: Sequence[int], prob_all: Sequence[float], patients: Sequence,
                    grid: Sequence[float] = STRENGTHS, metric: Optional[str] = "weighted_f1") -> float:
    """The correction strength in `grid` with the best cell-level `metric` (weighted F1, the challenge's metric) on
    these (validation) cells; ties go to the weakest correction."""
    scores = [classification_metrics(labels, shrink_to_patient(prob_all, patients, float(s)))[metric] for s in grid]
    return float(grid[int(np.argmax(np.round(scores, 12)))])  # argmax: the first (weakest) of equal scores


__all__ = ["STRENGTHS", "choose_strength", "choose_threshold", "patient_calls", "patient_table",
           "shrink_to_patient"]
