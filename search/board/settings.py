"""A search's settings as `results/searches/<name>.json` holds them, written when it starts and read back by
`--resume`, `--warm-start`, the evaluation and the report.

    save_settings(args); load_settings(args, given)     # results/searches/<name>.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from leukmodels.metrics import SCALAR_METRICS
from search.board.paths import settings_path


# What a search maximises on the validation patients (--metric, the first --objectives). Balanced accuracy by default:
# a one-class predictor scores 0.5 on it whatever the class ratio, where weighted F1 rewards it.
DEFAULT_METRIC = "balanced_accuracy"
METRICS = (DEFAULT_METRIC, *(name for name in SCALAR_METRICS if name != DEFAULT_METRIC))  # the default first
SAVED_FIELDS = ("family", "data", "num_samples", "max_epochs", "grace_epochs", "reduction_factor",
                "workers_per_trial", "cpus_per_worker", "gpus_per_worker", "image_sizes", "batch_sizes", "seed",
                "metric", "time_budget", "max_failures", "profile", "storage", "searcher", "scheduler",
                "val_fraction", "warm_start", "objectives", "cv", "rerank_top", "rerank_folds", "optuna_storage")
CHANGEABLE_ON_RESUME = ("time_budget",)  # a resumed run gets a budget of its own
# Written for the record and read back, never compared with a flag: the configs a --warm-start search ran first.
RECORDED_FIELDS = ("warm_start_points",)


def refuse_existing(args: argparse.Namespace) -> None:
    path = settings_path(args.results, args.name)
    if path.exists():
        raise ValueError(f"--name {args.name}: a search of that name exists ({path}); use --resume or a new name")


def save_settings(args: argparse.Namespace) -> Path:
    """Write the resolved settings of a new search to results/searches/<name>.json (read back by --resume)."""
    path = settings_path(args.results, args.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: getattr(args, key, None) for key in SAVED_FIELDS + RECORDED_FIELDS}, indent=2))
    return path


def load_settings(args: argparse.Namespace, given: set[str]) -> list[str]:
    """--resume: the saved settings replace the unset flags; a flag given now that contradicts them is a ValueError
    naming it, except those a resumed run may change (CHANGEABLE_ON_RESUME), which are applied. Returns one note
    per changed setting."""
    path = settings_path(args.results, args.name)
    if not path.is_file():
        raise ValueError(f"--resume --name {args.name}: no settings at {path} (is --results the same?)")
    saved = json.loads(path.read_text())
    notes, clashes = [], []
    for key in SAVED_FIELDS:
        if key not in saved:
            continue  # a settings file from an older version: keep today's default
        mine = getattr(args, key, None)
        if key in given and mine != saved[key]:
            if key in CHANGEABLE_ON_RESUME:
                notes.append(f"--{key.replace('_', '-')} {_show(mine)} replaces the saved {_show(saved[key])}")
                continue
            clashes.append(f"--{key.replace('_', '-')} {_show(mine)} (saved: {_show(saved[key])})")
        setattr(args, key, saved[key])
    for key in RECORDED_FIELDS:
        setattr(args, key, saved.get(key))
    if clashes:
        raise ValueError(f"--resume --name {args.name}: {'; '.join(clashes)} contradict(s) the saved search; drop "
                         f"the flag(s) or start a new search with another --name")
    return notes


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
