"""The optimiser and its learning-rate schedule: linear warm-up, then cosine decay to zero, stepped once per batch."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from leukmodels.config import TrainConfig


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


def schedule(config: TrainConfig, steps_per_epoch: int) -> WarmupCosine:
    """The warm-up/cosine factor of `config`'s run, counted in optimizer steps."""
    return WarmupCosine(round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch)


def make_optimizer(config: TrainConfig, model: nn.Module, cuda: bool) -> torch.optim.Optimizer:
    """No weight decay on 1-D parameters (biases, norm scales); fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    fast = {"fused": True} if cuda else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=config.lr, **fast)


def set_rates(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> None:
    """Give a restored optimizer and LambdaLR `config`'s lr and weight decay: the schedule's base (its factor keeps
    the restored step's position on the warm-up/cosine curve) and the rate the next step uses. The loaded state
    holds the other run's values in each param group (`lr`, `initial_lr`, `weight_decay`) and in `base_lrs`."""
    scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)  # last_epoch counts the optimizer steps taken so far
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = config.lr, config.lr * factor
    optimizer.param_groups[0]["weight_decay"] = config.weight_decay  # group 1 (biases, norms) stays undecayed
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


__all__ = ["WarmupCosine", "make_optimizer", "schedule", "set_rates"]
