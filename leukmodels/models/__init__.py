"""Model families for telling leukemic blasts (ALL, logit index 1) from normal cells (HEM, index 0).

A timm-style decorator registry: each family module defines one `nn.Module` class registered with
`@register_family("name")` and a pure define-by-run `search_space(trial) -> dict` next to it.

    model = create_model("resnet", **model_kwargs(config))   # every model-shaping config key may be passed
    search_space("resnet", optuna_trial)                     # -> {"filters": 32, "depth": 2, "block": "basic", ...}

`create_model` hands each family only the keys its constructor takes, so the one flat `TrainConfig` travels unchanged.
Every model maps uint8-derived float images N x 3 x S x S (S = image_size) to logits N x 2, exposes
`num_parameters()`, and raises `ValueError` naming the bad value at construction when a config cannot work.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch.nn as nn

from leukmodels.config import MODEL_FIELDS

NUM_CLASSES = 2  # logits index 0 = HEM (normal), 1 = ALL (leukemic blast)

_FAMILIES: dict[str, type[nn.Module]] = {}


class ParameterCountMixin:
    """Gives a model `num_parameters()`; mixed into every family's class."""

    def num_parameters(self) -> int:
        return count_parameters(self)  # type: ignore[arg-type]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def register_family(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: `@register_family("resnet")` makes `create_model("resnet", ...)` build that class."""
    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"model family {name!r} is registered twice ({_FAMILIES[name].__name__}, {cls.__name__})")
        _FAMILIES[name] = cls
        cls.family = name  # type: ignore[attr-defined]
        return cls
    return decorate


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def _family(name: str) -> type[nn.Module]:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {list_families()}")
    return _FAMILIES[name]


def create_model(family: str, **config: Any) -> nn.Module:
    """Build `family` from flat config keys.

    Model-shaping keys of `TrainConfig` (`MODEL_FIELDS`) that this family does not take are dropped (kernel_size means
    nothing to ResNet); any other key the constructor does not take is a ValueError, so typos do not pass silently.
    """
    cls = _family(family)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in config if k not in accepted and k not in MODEL_FIELDS)
    if unknown:
        raise ValueError(f"model family {family!r} takes no argument(s) {unknown}; it takes {sorted(accepted)}")
    return cls(**{k: v for k, v in config.items() if k in accepted})


def search_space(family: str, trial: Any) -> dict[str, Any]:
    """Sample `family`'s own fields on an Optuna trial via the family module's define-by-run `search_space(trial)`.

    Shared field names (filters, depth) are suggested under the same name by every family so that the values
    captured by Ray Tune's OptunaSearch are exactly TrainConfig keys.
    """
    module = importlib.import_module(_family(family).__module__)
    return module.search_space(trial)


# -- shared construction checks: one-line ValueErrors that name the bad value -------------------------------------
def check_int_range(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value or value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r}: must be an integer {span}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {list(choices)}")
    return value


def check_dropout(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout={value!r}: must be in [0, 1)")
    return float(value)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv/pool (floor mode): floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def check_downsampling(family: str, image_size: int, steps: list[tuple[int, int, int]], what: str) -> int:
    """Follow image_size through the (kernel, stride, padding) downsampling steps; return the last map's size.

    Each step must get at least 2 x 2 and give at least 1 x 1: a padded 3x3/2 conv maps 1 x 1 to 1 x 1, which would let
    "too many stages" pass silently as layers that downsample nothing, so a 1 x 1 input to a step counts as too small.
    """
    size = image_size
    for i, (kernel, stride, padding) in enumerate(steps, 1):
        out = conv_out(size, kernel, stride, padding)
        if size < 2 or out < 1:
            raise ValueError(f"image_size={image_size} is too small for {family} with {what}: downsampling step "
                             f"{i} of {len(steps)} would get a {size} x {size} map (needs >= 2 x 2)")
        size = out
    return size


# Importing the family modules registers them (they import the registry above, so this stays at the bottom).
from leukmodels.models import baseline, inception, resnet, torchvision_backbones  # noqa: E402,F401

__all__ = ["create_model", "list_families", "search_space", "register_family", "count_parameters",
           "ParameterCountMixin", "NUM_CLASSES"]
