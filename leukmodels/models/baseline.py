"""Baseline: a plain VGG-style CNN, the reference every deeper family has to beat.

`depth` conv blocks (conv-BN-ReLU, optionally a second conv-BN-ReLU, then 2x2 max-pool), channels `filters * 2**i`
in block i, global average pool, then one or two fully connected layers with dropout.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from leukmodels.models.checks import check_choice, check_dropout, check_downsampling, check_int_range
from leukmodels.models.registry import NUM_CLASSES, ParameterCountMixin, register_family

DEPTHS = (2, 5)  # inclusive range of conv blocks
KERNEL_SIZES = (3, 5)


class ConvBlock(nn.Sequential):
    """conv-BN-ReLU (x convs), then a 2x2 max-pool that halves H and W."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, convs: int = 2) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                 padding=kernel_size // 2, bias=False),  # bias is redundant before BN
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


@register_family("baseline")
class BaselineCNN(ParameterCountMixin, nn.Module):
    def __init__(self, filters: int = 16, depth: int = 3, kernel_size: int = 3, fc_layers: int = 1,
                 dropout: float = 0.0, image_size: int = 64, num_classes: int = NUM_CLASSES,
                 convs_per_block: int = 2) -> None:
        super().__init__()
        filters = check_int_range("filters", filters, 1)
        depth = check_int_range("depth", depth, *DEPTHS)
        kernel_size = check_choice("kernel_size", kernel_size, KERNEL_SIZES)
        fc_layers = check_int_range("fc_layers", fc_layers, 1, 2)
        convs_per_block = check_int_range("convs_per_block", convs_per_block, 1, 2)
        image_size = check_int_range("image_size", image_size, 1)
        dropout = check_dropout(dropout)
        # Same-padded convs keep the size; each block's 2x2 max-pool floors it by half.
        check_downsampling("baseline", image_size, [(2, 2, 0)] * depth, f"depth={depth} (a 2x2 max-pool per block)")

        widths = [filters * 2 ** i for i in range(depth)]
        self.features = nn.Sequential(*[
            ConvBlock(c_in, c_out, kernel_size, convs_per_block) for c_in, c_out in zip([3] + widths[:-1], widths)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        channels = widths[-1]
        hidden = [nn.Linear(channels, channels), nn.ReLU(inplace=True)] if fc_layers == 2 else []
        self.head = nn.Sequential(*hidden, nn.Dropout(dropout), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x S x S
        x = self.features(x)  # N x filters*2**(depth-1) x S/2**depth x S/2**depth
        x = self.pool(x).flatten(1)  # N x C
        return self.head(x)  # N x 2


def search_space(trial: Any) -> dict[str, Any]:
    """Baseline fields; valid at image sizes 64..224 (depth 5 leaves 2 x 2 at 64 px)."""
    return {
        "filters": trial.suggest_int("filters", 8, 64, log=True),
        "depth": trial.suggest_int("depth", *DEPTHS),
        "kernel_size": trial.suggest_categorical("kernel_size", list(KERNEL_SIZES)),
        "fc_layers": trial.suggest_int("fc_layers", 1, 2),
    }
