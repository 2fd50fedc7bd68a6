"""The one flat, typed config that travels unchanged from the CLI to the model, the checkpoint and the leaderboard row.

Every hyperparameter a trial can vary is a field here. Family-specific fields (kernel_size for the baseline, block for
ResNet, backbone for torchvision) are ignored by the other families; `model_kwargs()` hands each family only what its
constructor takes, so the same dict can be saved whole with every checkpoint and written as leaderboard columns.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    # -- model ----------------------------------------------------------------------------------------------------
    family: str = "resnet"  # a name from leukmodels.models.list_families()
    filters: int = 16  # width: channels of the first stage (doubled per downsampling stage where the family does so)
    depth: int = 2  # baseline: conv blocks; inception: modules; resnet: blocks per stage
    kernel_size: int = 3  # baseline only: 3 or 5
    fc_layers: int = 1  # baseline only: 1 or 2 fully connected layers
    block: str = "basic"  # resnet only: "basic" or "bottleneck"
    stages: int = 3  # resnet only: number of stages (each after the first halves the resolution)
    backbone: str = "resnet18"  # torchvision only: resnet18 | resnet34 | resnet50 | googlenet | inception_v3
    pretrained: Optional[str] = None  # torchvision only: path to a local state_dict file (never downloaded)
    dropout: float = 0.0
    image_size: int = 64  # S: images are decoded once to uint8 N x 3 x S x S (whole 450x450 frame resized)
    # -- optimisation ---------------------------------------------------------------------------------------------
    epochs: int = 10
    batch_size: int = 64  # per worker
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" or "sgd"
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero over the remaining epochs
    label_smoothing: float = 0.0
    class_weighting: bool = False  # weight the loss by inverse class frequency of the training set
    aug_strength: float = 0.5  # 0 = no augmentation; 1 = strongest (rotation, flips, colour jitter)
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail fast with a ValueError that names the bad field and value."""
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"config {name}={getattr(self, name)!r}: {why}")

        for name in ("filters", "depth", "image_size", "epochs", "batch_size", "stages", "fc_layers"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "must be in [0, 1)")
        if not 0.0 <= self.aug_strength <= 1.0:
            raise bad("aug_strength", "must be in [0, 1]")
        if self.warmup_epochs < 0:
            raise bad("warmup_epochs", "must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {OPTIMIZERS}")

    # -- conversions ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a Tune config, a checkpoint's saved config); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


MODEL_FIELDS = ("filters", "depth", "kernel_size", "fc_layers", "block", "stages", "backbone", "pretrained",
                "dropout", "image_size")


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The model-shaping fields of a config; `create_model(config.family, **model_kwargs(config))` builds it."""
    return {name: getattr(config, name) for name in MODEL_FIELDS}


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


__all__ = ["TrainConfig", "model_kwargs", "config_fields", "MODEL_FIELDS", "OPTIMIZERS"]
