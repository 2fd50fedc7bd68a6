"""Inception: a small GoogLeNet (Szegedy et al. 2015) whose width scales with `filters` and depth = number of modules.

Stem (3x3 conv stride 2, 3x3 max-pool stride 2: S -> S/4), then `depth` Inception modules with a 3x3/2 max-pool after
every second one (never after the last), global average pool, dropout, linear head. Module widths follow GoogLeNet's
inception3a proportions (64, 96, 128, 16, 32, 32 with out = 256) scaled so that ch1x1 = w, with w = filters * 2**k
after the k-th pool. The Inception class takes its branch widths as arguments, as torchvision's googlenet does.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from leukmodels.models.checks import check_downsampling, check_dropout, check_int_range
from leukmodels.models.registry import NUM_CLASSES, ParameterCountMixin, register_family

DEPTHS = (1, 9)  # inclusive; GoogLeNet itself has 9 modules
POOL_EVERY = 2  # modules between downsampling max-pools


class BasicConv2d(nn.Sequential):
    """conv (no bias) - BN - ReLU, as torchvision's googlenet."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs: Any) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs),
                         nn.BatchNorm2d(out_channels, eps=0.001), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels; every branch keeps H x W.

    factorize_5x5=True replaces the 5x5 conv by two 3x3 convs (same receptive field, fewer weights; Inception-v2).
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, conv_block: Optional[Callable[..., nn.Module]] = None,
                 factorize_5x5: bool = False) -> None:
        super().__init__()
        conv_block = conv_block or BasicConv2d
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(conv_block(in_channels, ch3x3red, kernel_size=1),
                                     conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1))
        if factorize_5x5:
            wide = [conv_block(ch5x5red, ch5x5, kernel_size=3, padding=1),
                    conv_block(ch5x5, ch5x5, kernel_size=3, padding=1)]
        else:
            wide = [conv_block(ch5x5red, ch5x5, kernel_size=5, padding=2)]
        self.branch3 = nn.Sequential(conv_block(in_channels, ch5x5red, kernel_size=1), *wide)
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                     conv_block(in_channels, pool_proj, kernel_size=1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x C_in x H x W -> N x (ch1x1 + ch3x3 + ch5x5 + pool_proj) x H x W
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


def module_widths(w: int) -> tuple[int, int, int, int, int, int]:
    """(ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) in inception3a's proportions for ch1x1 = w."""
    return w, max(1, 3 * w // 2), 2 * w, max(1, w // 4), max(1, w // 2), max(1, w // 2)


@register_family("inception")
class InceptionNet(ParameterCountMixin, nn.Module):
    def __init__(self, filters: int = 16, depth: int = 4, dropout: float = 0.0, image_size: int = 64,
                 num_classes: int = NUM_CLASSES, factorize_5x5: bool = False) -> None:
        super().__init__()
        filters = check_int_range("filters", filters, 1)
        depth = check_int_range("depth", depth, *DEPTHS)
        image_size = check_int_range("image_size", image_size, 1)
        dropout = check_dropout(dropout)
        # Stem conv 3x3/2 pad 1, max-pool 3x3/2 pad 1, then (depth - 1) // POOL_EVERY max-pools 3x3/2 pad 1.
        pools = (depth - 1) // POOL_EVERY
        check_downsampling("inception", image_size, [(3, 2, 1)] * (2 + pools),
                           f"depth={depth} (stem /4, then {pools} more max-pools)")

        stem_channels = 2 * filters
        self.stem = nn.Sequential(BasicConv2d(3, stem_channels, kernel_size=3, stride=2, padding=1),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        layers: list[nn.Module] = []
        channels, width = stem_channels, filters
        for i in range(depth):
            module = Inception(channels, *module_widths(width), factorize_5x5=factorize_5x5)
            layers.append(module)
            channels = module.out_channels  # 4 * width
            if (i + 1) % POOL_EVERY == 0 and i + 1 < depth:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                width *= 2  # halve resolution, double width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x S x S
        x = self.stem(x)  # N x 2*filters x S/4 x S/4
        x = self.blocks(x)  # N x 4*w_last x S/(4*2**pools) x S/(4*2**pools)
        x = self.pool(x).flatten(1)  # N x 4*w_last
        return self.fc(self.dropout(x))  # N x 2


def search_space(trial: Any) -> dict[str, Any]:
    """Inception fields; depth <= 7 keeps at least 2 x 2 at 64 px (stem /4, then 3 pools)."""
    return {
        "filters": trial.suggest_int("filters", 8, 64, log=True),
        "depth": trial.suggest_int("depth", 2, 7),
    }
