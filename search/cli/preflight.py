"""What a search checks before it spends its hours: each problem is a ValueError with one line naming the flag, file
or value (`search/run.py` prints it and exits 2); warnings are printed and the search goes on.

    check_name(flags)                            # before anything is written: a --name the file system can hold
    found = Preflight()                          # what the checks drew and measured, reused by the later ones
    check_before_launch(flags, found)            # before Ray starts: folders, --address, optuna.db, the data tree
    check_sizes(settings, nodes, warn, found)    # once the cluster's profile set the sizes, before decoding: families
                                                 # fit them, the decoded set fits the disk, memory and object store

`flags` are the parsed flags (search/cli/flags.py), `settings` the resolved SearchSettings (search/cli/run.py);
the size checks take either: before Ray starts only the sizes given on the command line are known.

And what `main()` needs when the launch itself fails or is stopped: `ray_start_error` (one line for a Ray that does
not come up), `sigterm_as_sigint` (a scheduler's SIGTERM stops Tune as Ctrl-C does) and `forget_unlaunched` (a search
that never launched leaves no settings file, so the same command runs again).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Union

from ray import tune

from leukmodels import synthetic
from leukmodels.cells import FRAME
from leukmodels.data import discover, split_by_patient
from leukmodels.data.decode import cache_entry, fingerprint
from leukmodels.data.layout import KAGGLE_TOP
from search.board.checks import check_cache_folder, check_cli_inputs, check_storage, existing_ancestor
from search.board.files import board_files
from search.board.paths import SETTINGS_SUFFIX, in_storage
from search.board.settings import SearchSettings
from search.cli.sizes import Footprint, available_memory, footprint, frame_size, frame_warnings, judge
from search.tuning.crossval import check_folds_before_launch
from search.tuning.data import SEARCH_SPLITS
from search.tuning.spaces import SearchSpace, check_buildable, sample_configs

Settings = Union[argparse.Namespace, SearchSettings]  # the flags before Ray starts, the resolved settings after

ADDRESS_TIMEOUT_S = 5.0  # a cluster address must accept a TCP connection this fast (ray.init would wait minutes)
# what to do about an earlier Ray holding the ports, without `ray stop`: it stops every Ray its user may stop (other
# searches' and, run as root on a shared machine, other people's)
STALE_RAY_HINT = ("an earlier Ray of yours may still hold its ports: `pgrep -u \"$USER\" -af gcs_server` lists "
                  "yours (the port is on its command line) and `kill <pid>` stops that one only")


# -- names and folders ----------------------------------------------------------------------------------------------
def check_not_read_only(board: Path, search: str) -> None:
    """What a search would replace and its owner made read-only (no write bit: `chmod a-w`) is refused, never
    replaced: the leaderboard folder, the old single file (moved into the folder on the next write) and this search's
    own file. Our writes go to a temporary file and `os.replace`, which asks only the folder's permission, so the mode
    bits are read themselves (`os.access` answers yes to root whatever they say)."""
    files = board_files(board)
    for path in (files.folder, files.legacy, files.search_file(search)):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # missing (a new file), or a folder that cannot hold it: the write check names that
        if not mode & 0o222:
            raise ValueError(f"{path} is read-only ({stat.filemode(mode)}): the search would write its rows there; "
                             f"make it writable (chmod u+w) to add to it, or pass another --results")


def check_name(args: argparse.Namespace) -> None:
    """--name becomes file and folder names (results/searches/<name>.json the longest): refuse one the file system
    would answer with "File name too long" only once the search had started writing."""
    try:
        name_max = os.pathconf(existing_ancestor(Path(args.results)), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255  # what Linux and macOS file systems allow
    limit = name_max - len(SETTINGS_SUFFIX)
    length = len(os.fsencode(args.name))  # the limit counts bytes: a non-ASCII character takes several
    if length > limit:
        raise ValueError(f"--name takes {length} bytes as a file name ({len(args.name)} characters); at most {limit} "
                         f"bytes fit (file names here hold {name_max} bytes, and results/searches/<name>"
                         f"{SETTINGS_SUFFIX} adds {len(SETTINGS_SUFFIX)})")


def _check_address(address: Optional[str]) -> None:
    if not address or address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as why:
        raise ValueError(f"--address {address}: no Ray answers at {host}:{port} "
                         f"({why.strerror or why or 'timed out'})") from None


def check_families(args: Settings) -> None:
    """A size no sampled config of a family fits would make every such trial an error."""
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


def check_before_launch(args: argparse.Namespace, found: Preflight) -> None:
    """Everything that can be checked before Ray starts, cheapest first: --storage and the decode cache writable,
    the Optuna storage usable, --address answering (ray.init would retry for minutes), each family buildable at
    --image-sizes when they are given, the data tree's layout, labels and patient split sound."""
    check_storage(args.storage)
    check_cli_inputs(args.results, decode_cache=True,  # what every command checks (search/board/checks.py)
                     optuna_storage=args.optuna_storage)
    _check_address(args.address)
    _check_data(args, found)
    if args.image_sizes is not None and args.family is not None:  # given: check them now, not after Ray's start
        check_sizes(args, None, lambda line: print(line, file=sys.stderr, flush=True), found)


@dataclasses.dataclass
class Preflight:
    """What the checks of one run drew and measured, reused by the later checks of the same run: the patient split
    (discovering a real C-NMC tree reads 15,000 names) and the decoded set's footprint at the sizes checked."""
    search_splits: Optional[tuple[tuple, dict]] = None  # ((root, seed, val_fraction), the splits)
    checked_sizes: Optional["_Checked"] = None


def _check_data(args: argparse.Namespace, found: Preflight) -> None:
    if args.data is not None:
        rerank_folds = args.rerank_folds if args.rerank_top else None
        check_folds_before_launch(_search_splits(args, args.data, found), args.seed, args.cv, rerank_folds)


def _search_splits(args: Settings, root: str, found: Preflight) -> dict:
    """The split prepare_data will draw from `root` (DataError naming the file, or `--data ROOT: why`), drawn once:
    the data check and the size check both need it."""
    key = (str(root), args.seed, args.val_fraction)
    cached = found.search_splits
    if cached is not None and cached[0] == key:
        return cached[1]
    manifest = discover(root)
    try:
        splits = split_by_patient(manifest, val_fraction=args.val_fraction, seed=args.seed)
    except ValueError as why:  # e.g. a class folder without images: name the tree it is about
        raise ValueError(f"--data {root}: {why}") from None
    found.search_splits = (key, splits)
    return splits


# -- sizes (the arithmetic is search/cli/sizes.py) ---------------------------------------------------------------------
def check_sizes(args: Settings, nodes: Optional[list[dict]], warn=print, found: Optional[Preflight] = None) -> None:
    """Before decoding, once the image sizes are known: each family fits them; the decoded set fits the free disk
    (cache) and memory (a local Ray) and, once Ray is up (`nodes`), the smallest node's object store (every node
    that runs a trial holds a copy of what it reads). A size beyond the frames, or sizes that fit the store only one
    at a time, are warnings. Checked before Ray starts when the sizes are given, the store once it is up."""
    found = found if found is not None else Preflight()
    checked = found.checked_sizes
    if checked is None or checked.sizes != list(args.image_sizes):
        check_families(args)
        cache = check_cache_folder()
        need = _data_footprint(args, cache, found)
        free_memory = None if args.address else available_memory()  # a cluster's is checked by its object store
        problem, warnings = judge(need, free_disk=shutil.disk_usage(existing_ancestor(cache)).free, free_memory=free_memory,
                                  cache=str(cache))
        _report(frame_warnings(need) + warnings, problem, warn)
        found.checked_sizes = checked = _Checked(list(args.image_sizes), need)
    stores = [int(node["object_store_memory"]) for node in nodes or [] if node.get("object_store_memory")]
    if stores:
        _report(*reversed(judge(checked.need, object_store=min(stores))), warn)


@dataclasses.dataclass
class _Checked:
    sizes: list
    need: Footprint


def _report(warnings: list[str], problem: Optional[str], warn) -> None:
    for warning in warnings:
        warn(f"warning: {warning}")
    if problem:
        raise ValueError(problem)


def _data_footprint(args: Settings, cache: Path, found: Preflight) -> Footprint:
    """Discover and split the data (DataError naming the file, or `--data DIR: why`), then size its decoded set. The
    default generated set, not built yet, is sized from the generator's settings instead of being built here."""
    root = args.data
    if root is None:
        if not synthetic.built(synthetic.default_root()):
            defaults = synthetic.DEFAULTS  # training patients x images: the search's train+val (prelim is the test)
            images = (defaults["n_all"] + defaults["n_hem"]) * defaults["images_per_patient"]
            return footprint(images, args.image_sizes, frame=FRAME)
        root = str(synthetic.default_root() / KAGGLE_TOP)
    splits = _search_splits(args, root, found)
    paths = {name: [str(p) for p in splits[name]["path"]] for name in SEARCH_SPLITS}
    cached = [size for size in args.image_sizes
              if all(cache_entry(fingerprint(paths[name], size), size, cache)[1].is_file() for name in SEARCH_SPLITS)]
    every = [p for name in SEARCH_SPLITS for p in paths[name]]
    return footprint(len(every), args.image_sizes, cached, frame_size(every))


# -- when the launch fails or is stopped ----------------------------------------------------------------------------
def ray_start_error(address: Optional[str], error: BaseException) -> str:
    """One line for a Ray that did not come up (at --address `address`, or a local one for None): Ray's own first
    sentence, its log file, what to try."""
    text = str(error).strip() or type(error).__name__
    reason = re.split(r"(?<=\.)\s", text.splitlines()[0], maxsplit=1)[0].rstrip(".:")
    port = re.search(r"port is (\d+)", text)
    log = re.search(r"check (\S+) for details", text)
    details = "; ".join(filter(None, [f"port {port[1]} may be taken" if port else "", f"log {log[1]}" if log else ""]))
    reason += f" ({details})" if details else ""
    if address:
        return (f"--address {address}: cannot join that Ray cluster: {reason}; check `ray status` on its head "
                f"node")
    return (f"the local Ray did not start: {reason}; {STALE_RAY_HINT}, free space in /tmp, or a running Ray with "
            f"--address auto")


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """Schedulers and `kill` send SIGTERM; Ray's driver answers it with sys.exit in the middle of Tune (its C++ side
    then aborts, exit 134, Tune's state unsaved). Route it to whatever handles SIGINT: Tune's clean stop (state saved,
    rows kept, resume hint) while a search runs, KeyboardInterrupt before."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def forget_unlaunched(settings: Path, storage: str, name: str) -> bool:
    """A new search that failed before Tune wrote its state (`<storage>/<name>/tuner.pkl`, written when the Tuner is
    built, before any trial) launched nothing: remove its settings file, or the same command is refused ("use
    --resume") and --resume finds no Tune experiment. True when removed; a storage that cannot be asked keeps it."""
    if not settings.is_file():
        return False
    try:
        if tune.Tuner.can_restore(in_storage(storage, name)):
            return False
    except Exception:  # noqa: BLE001 - an unreachable storage: keep what --resume may need
        return False
    settings.unlink(missing_ok=True)
    return True


__all__ = ["Preflight", "check_before_launch", "check_cli_inputs", "check_name", "check_not_read_only", "check_sizes",
           "check_families",
           "forget_unlaunched", "ray_start_error", "sigterm_as_sigint"]
