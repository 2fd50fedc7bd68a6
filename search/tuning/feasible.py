"""A search space that never proposes a model its image size cannot hold, where that can be told in advance.

    constants.update(search_space(family, FittingTrial(trial, family, image_size=24)))

Baseline depth 5 halves 24 px five times: the trial failed on the meta device and Tune retried it like a crashed node.
With one candidate image size the size is known before the family draws its fields, so the fields that set how often
a family halves the image (`depth`, `stages`) are drawn from a range capped at the largest value that builds, given
what the trial drew before them. The builds run on the meta device (no memory, no compute) and are cached: a few per
distinct prefix, milliseconds each. Optuna accepts a range that changes from trial to trial.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from leukmodels.config import TrainConfig
from leukmodels.models import build_model, count_parameters

HALVING_FIELDS = ("depth", "stages")
WIDTH_FIELDS = ("filters", "fc_layers")  # change no map's size: left out of the cache key (few distinct builds)


class FittingTrial:
    """Forwards `suggest_*` to an Optuna trial (or a prefixing wrapper of one), capping the ranges of HALVING_FIELDS."""

    def __init__(self, trial: Any, family: str, image_size: int) -> None:
        self._trial, self._family, self._size = trial, family, int(image_size)
        self._drawn: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return method

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            if name == "suggest_int" and param in HALVING_FIELDS and len(args) >= 2:
                low, high = int(args[0]), int(args[1])
                args = (low, largest_fitting(self._family, self._size, param, low, high,
                                             self._shape_fields()), *args[2:])
            value = method(param, *args, **kwargs)
            self._drawn[param] = value
            return value

        return suggest

    def _shape_fields(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self._drawn.items() if k not in WIDTH_FIELDS))


def check_buildable(config: TrainConfig) -> int:
    """Build the model on the meta device (no memory, no compute): raises the family's ValueError for an impossible
    config (e.g. an image too small for the depth); returns the parameter count."""
    with torch.device("meta"):
        return count_parameters(build_model(config))


@functools.lru_cache(maxsize=4096)
def largest_fitting(family: str, image_size: int, field: str, low: int, high: int, drawn: tuple) -> int:
    """The largest `field` in [low, high] whose model builds at `image_size` with the fields `drawn` so far (the rest
    at TrainConfig's defaults); `high` when none does (the trial then fails naming the size, as before)."""
    for value in range(high, low - 1, -1):
        try:
            check_buildable(TrainConfig(**{**dict(drawn), "family": family, "image_size": image_size, field: value}))
            return value
        except (TypeError, ValueError):
            continue
    return high


__all__ = ["FittingTrial", "HALVING_FIELDS", "check_buildable", "largest_fitting"]
