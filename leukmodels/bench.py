"""Training-step throughput per model family and image size, and the data path against ImageFolder + DataLoader.

    python -m leukmodels.bench [--sizes 64 128] [--families baseline resnet] [--steps 20] [--out results/bench.json]
    python -m leukmodels.bench --smoke-test --out /tmp/bench.json

One training step is what `fit` does per batch: a uint8 B x 3 x S x S batch already on the device, augmentation +
normalisation there, forward, cross-entropy, backward, AdamW step. On CUDA each model runs twice, fp32 (cuDNN's default
TF32 convolutions) and bf16 autocast + channels_last; on the CPU fp32 only. Models use TrainConfig's defaults apart from
family and image size. The data-path ratio comes from `leukmodels.data.bench_io.measure` (decode-once cache vs
torchvision ImageFolder + DataLoader with PIL decoding per epoch) on a small written BMP tree or --data-root.
Figures are from one run on a noisy machine: compare ratios within a table, not across machines.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from leukmodels.augment import augment
from leukmodels.config import TrainConfig
from leukmodels.models import build_model, count_parameters, list_families

GROUP = 5  # steps timed together (one device sync per group)


def step_throughput(family: str, size: int, batch_size: int, steps: int, warmup: int, device: torch.device,
                    bf16_channels_last: bool) -> dict:
    """Images/s of `steps` timed training steps after `warmup` untimed ones (cuDNN autotuning, allocator): the
    median step time over groups of GROUP steps."""
    model = build_model(TrainConfig(family=family, image_size=size)).to(device)
    memory_format = torch.channels_last if bf16_channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)  # on the device
    labels = torch.randint(0, 2, (batch_size,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        x = augment(images, 0.5, generator).contiguous(memory_format=memory_format)  # B x 3 x S x S float32
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_channels_last):
            logits = model(x)  # B x 2
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(count: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / count

    for _ in range(warmup):
        step()
    # the median over groups of GROUP steps: robust to bursts of load from other processes on a shared machine
    per_step = [timed(min(GROUP, steps - done)) for done in range(0, steps, GROUP)]
    seconds = float(np.median(per_step))
    return {"images_per_s": round(batch_size / seconds, 1), "step_ms": round(1000 * seconds, 2),
            "num_parameters": count_parameters(model)}


def benchmark_models(families: list[str], sizes: list[int], batch_size: int, steps: int, warmup: int,
                     device: torch.device) -> list[dict]:
    modes = ["fp32", "bf16+channels_last"] if device.type == "cuda" else ["fp32"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for family in families:
        for size in sizes:
            for mode in modes:
                row = {"family": family, "size": size, "mode": mode, "batch_size": batch_size}
                try:
                    row.update(step_throughput(family, size, batch_size, steps, warmup, device,
                                               bf16_channels_last=mode != "fp32"))
                except ValueError as exc:  # the family refuses this size (too many downsamplings, ...)
                    row["skipped"] = str(exc)
                rows.append(row)
    for row in rows:  # bf16 speed-up over fp32 of the same model and size
        if row["mode"] != "fp32" and "images_per_s" in row:
            fp32 = next(r for r in rows if (r["family"], r["size"], r["mode"]) == (row["family"], row["size"], "fp32"))
            if "images_per_s" in fp32:
                row["speedup_vs_fp32"] = round(row["images_per_s"] / fp32["images_per_s"], 2)
    return rows


def benchmark_data_path(data_root: Optional[str], images: int, size: int, workers: int) -> dict:
    try:
        from leukmodels.data.bench_io import measure, write_bench_tree
    except ImportError as exc:  # the data layer's benchmark is missing
        return {"skipped": f"leukmodels.data.bench_io unavailable: {exc}"}
    with tempfile.TemporaryDirectory(prefix="leuk-bench-") as scratch:
        root = data_root or write_bench_tree(Path(scratch) / "data", images)
        return measure(root, size=size, batch_size=32, workers=workers, cache_dir=Path(scratch) / "cache")


def format_table(rows: list[dict]) -> str:
    lines = [f"{'family':<12} {'size':>5} {'mode':<19} {'params':>10} {'images/s':>10} {'step ms':>9} {'x fp32':>7}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['family']:<12} {r['size']:>5} {r['mode']:<19} skipped: {r['skipped'][:60]}")
            continue
        speedup = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else ""
        lines.append(f"{r['family']:<12} {r['size']:>5} {r['mode']:<19} {r['num_parameters']:>10,} "
                     f"{r['images_per_s']:>10,.1f} {r['step_ms']:>9.2f} {speedup:>7}")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes S to time")
    parser.add_argument("--families", nargs="+", default=None, help="default: every registered family")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--data-root", default=None, help="C-NMC root for the data-path ratio; default: written BMPs")
    parser.add_argument("--io-images", type=int, default=300, help="BMPs to write for the data-path ratio")
    parser.add_argument("--io-size", type=int, default=224, help="decode size S for the data-path ratio")
    parser.add_argument("--io-workers", type=int, default=2)
    parser.add_argument("--skip-io", action="store_true", help="skip the data-path ratio")
    parser.add_argument("--out", default="results/bench.json", help="JSON output file (its folder is created)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes and step counts: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.steps, args.warmup, args.batch_size = [32], 2, 1, 4
        args.io_images, args.io_size = 12, 32
    args.families = args.families or list_families()
    unknown = sorted(set(args.families) - set(list_families()))
    if unknown:
        parser.error(f"--families {unknown}: unknown; known: {list_families()}")
    if min(args.sizes) < 1 or args.steps < 1 or args.batch_size < 2:
        parser.error("--sizes must be positive, --steps >= 1 and --batch-size >= 2")
    return args


def run(args: argparse.Namespace, command: str) -> dict:
    """Time every family and size, then the data path; print both, write `args.out` and return what it holds."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = benchmark_models(args.families, args.sizes, args.batch_size, args.steps, args.warmup, device)
    print(format_table(rows))
    data_path = {"skipped": "--skip-io"} if args.skip_io else benchmark_data_path(
        args.data_root, args.io_images, args.io_size, args.io_workers)
    if "ratio_cached_vs_imagefolder" in data_path:
        print(f"data path: decode-once cache {data_path['cached_images_per_s']:,.0f} images/s vs ImageFolder + "
              f"DataLoader {data_path['imagefolder_images_per_s']:,.0f} images/s at S={data_path['size']} "
              f"({data_path['images']} images): x{data_path['ratio_cached_vs_imagefolder']}")
    else:
        print(f"data path: {data_path}")
    result = {"command": command,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "device_type": device.type, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "rows": rows, "data_path": data_path}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """0 written; 2 with one line on stderr when the data root or the output cannot be used."""
    args = parse_args(argv)
    try:
        run(args, " ".join(["python -m leukmodels.bench", *(argv if argv is not None else sys.argv[1:])]))
    except (ValueError, OSError) as error:  # DataError is a ValueError: a --data-root that is not a C-NMC tree
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
