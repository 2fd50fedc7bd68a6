"""Held-out test evaluation of a search's best trials: the answer to "how good is the winner on unseen patients?".

    python search/evaluate.py [--leaderboard results/leaderboard.parquet] [--search NAME] [--top 3 | --trials ID ...]
                              [--data ROOT] [--tta both|on|off] [--retrain] [--out results/test_metrics.parquet]

Test patients are the official preliminary test set when the tree has one (real C-NMC, or the generated stand-in),
else the `test` part of `split_by_patient` with the search's seed. They are never the validation patients that chose
the winner: the split is recomputed exactly as the search made it, `check_disjoint` is run on it, and when the search
recorded its train/val patients those are checked against the test patients too (a DataError names any overlap).

Writes, atomically and next to the leaderboard (rows of a re-run replace the old ones, other searches' rows stay):
- `test_metrics.parquet`: one row per (search, trial_id, tta, retrained) with weighted_f1, macro_f1, accuracy,
  balanced_accuracy, roc_auc, sensitivity, specificity, per_patient_accuracy (JSON {patient: accuracy}), the test
  patients (JSON), how they were chosen, and data_generated (True = generated cells, NEVER a C-NMC result);
- `test_predictions.parquet`: one row per test image and evaluated model (path, patient, label, prob_all), which
  search/report.py draws the ROC curve, confusion matrix and most-wrong cells from.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as `python search/evaluate.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leukmodels.atomic import atomic_path  # noqa: E402
from search.predict import load_trial_model  # noqa: E402

METRIC_COLUMNS = ("weighted_f1", "macro_f1", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity",
                  "specificity")
KEY_COLUMNS = ("search", "trial_id", "tta", "retrained")  # one evaluation; a re-run replaces rows with the same key
USABLE_STATUS = ("finished", "stopped")  # search.leaderboard.STATUSES minus "error": a best checkpoint worth testing


# -- leaderboard and files ----------------------------------------------------------------------------------------
def read_board(path: Path) -> pd.DataFrame:
    from search.leaderboard import read

    if not Path(path).is_file():
        raise SystemExit(f"evaluate: no leaderboard at {path}; run search/run.py first or pass --leaderboard")
    return read(path)


def board_dir(path: Path) -> Path:
    return Path(path).resolve().parent


def select_trials(board: pd.DataFrame, search: Optional[str], top: Optional[int], trials: Optional[Sequence[str]],
                  metric: str = "weighted_f1") -> tuple[pd.DataFrame, str]:
    """The trials to evaluate, best validation `metric` first, and the search they belong to.

    Without `search`, the most recent search in the board (by started_at when present). Trials without a checkpoint
    or with an error status are skipped; `trials` given by id must all exist.
    """
    if board.empty:
        raise SystemExit("evaluate: the leaderboard is empty")
    if search is None:
        order = board.sort_values("started_at") if "started_at" in board else board
        search = str(order["search"].iloc[-1])
    rows = board[board["search"].astype(str) == str(search)]
    if rows.empty:
        known = sorted(board["search"].unique())
        raise SystemExit(f"evaluate: no search {search!r} in the leaderboard; it has {known}")
    if metric not in rows:
        raise SystemExit(f"evaluate: --metric {metric!r} is not a leaderboard column")
    if trials:
        missing = sorted(set(map(str, trials)) - set(rows["trial_id"].astype(str)))
        if missing:
            raise SystemExit(f"evaluate: trial id(s) {missing} not in search {search!r}")
        rows = rows[rows["trial_id"].astype(str).isin(list(map(str, trials)))]
    usable = rows["checkpoint"].notna() & (rows["checkpoint"].astype(str) != "")
    if "status" in rows:
        usable &= rows["status"].astype(str).str.lower().isin(USABLE_STATUS)
    rows = rows[usable].sort_values(metric, ascending=False, na_position="last")
    if rows.empty:
        raise SystemExit(f"evaluate: search {search!r} has no finished trial with a checkpoint")
    return (rows if trials else rows.head(top)).reset_index(drop=True), str(search)


def write_parquet_atomic(new: pd.DataFrame, path: Path, key_columns: Sequence[str]) -> None:
    """Merge `new` into the parquet at `path` (rows with the same key are replaced) via a temp file + os.replace."""
    path = Path(path)
    table = new
    if path.is_file():
        old = pd.read_parquet(path)
        keys = set(map(tuple, new[list(key_columns)].astype(str).to_numpy()))
        keep = [tuple(k) not in keys for k in old[list(key_columns)].astype(str).to_numpy()]
        table = pd.concat([old[keep], new], ignore_index=True)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="search/evaluate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leaderboard", default="results/leaderboard.parquet", help="the search's leaderboard parquet")
    p.add_argument("--search", help="search name (default: the most recent search in the leaderboard)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, default=3, help="evaluate the top K trials by validation metric (3)")
    which.add_argument("--trials", nargs="+", metavar="ID", help="evaluate these trial ids instead of the top K")
    p.add_argument("--metric", default="weighted_f1", help="leaderboard column that ranks trials (weighted_f1)")
    p.add_argument("--data", help="data root (default: the leaderboard row's data_root)")
    p.add_argument("--split-seed", type=int, help="seed of split_by_patient (default: split_seed the search "
                   "recorded, else the rows' seed column, which search/run.py also uses for the split, else 0)")
    p.add_argument("--tta", choices=("both", "on", "off"), default="both",
                   help="8-way dihedral test-time augmentation: evaluate with it, without it, or both (both)")
    p.add_argument("--retrain", action="store_true", help="also retrain the best trial's config on train+val "
                   "patients for its best epoch count, then evaluate that model")
    p.add_argument("--out", help="test metrics parquet (default: test_metrics.parquet next to the leaderboard)")
    p.add_argument("--cache-dir", help="decode cache folder (default: decode's own, $LEUKTUNE_CACHE or "
                   "~/.cache/leukemia-tune, shared with the search)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    args = p.parse_args(argv)
    if args.top is not None and args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    return args


# -- the held-out test patients -----------------------------------------------------------------------------------
def recorded_split(row: pd.Series, results_dir: Path) -> dict:
    """How the search split its patients: {"seed", "val_fraction", "train", "val", "fingerprint"} (None = unknown).

    From leaderboard columns (split_seed, val_fraction, data_fingerprint, train_patients / val_patients as JSON
    lists) and from a results/<search>/split.json ({"seed", "val_fraction", "train", "val"}) when the search wrote one.
    """
    found: dict = {"seed": None, "val_fraction": None, "train": None, "val": None, "fingerprint": None}
    split_file = results_dir / str(row.get("search", "")) / "split.json"
    if split_file.is_file():
        data = json.loads(split_file.read_text())
        found.update({key: data.get(key) for key in ("seed", "val_fraction", "train", "val")})
    for key, column in (("seed", "split_seed"), ("val_fraction", "val_fraction"), ("train", "train_patients"),
                        ("val", "val_patients"), ("fingerprint", "data_fingerprint")):
        value = row.get(column)
        if found[key] is None and value is not None and not (np.isscalar(value) and pd.isna(value)):
            found[key] = json.loads(value) if isinstance(value, str) and key in ("train", "val") else value
    return found


def held_out_test(manifest: pd.DataFrame, seed: int, recorded: dict) -> tuple[pd.DataFrame, dict, dict]:
    """The test rows of `split_by_patient(manifest, seed=seed)` after checking them against train and val.

    The recomputed split must be the search's: its data fingerprint (search.data.data_fingerprint, over the train and
    val images and the split settings) must equal the leaderboard's, else a DataError, except when the test set is the
    official preliminary test, which no split can move (then a warning). Returns (test manifest, info, splits).
    """
    from leukmodels.data import DataError, check_disjoint, split_by_patient
    from search.data import data_fingerprint

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
    for name, patients in (("train/val of the recomputed split", train_val), ("train/val the search recorded",
                                                                              searched)):
        overlap = sorted(test_patients & patients)
        if overlap:
            raise DataError(f"test patients {overlap} are also in the {name}: refusing to evaluate on them")
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


# -- evaluation ---------------------------------------------------------------------------------------------------
def evaluate_model(model, config, decoded, tta: bool, device=None) -> tuple[dict, np.ndarray]:
    """Metrics (flat dict, per_patient_accuracy as JSON) and P(ALL) (N,) of `model` on a DecodedSet."""
    from leukmodels.metrics import classification_metrics, predict_proba

    prob_all = predict_proba(model, decoded.images, device=device, tta=tta)
    metrics = classification_metrics(decoded.labels, prob_all, patients=decoded.patients)
    metrics["per_patient_accuracy"] = json.dumps(metrics.get("per_patient_accuracy", {}), sort_keys=True)
    return metrics, prob_all


def retrain_on_train_val(row: pd.Series, config, splits: dict, out_dir: Path, cache_dir, device=None):
    """Fit `config` on train+val patients for the trial's best epoch count; returns (model, epochs, checkpoint).

    The validation set handed to fit() is the old val split, now part of the training data: fit() needs one to
    report on, and its numbers are ignored (they are not held out). The test patients are never touched here.
    """
    from leukmodels.data import decode
    from leukmodels.train import fit

    epochs = best_epoch(row, config)
    train_val = pd.concat([splits["train"], splits["val"]])
    train_val.attrs = dict(splits["train"].attrs)
    train_set = decode(train_val, config.image_size, cache_dir=cache_dir, progress=False)
    val_set = decode(splits["val"], config.image_size, cache_dir=cache_dir, progress=False)
    ckpt_dir = out_dir / "retrained" / str(row["trial_id"])
    result = fit(config.replace(epochs=epochs), train_set, val_set, device=device, checkpoint_dir=str(ckpt_dir),
                 log=lambda line: print(f"  retrain {row['trial_id']}: {line}", file=sys.stderr))
    # the last epoch's model: nothing is selected on val here
    return result.model.to(device or "cpu").eval(), epochs, result.last_checkpoint_path


def best_epoch(row: pd.Series, config) -> int:
    for column in ("best_epoch", "epochs_run"):
        value = row.get(column)
        if value is not None and not pd.isna(value) and int(value) >= 1:
            return int(value)
    return int(config.epochs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from leukmodels.data import decode, discover

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    board_path = Path(args.leaderboard)
    board = read_board(board_path)
    chosen, search = select_trials(board, args.search, top=None if args.trials else args.top, trials=args.trials,
                                   metric=args.metric)
    results_dir = board_dir(board_path)
    out_path = Path(args.out) if args.out else results_dir / "test_metrics.parquet"
    preds_path = out_path.with_name("test_predictions.parquet")
    cache_dir = args.cache_dir  # None: leukmodels.data.decode's default cache, the one the search filled
    tta_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.tta]

    first = chosen.iloc[0]
    data_root = args.data or first.get("data_root")
    if not data_root or pd.isna(data_root):
        raise SystemExit("evaluate: the leaderboard rows carry no data_root; pass --data ROOT")
    manifest = discover(data_root)
    generated = bool(manifest.attrs.get("generated", False))
    recorded = recorded_split(first, results_dir)
    # search/run.py seeds the split with --seed, which it also writes into every config's `seed` column
    config_seed = None if "seed" not in first or pd.isna(first["seed"]) else int(first["seed"])
    seed = next(s for s in (args.split_seed, recorded["seed"], config_seed, 0) if s is not None)
    test, info, splits = held_out_test(manifest, int(seed), recorded)
    print(f"evaluate: search {search!r}, {len(chosen)} trial(s), test = {info['test_source']} "
          f"({len(test)} images, {info['n_test_patients']} patients), data {'GENERATED' if generated else 'C-NMC'} "
          f"at {data_root}", file=sys.stderr)

    decoded_by_size: dict[int, object] = {}
    rows, pred_frames = [], []
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    skipped = []
    for rank, (_, row) in enumerate(chosen.iterrows(), start=1):
        try:
            model, config, ckpt_file = load_trial_model(row["checkpoint"], device=args.device)
        except (FileNotFoundError, ValueError) as err:  # e.g. a checkpoint Ray's num_to_keep already deleted
            print(f"evaluate: warning: skipping trial {row['trial_id']}: {err}", file=sys.stderr)
            skipped.append(str(row["trial_id"]))
            continue
        candidates = [(model, False, ckpt_file, None)]
        if args.retrain and not rows:  # only the best trial that could be loaded
            r_model, r_epochs, r_file = retrain_on_train_val(row, config, splits, results_dir / str(search),
                                                             cache_dir, device=args.device)
            candidates.append((r_model, True, r_file, r_epochs))
        if config.image_size not in decoded_by_size:
            decoded_by_size[config.image_size] = decode(test, config.image_size, cache_dir=cache_dir,
                                                        progress=False)
        decoded = decoded_by_size[config.image_size]
        assert (decoded.image_ids == test["image_id"].astype(str).to_numpy()).all()  # decode keeps manifest order
        for model_, retrained, file_, epochs in candidates:
            for tta in tta_modes:
                metrics, prob_all = evaluate_model(model_, config, decoded, tta, device=args.device)
                rows.append({
                    "search": str(search), "trial_id": str(row["trial_id"]), "tta": bool(tta),
                    "retrained": bool(retrained), "family": config.family, "val_rank": rank,
                    f"val_{args.metric}": float(row.get(args.metric, np.nan)),
                    "retrain_epochs": epochs, "checkpoint": file_, **metrics, **info,
                    "n_test_images": len(decoded), "data_root": str(data_root), "data_generated": generated,
                    "test_fingerprint": decoded.fingerprint, "config": json.dumps(config.to_dict()),
                    "evaluated_at": now,
                })
                pred_frames.append(pd.DataFrame({
                    "search": str(search), "trial_id": str(row["trial_id"]), "tta": bool(tta),
                    "retrained": bool(retrained), "image_id": decoded.image_ids.astype(str),
                    "patient": decoded.patients.astype(str), "label": decoded.labels.astype(np.int64),
                    "prob_all": prob_all, "path": test["path"].astype(str).to_numpy(),
                    "data_generated": generated,
                }))
                print(f"  {row['trial_id']:<24} tta={'on ' if tta else 'off'} retrained={retrained!s:<5} "
                      f"weighted_f1={metrics['weighted_f1']:.4f} bal_acc={metrics['balanced_accuracy']:.4f} "
                      f"auc={metrics['roc_auc']:.4f}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"evaluate: no trial could be evaluated (skipped {skipped})")
    table = pd.DataFrame(rows)
    write_parquet_atomic(table, out_path, KEY_COLUMNS)
    write_parquet_atomic(pd.concat(pred_frames, ignore_index=True), preds_path, KEY_COLUMNS)
    shown = ["trial_id", "family", "tta", "retrained"] + list(METRIC_COLUMNS[:5])
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out_path} and {preds_path}" + ("  [GENERATED DATA: not C-NMC results]" if generated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
