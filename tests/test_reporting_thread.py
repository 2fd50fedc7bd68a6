"""A one-worker trial's reports from a background thread (search/tuning/reporting_thread.py): in order, one at a time,
the epoch folder readable until reported, the last report flushed, a failed report failing the trial, and Tune's
stop (SystemExit in the waiting report) ending the training thread at once."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from search.tuning.reporting_thread import BackgroundReports


def _epoch_folder(root: Path, epoch: int) -> str:
    folder = root / f"epoch_{epoch:04d}"
    folder.mkdir()
    (folder / "checkpoint.pt").write_text(f"weights of epoch {epoch}")
    return str(folder)


def test_reports_arrive_in_order_one_at_a_time_and_the_last_is_flushed(tmp_path):
    sent, in_flight, most_in_flight = [], [0], [0]

    def slow_send(metrics: dict, folder):
        in_flight[0] += 1
        most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        time.sleep(0.2)  # an upload
        sent.append((metrics["epoch"], Path(folder, "checkpoint.pt").read_text() if folder else None))
        in_flight[0] -= 1

    started = time.monotonic()
    with BackgroundReports(slow_send) as send_later:
        for epoch in (1, 2, 3):
            folder = _epoch_folder(tmp_path, epoch)
            send_later({"epoch": epoch}, folder)
            assert not Path(folder).exists()  # moved aside: the caller may delete its path at once
            time.sleep(0.25)  # the next epoch trains while this one uploads
        handed_over_at = time.monotonic() - started
        send_later({"epoch": 3}, None)  # a report without a checkpoint (a resumed trial's final result)
    assert sent == [(1, "weights of epoch 1"), (2, "weights of epoch 2"), (3, "weights of epoch 3"), (3, None)]
    assert most_in_flight[0] == 1
    assert handed_over_at < 3 * 0.25 + 0.15  # the uploads overlapped the training (serial: 3 x 0.45 s)
    assert not list(Path(tmp_path).iterdir())  # every epoch folder deleted once reported


def test_a_report_that_fails_fails_the_trial(tmp_path):
    def failing_send(metrics: dict, folder):
        if metrics["epoch"] == 2:
            raise OSError("could not upload: endpoint unreachable")

    with pytest.raises(OSError, match="endpoint unreachable"):
        with BackgroundReports(failing_send) as send_later:
            send_later({"epoch": 1}, _epoch_folder(tmp_path, 1))
            send_later({"epoch": 2}, _epoch_folder(tmp_path, 2))
    # a training error wins over a report that failed after it
    with pytest.raises(ValueError, match="training broke"):
        with BackgroundReports(failing_send) as send_later:
            send_later({"epoch": 2}, None)
            raise ValueError("training broke")


def test_tunes_stop_in_the_waiting_report_ends_the_training_thread_at_once():
    stop = threading.Event()
    ended = {}

    def send_that_tune_stops(metrics: dict, folder):
        stop.wait(5)
        raise SystemExit(0)  # what Tune's session does to a report waiting when the driver stops the trial

    def trial_function():
        started = time.monotonic()
        try:
            with BackgroundReports(send_that_tune_stops) as send_later:
                send_later({"epoch": 1}, None)
                while time.monotonic() - started < 10:  # training the next epoch, in Python steps
                    sum(range(1000))
            ended["how"] = "trained on"
        except SystemExit:
            ended["how"] = "stopped"
        ended["after"] = time.monotonic() - started

    trainer = threading.Thread(target=trial_function)
    trainer.start()
    time.sleep(0.3)
    stop.set()
    trainer.join(5)
    assert not trainer.is_alive() and ended["how"] == "stopped" and ended["after"] < 2  # Tune's reuse waits 2 s
