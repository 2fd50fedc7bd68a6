"""The model registry (timm's `_registry.py`): each family registers its class by name, a config builds its model.

`create_model` hands each family only the keys its constructor takes, so the one flat `TrainConfig` travels unchanged.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch.nn as nn

from leukmodels.config import MODEL_FIELDS, TrainConfig, model_kwargs

NUM_CLASSES = 2  # logits index 0 = HEM (normal), 1 = ALL (leukemic blast)

_FAMILIES: dict[str, type[nn.Module]] = {}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors counted once); works on the meta device too."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


class ParameterCountMixin:
    """Gives a model `num_parameters()`; mixed into every family's class."""

    def num_parameters(self) -> int:
        return count_parameters(self)  # type: ignore[arg-type]


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


def build_model(config: TrainConfig) -> nn.Module:
    """The model a config describes."""
    return create_model(config.family, **model_kwargs(config))


def search_space(family: str, trial: Any) -> dict[str, Any]:
    """Sample `family`'s own fields on an Optuna trial via the family module's define-by-run `search_space(trial)`.

    Shared field names (filters, depth) are suggested under the same name by every family so that the values
    captured by Ray Tune's OptunaSearch are exactly TrainConfig keys.
    """
    module = importlib.import_module(_family(family).__module__)
    return module.search_space(trial)


__all__ = ["NUM_CLASSES", "ParameterCountMixin", "build_model", "count_parameters", "create_model", "list_families",
           "register_family", "search_space"]
