"""ResNet (He et al. 2016) with the block type passed in, as torchvision's resnet.py, sized by filters/depth/stages.

Stem (3x3 conv stride 2, optional 3x3/2 max-pool: S -> S/4), then `stages` stages of `depth` blocks each; stage i has
width filters * 2**i and all but the first start with stride 2. Global average pool, dropout, linear head. The last BN
of every residual branch starts at gamma = 0 (zero_init_residual), so each block starts as the identity (Goyal et al.).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn as nn

from leukmodels.models.checks import check_choice, check_downsampling, check_dropout, check_int_range
from leukmodels.models.registry import NUM_CLASSES, ParameterCountMixin, register_family

DEPTHS = (1, 8)  # blocks per stage, inclusive
STAGES = (1, 6)  # inclusive


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 with identity shortcut; out channels = planes."""
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x C_in x H x W -> N x planes x H/stride x W/stride
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as torchvision v1.5) -> 1x1 expand; out channels = 4 * planes."""
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv1x1(in_channels, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * self.expansion), nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x C_in x H x W -> N x 4*planes x H/stride x W/stride
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


@register_family("resnet")
class ResNet(ParameterCountMixin, nn.Module):
    def __init__(self, filters: int = 16, depth: int = 2, stages: int = 3,
                 block: Union[str, type[nn.Module]] = "basic", dropout: float = 0.0, image_size: int = 64,
                 num_classes: int = NUM_CLASSES, stem_pool: bool = True, zero_init_residual: bool = True) -> None:
        super().__init__()
        if isinstance(block, str):
            block = BLOCKS[check_choice("block", block, tuple(BLOCKS))]
        filters = check_int_range("filters", filters, 1)
        depth = check_int_range("depth", depth, *DEPTHS)
        stages = check_int_range("stages", stages, *STAGES)
        image_size = check_int_range("image_size", image_size, 1)
        dropout = check_dropout(dropout)
        # Stem conv 3x3/2 pad 1 (+ max-pool 3x3/2 pad 1), then one stride-2 3x3 conv per stage after the first.
        check_downsampling("resnet", image_size, [(3, 2, 1)] * (1 + int(stem_pool) + stages - 1),
                           f"stages={stages} (stem /{4 if stem_pool else 2}, then /2 per stage after the first)")

        self.stem = nn.Sequential(nn.Conv2d(3, filters, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, stride=2, padding=1) if stem_pool else nn.Identity())
        self.in_channels = filters
        self.stages = nn.Sequential(*[
            self._make_stage(block, filters * 2 ** i, depth, stride=1 if i == 0 else 2) for i in range(stages)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.in_channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_stage(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:  # shortcut must match shape: 1x1 conv (+ stride)
            downsample = nn.Sequential(conv1x1(self.in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        layers = [block(self.in_channels, planes, stride, downsample)]
        layers += [block(out_channels, planes) for _ in range(1, blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x S x S
        x = self.stem(x)  # N x filters x S/4 x S/4
        x = self.stages(x)  # N x filters*2**(stages-1)*expansion x S/2**(stages+1) x S/2**(stages+1)
        x = self.pool(x).flatten(1)  # N x C
        return self.fc(self.dropout(x))  # N x 2


def search_space(trial: Any) -> dict[str, Any]:
    """ResNet fields; stages <= 4 keeps at least 2 x 2 at 64 px. Bottleneck blocks are 3 convs, so fewer per stage."""
    block = trial.suggest_categorical("block", list(BLOCKS))
    return {
        "filters": trial.suggest_int("filters", 8, 64, log=True),
        "block": block,
        "depth": trial.suggest_int("depth", 1, 4 if block == "basic" else 3),
        "stages": trial.suggest_int("stages", 2, 4),
    }
