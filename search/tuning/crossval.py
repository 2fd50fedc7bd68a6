"""Cross-validated selection in a search (`--cv K` or `--cv official`): the data every trial gets, the trial that
trains the K fold models, and what their rows record.

    folds, refs = cv_refs(data, k=3, seed=0)     # train+val patients pooled, a fold per patient, ray.put once

The validation patients of one split are few, and one patient more or less moves the metric more than most
hyperparameters do (DESIGN.md section 6). With --cv, the train and val patients of the search's split are pooled
(the test patients stay out) and split into K patient-disjoint folds; each trial trains K fold models in sequence
inside its Tune trial (leukmodels.crossval.fit_cv) and reports, every epoch, the metric of the pooled out-of-fold
predictions: every training patient is validated once. ASHA, TPE, PBT and the leaderboard see that one figure; the
row also keeps each fold's figures (`fold_metrics`). The trial's checkpoint holds all K models, whose mean P(ALL)
is what evaluate.py, predict.py and export.py use.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import ray

from leukmodels.data import DataError, DecodedSet
from leukmodels.data.folds import OFFICIAL, patient_folds
from leukmodels.labels import ALL, HEM
from search.tuning.data import SEARCH_SPLITS, SearchData

CV_ROW_FIELDS = ("cv_folds", "fold_metrics")  # report keys kept in the leaderboard row (best epoch's)


def parse_cv(value: Any) -> Any:
    """--cv's value: 0 (one split, no cross-validation) for 0/off/none, 'official', or a fold count >= 2."""
    text = str(value).strip().lower()
    if text in ("0", "off", "none"):
        return 0
    if text == OFFICIAL:
        return OFFICIAL
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--cv {value}: give a fold count >= 2, '{OFFICIAL}' (C-NMC's fold_0/1/2 when they are "
                         f"patient-disjoint), or 0 for one validation split") from None
    if k < 2:
        raise ValueError(f"--cv {value}: cross-validation needs at least 2 folds (0 turns it off)")
    return k


def pooled_rows(data: SearchData) -> pd.DataFrame:
    """The train and val manifest rows of the search's split, in that order: every training patient."""
    return pd.concat([data.frames[name] for name in SEARCH_SPLITS])


def pooled_sets(data: SearchData) -> dict[int, Any]:
    """Image size -> one DecodedSet of the train and val images (in pooled_rows' order)."""
    out = {}
    for size, sets in data.sets.items():
        parts = [sets[name] for name in SEARCH_SPLITS]
        out[size] = DecodedSet(np.concatenate([np.asarray(p.images) for p in parts]),
                               np.concatenate([p.labels for p in parts]), np.concatenate([p.patients for p in parts]),
                               np.concatenate([p.image_ids for p in parts]), "+".join(p.fingerprint for p in parts))
    return out


def cv_refs(data: SearchData, k: Any, seed: int) -> tuple[dict[str, int], dict[int, dict]]:
    """({patient: fold}, image size -> {"all": ObjectRef of the pooled set, "folds": ObjectRef of each image's
    fold}); a DataError when the folds cannot be drawn (too few patients of a class, official folds that share a
    patient). Needs ray.init() first."""
    fold_of = patient_folds(pooled_rows(data), k, seed=seed)
    refs = {}
    for size, pooled in pooled_sets(data).items():
        folds = np.array([fold_of[str(p)] for p in pooled.patients], dtype=np.int64)
        refs[size] = {"all": ray.put(pooled), "folds": ray.put(folds)}
    return fold_of, refs


def check_folds_before_launch(splits: dict, seed: int, cv: Any, rerank_folds: Any = None) -> None:
    """--cv and --rerank-folds (None: no --rerank-top): the folds can be drawn from the split's train+val patients
    with `seed` (ValueError naming the flag: too few patients of a class, official folds that share a patient)."""
    for flag, k in (("--cv", cv), ("--rerank-folds", rerank_folds)):
        if k:
            try:
                patient_folds(pd.concat([splits[name] for name in SEARCH_SPLITS]), k, seed=seed)
            except DataError as why:
                raise ValueError(f"{flag} {k}: {why}") from None


def search_refs(cv: Any, seed: int, data: SearchData, say: Any) -> dict[int, dict]:
    """The object refs every trial of a search gets: the split's train and val sets, or with --cv (`cv` folds drawn
    with `seed`) the pooled set and each image's fold (the folds described in one line)."""
    if not cv:
        return data.put()
    fold_of, refs = cv_refs(data, cv, seed=seed)
    say(describe_folds(data, fold_of, cv))
    return refs


def describe_folds(data: SearchData, fold_of: dict[str, int], k: Any) -> str:
    """One line: how many folds, drawn how, and each fold's images and patients by class."""
    rows = pooled_rows(data).assign(fold=lambda f: f["patient"].astype(str).map(fold_of))
    parts = []
    for fold, group in rows.groupby("fold"):
        per_patient = group.groupby("patient")["label"].first().astype(int)
        parts.append(f"fold {fold}: {len(group)} images, {int((per_patient == ALL).sum())} ALL + "
                     f"{int((per_patient == HEM).sum())} HEM patients")
    how = "C-NMC's own fold_N folders" if k == "official" else "drawn by patient, stratified by class"
    return (f"cross-validation: {len(parts)} folds over the train+val patients ({how}; the test patients stay out), "
            f"each trial trains {len(parts)} fold models and is scored on their pooled out-of-fold predictions: "
            + "; ".join(parts))


def row_fields(best: dict) -> dict:
    """The cross-validation columns of a leaderboard row from its best report (empty without --cv)."""
    return {key: best.get(key) for key in CV_ROW_FIELDS}


def config_key(config: dict) -> str:
    """A TrainConfig dict as text: the same config gives the same key (a rerank row finds the trial it re-trains)."""
    return json.dumps({key: config[key] for key in sorted(config)}, default=str)


__all__ = ["CV_ROW_FIELDS", "check_folds_before_launch", "config_key", "cv_refs", "describe_folds", "parse_cv",
           "pooled_rows", "pooled_sets", "row_fields", "search_refs"]
