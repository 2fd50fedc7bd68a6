"""A generated stand-in for C-NMC 2019, written in the exact Kaggle layout (the real data cannot be downloaded here).

    python -m leukmodels.synthetic --out DIR [--all-patients 24 --hem-patients 12 --images-per-patient 42 ...]

writes DIR/C-NMC_Leukemia/{training_data/fold_0|1|2/{all,hem}, validation_data/..., testing_data/...} plus a
GENERATED.json marker: every result on this tree is a result on generated cells, NOT a C-NMC result. Each cell is
drawn by `leukmodels.cells` (calibrated to real cells, with its sources). Deterministic by seed, whatever --workers.

Patients differ as on the real cells, so that choosing a model on a few validation patients is as unreliable here
as there. Calibration targets and where they come from:
- Counts (Gupta & Gupta 2019, ALL Challenge dataset of ISBI 2019, TCIA, https://doi.org/10.7937/tcia.2019.dc64i46r):
  10,661 training cells from 73 subjects (47 ALL, 26 HEM), about two thirds ALL; 1,867 preliminary-test cells from
  28 subjects. Cells per subject are very uneven: a mean of 146, and a 3,713-cell sample of 60 subjects held
  subjects (62 a subject) with a handful to hundreds of cells (this project's issue 19). Here: 42 cells per patient
  on average (`images_per_patient`; fewer than the real 62-146 so that a CPU search stays short, and enough that
  models trained on two thirds of the patients learn: with 21, 3-fold models barely beat chance), log-normal with
  sigma `cell_skew` (default 1.0: the largest tenth of patients hold about a third of the cells), at least 2 each,
  summing to `images_per_patient` times the patients of each class and split exactly. The labelled preliminary
  test holds 28 patients, as the real one does (`n_prelim`): it is the yardstick of every selection figure, and
  with 12-14 patients one large patient at the class boundary decided most of its HEM recall.
- Per-patient shifts (82 real training cells measured for leukmodels/cells.py): mean cell colour varies about 8 per
  channel and cell area about 7,000-9,000 px; each patient draws its own stain gain and offset, brightness,
  illumination gradient, focus, contrast and cell-size offset (`patient_style`), taking a large part of that
  spread (the size offset 5,000 of it), so a model that leans on size or colour errs patient by patient.
- Per-patient difficulty: per-patient accuracy of classifiers on C-NMC ranges from 0.26 to 1.0 (figure quoted in
  issue 19 as published; its original paper was not located when this was written); an image-level random split,
  which puts cells of one patient on both sides, inflates AUROC by about 0.04 (Albzour 2026, arXiv:2606.24944):
  patients are what a model must generalise over. Here each patient's class position (`blastness`) spreads around
  its class and is then pulled toward the other class by its own share (`pull`), and a share of its cells
  (`flip_share`) is drawn at the other class's position; both are Beta(0.5, b) with mean `difficulty` (default
  0.12): most patients near 0, a few pulled to the class boundary or with half or more of their cells flipped, so a
  patient's best reachable accuracy spans about the published range, and on a boundary patient a model's threshold,
  not its quality, decides its accuracy.
- Selection (issue 19, real cells: 3,713 cells of 60 patients, validation 8 patients): the winner of one validation
  split ranked 7th-11th of 12 trials on the test patients (Spearman rho of validation metric vs test weighted F1
  0.36, regret about 0.1); 3-fold cross-validation by patient picked one ranked about 4th (regret 0.014, rho 0.52).
  Version 2 (21 cells a patient, no pull) did not reproduce it: its one-split winner ranked 1.5th of 6 (rho 0.75)
  and its 3-fold objective barely ranked (rho 0.54). Version 3 reproduces it on some draws, not on others: with
  `--prelim-patients 84` (seed 0; benchmark at `--val-fraction 0.1`) the one-split winner ranked 7th of 12 (rho
  0.14, regret 0.097) and the 3-fold one 4th; on the default tree 4th (rho 0.54) and 3rd. Full figures in
  README.md ("Choosing a winner that holds on unseen patients").
The drawn counts, shifts, pulls and flips of every patient are listed in GENERATED.json ("patient_effects").
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from leukmodels.cells import flip_share, patient_style, render_cell
from leukmodels.data.layout import (CSV_COLUMNS, FINAL_DIR, GENERATED_MARKER, KAGGLE_DIRS, KAGGLE_TOP, LABELS_CSV,
                                    PRELIM_DIR)
from leukmodels.labels import ALL, CNMC_NAMES, HEM

TRAINING, VALIDATION, TESTING = KAGGLE_DIRS
GENERATOR_VERSION = 3  # 2: skewed cells per patient, per-patient difficulty, larger patient shifts;
# 3: difficulty also pulls a patient's class position toward the other class; 42 cells a patient, 28 test patients
NOTE = ("Synthetic C-NMC-like cells written by leukmodels.synthetic. Any result on this tree is a result on "
        "generated data, NOT a C-NMC 2019 result.")
# About as many cells as version 1 (16 + 8 patients x 32), spread over more, uneven patients (see the docstring)
DEFAULTS = dict(n_all=24, n_hem=12, images_per_patient=42, n_prelim=28, n_final=6, cell_skew=1.0, difficulty=0.12)
MIN_CELLS = 2  # the fewest cells a patient gets when counts are skewed
SPLITS = ("train", "prelim", "final")  # in this order: the file-name generator is drawn from split after split
TEST_FOLDERS = {"prelim": f"{VALIDATION}/{PRELIM_DIR}", "final": f"{TESTING}/{FINAL_DIR}"}


def _write_cell(task: tuple) -> None:
    """Worker: render one cell from its own seed (so output is independent of worker count) and write the BMP.
    `blastness` is the cell's class position: its patient's, or the mirror of it for a flipped cell."""
    path, seed, key, blastness, patient = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    Image.fromarray(render_cell(rng, blastness, patient), "RGB").save(path, format="BMP")   # 24-bit BMP


def _split_classes(n: int) -> tuple[int, int]:
    """About two thirds ALL, as in the real release (8 -> 5 ALL + 3 HEM)."""
    n_all = int(round(n * 2 / 3))
    return (n_all, n - n_all) if n != 1 else (1, 0)


def _plan(seed: int, n_all: int, n_hem: int, n_prelim: int, n_final: int, images_per_patient: int,
          cell_skew: float, difficulty: float) -> dict:
    """Patient ids and styles per split: {split: [(patient_id, is_all, style)]}, all patients disjoint. A style also
    holds the patient's cell count ("cells") and difficulty ("flip_share", "pull"), drawn from their own streams
    so the stains stay the same whatever the skew and difficulty."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    (p_all, p_hem), (f_all, f_hem) = _split_classes(n_prelim), _split_classes(n_final)
    total_all, total_hem = n_all + p_all + f_all, n_hem + p_hem + f_hem
    all_ids = [str(i) for i in rng.choice(np.arange(1, max(99, 2 * total_all) + 1), total_all, replace=False)]
    hem_pool = np.array([i for i in range(1, max(49, 2 * total_hem) + 1) if i != 3])
    hem_ids = ["H3"] + [f"H{i}" for i in rng.choice(hem_pool, total_hem - 1, replace=False)]  # H3: the h3 quirk
    patients = [(p, True, patient_style(rng, True)) for p in all_ids]
    patients += [(p, False, patient_style(rng, False)) for p in hem_ids]
    effects = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    for _, _, style in patients:
        style["flip_share"] = flip_share(effects, difficulty)
    pulls = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5,)))   # own stream: counts stay put
    for _, is_all, style in patients:   # class position pulled toward the other class (same Beta as the flips)
        style["pull"] = flip_share(pulls, difficulty)
        style["blastness"] += style["pull"] * ((0.0 if is_all else 1.0) - style["blastness"])
    take = lambda ids, a, b: [x for x in patients if x[0] in ids[a:b]]  # noqa: E731
    plan = {
        "train": (take(all_ids, 0, n_all), take(hem_ids, 0, n_hem)),
        "prelim": (take(all_ids, n_all, n_all + p_all), take(hem_ids, n_hem, n_hem + p_hem)),
        "final": (take(all_ids, n_all + p_all, None), take(hem_ids, n_hem + p_hem, None)),
    }
    for split in SPLITS:                # each class of each split holds exactly patients x images_per_patient cells
        for group in plan[split]:
            for (_, _, style), count in zip(group, _cell_counts(effects, len(group), images_per_patient, cell_skew)):
                style["cells"] = count
    return {split: all_group + hem_group for split, (all_group, hem_group) in plan.items()}


def _cell_counts(rng: np.random.Generator, n: int, mean: int, skew: float) -> list[int]:
    """n cell counts summing to n * mean: at least MIN_CELLS (or mean, if smaller) each, the rest shared out in
    proportion to log-normal(0, skew) weights by largest remainder. skew 0: every patient gets `mean`."""
    weights = rng.lognormal(0.0, skew, n) if n else np.zeros(0)
    if skew <= 0 or n == 0:
        return [mean] * n
    floor = min(MIN_CELLS, mean)
    raw = weights / weights.sum() * (n * mean - n * floor)          # n shares of the cells above the floor
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[:n * mean - n * floor - counts.sum()]] += 1   # largest remainders first
    return (counts + floor).tolist()


def _cell_names(rng: np.random.Generator, patient: str, label: str, count: int) -> list[str]:
    """UID_<patient>_<image>_<cell>_<all|hem>: 1-4 cells per smear image, image numbers with gaps."""
    names, image = [], 0
    while len(names) < count:
        image += int(rng.integers(1, 3))
        names += [f"UID_{patient}_{image}_{c}_{label}" for c in range(1, int(rng.integers(1, 5)) + 1)]
    return names[:count]


def _cnmc_name(is_all: bool) -> str:
    """'all' or 'hem': C-NMC's folder and file-name suffix of a cell of this class."""
    return CNMC_NAMES[ALL if is_all else HEM]


def _cells(names_rng: np.random.Generator, seed: int, split: str, patients: list) -> list[tuple]:
    """(file name stem, is_all, render seed key, style, patient, cell blastness) of every cell of one split, patient
    by patient. A patient's flipped cells (each with probability flip_share) sit at 1 - its blastness."""
    cells = []
    for serial, (pid, is_all, style) in enumerate(patients):
        flips = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4, SPLITS.index(split), serial)))
        flipped = flips.random(style["cells"]) < style["flip_share"]
        style["flipped_cells"] = int(flipped.sum())
        for i, name in enumerate(_cell_names(names_rng, pid, _cnmc_name(is_all), style["cells"])):
            if pid == "H3" and i == 0:
                name = name.replace("UID_H3_", "UID_h3_")   # the real release's lower-case quirk
            blastness = 1.0 - style["blastness"] if flipped[i] else style["blastness"]
            cells.append((name, is_all, (2, SPLITS.index(split), serial, i), style, pid, blastness))
    return cells


def _training_tasks(top: Path, seed: int, patients: list, cells: list) -> tuple[list, dict]:
    """Render tasks of the training folds and each fold's patients by class. Patients go round-robin per class, so
    every fold holds both classes."""
    folds = {f"fold_{k}": {CNMC_NAMES[ALL]: [], CNMC_NAMES[HEM]: []} for k in range(3)}
    seen, fold_of = {True: 0, False: 0}, {}
    for pid, is_all, _ in patients:
        fold_of[pid] = f"fold_{seen[is_all] % 3}"
        seen[is_all] += 1
        folds[fold_of[pid]][_cnmc_name(is_all)].append(pid)
    for fold in folds:
        for name in CNMC_NAMES.values():
            (top / TRAINING / fold / name).mkdir(parents=True)
    tasks = [(str(top / TRAINING / fold_of[pid] / _cnmc_name(is_all) / f"{name}.bmp"), seed, key,
              blastness, style) for name, is_all, key, style, pid, blastness in cells]
    return tasks, folds


def _numbered_tasks(folder: Path, seed: int, cells: list, order: np.ndarray) -> tuple[list, list]:
    """A test set's render tasks, files numbered 1.. in `order` (shuffled across patients, as in the release), and
    its rows (original name, numbered name, label)."""
    folder.mkdir(parents=True)
    tasks, rows = [], []
    for number, j in enumerate(order, start=1):
        name, is_all, key, style, _, blastness = cells[j]
        tasks.append((str(folder / f"{number}.bmp"), seed, key, blastness, style))
        rows.append((f"{name}.bmp", f"{number}.bmp", ALL if is_all else HEM))
    return tasks, rows


def _effects(plan: dict) -> dict:
    """What was drawn for every patient (GENERATED.json's "patient_effects"): split, class, cells, difficulty and
    shifts."""
    return {pid: {"split": split, "class": _cnmc_name(is_all), "cells": style["cells"],
                  "flip_share": round(style["flip_share"], 4), "flipped_cells": style["flipped_cells"],
                  "pull": round(style["pull"], 4),
                  "blastness": round(style["blastness"], 4), "area_offset": round(style["area_offset"], 1),
                  "brightness": round(style["brightness"], 4), "gain": [round(float(g), 4) for g in style["gain"]],
                  "offset": [round(float(o), 2) for o in style["offset"]]}
            for split in SPLITS for pid, is_all, style in plan[split]}


def _render(tasks: list, workers: int | None) -> None:
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, int(workers))
    if workers == 1:
        for task in tasks:
            _write_cell(task)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_cell, tasks, chunksize=16))


def _write_tree(top: Path, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, cell_skew, difficulty,
                workers) -> dict:
    """Every folder, file and the labels CSV of the tree under `top`; returns the marker's contents."""
    plan = _plan(seed, n_all, n_hem, n_prelim, n_final, images_per_patient, cell_skew, difficulty)
    names_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    tasks, folds = _training_tasks(top, seed, plan["train"], _cells(names_rng, seed, "train", plan["train"]))
    rows = {}
    for split, folder in TEST_FOLDERS.items():
        cells = _cells(names_rng, seed, split, plan[split])
        split_tasks, rows[split] = _numbered_tasks(top / folder, seed, cells, names_rng.permutation(len(cells)))
        tasks += split_tasks
    with open(top / VALIDATION / LABELS_CSV, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(CSV_COLUMNS))
        writer.writerows(rows["prelim"])
    _render(tasks, workers)
    return {
        "generated": True, "generator": "leukmodels.synthetic", "version": GENERATOR_VERSION, "note": NOTE,
        "seed": seed,
        "parameters": dict(n_all=n_all, n_hem=n_hem, images_per_patient=images_per_patient,
                           n_prelim=n_prelim, n_final=n_final, cell_skew=cell_skew, difficulty=difficulty),
        "counts": {"train": (n_all + n_hem) * images_per_patient, "train_all": n_all * images_per_patient,
                   "train_hem": n_hem * images_per_patient, "prelim": len(rows["prelim"]),
                   "prelim_all": sum(r[2] for r in rows["prelim"]), "final": len(rows["final"])},
        "patients": {"train": folds, **{split: [pid for pid, _, _ in plan[split]] for split in TEST_FOLDERS}},
        "final_test_labels": {numbered: label for _, numbered, label in rows["final"]},  # hidden in the real release
        "patient_effects": _effects(plan),
    }


def generate(out, n_all: int = DEFAULTS["n_all"], n_hem: int = DEFAULTS["n_hem"],
             images_per_patient: int = DEFAULTS["images_per_patient"], n_prelim: int = DEFAULTS["n_prelim"],
             n_final: int = DEFAULTS["n_final"], seed: int = 0, workers: int | None = None,
             cell_skew: float = DEFAULTS["cell_skew"], difficulty: float = DEFAULTS["difficulty"]) -> Path:
    """Write a generated C-NMC tree to `out/C-NMC_Leukemia` (atomically: built in a sibling, then renamed).

    n_all / n_hem: training patients per class, spread over fold_0..2; n_prelim / n_final: patients of the labelled
    preliminary and unlabelled final test (about 2/3 ALL). A patient gets `images_per_patient` cells on average
    (exactly, with cell_skew 0); each class of each split holds exactly its patients x images_per_patient cells.
    difficulty: the mean share of a patient's cells drawn at the other class's position, and the mean share of the
    way its class position is pulled toward the other class (0: neither).
    Returns the `C-NMC_Leukemia` folder. Refuses to write over an existing one.
    """
    for flag, value, low in (("n_all", n_all, 1), ("n_hem", n_hem, 1), ("images_per_patient", images_per_patient, 1),
                             ("n_prelim", n_prelim, 0), ("n_final", n_final, 0), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"synthetic.generate: {flag} must be an integer >= {low}, got {value!r}")
    for flag, value, high in (("cell_skew", cell_skew, 3.0), ("difficulty", difficulty, 0.5)):
        if not isinstance(value, (int, float)) or not 0 <= value <= high:
            raise ValueError(f"synthetic.generate: {flag} must be a number from 0 to {high:g}, got {value!r}")
    out = Path(out)
    top = out / KAGGLE_TOP
    if top.exists():
        raise ValueError(f"synthetic.generate: {top} already exists; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{KAGGLE_TOP}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        marker = _write_tree(tmp, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, cell_skew, difficulty,
                             workers)
        (tmp / GENERATED_MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # written last: a complete tree
        os.rename(tmp, top)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return top


def default_root() -> Path:
    """Where the default generated set lives: $LEUKTUNE_DATA, else ~/.cache/leukemia-tune/generated-cnmc-v<version>
    (a new generator version builds a new set, never reusing an older version's)."""
    env = os.environ.get("LEUKTUNE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "leukemia-tune" / f"generated-cnmc-v{GENERATOR_VERSION}"


def built(root: Path) -> bool:
    """Whether `root` holds a complete generated tree (its marker is written last)."""
    return (root / KAGGLE_TOP / GENERATED_MARKER).is_file()


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Inter-process lock on `path` (fcntl on POSIX, the filelock package elsewhere if it is installed)."""
    try:
        import fcntl
    except ImportError:                                    # not POSIX
        try:
            from filelock import FileLock
        except ImportError:
            yield
            return
        with FileLock(str(path)):
            yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_dataset(root=None, workers: int | None = None) -> Path:
    """The default generated set (DEFAULTS, seed 0): built once, atomically, then reused. Returns its C-NMC_Leukemia.

    The whole root is built in a temporary sibling and renamed into place under an inter-process lock, so an
    interrupted build leaves no half tree and two processes never build it twice.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    if built(root):
        return root / KAGGLE_TOP
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if built(root):                                    # another process finished it while we waited
            return root / KAGGLE_TOP
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"synthetic.default_dataset: {root} exists but holds no complete generated set "
                             f"({KAGGLE_TOP}/{GENERATED_MARKER} missing); remove it or point LEUKTUNE_DATA elsewhere")
        for stale in root.parent.glob(f".{root.name}.tmp-*"):   # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        try:
            generate(tmp, seed=0, workers=workers, **DEFAULTS)
            if root.exists():
                root.rmdir()                               # empty (checked above)
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root / KAGGLE_TOP


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leukmodels.synthetic",
        description="Write a GENERATED C-NMC-2019-like data set (synthetic cells, exact Kaggle layout, names and "
                    "labels CSV) to OUT/C-NMC_Leukemia. Results on it are not C-NMC results.")
    parser.add_argument("--out", required=True, help="folder to write C-NMC_Leukemia/ into")
    for flag, key, what in (("--all-patients", "n_all", "training ALL patients, spread over fold_0..2"),
                            ("--hem-patients", "n_hem", "training HEM patients, spread over fold_0..2"),
                            ("--images-per-patient", "images_per_patient", "mean cells per patient"),
                            ("--prelim-patients", "n_prelim", "labelled preliminary-test patients, about 2/3 ALL"),
                            ("--final-patients", "n_final", "unlabelled final-test patients, about 2/3 ALL")):
        parser.add_argument(flag, type=int, default=DEFAULTS[key], help=f"{what} (default %(default)s)")
    parser.add_argument("--cell-skew", type=float, default=DEFAULTS["cell_skew"], help="log-normal sigma of cells "
                        "per patient; 0: every patient gets the mean (default %(default)s)")
    parser.add_argument("--difficulty", type=float, default=DEFAULTS["difficulty"], help="mean share of a patient's "
                        "cells drawn at the other class's position, and of the way its class position is pulled "
                        "toward the other class, 0 to 0.5 (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        top = generate(args.out, n_all=args.all_patients, n_hem=args.hem_patients,
                       images_per_patient=args.images_per_patient, n_prelim=args.prelim_patients,
                       n_final=args.final_patients, seed=args.seed, workers=args.workers,
                       cell_skew=args.cell_skew, difficulty=args.difficulty)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    marker = json.loads((top / GENERATED_MARKER).read_text())
    c, p = marker["counts"], marker["parameters"]
    print(f"GENERATED data (synthetic cells, not C-NMC) written to {top} "
          f"in {time.perf_counter() - start:.1f} s, seed {args.seed}:")
    print(f"  training_data/fold_0..2: {c['train']} cells ({c['train_all']} ALL, {c['train_hem']} HEM) "
          f"from {p['n_all']} ALL + {p['n_hem']} HEM patients")
    print(f"  validation_data: {c['prelim']} numbered cells ({c['prelim_all']} ALL) from {p['n_prelim']} patients, "
          f"labels in {LABELS_CSV}")
    print(f"  testing_data: {c['final']} numbered unlabelled cells from {p['n_final']} patients")
    effects = marker["patient_effects"].values()
    cells, flips = sorted(e["cells"] for e in effects), sorted(e["flip_share"] for e in effects)
    print(f"  patients: {cells[0]}-{cells[-1]} cells (median {cells[len(cells) // 2]}), flipped share "
          f"{flips[0]:.2f}-{flips[-1]:.2f} (median {flips[len(flips) // 2]:.2f}); see patient_effects in the marker")
    print(f"  marker: {top / GENERATED_MARKER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
