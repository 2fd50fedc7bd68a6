"""A generated stand-in for C-NMC 2019, written in the exact Kaggle layout (the real data cannot be downloaded here).

    python -m leukmodels.synthetic --out DIR [--all-patients 16 --hem-patients 8 --images-per-patient 32 ...]

writes DIR/C-NMC_Leukemia/{training_data/fold_0|1|2/{all,hem}, validation_data/..., testing_data/...} plus a
GENERATED.json marker: every result on this tree is a result on generated cells, NOT a C-NMC result. Each cell is
drawn by `leukmodels.cells` (calibrated to real cells, with its sources); each patient has its own class position,
stain and illumination, so some patients are easy, some hard, and a model can memorise them. Deterministic by seed,
whatever --workers.
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

from leukmodels.cells import patient_style, render_cell
from leukmodels.data.layout import (CSV_COLUMNS, FINAL_DIR, GENERATED_MARKER, KAGGLE_DIRS, KAGGLE_TOP, LABELS_CSV,
                                    PRELIM_DIR)

TRAINING, VALIDATION, TESTING = KAGGLE_DIRS
GENERATOR_VERSION = 1
NOTE = ("Synthetic C-NMC-like cells written by leukmodels.synthetic. Any result on this tree is a result on "
        "generated data, NOT a C-NMC 2019 result.")
DEFAULTS = dict(n_all=16, n_hem=8, images_per_patient=32, n_prelim=8, n_final=4)
SPLITS = ("train", "prelim", "final")  # in this order: the file-name generator is drawn from split after split
TEST_FOLDERS = {"prelim": f"{VALIDATION}/{PRELIM_DIR}", "final": f"{TESTING}/{FINAL_DIR}"}


def _write_cell(task: tuple) -> None:
    """Worker: render one cell from its own seed (so output is independent of worker count) and write the BMP."""
    path, seed, key, blastness, patient = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    Image.fromarray(render_cell(rng, blastness, patient), "RGB").save(path, format="BMP")   # 24-bit BMP


def _split_classes(n: int) -> tuple[int, int]:
    """About two thirds ALL, as in the real release (8 -> 5 ALL + 3 HEM)."""
    n_all = int(round(n * 2 / 3))
    return (n_all, n - n_all) if n != 1 else (1, 0)


def _plan(seed: int, n_all: int, n_hem: int, n_prelim: int, n_final: int) -> dict:
    """Patient ids and styles per split: {split: [(patient_id, is_all, style)]}, all patients disjoint."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    (p_all, p_hem), (f_all, f_hem) = _split_classes(n_prelim), _split_classes(n_final)
    total_all, total_hem = n_all + p_all + f_all, n_hem + p_hem + f_hem
    all_ids = [str(i) for i in rng.choice(np.arange(1, max(99, 2 * total_all) + 1), total_all, replace=False)]
    hem_pool = np.array([i for i in range(1, max(49, 2 * total_hem) + 1) if i != 3])
    hem_ids = ["H3"] + [f"H{i}" for i in rng.choice(hem_pool, total_hem - 1, replace=False)]  # H3: the h3 quirk
    patients = [(p, True, patient_style(rng, True)) for p in all_ids]
    patients += [(p, False, patient_style(rng, False)) for p in hem_ids]
    take = lambda ids, a, b: [x for x in patients if x[0] in ids[a:b]]  # noqa: E731
    return {
        "train": take(all_ids, 0, n_all) + take(hem_ids, 0, n_hem),
        "prelim": take(all_ids, n_all, n_all + p_all) + take(hem_ids, n_hem, n_hem + p_hem),
        "final": take(all_ids, n_all + p_all, None) + take(hem_ids, n_hem + p_hem, None),
    }


def _cell_names(rng: np.random.Generator, patient: str, label: str, count: int) -> list[str]:
    """UID_<patient>_<image>_<cell>_<all|hem>: 1-4 cells per smear image, image numbers with gaps."""
    names, image = [], 0
    while len(names) < count:
        image += int(rng.integers(1, 3))
        names += [f"UID_{patient}_{image}_{c}_{label}" for c in range(1, int(rng.integers(1, 5)) + 1)]
    return names[:count]


def _cells(names_rng: np.random.Generator, split: str, patients: list, per_patient: int) -> list[tuple]:
    """(file name stem, is_all, render seed key, style, patient) of every cell of one split, patient by patient."""
    cells = []
    for serial, (pid, is_all, style) in enumerate(patients):
        for i, name in enumerate(_cell_names(names_rng, pid, "all" if is_all else "hem", per_patient)):
            if pid == "H3" and i == 0:
                name = name.replace("UID_H3_", "UID_h3_")   # the real release's lower-case quirk
            cells.append((name, is_all, (2, SPLITS.index(split), serial, i), style, pid))
    return cells


def _training_tasks(top: Path, seed: int, patients: list, cells: list) -> tuple[list, dict]:
    """Render tasks of the training folds and each fold's patients by class. Patients go round-robin per class, so
    every fold holds both classes."""
    folds = {f"fold_{k}": {"all": [], "hem": []} for k in range(3)}
    seen, fold_of = {True: 0, False: 0}, {}
    for pid, is_all, _ in patients:
        fold_of[pid] = f"fold_{seen[is_all] % 3}"
        seen[is_all] += 1
        folds[fold_of[pid]]["all" if is_all else "hem"].append(pid)
    for fold in folds:
        for label in ("all", "hem"):
            (top / TRAINING / fold / label).mkdir(parents=True)
    tasks = [(str(top / TRAINING / fold_of[pid] / ("all" if is_all else "hem") / f"{name}.bmp"), seed, key,
              style["blastness"], style) for name, is_all, key, style, pid in cells]
    return tasks, folds


def _numbered_tasks(folder: Path, seed: int, cells: list, order: np.ndarray) -> tuple[list, list]:
    """A test set's render tasks, files numbered 1.. in `order` (shuffled across patients, as in the release), and
    its rows (original name, numbered name, label)."""
    folder.mkdir(parents=True)
    tasks, rows = [], []
    for number, j in enumerate(order, start=1):
        name, is_all, key, style, _ = cells[j]
        tasks.append((str(folder / f"{number}.bmp"), seed, key, style["blastness"], style))
        rows.append((f"{name}.bmp", f"{number}.bmp", int(is_all)))
    return tasks, rows


def _render(tasks: list, workers: int | None) -> None:
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, int(workers))
    if workers == 1:
        for task in tasks:
            _write_cell(task)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_cell, tasks, chunksize=16))


def _write_tree(top: Path, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, workers) -> dict:
    """Every folder, file and the labels CSV of the tree under `top`; returns the marker's contents."""
    plan = _plan(seed, n_all, n_hem, n_prelim, n_final)
    names_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    tasks, folds = _training_tasks(top, seed, plan["train"], _cells(names_rng, "train", plan["train"],
                                                                      images_per_patient))
    rows = {}
    for split, folder in TEST_FOLDERS.items():
        cells = _cells(names_rng, split, plan[split], images_per_patient)
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
                           n_prelim=n_prelim, n_final=n_final),
        "counts": {"train": (n_all + n_hem) * images_per_patient, "train_all": n_all * images_per_patient,
                   "train_hem": n_hem * images_per_patient, "prelim": len(rows["prelim"]),
                   "prelim_all": sum(r[2] for r in rows["prelim"]), "final": len(rows["final"])},
        "patients": {"train": folds, **{split: [pid for pid, _, _ in plan[split]] for split in TEST_FOLDERS}},
        "final_test_labels": {numbered: label for _, numbered, label in rows["final"]},  # hidden in the real release
    }


def generate(out, n_all: int = DEFAULTS["n_all"], n_hem: int = DEFAULTS["n_hem"],
             images_per_patient: int = DEFAULTS["images_per_patient"], n_prelim: int = DEFAULTS["n_prelim"],
             n_final: int = DEFAULTS["n_final"], seed: int = 0, workers: int | None = None) -> Path:
    """Write a generated C-NMC tree to `out/C-NMC_Leukemia` (atomically: built in a sibling, then renamed).

    n_all / n_hem: training patients per class, spread over fold_0..2; n_prelim / n_final: patients of the labelled
    preliminary and unlabelled final test (about 2/3 ALL). Every patient gets `images_per_patient` cells.
    Returns the `C-NMC_Leukemia` folder. Refuses to write over an existing one.
    """
    for flag, value, low in (("n_all", n_all, 1), ("n_hem", n_hem, 1), ("images_per_patient", images_per_patient, 1),
                             ("n_prelim", n_prelim, 0), ("n_final", n_final, 0), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"synthetic.generate: {flag} must be an integer >= {low}, got {value!r}")
    out = Path(out)
    top = out / KAGGLE_TOP
    if top.exists():
        raise ValueError(f"synthetic.generate: {top} already exists; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{KAGGLE_TOP}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        marker = _write_tree(tmp, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, workers)
        (tmp / GENERATED_MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # written last: a complete tree
        os.rename(tmp, top)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return top


def default_root() -> Path:
    """Where the default generated set lives: $LEUKTUNE_DATA, else ~/.cache/leukemia-tune/generated-cnmc-v1."""
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
                            ("--images-per-patient", "images_per_patient", "cells per patient"),
                            ("--prelim-patients", "n_prelim", "labelled preliminary-test patients, about 2/3 ALL"),
                            ("--final-patients", "n_final", "unlabelled final-test patients, about 2/3 ALL")):
        parser.add_argument(flag, type=int, default=DEFAULTS[key], help=f"{what} (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        top = generate(args.out, n_all=args.all_patients, n_hem=args.hem_patients,
                       images_per_patient=args.images_per_patient, n_prelim=args.prelim_patients,
                       n_final=args.final_patients, seed=args.seed, workers=args.workers)
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
    print(f"  marker: {top / GENERATED_MARKER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
