"""Where a search's files live: under --results (the leaderboard, the Optuna study, each search's settings, split and
log) and under --storage (Tune's state and checkpoints, a folder or an s3:// URI). Every module names them from here.
"""
from __future__ import annotations

from pathlib import Path

RESULTS = "results"  # --results default
STORAGE = f"{RESULTS}/ray"  # --storage default
LEADERBOARD = "leaderboard"  # one ranked row per trial of every search: a parquet dataset, a file per search
LEGACY_LEADERBOARD = "leaderboard.parquet"  # the single file of earlier versions (moved into the dataset on write)
OPTUNA_DB = "optuna.db"  # one SQLite file, a study per search (study name = search name)
SEARCHES = "searches"  # searches/<name>.json: a search's resolved settings, read back by --resume
SETTINGS_SUFFIX = ".json"  # searches/<name>.json: the longest file name a search makes from --name
SPLIT = "split.json"  # <name>/split.json: the patient split, read by evaluate and the benchmark
SEARCH_LOG = "search.log"  # <name>/search.log: everything Ray, Tune and Train printed
DEADLINE = "deadline.json"  # <name>/deadline.json: when this run's --time-budget ends the search (read by its stopper)
REPORT = "report.html"  # <name>/report.html
TEST_METRICS = "test_metrics.parquet"  # evaluate's rows, beside the leaderboard
TEST_PREDICTIONS = "test_predictions.parquet"  # evaluate's per-cell P(ALL), beside the leaderboard
TEST_PATIENTS = "test_patients.parquet"  # evaluate's per-patient answer (cells, mean P(ALL), call), beside it


def leaderboard_path(results: str | Path) -> Path:
    """The leaderboard dataset folder (search/board/files.py); commands also take the old file's path for it."""
    return Path(results) / LEADERBOARD


def optuna_url(results: str | Path) -> str:
    """The study storage URL, as `optuna-dashboard` takes it."""
    return f"sqlite:///{Path(results) / OPTUNA_DB}"


def settings_path(results: str | Path, name: str) -> Path:
    return Path(results) / SEARCHES / f"{name}{SETTINGS_SUFFIX}"


def split_path(results: str | Path, name: str) -> Path:
    return Path(results) / name / SPLIT


def deadline_path(results: str | Path, name: str) -> Path:
    return Path(results) / name / DEADLINE


def in_storage(storage: str, *parts: str) -> str:
    """A path under --storage, joined with "/" so that an s3:// URI stays one."""
    return "/".join([storage.rstrip("/"), *parts])


__all__ = ["LEADERBOARD", "LEGACY_LEADERBOARD", "OPTUNA_DB", "REPORT", "RESULTS", "SEARCHES", "SEARCH_LOG",
           "SETTINGS_SUFFIX", "SPLIT", "STORAGE", "TEST_METRICS", "TEST_PATIENTS", "TEST_PREDICTIONS", "in_storage",
           "leaderboard_path", "optuna_url", "settings_path", "split_path"]
