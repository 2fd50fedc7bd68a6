"""A trial's reports, in the order Tune delivered them, read for what a leaderboard row needs: its best epoch, the
epochs it ran (a restarted trial's first report carries the ones before the restart), its training time over all its
runs, and the exploits PBT made on it.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Optional

from leukmodels.metrics import best_report  # the one best-epoch rule, the core's (later epoch on ties)
from search.tuning.trial import EXPLOITED_FROM, PRIOR_EPOCHS


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epochs_run(history: list[dict]) -> int:
    return max((int(r["epoch"]) for r in with_prior_epochs(history) if finite(r.get("epoch"))), default=0)


def with_prior_epochs(history: list[dict]) -> list[dict]:
    """The reports plus the epochs before a restart that a resumed trial's first report carries (`prior_epochs`)."""
    seen = {r.get("epoch") for r in history}
    earlier = []
    for report in history:
        text = report.get(PRIOR_EPOCHS)
        if isinstance(text, str) and text:
            for epoch in json.loads(text):
                if epoch.get("epoch") not in seen:
                    seen.add(epoch.get("epoch"))
                    earlier.append({k: v for k, v in epoch.items() if not isinstance(v, (dict, list))})
    return earlier + list(history)


def exploits(history: list[dict]) -> list[str]:
    """"<donor>@<epoch>" for each time PBT replaced the trial's weights, in report order."""
    return [report[EXPLOITED_FROM] for report in history if _is_exploit(report)]


def _is_exploit(report: dict) -> bool:
    return isinstance(report.get(EXPLOITED_FROM), str) and bool(report[EXPLOITED_FROM])  # NaN in a data frame


def since_last_exploit(history: list[dict]) -> list[dict]:
    """The reports (in report order) of the weights the trial ended with: those from its last exploit on."""
    marks = [i for i, report in enumerate(history) if _is_exploit(report)]
    return history[marks[-1]:] if marks else history


def trained_seconds(history: list[dict]) -> Optional[float]:
    """Seconds in the training function over all of a trial's runs, from reports in report order: `train_seconds`
    starts again from 0 with each run (a PBT round, a retry, a resume), so the last value of each run is added up."""
    total, last = 0.0, None
    for report in history:
        value = report.get("train_seconds")
        if not finite(value):
            continue
        if last is not None and value < last:
            total += last
        last = float(value)
    return None if last is None else total + last


def with_checkpoint_paths(history: list[dict], trial_path: Optional[str]) -> list[dict]:
    """Reports of a one-worker trial name their checkpoint by folder (`checkpoint_dir_name`, under the trial's
    storage path); DDP trials report the full `checkpoint_path`. Give every report a `checkpoint_path`."""
    out = []
    for report in history:
        name = report.get("checkpoint_dir_name")
        if not report.get("checkpoint_path") and isinstance(name, str) and name and trial_path:
            report = {**report, "checkpoint_path": f"{str(trial_path).rstrip('/')}/{name}"}
        out.append(report)
    return out


def result_trial_id(result: Any) -> str:
    """The trial id of a Tune Result: from its last report, else from its folder's name."""
    return (result.metrics or {}).get("trial_id") or trial_id_from_path(result.path)


def trial_id_from_path(path: Optional[str]) -> str:
    """Tune names a trial folder `<trainable>_<trial id>_<index>_<config...>`; with a search algorithm the id is
    8 hex digits (`run_trial_374596e2_1_...`), with Tune's own generator (PBT's population) `<5 hex>_<5 digits>`."""
    name = os.path.basename(str(path or "").rstrip("/"))
    match = re.search(r"_([0-9a-f]{8}(?:_\d{5})?|[0-9a-f]{5}_\d{5})_", name)
    return match.group(1) if match else name or "unknown"


__all__ = ["finite", "best_report", "epochs_run", "exploits", "since_last_exploit", "trained_seconds",
           "result_trial_id", "trial_id_from_path", "with_checkpoint_paths", "with_prior_epochs"]
