"""What a search's decoded data need against what the machine has: pure arithmetic, so it is tested on numbers.

    need = footprint(images=10_661, sizes=[1024], cached=[], frame=450)   # uint8 N x 3 x S x S per size
    problem, warnings = judge(need, free_disk=..., free_memory=..., object_store=...)   # one line each, with numbers

The decode cache writes every size not cached yet to disk; `ray.put` holds one copy of every size in the object
store for the whole search (Ray spills what does not fit and is not in use); a trial reads one size whole.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

from PIL import Image

FRAMES_READ = 16  # image headers read to learn the frames' size (PIL reads the header only: cheap)


@dataclass(frozen=True)
class Footprint:
    """What a search's decoded train+val arrays take: uint8 images x 3 x S x S bytes per image size S."""
    images: int  # train + val images (the test patients are never decoded by a search)
    per_size: dict[int, int]  # image size -> bytes of its train+val arrays: one copy in the object store
    to_cache: int  # bytes the decode cache still has to write on disk (sizes already cached cost nothing)
    frame: Optional[int] = None  # the frames' own side in px (450 on C-NMC), None when no header could be read

    @property
    def largest(self) -> tuple[int, int]:
        """(size, bytes) of the largest size: what one trial reads at once, so it must fit memory and the store."""
        return max(self.per_size.items(), key=lambda item: item[1])

    @property
    def total(self) -> int:
        """Every size together: what `ray.put` holds for the whole search (beyond the store, Ray spills to disk)."""
        return sum(self.per_size.values())


def footprint(images: int, sizes: Sequence[int], cached: Sequence[int] = (), frame: Optional[int] = None) -> Footprint:
    """The decoded set of `images` train+val images at every size; `cached` sizes are on disk already."""
    per_size = {int(s): images * 3 * int(s) * int(s) for s in sizes}
    return Footprint(images, per_size, sum(n for s, n in per_size.items() if s not in cached), frame)


def gb(n: float) -> str:
    """Bytes in decimal GB (MB below 0.1 GB), as disks and `df -H` count them."""
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def judge(need: Footprint, free_disk: Optional[int] = None, free_memory: Optional[int] = None,
          object_store: Optional[int] = None, cache: str = "the decode cache") -> tuple[Optional[str], list[str]]:
    """(the one-line refusal or None, warnings) for `need` against what is free; None figures are not checked.
    Refused: the cache files beyond the free disk; one size beyond free memory or the object store (a trial reads it
    whole). Warned: all sizes together beyond the object store (Ray spills the ones not in use: slower)."""
    size, largest = need.largest
    sizes = " ".join(str(s) for s in need.per_size)
    what = f"{need.images:,} train+val images at {size} px take {gb(largest)} decoded"
    warnings = []
    if free_disk is not None and need.to_cache > free_disk:
        return (f"--image-sizes {sizes}: the decode cache needs {gb(need.to_cache)} for {need.images:,} train+val "
                f"images, {gb(free_disk)} free in {cache} (point LEUKTUNE_CACHE at a larger disk or use smaller "
                f"sizes)"), warnings
    if free_memory is not None and largest > free_memory:
        return f"--image-sizes {size}: {what}, {gb(free_memory)} of memory available", warnings
    if object_store is not None and largest > object_store:
        return (f"--image-sizes {size}: {what}, more than Ray's object store holds ({gb(object_store)} on the "
                f"smallest node)"), warnings
    if object_store is not None and need.total > object_store:
        warnings.append(f"--image-sizes {sizes} take {gb(need.total)} decoded together, more than Ray's object store "
                        f"holds ({gb(object_store)}): Ray spills the sizes not in use to disk (slower)")
    return None, warnings


def frame_warnings(need: Footprint) -> list[str]:
    """A size above the frames' own (450 px on C-NMC) only interpolates: the same detail at (S / frame)^2 the bytes."""
    return [f"--image-sizes {s} is larger than the frames themselves ({need.frame} px): upscaling adds no detail, "
            f"only {(s / need.frame) ** 2:.1f}x the memory" for s in need.per_size if need.frame and s > need.frame]


def available_memory() -> Optional[int]:
    """MemAvailable (what can be allocated without swapping), else the free pages; None when neither is known."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as meminfo:
            return int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def frame_size(paths: Sequence[str], count: int = FRAMES_READ) -> Optional[int]:
    """The largest side among `count` image headers spread over `paths` (the rest of each file is not read)."""
    sides = []
    for path in paths[:: max(1, len(paths) // count)][:count]:
        # a broken file, or a decompression bomb, is named later, when decoded
        with contextlib.suppress(OSError, ValueError, SyntaxError, Image.DecompressionBombError), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                sides.append(max(image.size))
    return max(sides, default=None)


__all__ = ["Footprint", "available_memory", "footprint", "frame_size", "frame_warnings", "gb", "judge"]
