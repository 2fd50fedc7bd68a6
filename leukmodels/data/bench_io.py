"""Input-pipeline benchmark: the decode-once cache against torchvision ImageFolder + DataLoader decoding per epoch.

    python -m leukmodels.data.bench_io                      # writes 300 450x450 BMPs to a temp folder, S = 224
    python -m leukmodels.data.bench_io --root DATA --size 224 --workers 2

Both sides deliver one shuffled epoch of uint8 N x 3 x S x S torch batches with labels, of the same training images,
resized the same way (PIL bilinear, whole frame). The cached side is timed from a second decode() call (the cache
already built: what every epoch and every trial after the first pays) to the last batch; ImageFolder from
DataLoader construction (worker start-up is paid every epoch without persistent workers) to the last batch.
The first, cache-building decode is reported too. Report the ratio from one run, with the command.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukmodels.data.decode import decode
from leukmodels.data.layout import KAGGLE_DIRS, KAGGLE_TOP, discover
from leukmodels.labels import ALL, CNMC_NAMES, HEM


def measure(root: str | Path, size: int = 224, batch_size: int = 64, workers: int = 2,
            cache_dir: str | Path | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Images/s of the cached path vs ImageFolder + DataLoader (PIL per epoch) over the training folds of root."""
    manifest = discover(root)
    training = manifest[manifest["source"].str.startswith("fold_")]
    if training.empty:
        raise ValueError(f"no training images (fold_*/all|hem) under {root} to benchmark")
    n = len(training)
    cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="bench-io-cache-"))
    cold_s, cached_s = _cached_epoch(training, size, batch_size, workers, cache_dir, seed, progress)
    folder_s = _imagefolder_epoch(training, size, batch_size, workers, seed)
    result = {"images": n, "size": size, "batch_size": batch_size, "workers": workers,
              "cold_decode_s": round(cold_s, 3), "cold_decode_images_per_s": round(n / cold_s, 1),
              "cached_epoch_s": round(cached_s, 6), "cached_images_per_s": round(n / cached_s, 1),
              "imagefolder_epoch_s": round(folder_s, 3), "imagefolder_images_per_s": round(n / folder_s, 1)}
    result["ratio_cached_vs_imagefolder"] = round(folder_s / cached_s, 1)
    return result


def _cached_epoch(training, size: int, batch_size: int, workers: int, cache_dir: Path, seed: int,
                  progress: bool) -> tuple[float, float]:
    """(seconds of the first, cache-building decode; seconds of one shuffled epoch from the cache, reload included)."""
    import torch  # here: measured +3.8 s that --help and write_bench_tree do not need

    start = time.perf_counter()
    decode(training, size, cache_dir=cache_dir, workers=workers, progress=progress)  # builds the cache
    cold_s = time.perf_counter() - start
    generator = np.random.default_rng(seed)
    start = time.perf_counter()
    cached = decode(training, size, cache_dir=cache_dir, workers=workers, progress=False)  # memory-mapped reload
    order = generator.permutation(len(training))
    seen = 0
    for first in range(0, len(training), batch_size):
        rows = np.sort(order[first:first + batch_size])  # sorted rows read the memmap forwards
        images = torch.from_numpy(np.ascontiguousarray(cached.images[rows]))  # B x 3 x S x S uint8
        batch_labels = torch.from_numpy(cached.labels[rows])  # B int64
        seen += len(images) if len(batch_labels) == len(images) else 0
    cached_s = time.perf_counter() - start
    assert seen == len(training)
    return cold_s, cached_s


def _imagefolder_epoch(training, size: int, batch_size: int, workers: int, seed: int) -> float:
    """Seconds of one shuffled epoch of the baseline the design asks to beat: ImageFolder over each fold's all/hem
    folders, PIL decode every epoch, timed from DataLoader construction (workers start every epoch)."""
    import torch  # here: see _cached_epoch; torchvision only for this baseline
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision import datasets, transforms

    fold_dirs = sorted({str(Path(p).parent.parent) for p in training["path"]})
    to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    dataset = ConcatDataset([datasets.ImageFolder(d, transform=to_tensor) for d in fold_dirs])
    torch.manual_seed(seed)
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    seen = 0
    for images, batch_labels in loader:  # B x 3 x S x S uint8, B
        seen += len(images)
    folder_s = time.perf_counter() - start
    assert seen == len(dataset) == len(training), (seen, len(dataset), len(training))
    return folder_s


def write_bench_tree(out: str | Path, images: int = 300, frame: int = 450, seed: int = 0) -> Path:
    """A Kaggle-layout training fold of `images` 24-bit frame x frame BMPs (one noisy violet disc on black, two
    thirds ALL); returns the C-NMC_Leukemia folder. Content barely matters here: BMP decode cost is per pixel."""
    top = Path(out) / KAGGLE_TOP
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:frame, :frame]
    for index in range(images):
        label = ALL if index % 3 else HEM
        patient = f"{index % 12}" if label == ALL else f"H{index % 6}"
        radius = frame * (0.24 if label == ALL else 0.21) * rng.uniform(0.85, 1.15)
        centre = frame / 2 + rng.uniform(-frame / 20, frame / 20, 2)
        inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2  # H x W
        pixels = np.zeros((frame, frame, 3), np.uint8)
        pixels[inside] = np.clip(rng.normal((70, 30, 80), 10, (int(inside.sum()), 3)), 0, 255)
        path = top / KAGGLE_DIRS[0] / "fold_0" / CNMC_NAMES[label] / f"UID_{patient}_{index}_1_{CNMC_NAMES[label]}.bmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(path)
    return top


def main(argv: list[str] | None = None) -> int:
    """0 measured; 2 with one line on stderr when --root is not a C-NMC tree with training folds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="C-NMC data root; default: write --images BMPs to a temporary folder")
    parser.add_argument("--images", type=int, default=300, help="images to write when --root is not given")
    parser.add_argument("--size", type=int, default=224, help="side S of the decoded S x S images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decode processes and DataLoader workers")
    parser.add_argument("--cache-dir", help="decode cache folder; default: a fresh temporary folder")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-io-") as scratch:
            root = args.root or write_bench_tree(Path(scratch) / "data", args.images)
            result = measure(root, args.size, args.batch_size, args.workers,
                             cache_dir=args.cache_dir or Path(scratch) / "cache")
    except (ValueError, OSError) as error:  # DataError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
