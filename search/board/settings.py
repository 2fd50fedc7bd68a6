"""A search's settings: one frozen `SearchSettings`, resolved once by search/cli/run.py, and the file
`results/searches/<name>.json` that holds them, written when the search starts and read back by `--resume`,
`--warm-start`, the evaluation and the report.

    save_settings(settings, warm_start_points)        # results/searches/<name>.json
    values, notes = resumed_values(flags, given)      # --resume: the saved file in place of the flags not given
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from shlex import quote
from typing import Any, Mapping, Optional

from leukmodels.metrics import SCALAR_METRICS
from search.board.paths import STORAGE, settings_path


# What a search maximises on the validation patients (--metric, the first --objectives). Balanced accuracy by default:
# a one-class predictor scores 0.5 on it whatever the class ratio, where weighted F1 rewards it.
DEFAULT_METRIC = "balanced_accuracy"
METRICS = (DEFAULT_METRIC, *(name for name in SCALAR_METRICS if name != DEFAULT_METRIC))  # the default first
SAVED_FIELDS = ("family", "data", "num_samples", "max_epochs", "grace_epochs", "reduction_factor",
                "workers_per_trial", "cpus_per_worker", "gpus_per_worker", "image_sizes", "batch_sizes", "seed",
                "metric", "time_budget", "max_failures", "profile", "storage", "searcher", "scheduler",
                "val_fraction", "warm_start", "objectives", "cv", "rerank_top", "rerank_folds", "optuna_storage")
CHANGEABLE_ON_RESUME = ("time_budget",)  # a resumed run gets a budget of its own


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Every setting of one search, as the flags, the hardware profile (search/cli/profiles.py), --resume's saved
    file and --warm-start resolved them; never changed once built. SAVED_FIELDS are what searches/<name>.json holds;
    the last four say how this run was started and are not saved. The file also records, never to compare with a
    flag, `warm_start_points`: the configs a --warm-start search ran first. What varies per run (its start time, the
    warm start's configs, the pre-flight's cached split) travels beside it, never on it."""

    name: str
    results: str  # an absolute folder: the leaderboard, optuna.db, searches/
    family: list[str]
    # the hardware profile's (search/cli/profiles.py PROFILES) unless a flag or the saved file gave them
    profile: str
    num_samples: int
    max_epochs: int
    grace_epochs: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    image_sizes: list[int]
    batch_sizes: list[int]
    # the flags' defaults (search/cli/flags.py reads them from here)
    data: Optional[str] = None  # None: the generated C-NMC-like set
    reduction_factor: int = 2
    seed: int = 0
    metric: str = DEFAULT_METRIC
    time_budget: Optional[float] = None  # seconds
    max_failures: int = 2
    storage: str = STORAGE  # a folder or an s3:// URI
    searcher: str = "tpe"
    scheduler: str = "asha"
    val_fraction: float = 0.2
    warm_start: Optional[str] = None  # the earlier search whose best configs run first
    objectives: Optional[list[str]] = None
    cv: Any = 0  # 0 (one validation split), a fold count or "official"
    rerank_top: Optional[int] = None
    rerank_folds: Any = 3
    optuna_storage: Optional[str] = None  # without its password
    # how this run was started (not saved)
    resume: bool = False
    address: Optional[str] = None  # the Ray cluster joined; None: a local Ray
    dry_run: bool = False
    verbose: bool = False

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "SearchSettings":
        """The settings among `values` (a parsed-flags dict, say); other keys are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def saved(self) -> dict[str, Any]:
        """What searches/<name>.json holds of these settings."""
        return {key: getattr(self, key) for key in SAVED_FIELDS}

    def resume_command(self) -> str:
        """The command that continues this search, shell-quoted: it pastes into a shell as it is."""
        return (f"python search/run.py --resume --name {quote(self.name)} --results {quote(str(self.results))} "
                f"--storage {quote(self.storage)}")


def refuse_existing(results: str, name: str) -> None:
    path = settings_path(results, name)
    if path.exists():
        raise ValueError(f"--name {name}: a search of that name exists ({path}); use --resume or a new name")


def save_settings(settings: SearchSettings, warm_start_points: Optional[list[dict]] = None) -> Path:
    """Write the resolved settings of a new search to results/searches/<name>.json (read back by --resume), with the
    configs a --warm-start ran first for the record."""
    path = settings_path(settings.results, settings.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**settings.saved(), "warm_start_points": warm_start_points}, indent=2))
    return path


def read_saved(results: str, name: str) -> dict[str, Any]:
    """searches/<name>.json as written (a file of an older version may lack fields); ValueError when missing."""
    path = settings_path(results, name)
    if not path.is_file():
        raise ValueError(f"--resume --name {name}: no settings at {path} (is --results the same?)")
    return json.loads(path.read_text())


def resumed_values(flags: Mapping[str, Any], given: set[str]) -> tuple[dict[str, Any], list[str]]:
    """--resume: `flags` (with `results` and `name`) with the saved settings in place of those not given; a flag given
    now that contradicts them is a ValueError naming it, except those a resumed run may change (CHANGEABLE_ON_RESUME),
    which are kept. Returns (the values, one note per changed setting). A field an older file lacks keeps the flag's
    value (today's default)."""
    saved = read_saved(flags["results"], flags["name"])
    values, notes, clashes = dict(flags), [], []
    for key in (key for key in SAVED_FIELDS if key in saved):
        mine = flags.get(key)
        if key in given and mine != saved[key]:
            if key in CHANGEABLE_ON_RESUME:
                notes.append(f"--{key.replace('_', '-')} {_show(mine)} replaces the saved {_show(saved[key])}")
                continue
            clashes.append(f"--{key.replace('_', '-')} {_show(mine)} (saved: {_show(saved[key])})")
        values[key] = saved[key]
    if clashes:
        raise ValueError(f"--resume --name {flags['name']}: {'; '.join(clashes)} contradict(s) the saved search; "
                         f"drop the flag(s) or start a new search with another --name")
    return values, notes


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
