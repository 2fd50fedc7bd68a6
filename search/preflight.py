"""Checks before anything expensive starts: each a ValueError with one line naming the flag, file or value."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ADDRESS_TIMEOUT_S = 5.0  # a cluster address must accept a TCP connection this fast (ray.init would wait minutes)


def check_storage(storage: str) -> None:
    """A local --storage must be writable where it exists (the nearest existing ancestor decides: Tune creates the
    rest)."""
    if "://" in storage:
        return
    folder = Path(storage)
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--storage {storage}: cannot write there ({folder} is "
                         f"{'not a folder' if not folder.is_dir() else 'not writable'})")


def check_address(address: str | None) -> None:
    """Something must answer at --address (ray.init would retry for minutes)."""
    if not address or address in ("auto", "local"):
        return
    import socket

    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as why:
        raise ValueError(f"--address {address}: no Ray answers at {host}:{port} "
                         f"({why.strerror or why or 'timed out'})") from None


def check_sizes_fit(args: argparse.Namespace) -> None:
    """Every family must have sampled configs that fit every image size, else all its trials would be errors."""
    from search.spaces import SearchSpace, check_buildable, sample_configs

    for family in args.family:
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


def check_data(args: argparse.Namespace) -> None:
    """A --data tree whose layout, labels or patient split are wrong (decoding errors come later, naming the file)."""
    if args.data is None:
        return
    from leukmodels.data import discover, split_by_patient

    manifest = discover(args.data)  # DataError naming the folder or file
    try:
        split_by_patient(manifest, val_fraction=args.val_fraction, seed=args.seed)
    except ValueError as why:  # e.g. a class folder without images: name the tree it is about
        raise ValueError(f"--data {args.data}: {why}") from None


def check_before_launch(args: argparse.Namespace) -> None:
    """What can be checked before Ray starts."""
    check_storage(args.storage)
    check_address(args.address)
    if args.image_sizes is not None and args.family is not None:
        check_sizes_fit(args)
    check_data(args)


__all__ = ["check_before_launch", "check_sizes_fit", "check_storage", "check_address", "check_data"]
