"""torchvision's deep ImageNet backbones with a new two-class head, optionally warm-started from a LOCAL weights file.

Nothing is ever downloaded: `pretrained` is a path to a file written by `torch.save(model.state_dict(), path)` (a plain
state_dict, or a dict holding it under "state_dict" or "model"), read with `torch.load(weights_only=True)`. The old
classification head (fc) and GoogLeNet/Inception auxiliary heads are dropped; every other tensor must match the
backbone by name and shape, or construction fails with a ValueError naming the file.

GoogLeNet is built with transform_input=False: inputs are normalised by leukmodels' own pipeline, not re-mapped here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from leukmodels.models.checks import check_choice, check_dropout, check_int_range
from leukmodels.models.registry import NUM_CLASSES, ParameterCountMixin, register_family

# Smallest image each backbone can take: the total stride (32) leaves a 1 x 1 map; Inception-v3's unpadded stem and
# grid reductions need 75 px (torchvision's documented minimum).
MIN_IMAGE_SIZE = {"resnet18": 32, "resnet34": 32, "resnet50": 32, "googlenet": 32, "inception_v3": 75}
HEAD_PREFIXES = ("fc.", "aux1.", "aux2.", "AuxLogits.")  # old classifier and auxiliary heads: never loaded
WRAPPER_PREFIXES = ("module.", "backbone.")  # DDP's and this module's wrappers, stripped from saved keys


def _tvm() -> Any:
    """torchvision.models, imported on the first build: importing it costs a Train worker 1.4 s (it pulls in
    torch._dynamo), and the baseline, Inception and ResNet families never need it."""
    import torchvision.models

    return torchvision.models


def _resnet(name: str, dropout: float, num_classes: int) -> nn.Module:
    net = getattr(_tvm(), name)(weights=None, num_classes=num_classes)
    net.fc = nn.Sequential(nn.Dropout(dropout), net.fc)  # torchvision's ResNet has no dropout before its head
    return net


BUILDERS: dict[str, Callable[[float, int], nn.Module]] = {  # (dropout, num_classes) -> randomly initialised net
    "resnet18": lambda p, n: _resnet("resnet18", p, n),
    "resnet34": lambda p, n: _resnet("resnet34", p, n),
    "resnet50": lambda p, n: _resnet("resnet50", p, n),
    "googlenet": lambda p, n: _tvm().googlenet(weights=None, num_classes=n, aux_logits=False,
                                            transform_input=False, init_weights=True, dropout=p),
    "inception_v3": lambda p, n: _tvm().inception_v3(weights=None, num_classes=n, aux_logits=False,
                                                  transform_input=False, init_weights=True, dropout=p),
}


def _is_head(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, wrapper prefixes stripped; ValueError naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads refused by weights_only
        raise ValueError(f"pretrained weights file {str(path)!r} is not a torch state_dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"pretrained weights file {str(path)!r} holds no state_dict of tensors")
    state = {}
    for key, value in loaded.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def load_backbone_weights(net: nn.Module, path: str | Path, backbone: str) -> None:
    """Copy every non-head tensor of `path` into `net`; names and shapes must all fit."""
    source = {k: v for k, v in read_state_dict(path).items() if not _is_head(k)}
    target = {k: v for k, v in net.state_dict().items() if not _is_head(k)}
    # Old BN checkpoints lack num_batches_tracked; BatchNorm fills it in, so it is not required.
    missing = sorted(k for k in target if k not in source and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in source if k not in target)
    wrong_shape = [f"{k} {tuple(source[k].shape)} != {tuple(target[k].shape)}"
                   for k in target if k in source and source[k].shape != target[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es) e.g. {wrong_shape[:3]}")
    if problems:
        raise ValueError(f"pretrained weights file {str(path)!r} does not fit backbone {backbone!r}: "
                         + "; ".join(problems))
    if any(p.is_meta for p in net.parameters()):
        return  # built under torch.device("meta") to check a config: the fit is checked, there is nothing to copy into
    net.load_state_dict(source, strict=False)  # only the new head stays freshly initialised


@register_family("torchvision")
class TorchvisionClassifier(ParameterCountMixin, nn.Module):
    def __init__(self, backbone: str = "resnet18", pretrained: Optional[str] = None, dropout: float = 0.0,
                 image_size: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        backbone = check_choice("backbone", backbone, tuple(BUILDERS))
        image_size = check_int_range("image_size", image_size, 1)
        dropout = check_dropout(dropout)
        num_classes = check_int_range("num_classes", num_classes, 2)
        if image_size < MIN_IMAGE_SIZE[backbone]:
            raise ValueError(f"image_size={image_size} is too small for torchvision {backbone}: "
                             f"it needs >= {MIN_IMAGE_SIZE[backbone]} px for a >= 1 x 1 last feature map")
        self.backbone_name = backbone
        self.backbone = BUILDERS[backbone](dropout, num_classes)
        if pretrained:
            load_backbone_weights(self.backbone, pretrained, backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x S x S -> N x 2 (aux_logits is off, so train and eval mode both return plain logits)
        return self.backbone(x)


def search_space(trial: Any) -> dict[str, Any]:
    """Backbone only; inception_v3 fails (ValueError) below 75 px, which the search layer treats as invalid."""
    return {"backbone": trial.suggest_categorical("backbone", list(BUILDERS))}
