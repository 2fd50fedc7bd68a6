"""What one leaderboard append costs as the leaderboard grows (issue 18 point 8); a measurement, not a test.

    python -m search.benchmark.append_cost --rows 1000 10000 100000

(The "before" figures in README were measured on the whole-file leaderboard of the commit before 86eb44d with this script's
first version, which took a --repo to measure.)

For each size: a leaderboard of that many rows in searches of --per-search rows each (written once, not timed), then
the median of --repeat appends of one new row to one of those searches, as the driver does at every trial's end.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from leukmodels.config import TrainConfig
from search.board import leaderboard
from search.board.paths import leaderboard_path


def make_row(search: str, trial: int) -> dict:
    config = TrainConfig(family="resnet", filters=32, depth=3, lr=3e-4, pretrained=None).to_dict()
    return {**config, "search": search, "trial_id": f"t{trial:06d}", "metric": "balanced_accuracy",
            "status": "finished", "balanced_accuracy": (trial % 997) / 997, "accuracy": 0.8, "weighted_f1": 0.8,
            "epochs_run": 3, "train_seconds": 12.5, "nodes": "node-a", "checkpoint": f"/tmp/ckpt/{search}/{trial}",
            "data_fingerprint": "abc123def", "started_at": 1.7e9, "finished_at": 1.7e9 + 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--per-search", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"code: {leaderboard.code_version()}")
    for total in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = leaderboard_path(tmp)
            searches = max(1, total // args.per_search)
            leaderboard.append_rows(path, [make_row(f"s{i % searches}", i) for i in range(total)])
            times = []
            for attempt in range(args.repeat):
                row = make_row("s0", total + attempt)
                started = time.perf_counter()
                leaderboard.append_rows(path, [row])
                times.append(time.perf_counter() - started)
            print(f"{total:>7} rows in {searches} searches: one append {statistics.median(times):.3f} s "
                  f"(median of {args.repeat}; min {min(times):.3f}, max {max(times):.3f})", flush=True)


if __name__ == "__main__":
    main()
