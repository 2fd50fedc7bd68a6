"""The report's patient sections (search/report.py puts them on the page): the patient's answer with its 95%
intervals, the winner's calibration (reliability diagram, ECE before and after its temperature) and, apart from
everything else, the transductive test-time patient correction when evaluate.py ran with --patient-correction.
"""
from __future__ import annotations

import html
from typing import Optional

import numpy as np
import pandas as pd

from leukmodels.calibration import ECE_BINS, reliability_bins
from search.evaluation.patient_scoring import PLAIN
from search.reporting.sections import figure_html, new_figure, note, table_html

SUMMARY_COLUMNS = ("trial_id", "tta", "retrained", "method", "patients", "patient_threshold", "patient_roc_auc",
                   "patient_sensitivity", "patient_specificity", "weighted_f1", "balanced_accuracy", "roc_auc",
                   "ece", "ece_calibrated", "temperature")
PATIENT_TABLE_COLUMNS = ("patient", "label", "cells", "called_all_share", "mean_prob_all", "threshold", "call",
                         "correct")


def split_plain(frame: Optional[pd.DataFrame]) -> tuple[Optional[pd.DataFrame], Optional[pd.DataFrame]]:
    """(plain rows, transductive rows) of evaluate's output; files written before `method` existed are all plain."""
    if frame is None or "method" not in frame:
        return frame, None
    plain = frame["method"].fillna(PLAIN) == PLAIN
    return frame[plain], frame[~plain]


def winner_of(test_rows: pd.DataFrame) -> Optional[pd.Series]:
    """The validation winner's row, with TTA when it was evaluated with it (as the winner section picks it)."""
    plain = test_rows[(test_rows["val_rank"] == 1) & ~test_rows["retrained"]]
    return None if plain.empty else plain.sort_values("tta").iloc[-1]


def with_interval(frame: pd.DataFrame, name: str) -> pd.Series:
    """'0.812 [0.701, 0.903]' per row, or the bare value where the row has no interval."""
    if f"{name}_ci_low" not in frame:
        return frame[name].map(lambda v: f"{v:.3f}")
    return frame.apply(lambda r: f"{r[name]:.3f} [{r[name + '_ci_low']:.3f}, {r[name + '_ci_high']:.3f}]", axis=1)


def summary_table(rows: pd.DataFrame) -> str:
    shown = rows.sort_values(["val_rank", "retrained", "tta"]).copy()
    shown["patients"] = shown["patients_correct"].astype(int).astype(str) + " / " + shown["n_test_patients"].astype(
        int).astype(str) + " right"
    for name in ("patient_roc_auc", "patient_sensitivity", "patient_specificity", "weighted_f1", "balanced_accuracy",
                 "roc_auc"):
        shown[name] = with_interval(shown, name)
    return table_html(shown, SUMMARY_COLUMNS)


def patient_section(test_rows: pd.DataFrame, patients: Optional[pd.DataFrame]) -> str:
    """Patient-level metrics of every plain row with bootstrap intervals, then the winner's patients one by one."""
    if "patient_threshold" not in test_rows:
        return note("Evaluated before patient-level metrics existed: run search/evaluate.py again.")
    first = test_rows.iloc[0]
    parts = [note(f"A patient is called ALL when the mean calibrated P(ALL) of its cells is above a threshold chosen "
                  f"on {first['patient_threshold_from']}, never on the test patients. Brackets: "
                  f"{first['ci_level']:.0%} intervals from {int(first['bootstrap_resamples'])} resamples of the test "
                  f"patients (each class drawn within itself, every cell of a drawn patient kept)."),
             summary_table(test_rows)]
    winner = winner_of(test_rows)
    if winner is not None and patients is not None and len(patients):
        mine = patients[(patients["trial_id"] == winner["trial_id"]) & (patients["tta"] == winner["tta"])
                        & ~patients["retrained"] & (patients["method"] == PLAIN)]
        parts += [f"<h3>The winner's test patients ({html.escape(str(winner['trial_id']))})</h3>",
                  table_html(mine.sort_values(["correct", "patient"]), PATIENT_TABLE_COLUMNS)]
    return "".join(parts)


def calibration_section(test_rows: pd.DataFrame, preds: pd.DataFrame) -> str:
    """The winner's reliability diagram on the test cells, before and after its checkpoint's temperature."""
    winner = winner_of(test_rows)
    if winner is None or "prob_all_calibrated" not in preds or "ece" not in winner:
        return note("No calibration figures: the winner was not evaluated with them (run search/evaluate.py again).")
    mine = preds[(preds["trial_id"] == winner["trial_id"]) & (preds["tta"] == winner["tta"]) & ~preds["retrained"]]
    fig, ax = new_figure(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    for column, name, colour in (("prob_all", f"raw, ECE {winner['ece']:.3f}", "tab:red"),
                                 ("prob_all_calibrated", f"T = {winner['temperature']:.2f}, ECE "
                                  f"{winner['ece_calibrated']:.3f}", "tab:blue")):
        bins = reliability_bins(mine["label"], mine[column])
        ax.plot(bins["mean_prob_all"], bins["share_all"], "o-", color=colour, label=name)
    ax.set(xlabel="mean P(ALL) in the bin", ylabel="share of ALL cells", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability on the test cells ({ECE_BINS} bins)")
    ax.legend(fontsize=8)
    text = (f"The temperature T = {winner['temperature']:.3f} was fitted on the validation patients' predictions as "
            f"the model trained (stored in its checkpoint, applied by predict.py and the exported model). ECE on the "
            f"test cells: {winner['ece']:.4f} before, {winner['ece_calibrated']:.4f} after; negative log-likelihood "
            f"{winner['nll']:.4f} -> {winner['nll_calibrated']:.4f}. It moves no call at 0.5 and no ranking.")
    return note(text) + figure_html(fig, "reliability diagram")


def transductive_section(plain: pd.DataFrame, corrected: Optional[pd.DataFrame]) -> list[str]:
    """The corrected rows beside the plain rows they correct, under a heading of their own; [] when none."""
    if corrected is None or corrected.empty:
        return []
    keys = ["trial_id", "tta", "retrained"]
    both = pd.concat([plain.merge(corrected[keys], on=keys), corrected], ignore_index=True)
    columns = ("trial_id", "tta", "retrained", "method", "transductive", "correction_strength", "weighted_f1",
               "balanced_accuracy", "roc_auc", "patients", "patient_roc_auc", "patient_sensitivity",
               "patient_specificity")
    shown = both.sort_values(keys + ["transductive"]).copy()
    shown["patients"] = shown["patients_correct"].astype(int).astype(str) + " / " + shown["n_test_patients"].astype(
        int).astype(str)
    for name in ("weighted_f1", "balanced_accuracy", "roc_auc", "patient_roc_auc", "patient_sensitivity",
                 "patient_specificity"):
        shown[name] = with_interval(shown, name)
    strength = corrected["correction_strength"].to_numpy(dtype=np.float64)
    return ["<h2>TRANSDUCTIVE: test-time patient correction (not comparable to the rows above)</h2>",
            note("Each test cell's logit is shrunk toward the mean logit of the other cells of its patient, with a "
                 f"strength chosen on the validation patients ({', '.join(f'{s:g}' for s in np.unique(strength))}); "
                 "it uses the test patient's other cells, which a model deployed cell by cell does not have. After "
                 "the ISBI 2019 C-NMC winner's neighborhood correction (Pan et al. 2019)."),
            table_html(shown, columns)]


__all__ = ["calibration_section", "patient_section", "split_plain", "transductive_section", "winner_of"]
