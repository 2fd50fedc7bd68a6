"""Discover a C-NMC 2019 data root (Kaggle or TCIA layout) into a manifest: one row per image.

Kaggle  C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp
        C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data/{1..1867}.bmp
        C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv   (Patient_ID,new_names,labels)
        C-NMC_Leukemia/testing_data/C-NMC_test_final_phase_data/{1..2586}.bmp    (labels not public)
TCIA    <top>/C-NMC_training_data/fold_*/..., <top>/C-NMC_test_prelim_phase_data/ with its labels CSV beside or
        inside it, <top>/C-NMC_test_final_phase_data/; any of these folders may sit inside a same-named folder.

`discover` accepts the top folder or its parent. Folder names match case-insensitively.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from leukmodels.data.errors import DataError
from leukmodels.labels import ALL, CLASS_LABEL, HEM

KAGGLE_TOP = "C-NMC_Leukemia"
TRAINING_DIRS = ("training_data", "C-NMC_training_data")  # kaggle, tcia
PRELIM_DIR = "C-NMC_test_prelim_phase_data"
FINAL_DIR = "C-NMC_test_final_phase_data"
KAGGLE_DIRS = ("training_data", "validation_data", "testing_data")
LABELS_CSV = PRELIM_DIR + "_labels.csv"
CSV_COLUMNS = ("Patient_ID", "new_names", "labels")
IMAGE_SUFFIXES = frozenset({".bmp", ".png", ".tif", ".tiff", ".jpg", ".jpeg"})
GENERATED_MARKER = "GENERATED.json"
COLUMNS = ("path", "label", "patient", "source", "image_id")

# UID_57_29_1_all, UID_H21_3_18_hem, and the one lower-case UID_h3_... (normalised to H3)
NAME_RE = re.compile(r"^UID_(?P<patient>[Hh]?\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)$", re.IGNORECASE)
PREFIX_RULE = "normal patients are H<n>, ALL patients plain numbers"
SHOW = 3  # how many offending names an error message quotes


def parse_name(name: str) -> tuple[str, int] | None:
    """'UID_h3_12_4_hem.bmp' -> ('H3', 0); None when the name is not a C-NMC cell name."""
    match = NAME_RE.match(_stem(name))
    if match is None:
        return None
    return match["patient"].upper(), CLASS_LABEL[match["cls"].lower()]


def _prefix_contradicts(patient: str, label: int) -> bool:
    """True when a (normalised) patient id says the other class: in C-NMC every normal (HEM) subject is H<n> (one
    written h3) and every ALL subject a plain number, so 'H77' with ALL or '77' with HEM is a mislabelled file."""
    return patient.startswith("H") != (label == HEM)


def discover(root: str | Path) -> pd.DataFrame:
    """Every image under a C-NMC root -> DataFrame[path, label (Int8, 1 = ALL, 0 = HEM, <NA>), patient, source,
    image_id], ordered fold_0.., prelim_test, final_test; attrs: root, layout, generated."""
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"data root not found: {root}")
    if not root.is_dir():
        raise DataError(f"data root is not a folder: {root}")
    top = _find_top(root)
    rows = []
    if top is not None:
        rows += _training_rows(top)
        rows += _prelim_rows(top)
        rows += _final_rows(top)
    if not rows:
        raise DataError(f"no C-NMC images under {root}: expected C-NMC_Leukemia/training_data/fold_*/{{all,hem}}/*.bmp "
                        f"(Kaggle) or C-NMC_training_data/fold_*/... (TCIA)")
    manifest = pd.DataFrame(rows, columns=list(COLUMNS))
    manifest["label"] = manifest["label"].astype("Int8")
    _refuse_duplicates(manifest)
    manifest.attrs.update(root=str(top), layout="kaggle" if _has_kaggle_dirs(top) else "tcia",
                          generated=any((d / GENERATED_MARKER).is_file() for d in (top, top.parent, root)))
    return manifest


def summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per source (and a 'total' row): images, all, hem, unlabelled, patients."""
    def counts(part: pd.DataFrame) -> dict:
        return {"images": len(part), "all": int((part["label"] == ALL).sum()), "hem": int((part["label"] == HEM).sum()),
                "unlabelled": int(part["label"].isna().sum()),
                "patients": part.loc[part["patient"] != "", "patient"].nunique()}
    table = {source: counts(part) for source, part in manifest.groupby("source", sort=False)}
    table["total"] = counts(manifest)
    return pd.DataFrame.from_dict(table, orient="index")


# ---- folders ---------------------------------------------------------------------------------------------------

def _stem(name: str) -> str:
    """File stem for known image suffixes only ('UID_1_2_3_all.bmp' -> 'UID_1_2_3_all'; '12' -> '12')."""
    path = Path(str(name).strip())
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def _natural_key(path: Path) -> list:
    """Sort '2.bmp' before '10.bmp'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _child_dir(folder: Path, name: str) -> Path | None:
    """The sub-folder called `name` (any case), or None."""
    if not folder.is_dir():
        return None
    exact = folder / name
    if exact.is_dir():
        return exact
    return next((c for c in sorted(folder.iterdir()) if c.is_dir() and c.name.lower() == name.lower()), None)


def _unnest(folder: Path) -> Path:
    """C-NMC_training_data/C-NMC_training_data/... -> the innermost same-named folder."""
    while (inner := _child_dir(folder, folder.name)) is not None:
        folder = inner
    return folder


def _has_kaggle_dirs(folder: Path) -> bool:
    return any(_child_dir(folder, name) for name in KAGGLE_DIRS)


def _is_top(folder: Path) -> bool:
    return any(_child_dir(folder, name) for name in (*KAGGLE_DIRS, *TRAINING_DIRS, PRELIM_DIR, FINAL_DIR))


def _find_top(root: Path) -> Path | None:
    """The folder holding the training/prelim/final folders: root itself, or one of its children."""
    for folder in (root, _unnest(root)):
        if _is_top(folder):
            return folder
    tops = [_unnest(c) for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    tops = [t for t in tops if _is_top(t)]
    if len(tops) > 1:
        raise DataError(f"several C-NMC data sets under {root}: {', '.join(t.name for t in tops)}; pass one of them")
    return tops[0] if tops else None


def _image_files(folder: Path | None) -> list[Path]:
    """Image files under folder (recursive, hidden files skipped), naturally sorted."""
    if folder is None or not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
             and p.is_file()]
    return sorted(files, key=_natural_key)


def _test_dir(top: Path, parent: str, name: str) -> Path | None:
    """<top>/<parent>/<name> (Kaggle) or <top>/<name> (TCIA), before un-nesting."""
    kaggle_parent = _child_dir(top, parent)
    return (_child_dir(kaggle_parent, name) if kaggle_parent else None) or _child_dir(top, name)


# ---- the three parts -------------------------------------------------------------------------------------------

def _training_rows(top: Path) -> list[tuple]:
    training = next((_unnest(d) for name in TRAINING_DIRS if (d := _child_dir(top, name))), None)
    if training is None:
        return []
    folds = sorted((c for c in training.iterdir() if c.is_dir() and re.fullmatch(r"fold_\d+", c.name, re.I)),
                   key=_natural_key)
    rows, unparsed, mismatched, wrong_patient = [], [], [], []
    for fold in map(_unnest, folds):
        for class_name, label in CLASS_LABEL.items():
            for path in _image_files(_unnest(d) if (d := _child_dir(fold, class_name)) else None):
                parsed = parse_name(path.name)
                if parsed is None:
                    unparsed.append(path)
                elif parsed[1] != label:
                    mismatched.append(path)
                elif _prefix_contradicts(parsed[0], label):
                    wrong_patient.append(path)
                else:
                    rows.append((str(path), label, parsed[0], fold.name.lower(), path.stem))
    if unparsed:
        raise DataError(f"{len(unparsed)} file name(s) under {training} do not parse as "
                        f"UID_<patient>_<image>_<cell>_<all|hem>: {_first(unparsed)}")
    if mismatched:
        raise DataError(f"{len(mismatched)} file(s) sit in a class folder that contradicts their name suffix, "
                        f"e.g. {mismatched[0]}")
    if wrong_patient:
        raise DataError(f"{len(wrong_patient)} file(s) name a patient whose id contradicts their class folder "
                        f"({PREFIX_RULE}), e.g. {wrong_patient[0]}")
    return rows


def _prelim_rows(top: Path) -> list[tuple]:
    outer = _test_dir(top, "validation_data", PRELIM_DIR)
    if outer is None:
        return []
    inner = _unnest(outer)
    files = _image_files(inner)
    csv = next((p for d in dict.fromkeys((outer.parent, outer, inner)) if (p := _labels_csv_in(d))), None)
    if csv is None:
        if files and all(parse_name(p.name) for p in files):  # a copy that kept the original names
            wrong = [p for p in files if _prefix_contradicts(*parse_name(p.name))]
            if wrong:
                raise DataError(f"{len(wrong)} prelim-test file(s) name a patient whose id contradicts their "
                                f"_all/_hem suffix ({PREFIX_RULE}), e.g. {wrong[0]}")
            return [(str(p), *reversed(parse_name(p.name)), "prelim_test", p.stem) for p in files]
        if not files:
            return []
        raise DataError(f"labels CSV {LABELS_CSV} missing for {len(files)} prelim-test images in {inner} "
                        f"(looked beside and inside that folder)")
    table = _read_labels_csv(csv)
    by_stem = {p.stem: p for p in files}
    without_row = sorted(set(by_stem) - set(table.index), key=_natural_key)
    without_file = sorted(set(table.index) - set(by_stem), key=_natural_key)
    if without_row:
        raise DataError(f"{len(without_row)} image(s) in {inner} have no row in {csv}: {_first(without_row)}")
    if without_file:
        raise DataError(f"{len(without_file)} row(s) of {csv} name a file missing from {inner}: {_first(without_file)}")
    return [(str(path), int(table.at[stem, "labels"]), table.at[stem, "patient"], "prelim_test",
             table.at[stem, "image_id"]) for stem, path in by_stem.items()]


def _labels_csv_in(folder: Path) -> Path | None:
    exact = folder / LABELS_CSV
    if exact.is_file():
        return exact
    found = sorted(p for p in folder.glob("*.csv") if p.is_file() and "label" in p.name.lower())
    return found[0] if found else None


def _read_labels_csv(csv: Path) -> pd.DataFrame:
    """The prelim labels CSV -> DataFrame indexed by numbered stem ('17') with labels, patient, image_id."""
    try:
        table = pd.read_csv(csv, dtype=str, skipinitialspace=True, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"labels CSV {csv} is unreadable: {str(err).splitlines()[0]}") from None
    table.columns = [c.strip() for c in table.columns]
    if not set(CSV_COLUMNS) <= set(table.columns):
        raise DataError(f"labels CSV {csv} has columns {','.join(table.columns)}; expected {','.join(CSV_COLUMNS)}")
    if table.empty:
        raise DataError(f"labels CSV {csv} has no rows")
    table = table.apply(lambda col: col.str.strip())
    table.index = table["new_names"].map(_stem)
    if table.index.duplicated().any():
        raise DataError(f"labels CSV {csv} lists {table.index[table.index.duplicated()][0]} more than once")
    bad_labels = table.index[~table["labels"].isin(["0", "1"])]
    if len(bad_labels):
        raise DataError(f"labels CSV {csv}: label of {bad_labels[0]} is {table.at[bad_labels[0], 'labels']!r}, "
                        f"expected 1 (ALL) or 0 (HEM)")
    parsed = table["Patient_ID"].map(parse_name)
    if parsed.isna().any():
        raise DataError(f"labels CSV {csv}: Patient_ID {table.loc[parsed.isna(), 'Patient_ID'].iloc[0]!r} does not "
                        f"parse as UID_<patient>_<image>_<cell>_<all|hem>")
    contradicting = table.index[[p[1] != int(lab) for p, lab in zip(parsed, table["labels"])]]
    if len(contradicting):
        raise DataError(f"labels CSV {csv}: label of {contradicting[0]} contradicts its Patient_ID "
                        f"{table.at[contradicting[0], 'Patient_ID']}")
    wrong = table.index[[_prefix_contradicts(p[0], int(lab)) for p, lab in zip(parsed, table["labels"])]]
    if len(wrong):
        raise DataError(f"labels CSV {csv}: Patient_ID {table.at[wrong[0], 'Patient_ID']} of {wrong[0]} names a "
                        f"patient whose id contradicts its label ({PREFIX_RULE})")
    table["patient"] = [p[0] for p in parsed]
    table["image_id"] = table["Patient_ID"].map(_stem)
    return table


def _final_rows(top: Path) -> list[tuple]:
    folder = _test_dir(top, "testing_data", FINAL_DIR)
    rows = []
    for path in _image_files(_unnest(folder) if folder else None):
        parsed = parse_name(path.name)  # numbered in the release: patient unknown -> ""
        rows.append((str(path), pd.NA, parsed[0] if parsed else "", "final_test", path.stem))
    return rows


def _refuse_duplicates(manifest: pd.DataFrame) -> None:
    duplicated = manifest[manifest.duplicated("image_id", keep=False)]
    if len(duplicated):
        first = duplicated[duplicated["image_id"] == duplicated["image_id"].iloc[0]]["path"]
        raise DataError(f"duplicate image name {duplicated['image_id'].iloc[0]}: {' and '.join(first.iloc[:2])}")


def _first(items: list) -> str:
    shown = ", ".join(Path(str(i)).name for i in items[:SHOW])
    return shown + (f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else "")

