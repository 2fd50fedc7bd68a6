"""The training loop: the same `fit()` in a plain process, in a DDP worker (the Ray layer's TorchTrainer) and on a GPU.

    result = fit(TrainConfig(family="resnet", epochs=10), train_set, val_set, checkpoint_dir="runs/a")

Data are the decoded uint8 arrays of the data layer (N x 3 x S x S, labels 0 = HEM / 1 = ALL, patients). Every epoch:
a seeded permutation of the training indices (identical on every rank) is cut into `world_size` disjoint strided
shards (tail dropped so every rank runs the same number of steps); each rank moves its batches to the device as uint8,
augments + normalises them there, and steps; then the validation set is evaluated (sharded by rank, log-probabilities
all-gathered so every rank computes identical metrics), rank 0 writes `checkpoint_dir/epoch_XXXX/checkpoint.pt`, and
`on_epoch(metrics, checkpoint_dir_of_this_epoch or None)` is called on every rank.

Randomness is re-seeded at the start of every epoch from (seed, epoch, rank), so a run resumed from a checkpoint
replays exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from leukmodels.augment import as_tensor, augment
from leukmodels.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng_state, save_checkpoint
from leukmodels.config import TrainConfig
from leukmodels.metrics import classification_metrics, predict_log_proba
from leukmodels.models import build_model, count_parameters

RESUMABLE_CHANGES = {"epochs", "pretrained"}  # config fields a resumed run may change (the rest must match)
# Fields a run may change when it continues ANOTHER run's weights (`fit(..., exploit=True)`: population-based
# training copies a better trial's checkpoint into a worse one and perturbs these); they touch neither the model's
# shape nor the data order, so the copied weights, optimizer moments and step count stay valid.
EXPLOIT_CHANGES = {"lr", "weight_decay", "aug_strength"}
STAGE_FRACTION = 0.3  # on CUDA, keep the whole uint8 set on the GPU when it takes less than this share of free memory


@dataclass
class FitResult:
    history: list[dict]  # one flat metrics dict per epoch (including epochs done before a resume)
    best: dict  # the metrics of the epoch with the highest weighted_f1
    best_epoch: int
    checkpoint_path: Optional[str]  # rank 0 with checkpoint_dir: the best epoch's checkpoint.pt, else None
    last_checkpoint_path: Optional[str]
    model: nn.Module  # the final (last-epoch) model, unwrapped from DDP, in eval mode
    best_per_patient: dict = field(default_factory=dict)  # patient -> validation accuracy at the best epoch


class WarmupCosine:
    """LR factor per optimizer step: linear warm-up to 1 over `warmup` steps, then cosine to 0 at `total` steps.

    A class (not a lambda) so that LambdaLR's state_dict keeps its fields and a checkpoint restores it."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


class _DeviceBatches:
    """uint8 images + labels, handed out by index on the device; on CUDA the whole set is staged on the GPU once when
    it fits, otherwise each batch is gathered on the CPU, pinned and copied asynchronously."""

    def __init__(self, data: Any, device: torch.device) -> None:
        self.device = device
        self.labels = as_tensor(data.labels).to(device=device, dtype=torch.int64, copy=True)  # own, writable copy
        self.images = data.images  # numpy (maybe memory-mapped) N x 3 x S x S uint8
        if device.type == "cuda" and self.images.nbytes < STAGE_FRACTION * torch.cuda.mem_get_info(device)[0]:
            self.images = as_tensor(self.images).to(device)

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.images, torch.Tensor):
            x = self.images[idx.to(self.images.device)]
        else:
            x = as_tensor(self.images[idx.numpy()])  # B x 3 x S x S uint8, gathered (copied) on the CPU
            if self.device.type == "cuda":
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
        return x, self.labels[idx.to(self.device)]


def _check_data(config: TrainConfig, data: Any, name: str, min_items: int) -> None:
    images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if images is None or labels is None or not hasattr(data, "patients"):
        raise ValueError(f"{name} set: expected a DecodedSet (images, labels, patients), got {type(data).__name__}")
    s = config.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
        raise ValueError(f"{name} set: images are {tuple(images.shape)} {images.dtype}; config image_size={s} needs "
                         f"uint8 N x 3 x {s} x {s}")
    if len(labels) != len(images) or not np.isin(np.asarray(labels), (0, 1)).all():
        raise ValueError(f"{name} set: labels must be 0 (HEM) or 1 (ALL), one per image (unlabelled rows given?)")
    if len(images) < min_items:
        raise ValueError(f"{name} set: {len(images)} images, need at least {min_items}")


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


def _make_optimizer(config: TrainConfig, model: nn.Module, cuda: bool) -> torch.optim.Optimizer:
    """No weight decay on 1-D parameters (biases, norm scales); fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    fast = {"fused": True} if cuda else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=config.lr, **fast)


def _set_rates(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> None:
    """Give a restored optimizer and LambdaLR `config`'s lr and weight decay: the schedule's base (its factor keeps
    the restored step's position on the warm-up/cosine curve) and the rate the next step uses. The loaded state
    holds the other run's values in each param group (`lr`, `initial_lr`, `weight_decay`) and in `base_lrs`."""
    scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)  # last_epoch counts the optimizer steps taken so far
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = config.lr, config.lr * factor
    optimizer.param_groups[0]["weight_decay"] = config.weight_decay  # group 1 (biases, norms) stays undecayed
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _average_buffers(model: nn.Module, world_size: int) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks: each rank updated them with its own
    batches, so without this the ranks would evaluate (and rank 0 would save) slightly different models."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


def _evaluate(model: nn.Module, images: Any, labels: torch.Tensor, batch_size: int, device: torch.device,
              rank: int, world_size: int, distributed: bool) -> torch.Tensor:
    """Log-probabilities N x 2 of the whole validation set, identical on every rank (each rank predicts one chunk)."""
    n = len(labels)
    chunk = -(-n // world_size)
    lo, hi = min(rank * chunk, n), min((rank + 1) * chunk, n)
    # the plain module, not DDP: ranks run different numbers of eval batches, and DDP's forward may sync buffers
    log_prob = predict_log_proba(model, images[lo:hi], batch_size=batch_size, device=device)  # (hi-lo) x 2
    if not distributed:
        return log_prob
    padded = torch.zeros(chunk, 2, device=device)
    padded[: hi - lo] = log_prob
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)[:n]


def fit(config: TrainConfig, train: Any, val: Any, *, device: Any = None, rank: int = 0, world_size: int = 1,
        checkpoint_dir: Any = None, resume_from: Any = None, exploit: bool = False,
        on_epoch: Optional[Callable[[dict, Optional[str]], None]] = None,
        log: Optional[Callable[[str], None]] = print) -> FitResult:
    """Train `config`'s model on `train`, evaluate on `val` every epoch; see the module docstring.

    `exploit=True`: `resume_from` is another run's checkpoint whose weights, optimizer state and schedule position
    this run continues with its own `EXPLOIT_CHANGES` (lr, weight decay, augmentation) from the next step on."""
    config.validate()
    distributed = _check_world(rank, world_size)
    _check_data(config, train, "train", min_items=2 * world_size)
    _check_data(config, val, "val", min_items=1)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda and device.index is None:  # DDP's device_ids and the generators need the index
        device = torch.device("cuda", torch.cuda.current_device())
    log = log if (log is not None and rank == 0) else (lambda message: None)

    _seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config).to(device)
    num_parameters = count_parameters(model)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(config, model, cuda)
    per_rank = len(train) // world_size
    batch = min(config.batch_size, per_rank)
    steps = per_rank // batch  # the tail of the shard is dropped: no tiny last batch for BatchNorm
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(round(config.warmup_epochs * steps), config.epochs * steps))
    counts = np.bincount(np.asarray(train.labels), minlength=2).astype(np.float64)  # whole set: same on all ranks
    weight = torch.tensor(len(train) / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight if config.class_weighting else None,
                                  label_smoothing=config.label_smoothing)

    history: list[dict] = []
    per_patient_history: list[dict] = []
    start_epoch = 1
    if resume_from is not None:
        payload = load_checkpoint(resume_from)  # on the CPU; load_state_dict copies to the device
        changed = sorted(k for k, v in config.to_dict().items() if payload["config"].get(k) != v)
        allowed = RESUMABLE_CHANGES | (EXPLOIT_CHANGES if exploit else set())
        if set(changed) - allowed:
            raise ValueError(f"{resume_from}: checkpoint config differs in {changed}; only "
                             f"{sorted(allowed)} may change on {'an exploit' if exploit else 'resume'}")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if "epochs" in changed:  # a longer or shorter run: keep the step count, stretch the cosine to the new end
            stretched = WarmupCosine(round(config.warmup_epochs * steps), config.epochs * steps)
            scheduler.lr_lambdas = [stretched] * len(optimizer.param_groups)  # every group, biases' too
        if {"lr", "weight_decay"} & set(changed):
            _set_rates(optimizer, scheduler, config)
        restore_rng_state(payload["rng"])
        history = list(payload["extra"].get("history", []))
        per_patient_history = list(payload["extra"].get("per_patient", []))
        start_epoch = int(payload["epoch"]) + 1
        log(f"{'continuing the weights of' if exploit else 'resumed from'} {resume_from} after epoch "
            f"{payload['epoch']}" + (f" with {changed}" if changed else ""))
    train_model = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
                   if distributed else model)

    train_batches, val_batches = _DeviceBatches(train, device), _DeviceBatches(val, device)
    last_checkpoint = None
    for epoch in range(start_epoch, config.epochs + 1):
        _seed_everything(_stream(config.seed, epoch, rank))  # dropout etc.: replayable after a resume
        augment_rng = torch.Generator(device=device).manual_seed(_stream(config.seed + 1, epoch, rank))
        shard = epoch_shard(len(train), epoch, config.seed, rank, world_size)
        model.train()
        loss_sum = torch.zeros((), device=device)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        for step in range(steps):
            images, labels = train_batches(shard[step * batch:(step + 1) * batch])  # B x 3 x S x S uint8, B
            x = augment(images, config.aug_strength, augment_rng)  # B x 3 x S x S float32, normalised
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = train_model(x)  # B x 2
            loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * labels.shape[0]
        if cuda:
            torch.cuda.synchronize(device)
        images_per_s = steps * batch / max(time.perf_counter() - started, 1e-9)
        totals = torch.stack([loss_sum, torch.tensor(float(steps * batch), device=device)])
        if distributed:
            dist.all_reduce(totals)  # mean training loss over all ranks' images
            _average_buffers(model, world_size)  # one model on every rank for evaluation and the checkpoint
        train_loss = float(totals[0] / totals[1])

        log_prob = _evaluate(model, val_batches.images, val_batches.labels, 2 * config.batch_size, device,
                             rank, world_size, distributed)  # N x 2, same on every rank
        val_labels = val_batches.labels
        val_loss = float(-log_prob.gather(1, val_labels[:, None]).mean())
        prob_all = np.nan_to_num(log_prob[:, 1].exp().double().cpu().numpy(), nan=0.5)  # a diverged model: no crash
        scores = classification_metrics(val_labels.cpu().numpy(), prob_all, patients=np.asarray(val.patients))
        per_patient_history.append(scores.pop("per_patient_accuracy"))
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **scores,
                   "images_per_s": float(images_per_s), "lr": float(lr), "num_parameters": num_parameters}
        history.append(metrics)

        epoch_dir = None
        if checkpoint_dir is not None and rank == 0:
            epoch_dir = Path(checkpoint_dir) / f"epoch_{epoch:04d}"
            last_checkpoint = save_checkpoint(
                epoch_dir / CHECKPOINT_FILE, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                config=config, metrics={**metrics, "per_patient_accuracy": per_patient_history[-1]},
                extra={"history": history, "per_patient": per_patient_history})
        if distributed:
            dist.barrier()  # the checkpoint exists before any rank reports this epoch
        log(f"epoch {epoch}/{config.epochs} train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"weighted_f1 {metrics['weighted_f1']:.4f} bal_acc {metrics['balanced_accuracy']:.4f} "
            f"auc {metrics['roc_auc']:.4f} {images_per_s:.0f} img/s lr {lr:.2e}")
        if on_epoch is not None:
            on_epoch(dict(metrics), str(epoch_dir) if epoch_dir is not None else None)

    if not history:
        raise ValueError(f"{resume_from}: checkpoint has no epoch history to report")
    best_index = max(range(len(history)), key=lambda i: _finite_or(history[i]["weighted_f1"], -math.inf))
    best_epoch = int(history[best_index]["epoch"])
    best_file = Path(checkpoint_dir) / f"epoch_{best_epoch:04d}" / CHECKPOINT_FILE if checkpoint_dir else None
    if last_checkpoint is None and checkpoint_dir is not None and rank == 0:  # resumed with nothing left to train
        candidate = Path(checkpoint_dir) / f"epoch_{history[-1]['epoch']:04d}" / CHECKPOINT_FILE
        last_checkpoint = candidate if candidate.is_file() else None
    return FitResult(
        history=history, best=dict(history[best_index]), best_epoch=best_epoch,
        checkpoint_path=str(best_file) if rank == 0 and best_file is not None and best_file.is_file() else (
            str(last_checkpoint) if last_checkpoint else None),
        last_checkpoint_path=str(last_checkpoint) if last_checkpoint else None,
        model=model.eval(), best_per_patient=dict(per_patient_history[best_index]) if per_patient_history else {})


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


__all__ = ["fit", "FitResult", "WarmupCosine", "epoch_shard", "RESUMABLE_CHANGES", "EXPLOIT_CHANGES"]
