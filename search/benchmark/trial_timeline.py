"""Where a DDP trial's seconds go: the phases of each trial from the events search/tuning/timeline.py logged.

    LEUKTUNE_TIMELINE=/tmp/tl python search/run.py --family resnet --workers-per-trial 2 --num-samples 4 \\
        --max-epochs 3 --grace-epochs 3 --results R --storage S
    python -m search.benchmark.trial_timeline /tmp/tl

Prints each phase per trial (seconds) and the median over trials. A trial's wall time runs from its actor's process
start (when Tune started a new actor for it; 0 s when it reused the previous trial's) to Tune's end of the trial;
the phases add up to it. A trial the scheduler stopped has no "run ends" phase: Tune ends it at the result it judged.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

POINTS = [  # (point, the phase that runs from it to the next point)
    ("actor_process", "trial actor starts (0 when reused)"),
    ("tune_trial_start", "trial fn to the trainer's fit()"),
    ("trainer_fit_start", "Train controller actor starts"),
    ("controller_start", "placement group, worker actors scheduled"),
    ("first_worker_process", "worker start-up: Ray, imports"),
    ("last_worker_context", "torch process group"),
    ("worker_group_started", "train fn starts, data from the object store"),
    ("last_data_ready", "training: all epochs"),
    ("last_report", "run ends, fit() returns"),
    ("trainer_fit_end", "Tune sees the trial end"),
    ("tune_trial_end", ""),
]


def _times(events: list[dict], name: str, key: str = "t") -> list[float]:
    return [e[key] for e in events if e["event"] == name and e.get(key) is not None]


def points(events: list[dict], reused: bool) -> dict[str, float]:
    """Each point's time (epoch seconds; NaN when the trial has no such event)."""
    def first(name: str, key: str = "t", pick=min) -> float:
        values = _times(events, name, key)
        return pick(values) if values else math.nan

    tune_start, tune_end = first("tune_trial_start"), first("tune_trial_end", pick=max)
    return {"actor_process": tune_start if reused else min(first("trainer_fit_start", "process_started"), tune_start),
            "tune_trial_start": tune_start,
            "trainer_fit_start": first("trainer_fit_start"),
            "controller_start": first("controller_start"),
            "first_worker_process": first("worker_context", "process_started"),
            "last_worker_context": first("worker_context", pick=max),
            "worker_group_started": first("worker_group_started"),
            "last_data_ready": first("worker_data_ready", pick=max),
            "last_report": min(first("report_sent", pick=max), tune_end),  # a stopped trial's workers run on a little
            "trainer_fit_end": first("trainer_fit_end"),
            "tune_trial_end": tune_end}


def phases(p: dict[str, float]) -> list[float]:
    """Seconds of each phase; a missing point hands its phase's time to the phase before it."""
    known = [(name, p[name]) for name, _ in POINTS if not math.isnan(p[name])]
    seconds = {name: math.nan for name, _ in POINTS}
    for (name, t), (_, t_next) in zip(known, known[1:]):
        seconds[name] = t_next - t
    return [seconds[name] for name, label in POINTS if label]


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m search.benchmark.trial_timeline FOLDER (the LEUKTUNE_TIMELINE folder of a search)",
              file=sys.stderr)
        return 2
    folder = Path(sys.argv[1])
    trials = {path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
              for path in folder.glob("*.jsonl")}
    if not trials:
        print(f"error: {folder}: no trial timelines (*.jsonl) there; run a search with LEUKTUNE_TIMELINE={folder}",
              file=sys.stderr)
        return 2
    labels = [label for _, label in POINTS if label]
    table: dict[str, list[float]] = {label: [] for label in labels}
    walls, actors_seen = [], set()
    for trial_id, events in sorted(trials.items(), key=lambda item: min(_times(item[1], "tune_trial_start") or [0])):
        actor = next((e["pid"] for e in events if e["event"] == "trainer_fit_start"), None)
        p = points(events, reused=actor in actors_seen)
        actors_seen.add(actor)
        walls.append(p["tune_trial_end"] - p["actor_process"])
        cells = phases(p)
        for label, value in zip(labels, cells):
            table[label].append(value)
        print(f"{trial_id}: wall {walls[-1]:6.2f} s | " + " ".join(f"{c:6.2f}" for c in cells))
    print(f"\nmedian over {len(walls)} trials (wall {statistics.median(walls):.2f} s):")
    for label, values in table.items():
        clean = [v for v in values if not math.isnan(v)]
        if clean:
            median = statistics.median(clean)
            print(f"  {median:6.2f} s  {median / statistics.median(walls):5.1%}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
