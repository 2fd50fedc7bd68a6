"""predict.py's per-patient answer: which patient each image belongs to (a CSV of image,patient) and one row per
patient (cells, share called ALL, mean P(ALL), the call), computed by leukmodels.patients like evaluate.py's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from leukmodels.labels import CLASS_NAMES
from leukmodels.patients import patient_calls, patient_table

PATIENT_COLUMNS = ("image", "patient")


def read_patients(csv_path: str, paths: Sequence[str]) -> dict[str, str]:
    """{image path as predict was given it: patient} from a CSV with columns image,patient. An image is matched by
    its path as given, else its resolved path, else its file name (which must then be unique in the CSV).
    ValueError naming the file, a missing column, or an image the CSV has no patient for."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"--patients {csv_path}: cannot read it ({' '.join(str(err).split())[:160]})") from None
    missing = [c for c in PATIENT_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"--patients {csv_path}: no column {missing[0]!r} (columns: {list(table.columns)}; "
                         f"expected image,patient)")
    by_path = dict(zip(table["image"], table["patient"]))
    by_resolved = {str(Path(k).resolve()): v for k, v in by_path.items()}
    names = table.assign(name=[Path(i).name for i in table["image"]])
    unique_names = names.drop_duplicates("name", keep=False)
    by_name = dict(zip(unique_names["name"], unique_names["patient"]))
    found, unknown = {}, []
    for path in paths:
        patient = by_path.get(path) or by_resolved.get(str(Path(path).resolve())) or by_name.get(Path(path).name)
        if patient:
            found[path] = patient
        else:
            unknown.append(path)
    if unknown:
        raise ValueError(f"--patients {csv_path}: no patient for {len(unknown)} image(s), e.g. {unknown[0]}")
    return found


def patient_rows(rows: Sequence[tuple], threshold: float) -> pd.DataFrame:
    """Per-patient table of predict's (path, label, prob_all, patient) rows, the call at `threshold`."""
    cells = pd.DataFrame(rows, columns=["path", "label", "prob_all", "patient"])
    table = patient_table([0] * len(cells), cells["prob_all"], cells["patient"])  # labels unknown: not used
    table = patient_calls(table, threshold).drop(columns=["label", "correct"])
    table["call"] = [CLASS_NAMES[int(c)] for c in table["call"]]
    return table[["patient", "cells", "called_all_share", "mean_prob_all", "call", "threshold"]]


def write_patients(rows: Sequence[tuple], threshold: float, patient_out: Optional[str], out: Optional[str]) -> None:
    """The per-patient CSV to `patient_out`, else beside `out` as <stem>_patients.csv, else stderr."""
    table = patient_rows(rows, threshold)
    target = patient_out or (str(Path(out).with_name(Path(out).stem + "_patients.csv")) if out else None)
    if target is None:
        print(table.to_csv(index=False, float_format="%.6g"), file=sys.stderr, end="")
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(target, index=False)
    print(f"predict: {len(table)} patient(s); wrote {target}", file=sys.stderr)


__all__ = ["PATIENT_COLUMNS", "patient_rows", "read_patients", "write_patients"]
