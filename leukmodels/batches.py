"""The decoded sets as fit uses them: checked against the config, and handed out batch by batch on the device."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from leukmodels.augment import as_tensor
from leukmodels.config import TrainConfig

STAGE_FRACTION = 0.3  # on CUDA, keep the whole uint8 set on the GPU when it takes less than this share of free memory


class DeviceBatches:
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


def check_data(config: TrainConfig, data: Any, name: str, min_items: int) -> None:
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


__all__ = ["DeviceBatches", "check_data", "STAGE_FRACTION"]
