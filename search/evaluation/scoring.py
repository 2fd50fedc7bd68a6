"""Models scored on the held-out test patients: a trial's best checkpoint (and, asked for, its config retrained on
train+val), in each TTA mode, and the ensemble of the top K trials. search/evaluate.py chooses the trials and writes
the rows.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from leukmodels.calibration import apply_temperature
from leukmodels.data import decode
from leukmodels.metrics import classification_metrics, is_single_class, predict_proba
from leukmodels.values import missing
from search.evaluation.heldout import TestSet
from search.evaluation.predict import checkpoint_temperature, load_trial_model

ENSEMBLE_FAMILY = "ensemble"  # the `family` of an ensemble row; its trial_id is ensemble-top<K>
TTA_MODES = {"both": (False, True), "on": (True,), "off": (False,)}  # --tta -> the modes evaluated


class NothingEvaluated(RuntimeError):
    """None of the chosen trials could be evaluated (e.g. every checkpoint is gone)."""


@dataclass
class Scored:
    """One model (a trial, a retrained trial or an ensemble) in one TTA mode on the test set."""

    trial_id: str
    tta: bool
    retrained: bool
    prob_all: np.ndarray  # float64 (N,): P(ALL) per test image, in TestSet.frame's order
    metrics: dict  # classification_metrics, per_patient_accuracy as JSON
    fields: dict  # the rest of its test_metrics row: family, val_rank, members, checkpoint, config, ...
    val_prob_all: Optional[np.ndarray] = None  # float64: P(ALL) per validation image (search/evaluation/patient_scoring.py)
    temperature: float = 1.0  # its checkpoint's temperature scaling (nan for an ensemble: each member has its own)
    prob_calibrated: Optional[np.ndarray] = None  # P(ALL) per test image with the temperature applied
    val_calibrated: Optional[np.ndarray] = None  # the same on the validation images


def score(test_set: TestSet, prob_all: np.ndarray) -> dict:
    """Metrics of P(ALL) (N,) on the test labels (flat dict; per_patient_accuracy as JSON)."""
    metrics = classification_metrics(test_set.labels, prob_all, patients=test_set.patients)
    metrics["per_patient_accuracy"] = json.dumps(metrics.get("per_patient_accuracy", {}), sort_keys=True)
    metrics["single_class"] = is_single_class(metrics["predicted_all"])
    return metrics


def retrain_on_train_val(row: pd.Series, config, splits: dict, out_dir: Path, cache_dir, device=None):
    """Fit `config` on train+val patients for the trial's best epoch count; returns (model, epochs, checkpoint).

    The validation set handed to fit() is the old val split, now part of the training data: fit() needs one to
    report on, and its numbers are ignored (they are not held out). The test patients are never touched here.
    """
    from leukmodels.train import fit  # here: torch, measured +2-4 s on the --help of evaluate, predict and report

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
        if not missing(value) and int(value) >= 1:
            return int(value)
    return int(config.epochs)


@dataclass(frozen=True)
class ScoringOptions:
    """How search/evaluate.py scores each trial: `metric` the validation column the trials were ranked by, `tta` one
    of TTA_MODES' keys, `retrain` also the best trial's config retrained on train+val."""
    metric: str
    device: str
    tta: str = "both"
    cache_dir: Optional[str] = None  # the decode cache; None: decode's own
    retrain: bool = False


def evaluate_trial(rank: int, row: pd.Series, loaded: tuple, test_set: TestSet, options: ScoringOptions,
                   retrain_dir: Optional[Path]) -> list[Scored]:
    """A trial's loaded best checkpoint (model, config, file), and with `retrain_dir` its config retrained on
    train+val, scored in every TTA mode of --tta."""
    model, config, ckpt_file = loaded
    candidates = [(model, False, ckpt_file, None)]
    if retrain_dir is not None:
        r_model, r_epochs, r_file = retrain_on_train_val(row, config, test_set.splits, retrain_dir,
                                                         options.cache_dir, device=options.device)
        candidates.append((r_model, True, r_file, r_epochs))
    decoded = test_set.decoded(config.image_size)  # each trial at its own image size
    val_images = test_set.decoded_val(config.image_size).images
    scored = []
    for model_, retrained, file_, epochs in candidates:
        temperature = checkpoint_temperature(file_)  # fitted on validation patients as it trained; 1 when it has none
        for tta in TTA_MODES[options.tta]:
            prob_all = predict_proba(model_, decoded.images, device=options.device, tta=tta)
            val_prob = predict_proba(model_, val_images, device=options.device, tta=tta)
            calibration = dict(val_prob_all=val_prob, temperature=temperature,
                               prob_calibrated=apply_temperature(prob_all, temperature),
                               val_calibrated=apply_temperature(val_prob, temperature))
            scored.append(Scored(str(row["trial_id"]), bool(tta), bool(retrained), prob_all, score(test_set, prob_all),
                                 {"family": config.family, "val_rank": rank,
                                  f"val_{options.metric}": float(row.get(options.metric, np.nan)),
                                  "members": json.dumps([str(row["trial_id"])]), "n_members": 1,
                                  "retrain_epochs": epochs, "checkpoint": file_,
                                  "test_fingerprint": decoded.fingerprint, "config": json.dumps(config.to_dict())},
                                 **calibration))
    return scored


def evaluate_trials(chosen: pd.DataFrame, test_set: TestSet, options: ScoringOptions,
                    retrain_dir: Path) -> list[Scored]:
    """Every chosen trial, best first; a trial whose checkpoint does not load is skipped with a warning.
    --retrain retrains only the best trial that could be loaded."""
    scored: list[Scored] = []
    skipped = []
    for rank, (_, row) in enumerate(chosen.iterrows(), start=1):
        try:
            loaded = load_trial_model(row["checkpoint"], device=options.device)
        except (FileNotFoundError, ValueError) as err:  # e.g. a checkpoint Ray's num_to_keep already deleted
            print(f"evaluate: warning: skipping trial {row['trial_id']}: {err}", file=sys.stderr)
            skipped.append(str(row["trial_id"]))
            continue
        scored += evaluate_trial(rank, row, loaded, test_set, options,
                                 retrain_dir if options.retrain and not scored else None)
    if not scored:
        raise NothingEvaluated(f"no trial could be evaluated (skipped {skipped})")
    return scored


# -- ensemble -----------------------------------------------------------------------------------------------------
def ensemble_prob(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's P(ALL) per test image: the unweighted mean of its members' P(ALL), K x (N,) -> (N,).

    This is the definition of an ensemble here: mean of P(ALL), a cell called ALL when that mean is > 0.5 (the
    threshold of every single model). Probabilities, not logits, are averaged so that no member's confident logits
    outvote the others; no weights are fitted, since the only data left to fit them on would be the test patients.
    With TTA each member's P(ALL) is already the mean of its 8 dihedral views, so this is the mean of K x 8.
    """
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # K x N, same image order
    return stacked.mean(axis=0)


def ensemble_members(scored: Sequence[Scored], k: int) -> list[str]:
    """Trial ids of the top `k` evaluated trials (validation rank order; retrained models are not members).
    Warns, with the K it uses, when fewer than `k` trials could be evaluated."""
    ranked = sorted({s.trial_id: s.fields["val_rank"] for s in scored if not s.retrained}.items(),
                    key=lambda item: item[1])
    members = [trial_id for trial_id, _ in ranked[:k]]
    if len(members) < k:
        print(f"evaluate: warning: --ensemble {k}: only {len(members)} trial(s) could be evaluated, so the "
              f"ensemble uses K={len(members)}" + ("" if len(members) >= 2 else " (no ensemble: it needs 2)"),
              file=sys.stderr)
    return members if len(members) >= 2 else []


def evaluate_ensemble(scored: Sequence[Scored], k: int, test_set: TestSet) -> list[Scored]:
    """The ensemble of the top `k` evaluated trials in each TTA mode they were evaluated in ([] when < 2 load)."""
    members = ensemble_members(scored, k)
    if not members:
        return []
    out = []
    for tta in sorted({s.tta for s in scored}):
        by_id = {s.trial_id: s for s in scored if s.tta == tta and not s.retrained}
        parts = [by_id[trial_id] for trial_id in members]
        prob_all = ensemble_prob([s.prob_all for s in parts])
        calibration = dict(val_prob_all=ensemble_prob([s.val_prob_all for s in parts]), temperature=float("nan"),
                           prob_calibrated=ensemble_prob([s.prob_calibrated for s in parts]),
                           val_calibrated=ensemble_prob([s.val_calibrated for s in parts]))  # members' own T
        out.append(Scored(f"ensemble-top{len(parts)}", tta, False, prob_all, score(test_set, prob_all), {
            "family": ENSEMBLE_FAMILY, "val_rank": np.nan, "members": json.dumps(members), "n_members": len(parts),
            "retrain_epochs": None, "checkpoint": json.dumps([s.fields["checkpoint"] for s in parts]),
            "test_fingerprint": "+".join(sorted({s.fields["test_fingerprint"] for s in parts})),
            "config": json.dumps([json.loads(s.fields["config"]) for s in parts])}, **calibration))
    return out


__all__ = ["ENSEMBLE_FAMILY", "NothingEvaluated", "Scored", "TTA_MODES", "ensemble_prob", "evaluate_ensemble",
           "evaluate_trials", "score", "ScoringOptions"]
