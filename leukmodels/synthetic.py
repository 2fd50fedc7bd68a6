"""A generated stand-in for C-NMC 2019, written in the exact Kaggle layout (the real data cannot be downloaded here).

    python -m leukmodels.synthetic --out DIR [--all-patients 16 --hem-patients 8 --images-per-patient 32 ...]

writes DIR/C-NMC_Leukemia/{training_data/fold_0|1|2/{all,hem}, validation_data/..., testing_data/...} plus a
GENERATED.json marker: every result on this tree is a result on generated cells, NOT a C-NMC result.

Cells follow what DESIGN.md section 2 measured on real ones: one violet cell on black in a 450x450 24-bit BMP,
foreground mean RGB about (70, 30, 80) (+-8 per channel cell to cell, +-10 within a cell: mottled chromatin), a
nucleus filling most of the cell inside a thin paler rim, round to irregular contours (radial Fourier series) with
occasional notches and blebs, foreground area about 37,000 px (ALL) vs 31,000 px (HEM) with a spread of 7-9k px.
Class signal is shared by shape and texture: blasts are larger, with a higher nucleus:cytoplasm ratio and finer,
more even chromatin. Each patient has a "blastness" (ALL about 1, HEM about 0) that scales all three, so some
patients are easy and some hard, plus its own stain gain/offset, brightness and illumination gradient, which a model
can memorise: patient-level splits matter here as on the real data. Deterministic by seed, whatever --workers.
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

FRAME = 450                                          # real C-NMC frames are 450 x 450
TOP = "C-NMC_Leukemia"
MARKER = "GENERATED.json"
GENERATOR_VERSION = 1
NOTE = ("Synthetic C-NMC-like cells written by leukmodels.synthetic. Any result on this tree is a result on "
        "generated data, NOT a C-NMC 2019 result.")
DEFAULTS = dict(n_all=16, n_hem=8, images_per_patient=32, n_prelim=8, n_final=4)

# Class anchors (HEM = blastness 0, ALL = blastness 1); a cell interpolates between them by its patient's blastness.
AREA = (31_000.0, 37_000.0)             # px: DESIGN.md section 2
AREA_CELL_SD, AREA_PATIENT_SD = 6_800.0, 2_500.0
NC_RATIO = (0.845, 0.895)                # nucleus radius / cell radius: blasts have less cytoplasm
CHROMATIN_SIGMA = (2.3, 1.7)            # px, Gaussian scale of the chromatin grain: blasts finer
CHROMATIN_AMP = (6.0, 5.4)              # grey levels: normal cells more clumped
NUCLEUS_RGB = np.array([66.0, 26.0, 78.0], np.float32)
CYTOPLASM_RGB = np.array([82.0, 42.0, 90.0], np.float32)
STAIN_DIR = np.array([1.0, 0.8, 0.9], np.float32)   # texture moves a pixel along paler <-> darker stain


def _lerp(pair, t):
    return pair[0] + t * (pair[1] - pair[0])


_FREQ2: dict[int, np.ndarray] = {}


def _smooth_noise(rng: np.random.Generator, side: int, sigmas: tuple[float, ...]) -> list[np.ndarray]:
    """Gaussian-filtered white noise (via FFT), one side x side unit-variance field per sigma, one white field."""
    if side not in _FREQ2:                            # side x (side//2+1): squared spatial frequency
        fy, fx = np.fft.fftfreq(side), np.fft.rfftfreq(side)
        _FREQ2[side] = (fy[:, None] ** 2 + fx[None, :] ** 2).astype(np.float32)
    spectrum = np.fft.rfft2(rng.standard_normal((side, side), dtype=np.float32))
    fields = []
    for s in sigmas:
        field = np.fft.irfft2(spectrum * np.exp(-2 * np.pi ** 2 * s * s * _FREQ2[side]), s=(side, side))
        fields.append((field * np.sqrt(4 * np.pi) * s).astype(np.float32))   # filtered variance is 1/(4 pi s^2)
    return fields


def _radial_profile(rng: np.random.Generator, n: int = 2048) -> np.ndarray:
    """Relative radius r(theta)/R on n angles: Fourier perturbation, sometimes a notch or small blebs."""
    theta = np.linspace(-np.pi, np.pi, n, endpoint=False)
    irregularity = rng.uniform(0.02, 0.11)             # round ... irregular
    k = np.arange(2, 9)[:, None]
    amps = rng.normal(0.0, irregularity / k[:, 0] ** 1.3)[:, None]
    f = 1.0 + (amps * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
    wrap = lambda a: (theta - a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731  angular distance
    bump = lambda height, width: height * np.exp(-wrap(rng.uniform(-np.pi, np.pi)) ** 2 / (2 * width ** 2))  # noqa
    if rng.random() < 0.2:                              # notch
        f -= bump(rng.uniform(0.08, 0.22), rng.uniform(0.06, 0.16))
    for _ in range(rng.integers(1, 4) if rng.random() < 0.25 else 0):   # small blebs
        f += bump(rng.uniform(0.04, 0.09), rng.uniform(0.05, 0.10))
    return np.clip(f, 0.6, 1.35)


def render_cell(rng: np.random.Generator, blastness: float, patient: dict) -> np.ndarray:
    """One 450 x 450 x 3 uint8 frame: a cell whose class features sit at `blastness` (0 = HEM, 1 = ALL)."""
    area = _lerp(AREA, blastness) + patient["area_offset"] + rng.normal(0, AREA_CELL_SD)
    area = float(np.clip(area, 12_000, 70_000))
    profile = _radial_profile(rng)
    radius = np.sqrt(2 * area / (np.mean(profile ** 2) * 2 * np.pi))     # polar area = 1/2 * integral r^2 dtheta
    radius = min(radius, (FRAME / 2 - 14) / profile.max())               # keep the whole cell inside the frame
    cy, cx = FRAME / 2 + rng.uniform(-12, 12, 2)
    # work in a square window around the cell (side a multiple of 32 for the FFT), not the whole frame
    side = min(FRAME, int(np.ceil((2 * radius * profile.max() + 6) / 32)) * 32)
    y0, x0 = (int(np.clip(round(c) - side // 2, 0, FRAME - side)) for c in (cy, cx))
    yy, xx = np.mgrid[y0:y0 + side, x0:x0 + side].astype(np.float32)
    dy, dx = yy - cy, xx - cx                                            # side x side, from the cell centre
    theta = np.arctan2(dy, dx)
    rho = np.hypot(dy, dx)
    bins = ((theta + np.pi) * (len(profile) / (2 * np.pi))).astype(np.int32) % len(profile)
    boundary = radius * profile[bins]                                   # cell radius along each pixel's ray
    cell = rho <= boundary
    nc = _lerp(NC_RATIO, blastness) + rng.normal(0, 0.025)
    ecc, ecc_dir = rng.uniform(0, 0.05), rng.uniform(-np.pi, np.pi)     # nucleus off-centre: rim thinner on one side
    nucleus = rho <= boundary * np.minimum(nc + ecc * np.cos(theta - ecc_dir), 0.97)

    # chromatin grain: class sets scale and contrast, the patient's focus and staining blur both, the cell jitters
    grain_sigma = max(0.8, _lerp(CHROMATIN_SIGMA, blastness) * patient["focus"] + rng.normal(0, 0.25))
    grain, mottle = _smooth_noise(rng, side, (grain_sigma, 7.0))
    grain_amp = max(2.0, _lerp(CHROMATIN_AMP, blastness) * patient["contrast"] + rng.normal(0, 0.7))
    texture = np.where(nucleus, grain_amp * grain, 0.4 * grain_amp * grain) + 4.0 * mottle      # side x side
    base = np.where(nucleus[..., None], NUCLEUS_RGB, CYTOPLASM_RGB)                            # side x side x 3
    rgb = base + rng.normal(0, 5.5, 3).astype(np.float32) + texture[..., None] * STAIN_DIR
    # patient stain and illumination: per-channel gain and offset, brightness, a gentle gradient across the cell
    light = patient["brightness"] * (1 + (patient["gradient"][0] * dy + patient["gradient"][1] * dx) / FRAME)
    rgb = rgb * patient["gain"] * light[..., None] + patient["offset"]
    rgb += 2.5 * rng.standard_normal(rgb.shape, dtype=np.float32)                             # sensor noise
    window = np.clip(rgb, 6, 255).astype(np.uint8)                       # foreground never pure black
    window[~cell] = 0                                                     # segmented cell on black
    frame = np.zeros((FRAME, FRAME, 3), np.uint8)
    frame[y0:y0 + side, x0:x0 + side] = window
    return frame


def _patient_style(rng: np.random.Generator, is_all: bool) -> dict:
    return {
        "blastness": float(rng.normal(1.0, 0.3) if is_all else rng.normal(0.0, 0.25)),
        "area_offset": float(rng.normal(0, AREA_PATIENT_SD)),
        "gain": rng.normal(1.0, 0.04, 3).astype(np.float32),
        "offset": rng.normal(0.0, 3.5, 3).astype(np.float32),
        "brightness": float(rng.normal(1.0, 0.04)),
        "gradient": rng.normal(0.0, 0.12, 2).astype(np.float32),
        "focus": float(np.clip(rng.normal(1.0, 0.12), 0.7, 1.4)),      # scales the chromatin grain size
        "contrast": float(np.clip(rng.normal(1.0, 0.1), 0.7, 1.3)),    # scales the chromatin contrast
    }


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
    patients = [(p, True, _patient_style(rng, True)) for p in all_ids]
    patients += [(p, False, _patient_style(rng, False)) for p in hem_ids]
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
    top = out / TOP
    if top.exists():
        raise ValueError(f"synthetic.generate: {top} already exists; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{TOP}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        marker = _write_tree(tmp, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, workers)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")    # written last: marks a complete tree
        os.rename(tmp, top)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return top


def _write_tree(top: Path, seed, n_all, n_hem, images_per_patient, n_prelim, n_final, workers) -> dict:
    plan = _plan(seed, n_all, n_hem, n_prelim, n_final)
    names_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    tasks, prelim_rows, final_labels = [], [], {}
    patients = {"train": {f"fold_{k}": {"all": [], "hem": []} for k in range(3)}, "prelim": [], "final": []}
    for split in ("train", "prelim", "final"):
        cells = []                                         # (original name, is_all, key, style)
        for serial, (pid, is_all, style) in enumerate(plan[split]):
            label = "all" if is_all else "hem"
            for i, name in enumerate(_cell_names(names_rng, pid, label, images_per_patient)):
                if pid == "H3" and i == 0:
                    name = name.replace("UID_H3_", "UID_h3_")   # the real release's lower-case quirk
                key = (2, {"train": 0, "prelim": 1, "final": 2}[split], serial, i)
                cells.append((name, is_all, key, style, pid))
        if split == "train":
            n_cls = {True: 0, False: 0}
            fold_of = {}
            for pid, is_all, _ in plan[split]:             # round-robin per class: every fold holds both classes
                fold_of[pid] = f"fold_{n_cls[is_all] % 3}"
                n_cls[is_all] += 1
                patients["train"][fold_of[pid]]["all" if is_all else "hem"].append(pid)
            for fold in range(3):
                for label in ("all", "hem"):
                    (top / "training_data" / f"fold_{fold}" / label).mkdir(parents=True)
            for name, is_all, key, style, pid in cells:
                path = top / "training_data" / fold_of[pid] / ("all" if is_all else "hem") / f"{name}.bmp"
                tasks.append((str(path), seed, key, style["blastness"], style))
            continue
        folder = top / ("validation_data/C-NMC_test_prelim_phase_data" if split == "prelim"
                        else "testing_data/C-NMC_test_final_phase_data")
        folder.mkdir(parents=True)
        patients[split] = [pid for pid, _, _ in plan[split]]
        order = names_rng.permutation(len(cells))         # numbered files are shuffled across patients
        for number, j in enumerate(order, start=1):
            name, is_all, key, style, _ = cells[j]
            tasks.append((str(folder / f"{number}.bmp"), seed, key, style["blastness"], style))
            if split == "prelim":
                prelim_rows.append((f"{name}.bmp", f"{number}.bmp", int(is_all)))
            else:
                final_labels[f"{number}.bmp"] = int(is_all)
    csv_path = top / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Patient_ID", "new_names", "labels"])
        writer.writerows(prelim_rows)
    (top / "testing_data" / "C-NMC_test_final_phase_data").mkdir(parents=True, exist_ok=True)

    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, int(workers))
    if workers == 1:
        for task in tasks:
            _write_cell(task)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_cell, tasks, chunksize=16))
    n_train = (n_all + n_hem) * images_per_patient
    return {
        "generated": True, "generator": "leukmodels.synthetic", "version": GENERATOR_VERSION, "note": NOTE,
        "seed": seed,
        "parameters": dict(n_all=n_all, n_hem=n_hem, images_per_patient=images_per_patient,
                           n_prelim=n_prelim, n_final=n_final),
        "counts": {"train": n_train, "train_all": n_all * images_per_patient,
                   "train_hem": n_hem * images_per_patient, "prelim": len(prelim_rows),
                   "prelim_all": sum(r[2] for r in prelim_rows), "final": len(final_labels)},
        "patients": patients,
        "final_test_labels": final_labels,   # hidden in the real release; here for optional scoring only
    }


def default_root() -> Path:
    """Where the default generated set lives: $LEUKTUNE_DATA, else ~/.cache/leukemia-tune/generated-cnmc-v1."""
    env = os.environ.get("LEUKTUNE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "leukemia-tune" / f"generated-cnmc-v{GENERATOR_VERSION}"


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
    if (root / TOP / MARKER).is_file():
        return root / TOP
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if (root / TOP / MARKER).is_file():               # another process finished it while we waited
            return root / TOP
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"synthetic.default_dataset: {root} exists but holds no complete generated set "
                             f"({TOP}/{MARKER} missing); remove it or point LEUKTUNE_DATA elsewhere")
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
    return root / TOP


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
    marker = json.loads((top / MARKER).read_text())
    c, p = marker["counts"], marker["parameters"]
    print(f"GENERATED data (synthetic cells, not C-NMC) written to {top} "
          f"in {time.perf_counter() - start:.1f} s, seed {args.seed}:")
    print(f"  training_data/fold_0..2: {c['train']} cells ({c['train_all']} ALL, {c['train_hem']} HEM) "
          f"from {p['n_all']} ALL + {p['n_hem']} HEM patients")
    print(f"  validation_data: {c['prelim']} numbered cells ({c['prelim_all']} ALL) from {p['n_prelim']} patients, "
          f"labels in C-NMC_test_prelim_phase_data_labels.csv")
    print(f"  testing_data: {c['final']} numbered unlabelled cells from {p['n_final']} patients")
    print(f"  marker: {top / MARKER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
