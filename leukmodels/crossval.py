"""Cross-validated training: the K fold models of one config, trained side by side, scored on pooled out-of-fold
predictions.

    result = fit_cv(config, data, folds, checkpoint_dir="runs/a")   # data: every training patient's images
    # folds: int (N,), the fold (0..K-1) that validates each image; a patient's images share one fold

Every epoch trains each fold model one epoch (fold k's model on the images of the other folds), predicts fold k's
images with it, and pools the K out-of-fold predictions: every training patient is validated once, by a model that
never saw them. The epoch's metrics are those of the pooled predictions (what a search ranks, stops and samples on:
one figure per epoch, as `fit` reports), plus `cv_folds` (K) and `fold_metrics` (JSON {metric: [fold 0, 1, ...]}).
The folds train in sequence in one process: on one GPU or CPU worker the fold models would only queue for the same
device, and per-epoch interleaving lets a scheduler stop all K at once. One checkpoint per epoch holds all K
(checkpoint.CV_FORMAT); `load_model` gives them back as one `FoldEnsemble`, the mean of their P(ALL).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from leukmodels.atomic import atomic_path
from leukmodels.batches import DeviceBatches, check_data
from leukmodels.checkpoint import CHECKPOINT_FILE, CV_FORMAT, capture_rng_state, clean_state_dict, load_checkpoint
from leukmodels.checkpoint import restore_rng_state
from leukmodels.config import TrainConfig
from leukmodels.ensemble import FoldEnsemble
from leukmodels.labels import ALL
from leukmodels.metrics import SCALAR_METRICS, classification_metrics, predict_log_proba
from leukmodels.models import count_parameters
from leukmodels.train import FitResult, _build, _device, _result, _Setup, _train_epoch, changed_fields
from leukmodels.train import restore_states

FOLD_METRICS = (*SCALAR_METRICS, "val_loss")  # the per-fold figures in `fold_metrics`


@dataclass
class _Labels:
    """What `_build` reads of a training set: its labels and length."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class _FoldBatches:
    """Batches of one fold's training images: its positions 0..n-1 -> rows of the shared DeviceBatches."""

    def __init__(self, batches: DeviceBatches, rows: np.ndarray) -> None:
        self.batches, self.rows = batches, torch.as_tensor(rows, dtype=torch.int64)

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches(self.rows[idx])


@dataclass
class _Fold:
    setup: _Setup
    batches: _FoldBatches
    train_rows: np.ndarray  # positions in `data` this fold's model trains on
    held: np.ndarray  # positions it validates (its out-of-fold images)
    held_images: Any  # uint8 images of `held` (on the device when the set is staged there)


def check_folds_array(folds: Any, data: Any) -> np.ndarray:
    """The fold of every image as int64 (N,); ValueError unless there are >= 2 folds numbered 0..K-1, each with both
    classes, and every patient's images share one fold."""
    folds = np.asarray(folds).astype(np.int64)
    if folds.shape != (len(data),):
        raise ValueError(f"folds: {folds.shape[0] if folds.ndim else 0} values for {len(data)} images")
    k = int(folds.max()) + 1 if len(folds) else 0
    if k < 2 or folds.min() < 0 or len(np.unique(folds)) != k:
        raise ValueError(f"folds must number the images 0..K-1 with K >= 2 and none empty, got {sorted(set(folds))}")
    patients = np.asarray(data.patients).astype(str)
    for patient in np.unique(patients):
        in_folds = np.unique(folds[patients == patient])
        if len(in_folds) > 1:
            raise ValueError(f"patient {patient} is in folds {in_folds.tolist()}: folds must be patient-disjoint")
    labels = np.asarray(data.labels)
    for fold in range(k):
        if len(np.unique(labels[folds == fold])) < 2:
            raise ValueError(f"fold {fold} holds one class only; every fold must hold ALL and HEM patients")
    return folds


def pooled_metrics(labels: np.ndarray, log_prob: torch.Tensor, patients: np.ndarray, folds: np.ndarray) -> dict:
    """The metrics of the pooled out-of-fold predictions (log P, N x 2, each from the model of the image's fold), with
    val_loss and per_patient_accuracy, plus cv_folds and fold_metrics (JSON {metric: [one value per fold]})."""
    labels, folds = np.asarray(labels).astype(np.int64), np.asarray(folds)
    log_prob = torch.as_tensor(log_prob, dtype=torch.float32)
    prob_all = np.nan_to_num(log_prob[:, ALL].exp().double().numpy(), nan=0.5)  # a diverged fold model: no crash
    nll = -log_prob.gather(1, torch.as_tensor(labels)[:, None])[:, 0].double().numpy()  # N

    def scores(mask: np.ndarray, with_patients: bool) -> dict:
        out = classification_metrics(labels[mask], prob_all[mask], patients=patients[mask] if with_patients else None)
        return {**out, "val_loss": float(nll[mask].mean())}

    pooled = scores(np.ones(len(labels), dtype=bool), True)
    per_fold = [scores(folds == fold, False) for fold in range(int(folds.max()) + 1)]
    fold_metrics = {name: [round(float(fold[name]), 6) for fold in per_fold] for name in FOLD_METRICS}
    return {**pooled, "cv_folds": len(per_fold), "fold_metrics": json.dumps(fold_metrics)}


def _setup_folds(config: TrainConfig, data: Any, folds: np.ndarray, device: torch.device) -> list[_Fold]:
    batches = DeviceBatches(data, device)  # the whole set once; each fold reads its rows of it
    labels = np.asarray(data.labels)
    parts = []
    for fold in range(int(folds.max()) + 1):
        train_rows, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        setup = _build(config, _Labels(labels[train_rows]), device, 0, 1)  # the same initial weights in every fold
        setup.train_model = setup.model
        held_images = (batches.images[torch.as_tensor(held, device=batches.images.device)]
                       if isinstance(batches.images, torch.Tensor) else np.ascontiguousarray(data.images[held]))
        parts.append(_Fold(setup, _FoldBatches(batches, train_rows), train_rows, held, held_images))
    return parts


def save_cv_checkpoint(path: Any, parts: list[_Fold], config: TrainConfig, history: list[dict],
                       per_patient: list[dict]) -> Path:
    """All K fold models with their optimizers and schedules, the epoch's metrics and the whole history."""
    payload = {"format": CV_FORMAT, "epoch": int(history[-1]["epoch"]), "config": config.to_dict(),
               "folds": [{"model": clean_state_dict(part.setup.model.state_dict()),
                          "optimizer": part.setup.optimizer.state_dict(),
                          "scheduler": part.setup.scheduler.state_dict()} for part in parts],
               "metrics": {**history[-1], "per_patient_accuracy": per_patient[-1]}, "rng": capture_rng_state(),
               "extra": {"history": history, "per_patient": per_patient}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _resume(parts: list[_Fold], config: TrainConfig, resume_from: Any, exploit: bool,
            log: Callable[[str], None]) -> tuple[list[dict], list[dict], int]:
    """Every fold model's weights, optimizer and schedule from a CV checkpoint with as many folds; (history,
    per-patient history, the first epoch left). An exploit (PBT) continues another trial's K fold models."""
    payload = load_checkpoint(resume_from)
    if payload["format"] != CV_FORMAT or len(payload["folds"]) != len(parts):
        found = len(payload["folds"]) if payload["format"] == CV_FORMAT else "no"
        raise ValueError(f"{resume_from}: holds {found} fold models, this run trains {len(parts)}")
    changed = changed_fields(payload, config, resume_from, exploit)
    for part, states in zip(parts, payload["folds"]):
        restore_states(part.setup, config, states, changed)
    restore_rng_state(payload["rng"])
    log(f"{'continuing the fold models of' if exploit else 'resumed from'} {resume_from} after epoch "
        f"{payload['epoch']}" + (f" with {changed}" if changed else ""))
    return (list(payload["extra"].get("history", [])), list(payload["extra"].get("per_patient", [])),
            int(payload["epoch"]) + 1)


def fit_cv(config: TrainConfig, data: Any, folds: Any, *, device: Any = None, checkpoint_dir: Any = None,
           resume_from: Any = None, exploit: bool = False,
           on_epoch: Optional[Callable[[dict, Optional[str]], None]] = None,
           log: Optional[Callable[[str], None]] = print) -> FitResult:
    """Train `config`'s K fold models on `data` (a DecodedSet of every training patient) split by `folds`; see the
    module docstring. The result's `model` is the last epoch's FoldEnsemble; its `history` holds the pooled
    out-of-fold metrics of every epoch."""
    config.validate()
    check_data(config, data, "cross-validation", min_items=4)
    folds = check_folds_array(folds, data)
    device, log = _device(device), log or (lambda message: None)
    parts = _setup_folds(config, data, folds, device)
    num_parameters = count_parameters(parts[0].setup.model)  # one fold model; the ensemble holds K of them
    history, per_patient, start = [], [], 1
    if resume_from is not None:
        history, per_patient, start = _resume(parts, config, resume_from, exploit, log)
    labels, patients = np.asarray(data.labels), np.asarray(data.patients).astype(str)
    last_checkpoint = None
    for epoch in range(start, config.epochs + 1):
        log_prob = torch.zeros(len(labels), 2)  # N x 2: each image's log P from its own fold's model
        losses, speeds, lr = [], [], 0.0
        for part in parts:
            loss, speed, lr = _train_epoch(part.setup, config, part.batches, len(part.train_rows), epoch)
            losses.append(loss * len(part.train_rows))
            speeds.append(speed)
            log_prob[part.held] = predict_log_proba(part.setup.model, part.held_images, device=device,
                                                    batch_size=2 * config.batch_size).float().cpu()
        scores = pooled_metrics(labels, log_prob, patients, folds)
        per_patient.append(scores.pop("per_patient_accuracy"))
        metrics = {"epoch": epoch, "train_loss": sum(losses) / sum(len(p.train_rows) for p in parts), **scores,
                   "images_per_s": float(np.mean(speeds)), "lr": float(lr), "num_parameters": num_parameters}
        history.append(metrics)
        epoch_dir = Path(checkpoint_dir) / f"epoch_{epoch:04d}" if checkpoint_dir is not None else None
        if epoch_dir is not None:
            last_checkpoint = save_cv_checkpoint(epoch_dir / CHECKPOINT_FILE, parts, config, history, per_patient)
        log(f"epoch {epoch}/{config.epochs} {len(parts)} folds, out-of-fold: val_loss {metrics['val_loss']:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} bal_acc {metrics['balanced_accuracy']:.4f} "
            f"auc {metrics['roc_auc']:.4f}; per fold bal_acc "
            f"{json.loads(metrics['fold_metrics'])['balanced_accuracy']}")
        if on_epoch is not None:
            on_epoch(dict(metrics), str(epoch_dir) if epoch_dir is not None else None)
    ensemble = FoldEnsemble([part.setup.model for part in parts])
    return _result(history, ensemble, checkpoint_dir, 0, last_checkpoint, resume_from)


__all__ = ["fit_cv", "FoldEnsemble", "pooled_metrics", "check_folds_array", "save_cv_checkpoint", "FOLD_METRICS"]
