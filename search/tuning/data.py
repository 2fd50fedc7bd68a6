"""Data for one search: discover the root, split by patient, decode at every image size, `ray.put` once.

    data = prepare_data(root=None, image_sizes=[32], split_seed=0)   # no Ray needed
    refs = data.put()                                                # {32: {"train": ObjectRef, "val": ObjectRef}}

Every trial gets the same object refs (through `tune.with_parameters`), so each node holds one copy of each array in
its object store and every Train worker reads it zero-copy (numpy arrays come back from `ray.get` as read-only views
of shared memory). The held-out test patients are never decoded here: the search sees train and val only; the test
set is for the final evaluation of the winners (issue 7), drawn by the same split seed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from leukmodels.atomic import atomic_path
from leukmodels.data import decode, discover, split_by_patient
from leukmodels.labels import ALL, HEM
from leukmodels.synthetic import default_dataset

SEARCH_SPLITS = ("train", "val")  # never "test"


@dataclass
class SearchData:
    root: str  # the discovered data root (C-NMC_Leukemia folder or TCIA top)
    generated: bool  # True when the tree was written by leukmodels.synthetic (results are NOT on C-NMC)
    fingerprint: str  # identity of the train+val images and labels and of the split (location-independent)
    split_seed: int
    val_fraction: float
    sets: dict[int, dict[str, Any]]  # image size -> {"train": DecodedSet, "val": DecodedSet}
    counts: dict[str, int] = field(default_factory=dict)  # images per split, e.g. {"train": 608, "val": 160}
    patients: dict[str, int] = field(default_factory=dict)  # patients per split
    patient_ids: dict[str, list[str]] = field(default_factory=dict)  # split -> sorted patient ids
    classes: dict[str, dict] = field(default_factory=dict)  # split -> class make-up (see class_makeup)
    frames: dict[str, Any] = field(default_factory=dict)  # split -> its manifest rows (cross-validation folds)

    def write_split(self, path: str | Path) -> Path:
        """Record how the search split its patients (atomically), as `results/<search>/split.json`: evaluation
        recomputes the split from it and refuses test patients that the search trained or validated on."""
        record = {"seed": self.split_seed, "val_fraction": self.val_fraction, "fingerprint": self.fingerprint,
                  "root": self.root, "generated": self.generated, "classes": self.classes, **self.patient_ids}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        return Path(path)

    def put(self) -> dict[int, dict[str, Any]]:
        """`ray.put` every decoded set once: image size -> split -> ObjectRef. Needs `ray.init()` first."""
        import ray  # here: evaluate.py and report.py import this module for the split, and never need Ray

        refs: dict[int, dict[str, Any]] = {}
        for size, splits in self.sets.items():
            refs[size] = {}
            for name, decoded in splits.items():
                # a memory-mapped cache file would be pickled through a copy anyway; make it one contiguous array
                decoded.images = np.ascontiguousarray(decoded.images)
                refs[size][name] = ray.put(decoded)
        return refs

    def describe(self) -> str:
        kind = "GENERATED (synthetic, not C-NMC)" if self.generated else "real"
        sizes = ",".join(str(s) for s in sorted(self.sets))
        sets = "; ".join(f"{name} {_makeup_text(self.classes[name])}" for name in SEARCH_SPLITS if name in self.classes)
        warning = validation_warning(self.classes["val"]) if "val" in self.classes else None
        return (f"data: {kind} at {self.root} (fingerprint {self.fingerprint}), split by patient (seed "
                f"{self.split_seed}, val fraction {self.val_fraction:g}): {sets}; decoded at {sizes} px"
                + (f"\n{warning}" if warning else ""))


def class_makeup(split: Any) -> dict:
    """A split's classes by image and by patient: {"images": n, "all_share": share of ALL images, "all_images": n,
    "hem_images": n, "all_patients": n, "hem_patients": n}."""
    per_patient = split.groupby("patient")["label"].first().astype(int)
    all_images = int((split["label"].astype(int) == ALL).sum())
    return {"images": int(len(split)), "all_share": round(float(split["label"].astype(float).mean()), 4),
            "all_images": all_images, "hem_images": int(len(split)) - all_images,
            "all_patients": int((per_patient == ALL).sum()), "hem_patients": int((per_patient == HEM).sum())}


def _makeup_text(makeup: dict) -> str:
    images = (f"{makeup['all_images']} ALL + {makeup['hem_images']} HEM images" if "all_images" in makeup
              else f"{makeup['images']} images ({makeup['all_share']:.0%} ALL)")
    return f"{images} from {makeup['all_patients']} ALL + {makeup['hem_patients']} HEM patients"


# Too few to rank trials: per-patient accuracy on C-NMC spans 0.26-1.0, so with fewer patients of a class one
# patient moves the metric more than most hyperparameters; with fewer images of a class, the 95% interval of its
# recall alone is wider than about +-0.05 (binomial at 0.8). Either makes the data line warn.
MIN_VAL_PATIENTS, MIN_VAL_IMAGES = 10, 100


def validation_warning(makeup: dict) -> Optional[str]:
    """One sentence when the validation set is too few or too small patients to rank trials, else None."""
    patients = min(makeup["all_patients"], makeup["hem_patients"])
    images = min(makeup.get("all_images", makeup["images"]), makeup.get("hem_images", makeup["images"]))
    if patients >= MIN_VAL_PATIENTS and images >= MIN_VAL_IMAGES:
        return None
    return (f"warning: the validation set ({makeup['all_patients']} ALL + {makeup['hem_patients']} HEM patients, "
            f"{makeup.get('all_images', '?')} + {makeup.get('hem_images', '?')} images) is too small to rank trials "
            f"(fewer than {MIN_VAL_PATIENTS} patients or {MIN_VAL_IMAGES} images of a class): trials within each "
            f"other's patient-bootstrap intervals are ties; validate on every patient with --cv 3")


def data_fingerprint(splits: dict, split_seed: int, val_fraction: float) -> str:
    """sha256 over every train/val image's (split, image id, patient, label, file size) and the split settings:
    the same images split the same way give the same fingerprint wherever the folder lives."""
    digest = hashlib.sha256(f"search-data v1 seed={split_seed} val={val_fraction}\n".encode())
    for name in SEARCH_SPLITS:
        frame = splits[name].sort_values("image_id")
        for image_id, patient, label, path in zip(frame["image_id"], frame["patient"], frame["label"], frame["path"]):
            digest.update(f"{name}\t{image_id}\t{patient}\t{int(label)}\t{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()[:16]


def prepare_data(root: Optional[str] = None, image_sizes: Sequence[int] = (32,), split_seed: int = 0,
                 val_fraction: float = 0.2, cache_dir: Optional[str] = None, progress: bool = True) -> SearchData:
    """Discover `root` (None: the project's generated set, built once and reused), split by patient, decode the
    train and val splits at every size. Raises DataError/ValueError naming the bad path or value."""
    if root is None:
        root = str(default_dataset())
    if not Path(root).expanduser().exists():
        raise ValueError(f"--data {root}: no such folder")
    manifest = discover(root)
    splits = split_by_patient(manifest, val_fraction=val_fraction, seed=split_seed)
    sets: dict[int, dict[str, Any]] = {}
    for size in sorted({int(s) for s in image_sizes}):
        sets[size] = {name: decode(splits[name], size, cache_dir=cache_dir, progress=progress)
                      for name in SEARCH_SPLITS}
    return SearchData(
        root=str(manifest.attrs.get("root", root)), generated=bool(manifest.attrs.get("generated", False)),
        fingerprint=data_fingerprint(splits, split_seed, val_fraction), split_seed=int(split_seed),
        val_fraction=float(val_fraction), sets=sets,
        counts={name: len(splits[name]) for name in SEARCH_SPLITS},
        patients={name: int(splits[name]["patient"].nunique()) for name in SEARCH_SPLITS},
        patient_ids={name: sorted(splits[name]["patient"].astype(str).unique()) for name in SEARCH_SPLITS},
        classes={name: class_makeup(splits[name]) for name in SEARCH_SPLITS},
        frames={name: splits[name] for name in SEARCH_SPLITS})


__all__ = ["SearchData", "prepare_data", "data_fingerprint", "validation_warning", "SEARCH_SPLITS",
           "MIN_VAL_PATIENTS", "MIN_VAL_IMAGES"]
