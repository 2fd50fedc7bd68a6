"""Where a DDP trial's seconds go: the phases of each trial from the events search/tuning/timeline.py logged.

    LEUKTUNE_TIMELINE=/tmp/tl python search/run.py --family resnet --workers-per-trial 2 --num-samples 4 \\
        --max-epochs 3 --grace-epochs 3 --results R --storage S
    python -m search.benchmark.trial_timeline /tmp/tl

Prints each phase per trial (seconds) and the median over trials; the phases add up to the trial's wall time as the
search's driver saw it (Tune's start of the trial to Tune's end of it).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = [  # (name, from, to): each a function of the trial's events
    ("trial actor starts", "tune_trial_start", "actor_process"),
    ("actor imports, trial fn to TorchTrainer.fit", "actor_process", "trainer_fit_start"),
    ("controller, placement group, worker actors", "trainer_fit_start", "first_worker_process"),
    ("worker start-up: imports, torch process group", "first_worker_process", "last_worker_fn_start"),
    ("data from the object store", "last_worker_fn_start", "last_data_ready"),
    ("training: all epochs", "last_data_ready", "last_report"),
    ("train fn return", "last_report", "last_worker_fn_end"),
    ("Train run shutdown, fit() returns", "last_worker_fn_end", "trainer_fit_end"),
    ("Tune sees the trial end", "trainer_fit_end", "tune_trial_end"),
]


def points(events: list[dict]) -> dict[str, float]:
    def first(name: str, key: str = "t", pick=min) -> float:
        values = [e[key] for e in events if e["event"] == name and e.get(key) is not None]
        return pick(values) if values else float("nan")

    workers = [e for e in events if e["event"] == "worker_fn_start"]
    return {"tune_trial_start": first("tune_trial_start"),
            "actor_process": first("trainer_fit_start", "process_started"),
            "trainer_fit_start": first("trainer_fit_start"),
            "first_worker_process": min((e["process_started"] for e in workers if e.get("process_started")),
                                        default=float("nan")),
            "last_worker_fn_start": first("worker_fn_start", pick=max),
            "last_data_ready": first("worker_data_ready", pick=max),
            "last_report": first("report_sent", pick=max),
            "last_worker_fn_end": first("worker_fn_end", pick=max),
            "trainer_fit_end": first("trainer_fit_end"),
            "tune_trial_end": first("tune_trial_end", pick=max)}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m search.benchmark.trial_timeline FOLDER (the LEUKTUNE_TIMELINE folder of a search)", file=sys.stderr)
        return 2
    folder = Path(sys.argv[1])
    if not any(folder.glob("*.jsonl")):
        print(f"error: {folder}: no trial timelines (*.jsonl) there; run a search with LEUKTUNE_TIMELINE={folder}",
              file=sys.stderr)
        return 2
    table: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    walls = []
    for path in sorted(folder.glob("*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        p = points(events)
        walls.append(p["tune_trial_end"] - p["tune_trial_start"])
        cells = []
        for name, start, end in PHASES:
            table[name].append(p[end] - p[start])
            cells.append(f"{p[end] - p[start]:6.2f}")
        print(f"{path.stem}: wall {walls[-1]:6.2f} s | " + " ".join(cells))
    print(f"\nmedian over {len(walls)} trials (wall {statistics.median(walls):.2f} s):")
    for name, values in table.items():
        clean = [v for v in values if v == v]
        if clean:
            median = statistics.median(clean)
            print(f"  {median:6.2f} s  {median / statistics.median(walls):5.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
