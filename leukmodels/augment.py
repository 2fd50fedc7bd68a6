"""Batch augmentation on the device: uint8 N x 3 x S x S in, normalised float N x 3 x S x S out.

Everything is done for the whole batch at once with tensor ops (no per-image Python loop), so a batch that already sits
on the GPU never comes back to the CPU. Per-sample randomness is drawn from one `torch.Generator` (seeded by the
training loop per epoch and rank), so a run is reproducible and a resumed run sees the same augmentations.

Order: dihedral group (random transpose + vertical flip + horizontal flip = all 8 flips / 90-degree rotations, exact
pixel moves), then a free rotation for a share of the batch (affine_grid + grid_sample, bilinear, black fill: the
background IS black), then
colour jitter (brightness, contrast, saturation, hue) on the cell only, then normalisation.
`strength` in [0, 1] scales every probability and magnitude; strength 0 is exactly `normalise`.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

# Per-channel mean / std of whole frames (black background included) in [0, 1] units, from real C-NMC cells (measured
# as leukmodels/cells.py says): the cell covers ~18% of a 450x450 frame with foreground mean RGB ~(70, 30, 80) and
# spread ~13 per channel, so
# mean = 0.18 * fg_mean and std = sqrt(0.18 * (fg_mean^2 + 13^2) - mean^2). Networks with BatchNorm are not sensitive to
# the exact values; they only need to put inputs near zero mean / unit variance.
STAIN_MEAN = (0.049, 0.021, 0.056)
STAIN_STD = (0.108, 0.050, 0.122)

MAX_ROTATION_DEG = 45.0  # with the 90-degree rotations this covers every angle at strength 1
MAX_BRIGHTNESS = 0.25  # multiplicative factor in [1 - m, 1 + m]
MAX_CONTRAST = 0.25
MAX_SATURATION = 0.25
MAX_HUE_DEG = 15.0  # rotation of the colour around the grey axis
FOREGROUND_LEVEL = 4.0 / 255.0  # a pixel whose brightest channel is above this belongs to the cell


def _stats(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 3, 1, 1)
    mean = torch.tensor(STAIN_MEAN, device=batch.device, dtype=torch.float32).view(shape)
    std = torch.tensor(STAIN_STD, device=batch.device, dtype=torch.float32).view(shape)
    return mean, std


def _check(batch: torch.Tensor) -> None:
    if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a uint8 N x 3 x H x W batch, got {tuple(batch.shape)} {batch.dtype}")


def as_tensor(array) -> torch.Tensor:
    """numpy (or tensor) -> tensor sharing its memory. Arrays from Ray's object store and read-only memory maps are
    not writable; nothing here writes to them, so PyTorch's warning about that is silenced rather than paid for with
    a copy."""
    if isinstance(array, torch.Tensor):
        return array
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x S x S -> float32 N x 3 x S x S, (x / 255 - mean) / std."""
    _check(batch_uint8)
    mean, std = _stats(batch_uint8)
    return (batch_uint8.float().div_(255.0) - mean) / std


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)  # mask: N bools, one per sample


def _dihedral(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """Each of transpose / vflip / hflip with probability p; at p = 0.5 all 8 dihedral elements are equally likely."""
    if x.shape[-1] == x.shape[-2]:
        x = _where(u[:, 0] < p, x.transpose(-1, -2), x)
    x = _where(u[:, 1] < p, x.flip(-2), x)
    return _where(u[:, 2] < p, x.flip(-1), x)


def _rotate(x: torch.Tensor, angle_rad: torch.Tensor) -> torch.Tensor:
    """Rotate each image of N x 3 x S x S by its own angle (N,), bilinear, zeros (black) outside the frame."""
    cos, sin, zero = angle_rad.cos(), angle_rad.sin(), torch.zeros_like(angle_rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # N x 2 x 3
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # N x S x S x 2
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _hue_matrices(angle_rad: torch.Tensor) -> torch.Tensor:
    """N x 3 x 3 rotations about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues' formula): shifts hue, keeps grey."""
    device, k = angle_rad.device, 1.0 / math.sqrt(3.0)  # k: each component of the unit grey axis
    cross = k * torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=device)  # [axis]_x
    outer = torch.full((3, 3), k * k, device=device)  # axis axis^T
    eye = torch.eye(3, device=device)
    c, s = angle_rad.cos().view(-1, 1, 1), angle_rad.sin().view(-1, 1, 1)
    return c * eye + s * cross + (1 - c) * outer  # N x 3 x 3


def _colour_jitter(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue on x in [0, 1]; the black background stays black."""
    n = x.shape[0]
    cell = (x.amax(dim=1, keepdim=True) > FOREGROUND_LEVEL).to(x.dtype)  # N x 1 x S x S
    signed = (u * 2.0 - 1.0) * strength  # N x 4 in [-strength, strength]
    brightness = 1.0 + MAX_BRIGHTNESS * signed[:, 0].view(n, 1, 1, 1)
    contrast = 1.0 + MAX_CONTRAST * signed[:, 1].view(n, 1, 1, 1)
    saturation = 1.0 + MAX_SATURATION * signed[:, 2].view(n, 1, 1, 1)
    hue = signed[:, 3] * math.radians(MAX_HUE_DEG)

    x = x * brightness
    # contrast around the cell's own mean colour (not the frame's, which the black background drags down)
    cell_mean = (x * cell).sum(dim=(2, 3), keepdim=True) / cell.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    x = (x - cell_mean) * contrast + cell_mean
    grey = x.mean(dim=1, keepdim=True)  # N x 1 x S x S
    x = (x - grey) * saturation + grey
    x = torch.einsum("nij,njhw->nihw", _hue_matrices(hue), x)
    return (x * cell).clamp_(0.0, 1.0)


def augment(batch_uint8: torch.Tensor, strength: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Augment and normalise a uint8 N x 3 x S x S batch on its own device; returns float32 N x 3 x S x S.

    `generator` must live on the batch's device (torch.Generator(device=batch.device)); None uses the global RNG.
    """
    _check(batch_uint8)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment strength={strength!r}: must be in [0, 1]")
    if strength == 0.0 or batch_uint8.shape[0] == 0:
        return normalise(batch_uint8)
    n, device = batch_uint8.shape[0], batch_uint8.device
    u = torch.rand(n, 9, generator=generator, device=device)  # all per-sample draws of this batch at once

    x = batch_uint8.float().div_(255.0)  # N x 3 x S x S in [0, 1]
    x = _dihedral(x, u[:, 0:3], p=0.5 * strength)
    # Free rotation for a share `strength` of the samples only: bilinear resampling smooths fine texture, and
    # evaluation images are never resampled, so the rest keep their exact pixels.
    angle = (u[:, 3] * 2.0 - 1.0) * math.radians(MAX_ROTATION_DEG) * strength  # N
    x = _where(u[:, 8] < strength, _rotate(x, angle), x)
    x = _colour_jitter(x, u[:, 4:8], strength)
    mean, std = _stats(x)
    return (x - mean) / std


__all__ = ["augment", "normalise", "as_tensor", "STAIN_MEAN", "STAIN_STD"]
