"""The held-out test patients of a search, recomputed exactly as the search split them, and their decoded images.

Test patients are the official preliminary test set when the tree has one (real C-NMC, or the generated stand-in),
else the `test` part of `split_by_patient` with the search's seed. They are never the validation patients that chose
the winner: the split is recomputed, `check_disjoint` is run on it, its data fingerprint must equal the search's, and
when the search recorded its train/val patients those are checked against the test patients too (a DataError names
any overlap). Used by search/evaluate.py.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from leukmodels.data import DataError, check_disjoint, decode, discover, split_by_patient
from leukmodels.values import missing
from search.board.paths import split_path
from search.tuning.data import data_fingerprint


def recorded_split(row: pd.Series, results_dir: Path) -> dict:
    """How the search split its patients: {"seed", "val_fraction", "train", "val", "fingerprint"} (None = unknown).

    From leaderboard columns (split_seed, val_fraction, data_fingerprint, train_patients / val_patients as JSON
    lists) and from a results/<search>/split.json ({"seed", "val_fraction", "train", "val"}) when the search wrote one.
    """
    found: dict = {"seed": None, "val_fraction": None, "train": None, "val": None, "fingerprint": None}
    split_file = split_path(results_dir, str(row.get("search", "")))
    if split_file.is_file():
        try:
            data = json.loads(split_file.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read the search's split {split_file}: {err}") from None
        found.update({key: data.get(key) for key in ("seed", "val_fraction", "train", "val")})
    for key, column in (("seed", "split_seed"), ("val_fraction", "val_fraction"), ("train", "train_patients"),
                        ("val", "val_patients"), ("fingerprint", "data_fingerprint")):
        value = row.get(column)
        if found[key] is None and not missing(value):
            found[key] = json.loads(value) if isinstance(value, str) and key in ("train", "val") else value
    return found


def held_out_test(manifest: pd.DataFrame, seed: int, recorded: dict) -> tuple[pd.DataFrame, dict, dict]:
    """The test rows of `split_by_patient(manifest, seed=seed)` after checking them against train and val.

    The recomputed split must be the search's: its data fingerprint (search.tuning.data.data_fingerprint, over the train and
    val images and the split settings) must equal the leaderboard's, else a DataError, except when the test set is the
    official preliminary test, which no split can move (then a warning). Returns (test manifest, info, splits).
    """
    val_fraction = float(recorded["val_fraction"]) if recorded.get("val_fraction") is not None else 0.2
    splits = split_by_patient(manifest, val_fraction=val_fraction, seed=seed)
    check_disjoint(splits)  # raises DataError naming a patient found in two sets
    official = bool(len(splits["test"]) and (splits["test"]["source"] == "prelim_test").all())
    fingerprint = data_fingerprint(splits, seed, val_fraction)
    if recorded.get("fingerprint") and str(recorded["fingerprint"]) != fingerprint:
        message = (f"split seed {seed} / val_fraction {val_fraction} of {manifest.attrs.get('root')} gives data "
                   f"fingerprint {fingerprint}, the search recorded {recorded['fingerprint']}: not the search's split")
        if not official:
            raise DataError(message + " (pass --split-seed or --data to match it)")
        print(f"evaluate: warning: {message}; the official test patients are held out anyway", file=sys.stderr)
    test = splits["test"]
    if len(test) == 0:
        raise DataError(f"{manifest.attrs.get('root')}: no labelled test patients to evaluate on")
    test_patients = set(test["patient"].astype(str))
    train_val = set(splits["train"]["patient"].astype(str)) | set(splits["val"]["patient"].astype(str))
    searched = set(map(str, (recorded.get("train") or []) + (recorded.get("val") or [])))
    _refuse_overlap(test_patients, {"train/val of the recomputed split": train_val,
                                    "train/val the search recorded": searched})
    checks = ["check_disjoint"]
    checks += ["fingerprint matches the search's"] if recorded.get("fingerprint") == fingerprint else []
    checks += ["disjoint from the train/val patients the search recorded"] if searched else []
    info = {
        "test_source": "prelim_test" if official else "split_test",
        "split_seed": int(seed), "val_fraction": val_fraction, "split_fingerprint": fingerprint,
        "split_check": "; ".join(checks),
        "test_patients": json.dumps(sorted(test_patients)),
        "n_test_patients": len(test_patients),
        "train_val_patients": json.dumps(sorted(train_val | searched)),
    }
    return test, info, splits


def _refuse_overlap(test_patients: set[str], others: dict[str, set[str]]) -> None:
    for name, patients in others.items():
        overlap = sorted(test_patients & patients)
        if overlap:
            raise DataError(f"test patients {overlap} are also in the {name}: refusing to evaluate on them")


@dataclass
class TestSet:
    """The held-out test images, decoded lazily once per image size; every array is in `frame`'s (manifest) order."""

    __test__ = False  # not a pytest test class, whatever its name
    frame: pd.DataFrame  # the test manifest rows: path, label, patient, source, image_id
    info: dict  # how the test patients were chosen (test_metrics columns)
    splits: dict  # the recomputed split: {"train", "val", "test"} manifests
    root: str
    generated: bool
    cache_dir: Optional[str] = None  # None: decode's default cache, the one the search filled
    _by_size: dict = field(default_factory=dict)

    def decoded(self, size: int):
        """DecodedSet of the test images at `size` px (uint8 N x 3 x S x S), decoded on first use."""
        if size not in self._by_size:
            decoded = decode(self.frame, size, cache_dir=self.cache_dir, progress=False)
            # members of an ensemble are averaged image by image: every size must keep the manifest's order
            assert (decoded.image_ids == self.frame["image_id"].astype(str).to_numpy()).all()
            self._by_size[size] = decoded
        return self._by_size[size]

    def decoded_val(self, size: int):
        """DecodedSet of the search's validation patients at `size` px (patient threshold, correction strength)."""
        if ("val", size) not in self._by_size:
            self._by_size[("val", size)] = decode(self.splits["val"], size, cache_dir=self.cache_dir, progress=False)
        return self._by_size[("val", size)]

    @property
    def labels(self) -> np.ndarray:  # int64 (N,): 1 = ALL, 0 = HEM
        return self.frame["label"].astype(np.int64).to_numpy()

    @property
    def patients(self) -> np.ndarray:  # str (N,)
        return self.frame["patient"].astype(str).to_numpy()


def held_out_set(first: pd.Series, results_dir: Path, data_root: Optional[str] = None,
                 split_seed: Optional[int] = None, cache_dir: Optional[str] = None) -> TestSet:
    """The test patients of the search whose best row is `first`, its split recomputed and checked.

    `data_root` defaults to the row's data_root; the seed to `split_seed`, else the one the search recorded, else the
    row's config seed (search/run.py seeds the split with --seed, which it also writes into every config), else 0.
    """
    data_root = data_root or first.get("data_root")
    if not data_root or missing(data_root):
        raise DataError("the leaderboard rows carry no data_root; pass --data ROOT")
    manifest = discover(data_root)
    recorded = recorded_split(first, results_dir)
    config_seed = None if "seed" not in first or missing(first["seed"]) else int(first["seed"])
    seed = next(s for s in (split_seed, recorded["seed"], config_seed, 0) if s is not None)
    test, info, splits = held_out_test(manifest, int(seed), recorded)
    return TestSet(test, info, splits, str(data_root), bool(manifest.attrs.get("generated", False)), cache_dir)


__all__ = ["TestSet", "held_out_set", "held_out_test", "recorded_split"]
