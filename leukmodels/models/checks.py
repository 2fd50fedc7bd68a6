"""Construction checks shared by the families: one-line ValueErrors that name the bad value."""
from __future__ import annotations

from typing import Any


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


__all__ = ["check_choice", "check_downsampling", "check_dropout", "check_int_range", "conv_out"]
