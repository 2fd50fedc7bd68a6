"""The leaderboard's schema: its columns and their types (versioned), a row normalised to them, and the ranking.

Every TrainConfig field is a column, typed from the dataclass, so column types never drift between appends. A file
of an older schema version is read with its renamed columns mapped and the new ones empty (`upgraded`).
"""
from __future__ import annotations

import dataclasses
import numbers
import typing
from typing import Any, Optional

import pandas as pd
import pyarrow as pa

from leukmodels.config import TrainConfig
from leukmodels.metrics import LOWER_IS_BETTER, SCALAR_METRICS
from leukmodels.values import missing

SCHEMA_VERSION = 3  # 3: the cross-validation columns (cv_folds, fold_metrics, stage, reranked_from) and
# metric_lo / metric_hi (the ranking metric's patient-bootstrap interval)
METRIC_COLUMNS = (*SCALAR_METRICS, "val_loss")  # every metric a search can rank by (the loss: lower is better)
STATUSES = ("finished", "stopped", "time_budget", "error")  # every status but error ranks by its metric
VERSION_KEY = b"leukemia_tune.leaderboard.schema_version"
_UTC = pa.timestamp("us", tz="UTC")


def _config_fields() -> list[pa.Field]:
    """Every TrainConfig hyperparameter as its own column, typed from the dataclass annotations."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string(), Optional[str]: pa.string()}
    return [pa.field(f.name, kinds[hints[f.name]]) for f in dataclasses.fields(TrainConfig)]


SCHEMA = pa.schema(
    [pa.field("search", pa.string(), nullable=False), pa.field("trial_id", pa.string(), nullable=False),
     pa.field("rank", pa.int64()), pa.field("metric", pa.string(), nullable=False),
     pa.field("status", pa.string(), nullable=False)]
    + _config_fields()  # starts with `family`
    + [pa.field(name, pa.float64()) for name in METRIC_COLUMNS]
    + [pa.field("best_epoch", pa.int64()), pa.field("epochs_run", pa.int64()), pa.field("early_stopped", pa.bool_()),
       pa.field("predicted_all", pa.float64()), pa.field("single_class", pa.bool_()),
       pa.field("error", pa.string()), pa.field("notes", pa.string()), pa.field("num_parameters", pa.int64()),
       pa.field("train_seconds", pa.float64()), pa.field("overhead_seconds", pa.float64()),
       pa.field("images_per_s", pa.float64()), pa.field("nodes", pa.string()), pa.field("checkpoint", pa.string()),
       pa.field("searcher", pa.string()), pa.field("scheduler", pa.string()),
       # multi-objective searches: the objectives (comma-separated, the first ranks) and whether the trial is on the
       # search's Pareto front over its finished/stopped trials; null in single-objective searches
       pa.field("objectives", pa.string()), pa.field("pareto", pa.bool_()),
       # --cv: the folds whose pooled out-of-fold predictions give the metrics, and each fold's own figures (JSON
       # {metric: [fold 0, 1, ...]}); --rerank-top: stage "rerank" rows re-train stage "search" rows' configs with
       # cross-validation, reranked_from naming the trial of the search whose config they re-train
       pa.field("cv_folds", pa.int64()), pa.field("fold_metrics", pa.string()), pa.field("stage", pa.string()),
       pa.field("reranked_from", pa.string()),
       # the ranking metric's patient-bootstrap 95% interval at the best epoch (leukmodels.metrics.patient_interval)
       pa.field("metric_lo", pa.float64()), pa.field("metric_hi", pa.float64()),
       pa.field("data_fingerprint", pa.string()), pa.field("data_generated", pa.bool_()),
       pa.field("data_root", pa.string()), pa.field("code_version", pa.string()),
       pa.field("started_at", _UTC), pa.field("finished_at", _UTC), pa.field("schema_version", pa.int64())],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()})
COLUMNS = tuple(SCHEMA.names)

# The columns each view shows of a search's rows, in order (every column: `search/leaderboard.py --columns all`).
# The leaderboard CLI's default; the ranking metric of the rows is inserted after "family" when it is not here.
CLI_COLUMNS = ("rank", "search", "trial_id", "family", "weighted_f1", "accuracy", "balanced_accuracy", "roc_auc",
               "epochs_run", "status", "filters", "depth", "lr", "batch_size", "image_size", "dropout", "optimizer")
# The table printed when a search ends (search/tuning/tuner.py), ranked within the search.
SEARCH_END_COLUMNS = ("rank", "trial_id", "family", "status", "epochs_run", "balanced_accuracy", "weighted_f1",
                      "roc_auc", "metric_lo", "metric_hi",  # the ranking metric's patient-bootstrap interval
                      "filters", "depth", "lr", "batch_size", "image_size", "optimizer", "train_seconds")
# The HTML report's leaderboard table (search/reporting/report.py).
REPORT_COLUMNS = ("rank", "trial_id", "family", "status", "weighted_f1", "balanced_accuracy", "roc_auc", "accuracy",
                  "single_class", "best_epoch", "epochs_run", "early_stopped", "num_parameters", "image_size",
                  "filters", "depth", "lr", "batch_size", "optimizer", "dropout", "aug_strength", "train_seconds",
                  "images_per_s")
COMPUTED_COLUMNS = ("rank", "schema_version")  # filled in by append_rows; values given in rows are ignored
REQUIRED_COLUMNS = ("search", "trial_id", "metric", "status")


def _coerce(name: str, kind: pa.DataType, value: Any) -> Any:
    """One value to the Python type pyarrow stores in column `name`; ValueError for anything else."""
    if kind == pa.float64():
        return None if value is None or value is pd.NA else float(value)  # NaN stays NaN (e.g. roc_auc, one class)
    if missing(value):
        return None
    if kind == pa.string():
        if name == "nodes" and isinstance(value, (list, tuple, set)):
            return ",".join(sorted({str(v) for v in value}))
        if name == "objectives" and isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)  # in order: the first objective ranks
        return str(value)
    if kind == pa.bool_():
        if isinstance(value, bool) or type(value).__name__ == "bool_" or value in (0, 1):
            return bool(value)
        raise ValueError("not a bool")
    if kind == pa.int64():
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError("not a whole number")
        return int(value)
    if kind == _UTC:  # datetime (naive = UTC), ISO string, or epoch seconds
        epoch_seconds = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too
        stamp = pd.Timestamp(float(value), unit="s") if epoch_seconds else pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp.floor("us").to_pydatetime()  # parquet keeps microseconds
    raise TypeError(f"no coercion for {kind}")  # a schema change without a matching branch here


def normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    """A full row (every column, stored types) from a partial dict; ValueError names the row and the bad key."""
    label = f"leaderboard row {row.get('search')!r}/{row.get('trial_id')!r}"
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"{label}: unknown column(s) {unknown}; known columns: {list(COLUMNS)}")
    out = {}
    for field in SCHEMA:
        try:
            out[field.name] = _coerce(field.name, field.type, row.get(field.name))
        except (TypeError, ValueError, OverflowError) as error:
            if isinstance(error, TypeError) and "coercion" in str(error):
                raise
            raise ValueError(f"{label}: column {field.name}={row.get(field.name)!r} is not {field.type}") from None
    for name in REQUIRED_COLUMNS:
        if out[name] is None:
            raise ValueError(f"{label}: column {name} is required")
    if out["status"] not in STATUSES:
        raise ValueError(f"{label}: status {out['status']!r} must be one of {STATUSES}")
    if out["metric"] not in METRIC_COLUMNS:
        raise ValueError(f"{label}: metric {out['metric']!r} must be one of {METRIC_COLUMNS}")
    out["schema_version"] = SCHEMA_VERSION
    return out


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sets `rank` (1 = best) within each ranking metric: finished/stopped before error, then the metric (desc, asc
    for losses), ties by accuracy; rows without a value go last. Returns the rows in (metric, rank) order."""
    def key(row: dict[str, Any]) -> tuple:
        value, accuracy = row[row["metric"]], row["accuracy"]
        sign = 1.0 if row["metric"] in LOWER_IS_BETTER else -1.0
        return (row["status"] == "error", missing(value), 0.0 if missing(value) else sign * value,
                missing(accuracy), 0.0 if missing(accuracy) else -accuracy, row["search"], row["trial_id"])

    ordered = []
    for metric in sorted({row["metric"] for row in rows}):
        group = sorted((row for row in rows if row["metric"] == metric), key=key)
        for rank, row in enumerate(group, start=1):
            ordered.append({**row, "rank": rank})
    return ordered


RENAMED = {1: {"asha_stopped": "early_stopped"}}  # schema version -> columns renamed after it
# Columns added to version 2 before it shipped: a version-2 file written without them reads with them empty.
# (An older version's file reads with every column it lacks empty, e.g. a version-2 file's metric_lo/metric_hi.)
ADDED_TO_CURRENT = ("objectives", "pareto")


def upgraded(table: pa.Table, version: int) -> pa.Table:
    """An older file's table in the current columns: renamed ones mapped, new ones empty."""
    for old in range(version, SCHEMA_VERSION):
        table = table.rename_columns([RENAMED.get(old, {}).get(name, name) for name in table.schema.names])
    may_lack = set(COLUMNS) if version < SCHEMA_VERSION else set(ADDED_TO_CURRENT)
    if set(table.schema.names) <= set(COLUMNS) and set(COLUMNS) - set(table.schema.names) <= may_lack:
        for name in COLUMNS:
            if name not in table.schema.names:
                table = table.append_column(SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type))
    if version < SCHEMA_VERSION and "schema_version" in table.schema.names:
        index = table.schema.get_field_index("schema_version")
        table = table.set_column(index, "schema_version", pa.array([SCHEMA_VERSION] * len(table), pa.int64()))
    return table


__all__ = ["ADDED_TO_CURRENT", "CLI_COLUMNS", "COLUMNS", "COMPUTED_COLUMNS", "METRIC_COLUMNS", "RENAMED",
           "REPORT_COLUMNS", "REQUIRED_COLUMNS", "SCHEMA", "SCHEMA_VERSION", "SEARCH_END_COLUMNS", "STATUSES",
           "VERSION_KEY", "normalise_row", "ranked", "upgraded"]
