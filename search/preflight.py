"""What a search checks before it spends its hours: each problem is a ValueError with one line naming the flag, file
or value (`search/run.py` prints it and exits 2).

    check_before_launch(args)    # before Ray starts: --storage, --address, families at --image-sizes, --data
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ADDRESS_TIMEOUT_S = 5.0  # a cluster address must accept a TCP connection this fast (ray.init would wait minutes)


def check_before_launch(args: argparse.Namespace) -> None:
    """What can be checked before Ray starts, each a ValueError with one line naming the flag: a local --storage
    that cannot be written, an --address where nothing answers (ray.init would retry for minutes), and a --data
    tree whose layout, labels or patient split are wrong (image decoding errors come later, naming the file)."""
    if "://" not in args.storage:
        folder = Path(args.storage)
        while not folder.exists():  # the nearest existing ancestor decides: Tune creates the rest
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"--storage {args.storage}: cannot write there ({folder} is "
                             f"{'not a folder' if not folder.is_dir() else 'not writable'})")
    if args.address and args.address not in ("auto", "local"):
        import socket

        target = args.address.split("://", 1)[-1]
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            host, port = target, "10001" if args.address.startswith("ray://") else "6379"
        try:
            socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
        except OSError as why:
            raise ValueError(f"--address {args.address}: no Ray answers at {host}:{port} "
                             f"({why.strerror or why or 'timed out'})") from None
    from search.spaces import SearchSpace, check_buildable, sample_configs

    for family in args.family:  # a size no sampled config of a family fits would make every such trial an error
        for size in args.image_sizes:
            why = None
            for config in sample_configs(SearchSpace([family], image_sizes=[size], epochs=1), 12, seed=args.seed):
                try:
                    check_buildable(config)  # meta device: no memory, no compute
                    break
                except ValueError as error:
                    why = error
            else:
                raise ValueError(f"--image-sizes {size}: too small for every sampled {family} config ({why})")
    if args.data is not None:
        from leukmodels.data import discover, split_by_patient

        manifest = discover(args.data)  # DataError naming the folder or file
        try:
            split_by_patient(manifest, seed=args.seed)
        except ValueError as why:  # e.g. a class folder without images: name the tree it is about
            raise ValueError(f"--data {args.data}: {why}") from None
