"""Cross-validation folds over patients: which fold validates each training patient.

    fold_of = patient_folds(rows, k=3, seed=0)          # {patient: 0..k-1}, every patient in exactly one fold
    fold_of = patient_folds(rows, k="official")         # C-NMC's own fold_0/1/2, refused unless patient-disjoint

A fold model trains on the patients of the other folds and predicts its own, so pooling the K folds' predictions
gives every training patient one out-of-fold prediction (leukmodels/crossval.py). Folds are drawn by patient with
scikit-learn's StratifiedGroupKFold over the images (groups = patients, stratified by class), which also balances the
folds' image counts when a few patients hold most of the cells; each fold must hold both classes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from leukmodels.data.errors import DataError
from leukmodels.labels import CLASS_NAMES

OFFICIAL = "official"  # --cv official: the fold_N folder each training image came from


def patient_folds(rows: pd.DataFrame, k: int | str, seed: int = 0) -> dict[str, int]:
    """{patient: fold} over the labelled `rows` (manifest rows: label, patient, source); DataError when a fold
    would lack a class or, for official folds, when a patient sits in two folds."""
    rows = rows[rows["label"].notna()]
    if rows.empty:
        raise DataError("cross-validation: no labelled training images")
    if k == OFFICIAL:
        folds = _official(rows)
    else:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
            raise DataError(f"cross-validation needs k >= 2 folds or '{OFFICIAL}', got {k!r}")
        folds = _drawn(rows, int(k), seed)
    check_folds(rows, folds)
    return folds


def _drawn(rows: pd.DataFrame, k: int, seed: int) -> dict[str, int]:
    from sklearn.model_selection import StratifiedGroupKFold  # on use: decode's workers import this package

    per_class = rows.groupby("label")["patient"].nunique()
    for label, name in CLASS_NAMES.items():
        if int(per_class.get(label, 0)) < k:
            raise DataError(f"{k}-fold cross-validation needs at least {k} {name} training patients, found "
                            f"{int(per_class.get(label, 0))}; use fewer folds")
    patients = rows["patient"].astype(str).to_numpy()
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for fold, (_, held) in enumerate(splitter.split(patients, rows["label"].astype(int).to_numpy(), patients)):
        folds.update({patient: fold for patient in np.unique(patients[held])})
    return folds


def _official(rows: pd.DataFrame) -> dict[str, int]:
    """The fold_N source folders as folds (numbered in name order); DataError when they are not patient-disjoint."""
    names = sorted(s for s in rows["source"].astype(str).unique() if s.startswith("fold_"))
    if len(names) < 2 or (rows["source"].astype(str).isin(names)).sum() < len(rows):
        found = sorted(rows["source"].astype(str).unique())
        raise DataError(f"--cv {OFFICIAL} needs every training image in a training_data/fold_N folder and at least two "
                        f"such folds; found sources {found}")
    sources = rows.groupby(rows["patient"].astype(str))["source"].agg(lambda s: sorted(set(map(str, s))))
    shared = sources[sources.map(len) > 1]
    if len(shared):
        raise DataError(f"--cv {OFFICIAL}: the official folds are not patient-disjoint (patient {shared.index[0]} is "
                        f"in {', '.join(shared.iloc[0])}, {len(shared)} such patient(s)); use --cv K instead")
    return {patient: names.index(found[0]) for patient, found in sources.items()}


def check_folds(rows: pd.DataFrame, folds: dict[str, int]) -> None:
    """Every patient of `rows` in exactly one fold (a dict cannot hold two) and every fold with both classes."""
    patients = set(rows["patient"].astype(str))
    missing = sorted(patients - set(folds))
    if missing:
        raise DataError(f"cross-validation: patient {missing[0]} is in no fold ({len(missing)} such)")
    labels = rows.assign(fold=rows["patient"].astype(str).map(folds)).groupby("fold")["label"].agg(set)
    for fold in sorted(set(folds.values())):
        lacking = [name for label, name in CLASS_NAMES.items() if label not in labels.get(fold, set())]
        if lacking:
            raise DataError(f"cross-validation fold {fold} has no {lacking[0]} patient; every fold must hold both "
                            f"classes (use fewer folds or add patients)")


__all__ = ["OFFICIAL", "patient_folds", "check_folds"]
