"""The training loop: the same `fit()` in a plain process, in a DDP worker (a Ray Train worker) and on a GPU.

    result = fit(TrainConfig(family="resnet", epochs=10), train_set, val_set, checkpoint_dir="runs/a")

Data are the decoded uint8 arrays of the data layer (N x 3 x S x S, labels 0 = HEM / 1 = ALL, patients). Every epoch
each rank trains on its shard of one seeded permutation (batches go to the device as uint8 and are augmented there),
every rank computes the same validation metrics, rank 0 writes `checkpoint_dir/epoch_XXXX/checkpoint.pt`, and
`on_epoch(metrics, that epoch's folder or None)` is called on every rank. Randomness is re-seeded every epoch from
(seed, epoch, rank), so a run resumed from a checkpoint replays exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from leukmodels.augment import augment
from leukmodels.batches import DeviceBatches, check_data
from leukmodels.calibration import fit_temperature
from leukmodels.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng_state, save_checkpoint
from leukmodels.config import TrainConfig
from leukmodels.labels import ALL, HEM
from leukmodels.metrics import classification_metrics, patient_interval, predict_log_proba
from leukmodels.models import build_model, count_parameters
from leukmodels.optim import make_optimizer, schedule, set_rates

RESUMABLE_CHANGES = {"epochs", "pretrained"}  # config fields a resumed run may change (the rest must match)
# Fields a run may change when it continues ANOTHER run's weights (`fit(..., exploit=True)`: population-based
# training copies a better trial's checkpoint into a worse one and perturbs these); they touch neither the model's
# shape nor the data order, so the copied weights, optimizer moments and step count stay valid.
EXPLOIT_CHANGES = {"lr", "weight_decay", "aug_strength"}


@dataclass
class FitResult:
    """What a run leaves. Which epoch is best is the caller's choice (its metric): `leukmodels.metrics.best_report`
    over `history`, the rule the search uses too; epoch N's checkpoint is `<checkpoint_dir>/epoch_NNNN/`."""

    history: list[dict]  # one flat metrics dict per epoch (including epochs done before a resume)
    last_checkpoint_path: Optional[str]
    model: nn.Module  # the final (last-epoch) model, unwrapped from DDP, in eval mode


def epoch_shard(num_items: int, epoch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's training indices for `epoch`: every rank draws the same permutation and takes a strided slice,
    so batch k of all ranks together is exactly batch k of a single process with world_size times the batch size."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(_stream(seed, epoch, -1)))
    return perm[rank::world_size][: num_items // world_size]


def _stream(seed: int, epoch: int, rank: int) -> int:
    """A distinct 63-bit seed per (seed, epoch, rank); rank -1 is the permutation shared by all ranks."""
    return ((int(seed) * 1_000_003 + int(epoch)) * 1_009 + int(rank) + 1) & (2 ** 63 - 1)


def _seed_everything(value: int) -> None:
    torch.manual_seed(value)
    np.random.seed(value % 2 ** 32)
    random.seed(value)


def _check_world(rank: int, world_size: int) -> bool:
    """True when running under DDP; a mismatch with torch.distributed is a ValueError."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    if world_size == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"world_size={world_size} but torch.distributed is not initialised")
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ValueError(f"rank={rank}, world_size={world_size} disagree with torch.distributed "
                         f"({dist.get_rank()}, {dist.get_world_size()})")
    return True


def _device(device: Any) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # DDP's device_ids and the generators need the index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass
class _Setup:
    """What fit builds before its first epoch."""

    model: nn.Module  # the plain module: evaluated and saved; `train_model` is what steps (DDP-wrapped under DDP)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # LambdaLR over `schedule(config, steps)`
    loss_fn: nn.Module
    device: torch.device
    batch: int  # per rank
    steps: int  # per epoch and rank: the tail of each shard is dropped, no tiny last batch for BatchNorm
    rank: int
    world_size: int
    train_model: Optional[nn.Module] = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _build(config: TrainConfig, train: Any, device: torch.device, rank: int, world_size: int) -> _Setup:
    """Model, optimiser, schedule and loss; the model's initial weights are the same on every rank."""
    _seed_everything(config.seed)
    model = build_model(config).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model, device.type == "cuda")
    per_rank = len(train) // world_size
    batch = min(config.batch_size, per_rank)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config, per_rank // batch))
    counts = np.bincount(np.asarray(train.labels), minlength=2).astype(np.float64)  # whole set: same on all ranks
    weight = torch.tensor(len(train) / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight if config.class_weighting else None,
                                  label_smoothing=config.label_smoothing)
    return _Setup(model, optimizer, scheduler, loss_fn, device, batch, per_rank // batch, rank, world_size)


def _resume(setup: _Setup, config: TrainConfig, resume_from: Any, exploit: bool,
            log: Callable[[str], None]) -> tuple[list[dict], list[dict], int]:
    """Load a checkpoint's weights, optimizer, schedule and RNG into `setup`; (history, per-patient history, the
    first epoch left to train). Only RESUMABLE_CHANGES (and EXPLOIT_CHANGES on an exploit) may differ."""
    payload = load_checkpoint(resume_from)  # on the CPU; load_state_dict copies to the device
    changed = changed_fields(payload, config, resume_from, exploit)
    restore_states(setup, config, payload, changed)
    restore_rng_state(payload["rng"])
    log(f"{'continuing the weights of' if exploit else 'resumed from'} {resume_from} after epoch "
        f"{payload['epoch']}" + (f" with {changed}" if changed else ""))
    return (list(payload["extra"].get("history", [])), list(payload["extra"].get("per_patient", [])),
            int(payload["epoch"]) + 1)


def changed_fields(payload: dict, config: TrainConfig, resume_from: Any, exploit: bool) -> list[str]:
    """The config fields a checkpoint's run had otherwise; ValueError unless a resume (an exploit) may change them."""
    changed = sorted(k for k, v in config.to_dict().items() if payload["config"].get(k) != v)
    allowed = RESUMABLE_CHANGES | (EXPLOIT_CHANGES if exploit else set())
    if set(changed) - allowed:
        raise ValueError(f"{resume_from}: checkpoint config differs in {changed}; only "
                         f"{sorted(allowed)} may change on {'an exploit' if exploit else 'resume'}")
    return changed


def restore_states(setup: _Setup, config: TrainConfig, states: dict, changed: list[str]) -> None:
    """Weights, optimizer and schedule ({"model", "optimizer", "scheduler"} state dicts) into `setup`, the schedule
    stretched to a changed epoch count and the rates set to a changed lr or weight decay."""
    setup.model.load_state_dict(states["model"])
    setup.optimizer.load_state_dict(states["optimizer"])
    setup.scheduler.load_state_dict(states["scheduler"])
    if "epochs" in changed:  # a longer or shorter run: keep the step count, stretch the cosine to the new end
        setup.scheduler.lr_lambdas = [schedule(config, setup.steps)] * len(setup.optimizer.param_groups)
    if {"lr", "weight_decay"} & set(changed):
        set_rates(setup.optimizer, setup.scheduler, config)


def _train_epoch(setup: _Setup, config: TrainConfig, batches: DeviceBatches, num_items: int,
                 epoch: int) -> tuple[float, float, float]:
    """One pass over this rank's shard; (mean training loss over all ranks, images/s of this rank, last step's lr)."""
    _seed_everything(_stream(config.seed, epoch, setup.rank))  # dropout etc.: replayable after a resume
    augment_rng = torch.Generator(device=setup.device).manual_seed(_stream(config.seed + 1, epoch, setup.rank))
    shard = epoch_shard(num_items, epoch, config.seed, setup.rank, setup.world_size)
    setup.model.train()
    loss_sum = torch.zeros((), device=setup.device)
    lr = setup.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    for step in range(setup.steps):
        images, labels = batches(shard[step * setup.batch:(step + 1) * setup.batch])  # B x 3 x S x S uint8, B
        x = augment(images, config.aug_strength, augment_rng)  # B x 3 x S x S float32, normalised
        if setup.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.cuda):
            logits = setup.train_model(x)  # B x 2
        loss = setup.loss_fn(logits.float(), labels)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = setup.optimizer.param_groups[0]["lr"]  # the rate this step used
        setup.optimizer.step()
        setup.scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
    if setup.cuda:
        torch.cuda.synchronize(setup.device)
    images_per_s = setup.steps * setup.batch / max(time.perf_counter() - started, 1e-9)
    totals = torch.stack([loss_sum, torch.tensor(float(setup.steps * setup.batch), device=setup.device)])
    if setup.distributed:
        dist.all_reduce(totals)  # mean training loss over all ranks' images
        _average_buffers(setup.model, setup.world_size)  # one model on every rank for evaluation and the checkpoint
    return float(totals[0] / totals[1]), images_per_s, lr


def _average_buffers(model: nn.Module, world_size: int) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks: each rank updated them with its own
    batches, so without this the ranks would evaluate (and rank 0 would save) slightly different models."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


def _validate(setup: _Setup, batches: DeviceBatches, patients: Any, batch_size: int,
              calibrate: bool = False) -> tuple[float, dict, Optional[float]]:
    """(validation loss, classification_metrics with per_patient_accuracy and patient_interval, the same on every
    rank; temperature fitted on these predictions when `calibrate`, else None). Each rank predicts one chunk with the
    plain module, not DDP (ranks run different numbers of batches, and DDP's forward may sync buffers); the
    log-probabilities are all-gathered."""
    n, labels = len(batches.labels), batches.labels
    chunk = -(-n // setup.world_size)
    lo, hi = min(setup.rank * chunk, n), min((setup.rank + 1) * chunk, n)
    log_prob = predict_log_proba(setup.model, batches.images[lo:hi], batch_size=batch_size, device=setup.device)
    if setup.distributed:
        padded = torch.zeros(chunk, 2, device=setup.device)
        padded[: hi - lo] = log_prob
        gathered = [torch.empty_like(padded) for _ in range(setup.world_size)]
        dist.all_gather(gathered, padded)
        log_prob = torch.cat(gathered)[:n]  # N x 2
    val_loss = float(-log_prob.gather(1, labels[:, None]).mean())
    prob_all = np.nan_to_num(log_prob[:, ALL].exp().double().cpu().numpy(), nan=0.5)  # a diverged model: no crash
    labels_np, patients = labels.cpu().numpy(), np.asarray(patients)
    # <metric>_lo/_hi: the patient-bootstrap 95% interval of every metric, so the search sees how sure each value is
    metrics = {**classification_metrics(labels_np, prob_all, patients=patients),
               **patient_interval(labels_np, prob_all, patients)}
    return val_loss, metrics, _temperature(log_prob, labels) if calibrate else None


def _temperature(log_prob: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    """Temperature scaling's T (leukmodels.calibration) fitted on validation log-probabilities N x 2; None when the
    validation cells are one class or the model diverged (no T to fit: the checkpoint then means T = 1)."""
    z = (log_prob[:, ALL] - log_prob[:, HEM]).double().cpu().numpy()  # the two-class logit
    y = labels.cpu().numpy()
    if not np.isfinite(z).all() or np.unique(y).size < 2:
        return None
    return fit_temperature(z, y)


def _epoch_file(checkpoint_dir: Any, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"epoch_{epoch:04d}" / CHECKPOINT_FILE


def _save(setup: _Setup, config: TrainConfig, epoch_dir: Path, history: list[dict], per_patient: list[dict],
          temperature: Optional[float] = None) -> Path:
    """The last epoch's checkpoint: weights, optimizer, schedule, RNG, config, its metrics and the whole history, and
    the temperature fitted on this epoch's validation predictions (extra["temperature"], absent when none)."""
    calibration = {} if temperature is None else {"temperature": float(temperature)}
    return save_checkpoint(epoch_dir / CHECKPOINT_FILE, model=setup.model, optimizer=setup.optimizer,
                           scheduler=setup.scheduler, epoch=history[-1]["epoch"], config=config,
                           metrics={**history[-1], "per_patient_accuracy": per_patient[-1]},
                           extra={"history": history, "per_patient": per_patient, **calibration})


def fit(config: TrainConfig, train: Any, val: Any, *, device: Any = None, rank: int = 0, world_size: int = 1,
        checkpoint_dir: Any = None, resume_from: Any = None, exploit: bool = False,
        on_epoch: Optional[Callable[[dict, Optional[str]], None]] = None,
        log: Optional[Callable[[str], None]] = print) -> FitResult:
    """Train `config`'s model on `train`, evaluate on `val` every epoch; see the module docstring.

    `exploit=True`: `resume_from` is another run's checkpoint whose weights, optimizer state and schedule position
    this run continues with its own `EXPLOIT_CHANGES` (lr, weight decay, augmentation) from the next step on."""
    config.validate()
    distributed = _check_world(rank, world_size)
    check_data(config, train, "train", min_items=2 * world_size)
    check_data(config, val, "val", min_items=1)
    device = _device(device)
    log = log if (log is not None and rank == 0) else (lambda message: None)
    setup = _build(config, train, device, rank, world_size)
    num_parameters = count_parameters(setup.model)
    history, per_patient, start_epoch = [], [], 1
    if resume_from is not None:
        history, per_patient, start_epoch = _resume(setup, config, resume_from, exploit, log)
    setup.train_model = (nn.parallel.DistributedDataParallel(setup.model, device_ids=[device.index] if setup.cuda
                                                             else None) if distributed else setup.model)
    train_batches, val_batches = DeviceBatches(train, device), DeviceBatches(val, device)
    last_checkpoint = None
    # a temperature is fitted only on patients the model never trained on (not for a retrain on train + val)
    calibrate = not set(map(str, val.patients)) & set(map(str, train.patients))
    for epoch in range(start_epoch, config.epochs + 1):
        train_loss, images_per_s, lr = _train_epoch(setup, config, train_batches, len(train), epoch)
        val_loss, scores, temperature = _validate(setup, val_batches, val.patients, 2 * config.batch_size,
                                                  calibrate and rank == 0)
        per_patient.append(scores.pop("per_patient_accuracy"))
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **scores,
                   "images_per_s": float(images_per_s), "lr": float(lr), "num_parameters": num_parameters}
        history.append(metrics)
        epoch_dir = _epoch_file(checkpoint_dir, epoch).parent if checkpoint_dir is not None and rank == 0 else None
        if epoch_dir is not None:
            last_checkpoint = _save(setup, config, epoch_dir, history, per_patient, temperature)
        if distributed:
            dist.barrier()  # the checkpoint exists before any rank reports this epoch
        log(f"epoch {epoch}/{config.epochs} train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} bal_acc {metrics['balanced_accuracy']:.4f} "
            f"auc {metrics['roc_auc']:.4f} {images_per_s:.0f} img/s lr {lr:.2e}")
        if on_epoch is not None:
            on_epoch(dict(metrics), str(epoch_dir) if epoch_dir is not None else None)
    return _result(history, setup.model, checkpoint_dir, rank, last_checkpoint, resume_from)


def _result(history: list[dict], model: nn.Module, checkpoint_dir: Any, rank: int, last_checkpoint: Optional[Path],
            resume_from: Any) -> FitResult:
    """The run's history and where its last checkpoint is."""
    if not history:
        raise ValueError(f"{resume_from}: checkpoint has no epoch history to report")
    if last_checkpoint is None and checkpoint_dir is not None and rank == 0:  # resumed with nothing left to train
        candidate = _epoch_file(checkpoint_dir, history[-1]["epoch"])
        last_checkpoint = candidate if candidate.is_file() else None
    return FitResult(history=history, last_checkpoint_path=str(last_checkpoint) if last_checkpoint else None,
                     model=model.eval())


__all__ = ["fit", "FitResult", "epoch_shard", "RESUMABLE_CHANGES", "EXPLOIT_CHANGES"]
