"""Predict ALL / HEM for cell images with a trained checkpoint.

    python search/predict.py --checkpoint results/.../checkpoint.pt [--tta] [--out preds.csv]
                             [--patients image_patient.csv [--patient-out patients.csv]] IMAGES_OR_FOLDERS...
    python search/predict.py --checkpoint s3://bucket/leukemia-tune/NAME/run_trial_.../checkpoint_000002 cells/

Every image is decoded exactly as in training (leukmodels.data.load_image: whole frame padded square and resized to
the checkpoint config's image_size, uint8 3 x S x S) and scored with leukmodels.metrics.predict_proba, 8-way
dihedral test-time augmentation with --tta. Output CSV (stdout without --out): path, label (ALL|HEM), prob_all.
A label is ALL when P(ALL) > 0.5, as in the metrics. prob_all is calibrated: the checkpoint's temperature (fitted on
validation patients as it trained, leukmodels/calibration.py; none = 1) is applied, which moves no label;
--uncalibrated prints the model's raw P(ALL).

Per patient (search/evaluation/patient_predict.py): --patients FILE, a CSV with columns image,patient (image: the path as given
or the file's name), adds a patient column to the cell CSV and writes one row per patient (patient, cells,
called_all_share, mean_prob_all, call, threshold) to --patient-out (default: beside --out as <name>_patients.csv,
else stderr). The call is ALL when the mean P(ALL) is above --patient-threshold (0.5; evaluate.py's
patient_threshold column is the one chosen on the search's validation patients).

Folders are searched recursively for .bmp/.png/.jpg/.jpeg/.tif/.tiff files. An image that cannot be read gets one
line on stderr ("predict: error: cannot decode image <path>: ...") and is left out of the CSV; the rest are still
predicted. Exit code: 0 when at least one image was predicted (unreadable ones are reported on stderr and summed up
in the last stderr line), 2 when nothing could be predicted, the checkpoint is unusable or the arguments are bad.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from leukmodels.calibration import apply_temperature
from leukmodels.data import DataError, load_image
from leukmodels.data.layout import IMAGE_SUFFIXES
from leukmodels.labels import CLASS_NAMES
from leukmodels.metrics import predict_proba
from search.board import storage
from search.evaluation.patient_predict import read_patients, write_patients


def load_trial_model(checkpoint, device=None):
    """(model in eval mode, TrainConfig, checkpoint file) from a checkpoint file or a directory holding one, local
    or at a storage URI (s3://...: fetched once into the cache, search/board/storage.py; the file is then named by URI)."""
    # here: torch, measured +2-4 s on the --help of evaluate, predict and report
    from leukmodels.checkpoint import CHECKPOINT_FILE, load_model, resolve_checkpoint

    local = _fetched(str(checkpoint))
    path = resolve_checkpoint(local)
    if not path.is_file():  # a Ray checkpoint dir may nest the file one level deeper
        nested = sorted(Path(local).rglob(CHECKPOINT_FILE)) if Path(local).is_dir() else []
        if len(nested) != 1:
            raise FileNotFoundError(f"{checkpoint}: no checkpoint file (expected a file or a folder holding exactly "
                                    f"one checkpoint.pt, found {len(nested)})")
        path = nested[0]
    model, config = load_model(path, device=device)
    if not storage.is_uri(str(checkpoint)):
        return model, config, str(path)
    inside = str(path.relative_to(local)) if path != Path(local) else ""  # the file within a fetched folder
    return model, config, storage.join(str(checkpoint), inside) if inside else str(checkpoint)


def checkpoint_temperature(checkpoint) -> float:
    """The temperature a checkpoint was calibrated with (1 without one), local or at a storage URI (its cached copy)."""
    from leukmodels.checkpoint import load_temperature  # here: torch, see load_trial_model

    return load_temperature(_fetched(str(checkpoint)))


def _fetched(checkpoint: str) -> str:
    """The local path of a checkpoint (a URI's cached copy); FileNotFoundError naming the URI and what failed."""
    try:
        return storage.local_copy(checkpoint)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{checkpoint}: cannot fetch it ({storage.reason(error)})") from None


def expand_images(items: Sequence[str]) -> list[str]:
    """Files as given, folders expanded (recursively, sorted) to their image files; a missing path stays listed so
    that it is reported as unreadable."""
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file()
                         and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(str(path))
    return paths


def load_images(paths: Sequence[str], size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """uint8 N x 3 x size x size of the readable images, their paths, and one error line per unreadable one."""
    images, good, errors = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, size))  # 3 x S x S, the training decoder itself
            good.append(path)
        except (DataError, OSError) as err:  # DataError names the file; a missing file is an OSError
            errors.append(str(err).splitlines()[0] if str(err) else f"cannot read image {path}")
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8)
    return stacked, good, errors


def predict_paths(model, config, paths: Sequence[str], tta: bool = False, device=None, batch_size: int = 256,
                  temperature: float = 1.0):
    """-> (rows [(path, label, prob_all)], error lines). Images are decoded at the checkpoint's image_size; P(ALL)
    is temperature-scaled by `temperature` (1: the model's own)."""
    images, good, errors = load_images(paths, config.image_size)
    prob_all = predict_proba(model, images, batch_size=batch_size, device=device, tta=tta) if len(good) else []
    prob_all = apply_temperature(prob_all, temperature) if len(good) else []
    rows = [(path, CLASS_NAMES[int(p > 0.5)], float(p)) for path, p in zip(good, prob_all)]
    return rows, errors


def write_csv(rows, out) -> None:
    """rows of (path, label, prob_all) or (path, label, prob_all, patient)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("path", "label", "prob_all", "patient")[:len(rows[0]) if rows else 3])
    for path, label, prob, *patient in rows:
        writer.writerow((path, label, repr(prob), *patient))  # repr: full float precision, round-trips exactly


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="search/predict.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or a folder holding checkpoint.pt")
    parser.add_argument("--tta", action="store_true", help="average P(ALL) over the 8 flips/90-degree rotations")
    parser.add_argument("--out", help="CSV file to write (default: stdout)")
    parser.add_argument("--device", help="torch device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--uncalibrated", action="store_true", help="print the model's raw P(ALL), without the "
                        "checkpoint's temperature")
    parser.add_argument("--patients", metavar="CSV", help="CSV with columns image,patient: adds a patient column and "
                        "a per-patient answer")
    parser.add_argument("--patient-out", metavar="CSV", help="per-patient CSV (default: <out>_patients.csv beside "
                        "--out, else stderr)")
    parser.add_argument("--patient-threshold", type=float, default=0.5, help="call a patient ALL when its mean "
                        "P(ALL) is above this (0.5)")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of images")
    args = parser.parse_args(argv)

    try:
        model, config, ckpt_file = load_trial_model(args.checkpoint, device=args.device)
        temperature = 1.0 if args.uncalibrated else checkpoint_temperature(ckpt_file)
    except (FileNotFoundError, ValueError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    paths = expand_images(args.images)
    if not paths:
        print(f"predict: error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    try:
        patient_of = read_patients(args.patients, paths) if args.patients else None
    except ValueError as err:  # the file, a column or an image's patient: the message names it
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    rows, errors = predict_paths(model, config, paths, tta=args.tta, device=args.device, batch_size=args.batch_size,
                                 temperature=temperature)
    for line in errors:
        print(f"predict: error: {line}", file=sys.stderr)
    if not rows:
        print(f"predict: error: none of the {len(paths)} image(s) could be read; nothing predicted", file=sys.stderr)
        return 2
    if patient_of is not None:
        rows = [(*row, patient_of[row[0]]) for row in rows]
    if args.out:
        buffer = io.StringIO()
        write_csv(rows, buffer)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(buffer.getvalue())
    else:
        write_csv(rows, sys.stdout)
    if patient_of is not None:
        write_patients(rows, args.patient_threshold, args.patient_out, args.out)
    print(f"predict: {len(rows)} image(s) predicted, {len(errors)} unreadable"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
