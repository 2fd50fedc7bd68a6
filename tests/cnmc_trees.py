"""Small fake C-NMC 2019 trees for tests: the real folder and file names and quirks, tiny images.

    top = kaggle_tree(tmp_path)                      # tmp_path/C-NMC_Leukemia/...
    top = tcia_tree(tmp_path, nested=True)           # tmp_path/C-NMC/C-NMC_training_data/C-NMC_training_data/...
    expected = expected_counts()                     # what discover() must find in either tree

Quirks covered: H-prefixed normal patients, the lower-case `h3` patient, numbered prelim-test images labelled
through the CSV (original names in Patient_ID), numbered unlabelled final-test images of two frame sizes, the
nested same-named folder (TCIA), the labels CSV beside or inside the prelim folder.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LABELS_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
SUFFIX = {1: "all", 0: "hem"}


@dataclass(frozen=True)
class Patient:
    name: str  # as written in file names: "11", "H21", "h3"
    label: int  # 1 = ALL, 0 = HEM
    images: int
    fold: int = 0  # training fold; ignored for prelim patients

    @property
    def normalised(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class TreeSpec:
    training: tuple[Patient, ...]
    prelim: tuple[Patient, ...]
    final_images: int = 4
    image_size: int = 16  # training and prelim frames are image_size x image_size
    final_size: int = 20  # some final-test frames are larger (the real ~600x600 copies)
    seed: int = 0


def default_spec() -> TreeSpec:
    """8 ALL + 5 HEM training patients over 3 folds (one HEM written 'h3'), 3 ALL + 2 HEM prelim patients."""
    all_names, hem_names = [str(n) for n in range(11, 19)], ["H21", "H22", "h3", "H24", "H25"]
    training = [Patient(name, 1, 2 + i % 2, fold=i % 3) for i, name in enumerate(all_names)]
    training += [Patient(name, 0, 2 + i % 2, fold=i % 3) for i, name in enumerate(hem_names)]
    prelim = (Patient("31", 1, 2), Patient("32", 1, 3), Patient("33", 1, 2), Patient("H34", 0, 2),
              Patient("H35", 0, 2))
    return TreeSpec(tuple(training), prelim)


def tiny_spec(all_patients: int, hem_patients: int, images: int = 2) -> TreeSpec:
    """Training only, one fold: for split edge cases."""
    training = [Patient(str(10 + i), 1, images) for i in range(all_patients)]
    training += [Patient(f"H{50 + i}", 0, images) for i in range(hem_patients)]
    return TreeSpec(tuple(training), (), final_images=0)


def cnmc_name(patient: str, image: int, cell: int, label: int) -> str:
    return f"UID_{patient}_{image}_{cell}_{SUFFIX[label]}.bmp"


def write_image(path: Path, size: int | tuple[int, int] = 16, mode: str = "RGB", seed: int = 0) -> Path:
    """A small random image (a bright square on black) in any PIL mode; returns path."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), np.uint8)  # H x W x 3, black background
    top, bottom, left, right = height // 4, max(3 * height // 4, 1), width // 4, max(3 * width // 4, 1)
    pixels[top:bottom, left:right] = rng.integers(40, 256, (bottom - top, right - left, 3))
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # uint16 -> mode I;16
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _training_files(spec: TreeSpec):
    """(fold, class folder, file name, seed) for every training image."""
    seed = spec.seed * 100_000
    for patient in spec.training:
        for image in range(patient.images):
            seed += 1
            yield patient.fold, SUFFIX[patient.label], cnmc_name(patient.name, image + 1, 1, patient.label), seed


def _prelim_rows(spec: TreeSpec):
    """[(number, original name, label)] with numbers shuffled so they do not follow patients or classes."""
    originals = [(cnmc_name(p.name, i + 1, 2, p.label), p.label) for p in spec.prelim for i in range(p.images)]
    order = np.random.default_rng(spec.seed).permutation(len(originals))
    return [(int(number) + 1, *originals[index]) for number, index in enumerate(order)]


def write_training(folder: Path, spec: TreeSpec) -> None:
    for fold, class_dir, name, seed in _training_files(spec):
        write_image(folder / f"fold_{fold}" / class_dir / name, spec.image_size, seed=seed)


def write_prelim(folder: Path, csv_path: Path | None, spec: TreeSpec) -> None:
    rows = _prelim_rows(spec)
    for number, _, _ in rows:
        write_image(folder / f"{number}.bmp", spec.image_size, seed=900_000 + number)
    if csv_path is not None:
        write_labels_csv(csv_path, [(original, f"{number}.bmp", label) for number, original, label in rows])


def write_labels_csv(path: Path, rows, header=("Patient_ID", "new_names", "labels")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_final(folder: Path, spec: TreeSpec) -> None:
    for number in range(1, spec.final_images + 1):
        size = spec.final_size if number % 2 == 0 else spec.image_size
        write_image(folder / f"{number}.bmp", size, seed=800_000 + number)


def kaggle_tree(base: Path, spec: TreeSpec | None = None) -> Path:
    """base/C-NMC_Leukemia/{training_data,validation_data,testing_data}; returns the C-NMC_Leukemia folder."""
    spec = spec or default_spec()
    top = Path(base) / "C-NMC_Leukemia"
    write_training(top / "training_data", spec)
    if spec.prelim:
        write_prelim(top / "validation_data" / "C-NMC_test_prelim_phase_data",
                     top / "validation_data" / LABELS_CSV, spec)
    if spec.final_images:
        write_final(top / "testing_data" / "C-NMC_test_final_phase_data", spec)
    return top


def tcia_tree(base: Path, spec: TreeSpec | None = None, nested: bool = True, csv_inside: bool = False) -> Path:
    """base/C-NMC/{C-NMC_training_data,C-NMC_test_prelim_phase_data,C-NMC_test_final_phase_data}, each nested in a
    same-named folder when `nested`; the labels CSV beside the prelim folder, or inside its outer folder."""
    spec = spec or default_spec()
    top = Path(base) / "C-NMC"

    def part(name: str) -> Path:
        return top / name / name if nested else top / name

    write_training(part("C-NMC_training_data"), spec)
    if spec.prelim:
        csv_path = top / "C-NMC_test_prelim_phase_data" / LABELS_CSV if csv_inside else top / LABELS_CSV
        write_prelim(part("C-NMC_test_prelim_phase_data"), csv_path, spec)
    if spec.final_images:
        write_final(part("C-NMC_test_final_phase_data"), spec)
    return top


def expected_counts(spec: TreeSpec | None = None) -> dict:
    """What discover() must report: images per source and class, images per (normalised) patient."""
    spec = spec or default_spec()
    per_source = Counter()
    for patient in spec.training:
        per_source[(f"fold_{patient.fold}", patient.label)] += patient.images
    for patient in spec.prelim:
        per_source[("prelim_test", patient.label)] += patient.images
    per_patient = Counter()
    for patient in (*spec.training, *spec.prelim):
        per_patient[patient.normalised] += patient.images
    return {
        "per_source_class": dict(per_source),
        "per_patient": dict(per_patient),
        "training": sum(p.images for p in spec.training),
        "training_all": sum(p.images for p in spec.training if p.label == 1),
        "training_hem": sum(p.images for p in spec.training if p.label == 0),
        "prelim": sum(p.images for p in spec.prelim),
        "final": spec.final_images,
        "patient_class": {p.normalised: p.label for p in (*spec.training, *spec.prelim)},
    }


def write_bomb_png(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side 1-bit pixels (20000: 400M, a decompression bomb to PIL; 10000: 100M,
    above PIL's warning limit) in a few dozen bytes: nothing behind the header decodes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # width, height, 1 bit, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path
