"""The patient's answer of every model search/evaluate.py scored: patient calls with a threshold chosen on the
validation patients, patient- and cell-level 95% intervals from a bootstrap over patients, the calibration error
before and after the checkpoint's temperature, and, asked for (`--patient-correction`), the transductive
test-time patient correction as rows of its own. The statistics live in leukmodels (patients, bootstrap,
calibration); this module turns them into test_metrics columns and test_patients rows.

Never on test labels: the patient threshold and the correction strength are chosen on the validation patients of
the search's split (the patients that ranked the trials; a retrained model, which trained on them, takes the choice
of the trial it retrains). Test labels are read only to score.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import numpy as np
import pandas as pd

from leukmodels.bootstrap import CELL_METRICS, LEVEL, N_BOOT, cell_intervals, patient_intervals, weighted_metrics
from leukmodels.calibration import expected_calibration_error, nll
from leukmodels.patients import choose_strength, choose_threshold, patient_calls, patient_table, shrink_to_patient
from search.evaluation.heldout import TestSet
from search.evaluation.scoring import Scored, score

PLAIN, CORRECTED = "plain", "patient-shrinkage"  # the `method` of a row; CORRECTED rows are transductive
PATIENT_METRICS = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")


@dataclasses.dataclass(frozen=True)
class ValChoice:
    """What was chosen on validation patients for one (trial, TTA mode): the patient threshold and, with the
    correction, its strength."""

    threshold: float
    source: str  # says which patients chose it
    strength: float = 0.0


def method_of(s: Scored) -> str:
    return s.fields.get("method", PLAIN)


def val_labels_patients(test_set: TestSet) -> tuple[np.ndarray, np.ndarray]:
    val = test_set.splits["val"]
    return val["label"].astype(np.int64).to_numpy(), val["patient"].astype(str).to_numpy()


def choose_on_validation(s: Scored, test_set: TestSet, correction: bool) -> ValChoice:
    """The patient threshold (and correction strength) of `s`, from its validation predictions only (0.5 and no
    correction for a model scored without them)."""
    if s.val_prob_all is None or s.val_calibrated is None:
        return ValChoice(0.5, "the default 0.5 (no validation predictions)")
    labels, patients = val_labels_patients(test_set)
    strength = choose_strength(labels, s.val_prob_all, patients) if correction else 0.0
    # the patient score is the mean calibrated P(ALL); shrinking logits commutes with dividing them by T
    table = patient_table(labels, shrink_to_patient(s.val_calibrated, patients, strength), patients)
    return ValChoice(choose_threshold(table["mean_prob_all"], table["label"]),
                     f"validation patients ({len(table)})", strength)


def choices(scored: Sequence[Scored], test_set: TestSet, correction: bool) -> dict:
    """{(trial_id, tta): ValChoice} of every model not retrained; a retrained model uses its trial's."""
    return {(s.trial_id, s.tta): choose_on_validation(s, test_set, correction) for s in scored if not s.retrained}


def choice_for(s: Scored, chosen: dict) -> ValChoice:
    found = chosen[(s.trial_id, s.tta)]
    if s.retrained:  # its validation patients were training patients: the trial's own choice stands in
        return dataclasses.replace(found, source=found.source + " of the trial before retraining")
    return found


def patient_columns(s: Scored, test_set: TestSet, choice: ValChoice, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """(test_metrics columns, per-patient rows) of one model on the test patients."""
    labels, patients = test_set.labels, test_set.patients
    table = patient_calls(patient_table(labels, s.prob_calibrated, patients), choice.threshold)
    cell_ci = cell_intervals(labels, s.prob_all, patients, n_boot=n_boot, seed=seed)
    patient_ci = patient_intervals(table["label"], table["mean_prob_all"], choice.threshold, n_boot=n_boot,
                                   seed=seed)
    pooled = _patient_metrics(table)
    columns = {"method": method_of(s), "transductive": method_of(s) != PLAIN,
               "patient_threshold": choice.threshold, "patient_threshold_from": choice.source,
               "patients_correct": int(table["correct"].sum()), "ci_level": LEVEL, "bootstrap_resamples": n_boot,
               "temperature": s.temperature,
               "ece": expected_calibration_error(labels, s.prob_all),
               "ece_calibrated": expected_calibration_error(labels, s.prob_calibrated),
               "nll": nll(labels, s.prob_all), "nll_calibrated": nll(labels, s.prob_calibrated)}
    for name in CELL_METRICS:
        columns[f"{name}_ci_low"], columns[f"{name}_ci_high"] = cell_ci[name]
    for name in PATIENT_METRICS:
        columns[f"patient_{name}"] = pooled[name]
        columns[f"patient_{name}_ci_low"], columns[f"patient_{name}_ci_high"] = patient_ci[name]
    return columns, table


def _patient_metrics(table: pd.DataFrame) -> dict:
    """PATIENT_METRICS of the patient calls (patient score = mean calibrated P(ALL), against its threshold)."""
    found = weighted_metrics(np.ones((1, len(table))), table["label"], table["mean_prob_all"],
                             float(table["threshold"].iloc[0]))
    return {name: float(found[name][0]) for name in PATIENT_METRICS}


def corrected(s: Scored, test_set: TestSet, choice: ValChoice) -> Scored:
    """`s` with each test cell's P(ALL) shrunk toward its patient's mean at the strength chosen on validation
    patients: a transductive row (it uses the other test cells of the same patient)."""
    def shrink(prob: np.ndarray, patients: np.ndarray) -> np.ndarray:
        return shrink_to_patient(prob, patients, choice.strength)

    _, val_patients = val_labels_patients(test_set)
    prob = shrink(s.prob_all, test_set.patients)
    return dataclasses.replace(
        s, prob_all=prob, metrics=score(test_set, prob), val_prob_all=shrink(s.val_prob_all, val_patients),
        prob_calibrated=shrink(s.prob_calibrated, test_set.patients),
        val_calibrated=shrink(s.val_calibrated, val_patients),
        fields={**s.fields, "method": CORRECTED, "correction_strength": choice.strength})


def patient_answers(scored: Sequence[Scored], test_set: TestSet, correction: bool = False,
                    n_boot: int = N_BOOT) -> tuple[list[Scored], list[dict], list[pd.DataFrame]]:
    """(every model, the corrected ones appended when `correction`; their extra test_metrics columns; their
    per-patient tables), in the same order."""
    scored = [s if s.prob_calibrated is not None else dataclasses.replace(s, prob_calibrated=s.prob_all)
              for s in scored]  # a model scored without a temperature: T = 1
    plain_choice = choices(scored, test_set, correction=False)
    models, extra, tables = [], [], []
    for s in scored:
        columns, table = patient_columns(s, test_set, choice_for(s, plain_choice), n_boot)
        models.append(s), extra.append(columns), tables.append(table)
    if correction:
        corrected_choice = choices(scored, test_set, correction=True)
        for s in scored:
            choice = choice_for(s, corrected_choice)
            if s.val_prob_all is None:
                continue  # no strength can be chosen without validation predictions
            fixed = corrected(s, test_set, choice)
            columns, table = patient_columns(fixed, test_set, choice, n_boot)
            models.append(fixed), extra.append(columns), tables.append(table)
    return models, extra, tables


def print_patient_answers(table: pd.DataFrame) -> None:
    """One stderr line per row: patient-level AUC / sensitivity / specificity with intervals, ECE before -> after."""
    def ci(row: pd.Series, name: str) -> str:
        return f"{row[name]:.3f} [{row[name + '_ci_low']:.3f}, {row[name + '_ci_high']:.3f}]"

    for _, row in table.iterrows():
        label = " TRANSDUCTIVE" if row["transductive"] else ""
        print(f"  {row['trial_id']:<24} tta={'on ' if row['tta'] else 'off'} retrained={row['retrained']!s:<5} "
              f"{row['method']}{label}: patients {row['patients_correct']}/{row['n_test_patients']} right "
              f"(threshold {row['patient_threshold']:.3f}), patient AUC {ci(row, 'patient_roc_auc')} sens "
              f"{ci(row, 'patient_sensitivity')} spec {ci(row, 'patient_specificity')}; cell weighted F1 "
              f"{ci(row, 'weighted_f1')}; ECE {row['ece']:.3f} -> {row['ece_calibrated']:.3f} (T "
              f"{row['temperature']:.2f})", file=sys.stderr)


__all__ = ["CORRECTED", "PATIENT_METRICS", "PLAIN", "ValChoice", "choose_on_validation", "corrected", "method_of",
           "patient_answers", "patient_columns", "print_patient_answers"]
