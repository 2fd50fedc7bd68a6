"""Classification metrics (numpy, equal to scikit-learn's) and batched prediction with optional 8-way dihedral test-time augmentation.

Label convention everywhere: 1 = ALL (leukemic blast, the positive class), 0 = HEM (normal). Models output logits
N x 2 with index 1 = ALL; `prob_all` is P(ALL). A sample is called ALL when P(ALL) > threshold, so an exact tie at
0.5 goes to HEM, as argmax over two equal logits would.
"""
from __future__ import annotations

from typing import Optional, Sequence

from typing import TYPE_CHECKING

import numpy as np

from leukmodels.bootstrap import patient_counts, percentile_interval
from leukmodels.labels import ALL, HEM
from leukmodels.values import finite_or

if TYPE_CHECKING:  # torch is imported on use: the leaderboard reads the names here without it
    import torch

SCALAR_METRICS = ("weighted_f1", "macro_f1", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
LOWER_IS_BETTER = frozenset({"val_loss"})
# A model that calls (almost) every cell one class has learnt the class ratio, not the cells: weighted F1 still
# rewards it when that class is the majority (0.8 on a set of two thirds ALL), balanced accuracy gives it 0.5.
SINGLE_CLASS_SHARE = 0.98


def best_report(history: Sequence[dict], metric: str) -> Optional[dict]:
    """The one best-epoch rule of the project: the report (one dict per epoch) with the best finite `metric`, lower
    being better for LOWER_IS_BETTER; ties go to the later epoch, as Ray's checkpoint manager breaks them (it keeps the
    later of two equal checkpoints), so the epoch named is the one whose weights were kept. None without a score."""
    scored = [r for r in history if finite_or(r.get(metric)) is not None]
    if not scored:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return max(scored, key=lambda r: (sign * r[metric], r.get("epoch", 0)))


def is_single_class(predicted_all: float) -> bool:
    """Whether the share of cells called ALL (`predicted_all`) says the model predicts one class."""
    return bool(predicted_all >= SINGLE_CLASS_SHARE or predicted_all <= 1 - SINGLE_CLASS_SHARE)


def classification_metrics(labels: Sequence[int], prob_all: Sequence[float], patients: Optional[Sequence] = None,
                           threshold: float = 0.5) -> dict:
    """Metrics of P(ALL) scores against 0/1 labels.

    weighted_f1 is the challenge metric (f1_score(average="weighted"), support-weighted over the classes present).
    roc_auc is nan when only one class is present; sensitivity (recall of ALL) is nan without ALL samples and
    specificity (recall of HEM) is nan without HEM samples. Nothing here raises on a single-class batch or on ties.
    predicted_all is the share of cells called ALL (0 or 1: a one-class predictor, see is_single_class).
    With `patients`, adds per_patient_accuracy: {patient (str): accuracy}.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(prob_all, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape[0]}) and prob_all ({p.shape[0]}) differ in length")
    if y.size == 0:
        raise ValueError("classification_metrics: no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (HEM) or 1 (ALL); got values {sorted(set(y.tolist()) - {0, 1})}")
    pred = (p > threshold).astype(np.int64)
    confusion = np.bincount(_cell_kinds(y, pred), minlength=4)[None, :].astype(np.float64)  # 1 x 4
    counted = {name: float(values[0]) for name, values in metrics_of_counts(confusion).items()}
    counted["roc_auc"] = _roc_auc(y, p) if np.unique(y).size == 2 else float("nan")
    out = {name: counted[name] for name in SCALAR_METRICS}
    out["predicted_all"] = float(pred.mean())
    if patients is not None:
        patients = np.asarray(patients).astype(str).ravel()
        if patients.shape != y.shape:
            raise ValueError(f"patients ({patients.shape[0]}) and labels ({y.shape[0]}) differ in length")
        correct = pred == y
        out["per_patient_accuracy"] = {str(pt): float(correct[patients == pt].mean()) for pt in np.unique(patients)}
    return out


# Patient-bootstrap intervals of the validation metrics (patient_interval): cheap, fixed, the same on every rank.
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, INTERVAL_LEVEL = 200, 0, 0.95
INTERVAL_METRICS = ("weighted_f1", "macro_f1", "accuracy", "balanced_accuracy", "sensitivity", "specificity")


def interval_keys(metric: str) -> tuple[str, str]:
    """The report keys of `metric`'s patient-bootstrap interval: ("<metric>_lo", "<metric>_hi")."""
    return f"{metric}_lo", f"{metric}_hi"


def patient_interval(labels: Sequence[int], prob_all: Sequence[float], patients: Sequence, threshold: float = 0.5,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = INTERVAL_LEVEL) -> dict:
    """`<metric>_lo` / `<metric>_hi` for every INTERVAL_METRICS: the percentile interval of the metric over
    `resamples` bootstrap resamples of the patients (each class's patients drawn with replacement, as many as it has,
    so every resample keeps the set's make-up by patient), each patient bringing all its cells.

    Patients, not cells, are the unit: cells of one patient are alike, and per-patient accuracy on C-NMC spans
    0.26 to 1.0, so a set of few patients is far less certain than its cell count suggests. Cheap: one confusion
    count per patient, then a resamples x patients matrix product (no roc_auc, which needs the scores re-sorted).
    """
    names, counts = patient_confusion(labels, prob_all, patients, threshold)
    patient_class = (counts[:, 0] + counts[:, 1]) >= (counts[:, 2] + counts[:, 3])   # True: (mostly) ALL cells
    weights = patient_counts(patient_class, resamples, seed).astype(np.float64)  # resamples x patients: times drawn
    values = metrics_of_counts(weights @ counts)                                  # metric -> resamples
    out = {}
    for metric in INTERVAL_METRICS:
        out.update(zip(interval_keys(metric), percentile_interval(values[metric], level)))
    return out


def patient_confusion(labels: Sequence[int], prob_all: Sequence[float], patients: Sequence,
                      threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(patient names, sorted; float P x 4 confusion counts of each patient's cells, columns tp, fn, fp, tn as
    metrics_of_counts reads them). A set of patients scores as the sum of their rows."""
    y = np.asarray(labels).astype(np.int64).ravel()
    pred = (np.asarray(prob_all, dtype=np.float64).ravel() > threshold).astype(np.int64)
    names, index = np.unique(np.asarray(patients).astype(str).ravel(), return_inverse=True)
    if not (y.shape == pred.shape == index.shape):
        raise ValueError(f"patient_confusion: labels ({y.size}), prob_all ({pred.size}) and patients ({index.size}) "
                         f"differ in length")
    counts = np.zeros((len(names), 4))
    np.add.at(counts, (index, _cell_kinds(y, pred)), 1.0)
    return names, counts


def _cell_kinds(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each cell's column in a confusion count row: (label, prediction) = (1,1) tp 0, (1,0) fn 1, (0,1) fp 2,
    (0,0) tn 3."""
    return np.array([[3, 2], [1, 0]])[y, pred]


def metrics_of_counts(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """INTERVAL_METRICS of R x 4 confusion counts (tp, fn, fp, tn), each equal to scikit-learn's (f1_score weighted
    and macro with zero_division=0, accuracy_score, balanced_accuracy_score, recall_score; tests/test_metrics.py
    compares them). Computed here, not by scikit-learn: importing sklearn.metrics costs each Train worker 1.1 s."""
    tp, fn, fp, tn = confusion.T
    n, support_all, support_hem = tp + fn + fp + tn, tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity, specificity = tp / support_all, tn / support_hem          # nan without that class
        f1_all = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_hem = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
        present_all = ((support_all + fp) > 0).astype(float)   # the class is in the labels or the predictions
        present_hem = ((support_hem + fn) > 0).astype(float)
        return {
            "weighted_f1": (f1_all * support_all + f1_hem * support_hem) / n,
            "macro_f1": (f1_all * present_all + f1_hem * present_hem) / (present_all + present_hem),
            "accuracy": (tp + tn) / n,
            "balanced_accuracy": np.nanmean(np.stack([sensitivity, specificity]), axis=0),
            "sensitivity": sensitivity, "specificity": specificity,
        }


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """The chance that a random ALL cell scores above a random HEM cell, ties counting half (Mann-Whitney U; equal
    to scikit-learn's roc_auc_score). Needs both classes."""
    _, tie_group, group_size = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(group_size) - (group_size - 1) / 2.0)[tie_group]  # 1-based ranks, tied scores averaged
    positives = float(y.sum())
    negatives = y.size - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def tied_with(winner_lo: float, value: float) -> bool:
    """Whether a trial is statistically tied with the winner: its value is at or above the winner's lower bound
    (it lies inside the winner's patient-bootstrap interval), so the validation patients cannot tell them apart."""
    return bool(np.isfinite(winner_lo) and np.isfinite(value) and value >= winner_lo)


def _dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 elements of the dihedral group applied to N x C x S x S: 4 rotations, each with and without a flip."""
    import torch  # here: torch, measured +2-4 s on the leaderboard's --help (see the module's top)

    views = []
    for flipped in (x, x.flip(-1)):
        views.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return views


def predict_log_proba(model: torch.nn.Module, images_uint8, batch_size: int = 256, device=None,
                      tta: bool = False) -> torch.Tensor:
    """Log class probabilities, float32 N x 2 on `device`, of uint8 N x 3 x S x S images (numpy or tensor).

    With tta, the softmax probabilities of the 8 dihedral views are averaged (then logged). The model is put in eval
    mode for the call and returned to its previous mode. bf16 autocast + channels_last on CUDA.
    """
    import torch  # here: see _dihedral_views

    with torch.no_grad():
        return _predict_log_proba(model, images_uint8, batch_size, device, tta)


def _predict_log_proba(model, images_uint8, batch_size: int, device, tta: bool):
    import torch  # here: see _dihedral_views

    from leukmodels.augment import as_tensor, normalise  # here: torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(images_uint8), batch_size):
            chunk = as_tensor(images_uint8[start:start + batch_size])  # B x 3 x S x S uint8
            x = normalise(chunk.to(device, non_blocking=True))  # B x 3 x S x S float32
            views = _dihedral_views(x) if tta else [x]
            log_probs = []
            for view in views:
                if cuda:
                    view = view.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    logits = model(view)
                log_probs.append(torch.log_softmax(logits.float(), dim=1))  # N x 2
            # mean of the views' probabilities, in log space: logsumexp - log(V)
            outputs.append(torch.logsumexp(torch.stack(log_probs), dim=0) - np.log(len(views)))
    finally:
        model.train(was_training)
    if not outputs:
        return torch.zeros(0, 2, device=device)
    return torch.cat(outputs)


def predict_proba(model: torch.nn.Module, images_uint8, batch_size: int = 256, device=None,
                  tta: bool = False) -> np.ndarray:
    """P(ALL) as a float64 numpy array (N,); see predict_log_proba."""
    log_prob = predict_log_proba(model, images_uint8, batch_size=batch_size, device=device, tta=tta)
    return log_prob[:, ALL].exp().double().cpu().numpy()


__all__ = ["best_report", "classification_metrics", "predict_proba", "predict_log_proba", "SCALAR_METRICS", "LOWER_IS_BETTER",
           "SINGLE_CLASS_SHARE", "is_single_class", "patient_interval", "patient_confusion", "metrics_of_counts",
           "interval_keys", "INTERVAL_METRICS", "tied_with"]
