"""Decode every image of a manifest once into uint8 N x 3 x S x S, cache it on disk, reload it memory-mapped.

The WHOLE frame is resized (never cropped to the cell): ALL blasts are about 30% larger than HEM cells, and a
fixed frame keeps that size signal. Non-square frames are padded with black (the C-NMC background) to a square
first so cells are not stretched. Greyscale, RGBA/LA (composited on black), palette and 16-bit images become RGB.

Cache: <cache_dir>/cnmc-<S>px-<key>.npy plus a .json meta file written last. The key hashes the ordered file list
(absolute path, size, mtime) and S, so a changed, added, removed or reordered file gives a new key (a stale entry
is never read); a truncated array or missing meta is detected on load and rebuilt. Every write goes to a temporary
file first and is moved into place (leukmodels/atomic.py), so a crash never leaves a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from leukmodels.atomic import atomic_path
from leukmodels.data.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

DECODER_VERSION = 1  # bump when the pixels produced change: it is part of the cache key
CHUNK = 64  # images per worker task
RESAMPLE = Image.Resampling.BILINEAR  # PIL's bilinear widens its kernel when shrinking: antialiased, area-like


@dataclass
class DecodedSet:
    images: np.ndarray  # uint8 N x 3 x S x S (np.memmap when loaded from the cache)
    labels: np.ndarray  # int64 N: 1 = ALL, 0 = HEM, -1 = unlabelled
    patients: np.ndarray  # str N
    image_ids: np.ndarray  # str N
    fingerprint: str  # cache key of the source file list and S

    def __post_init__(self):
        n = len(self.images)
        if not len(self.labels) == len(self.patients) == len(self.image_ids) == n:
            raise ValueError(f"DecodedSet arrays disagree in length: images {n}, labels {len(self.labels)}, "
                             f"patients {len(self.patients)}, image_ids {len(self.image_ids)}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "DecodedSet":
        """Rows `indices` (ints or a boolean mask) as a new in-memory set."""
        indices = np.asarray(indices)
        return DecodedSet(np.ascontiguousarray(self.images[indices]), self.labels[indices], self.patients[indices],
                          self.image_ids[indices], f"{self.fingerprint}[{len(self.labels[indices])}]")


def default_cache_dir() -> Path:
    """$LEUKTUNE_CACHE, else ~/.cache/leukemia-tune."""
    return Path(os.environ.get("LEUKTUNE_CACHE") or Path.home() / ".cache" / "leukemia-tune").expanduser()


def fingerprint(paths: list[str], size: int) -> str:
    """Cache key: sha256 of (decoder version, S, and every file's absolute path, byte size and mtime), in order."""
    digest = hashlib.sha256(f"cnmc-decode v{DECODER_VERSION} size={size}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            raise DataError(f"image listed in the manifest is missing: {path}") from None
        digest.update(f"{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cache_entry(key: str, size: int, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(array, meta) paths of the cache entry for `key` = fingerprint(paths, size); the meta exists once it is whole."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"cnmc-{size}px-{key}.npy", folder / f"cnmc-{size}px-{key}.json"


def decode(manifest: pd.DataFrame, size: int, cache_dir: str | Path | None = None, workers: int | None = None,
           progress: Any = True, cache: bool = True) -> DecodedSet:
    """All images of `manifest` (in its row order) -> DecodedSet of uint8 N x 3 x size x size.
    Reuses the on-disk cache when it is whole; cache=False decodes into memory and writes nothing. `progress`:
    True (a bar on stderr), False, or a stream to draw the bar on."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    if len(manifest) == 0:
        raise DataError(f"nothing to decode: the manifest of {manifest.attrs.get('root', '?')} is empty")
    paths = [str(p) for p in manifest["path"]]
    key = fingerprint(paths, size)
    labels = manifest["label"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    meta_fields = (labels, manifest["patient"].astype(str).to_numpy(dtype=str),
                   manifest["image_id"].astype(str).to_numpy(dtype=str))
    shape = (len(paths), 3, size, size)
    if not cache:
        images = np.empty(shape, dtype=np.uint8)
        _decode_into(images, paths, size, workers, progress)
        return DecodedSet(images, *meta_fields, key)
    array_path, meta_path = cache_entry(key, size, cache_dir)
    images = _load_cached(array_path, meta_path, shape, key)
    if images is None:
        _build_cache(array_path, meta_path, shape, key, paths, size, workers, progress)
        images = _load_cached(array_path, meta_path, shape, key)
        if images is None:
            raise DataError(f"cache entry {array_path} did not read back after writing it")
    return DecodedSet(images, *meta_fields, key)


def load_image(path: str, size: int) -> np.ndarray:
    """One image file -> uint8 3 x size x size (whole frame, padded square, resized); DataError naming the file."""
    try:
        with warnings.catch_warnings():  # a frame of 89M+ pixels is no cell: refuse it before it is decoded
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # a truncated BMP fails here, not later
                rgb = _to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise DataError(f"cannot decode image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        ) from None
    width, height = rgb.size
    if width != height:  # pad to a square on black so the cell keeps its aspect ratio and relative size
        side = max(width, height)
        square = Image.new("RGB", (side, side))
        square.paste(rgb, ((side - width) // 2, (side - height) // 2))
        rgb = square
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)  # H x W x 3 -> 3 x H x W


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # high bit depth: scale, don't clip
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):  # composite on the black background
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _decode_chunk(paths: list[str], size: int) -> np.ndarray:
    """Worker task: len(paths) x 3 x size x size."""
    return np.stack([load_image(p, size) for p in paths])


def _decode_into(out: np.ndarray, paths: list[str], size: int, workers: int | None, progress: Any) -> None:
    """Fill out (N x 3 x S x S) from paths, over a process pool when there is more than one chunk."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    starts = range(0, len(paths), CHUNK)
    stream = progress if hasattr(progress, "write") else None  # a stream to show the bar on (default stderr)
    with tqdm(total=len(paths), desc=f"decode {size}px", unit="img", disable=not progress, file=stream) as bar:
        if workers <= 1 or len(starts) <= 1:
            for start in starts:
                out[start:start + CHUNK] = _decode_chunk(paths[start:start + CHUNK], size)
                bar.update(len(paths[start:start + CHUNK]))
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(starts)), mp_context=_worker_context()) as pool:
            pending = {pool.submit(_decode_chunk, paths[s:s + CHUNK], size): s for s in starts}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    start = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    chunk = future.result()
                    out[start:start + len(chunk)] = chunk
                    bar.update(len(chunk))


def _worker_context() -> multiprocessing.context.BaseContext:
    """forkserver (spawn where missing): never fork a threaded parent (torch, Ray workers) directly, where fork can
    deadlock. The server imports this module once per process; each pool then forks from it in milliseconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _build_cache(array_path: Path, meta_path: Path, shape: tuple, key: str, paths: list[str], size: int,
                 workers: int | None, progress: Any) -> None:
    array_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (meta_path, array_path):  # a broken entry: drop the meta first so no reader trusts the array
        stale.unlink(missing_ok=True)
    with atomic_path(array_path) as tmp_array:
        images = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=shape)
        _decode_into(images, paths, size, workers, progress)
        images.flush()
        del images
    meta = {"key": key, "shape": list(shape), "dtype": "uint8", "bytes": array_path.stat().st_size,
            "decoder_version": DECODER_VERSION, "n_files": len(paths), "first": paths[0], "last": paths[-1]}
    with atomic_path(meta_path) as tmp_meta:  # written last: its presence means the array is whole
        tmp_meta.write_text(json.dumps(meta, indent=1))


def _load_cached(array_path: Path, meta_path: Path, shape: tuple, key: str) -> np.ndarray | None:
    """The cached array memory-mapped, or None when absent, truncated or not matching its meta."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or tuple(meta.get("shape", ())) != shape:
            return None
        if array_path.stat().st_size != meta["bytes"]:
            return None
        images = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.shape != shape or images.dtype != np.uint8:
        return None
    return images
