"""What a person reads while a search runs: a few lines per trial and a progress line; everything else to a log.

    with logged_console(Path("results/NAME/search.log"), verbose=False) as console:
        console.say("plan: ...")            # terminal and log
        ...                                 # anything Ray, Tune or Train print lands in the log only

The console writes to the terminal the process had when the search started; file descriptors 1 and 2 (what Ray's
C++ core and child processes write to) and Python's sys.stdout/sys.stderr (Tune's tables, worker logs forwarded to
the driver) point at the log file meanwhile. `--verbose` leaves them on the terminal.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from ray.tune import Callback

from search.tuning.rows import SearchRun, record_of
from search.tuning.trial import EXPLOITED_FROM
from search.tuning.uncertainty import interval_text

KEY_PARAMS = (("filters", "filters"), ("depth", "depth"), ("lr", "lr"), ("batch_size", "batch"),
              ("image_size", "px"))


class Console:
    """Lines for people: each goes to the terminal and to the log."""

    def __init__(self, out: TextIO, err: TextIO, log: Optional[TextIO]) -> None:
        self.out, self.err, self.log = out, err, log

    def say(self, text: str = "", error: bool = False) -> None:
        stream = self.err if error else self.out
        print(text, file=stream, flush=True)
        if self.log is not None and self.log is not stream:
            print(text, file=self.log, flush=True)

    def error(self, text: str) -> None:
        self.say(f"error: {text}", error=True)

    def __reduce__(self) -> tuple:
        return plain_console, ()  # Tune pickles the callbacks holding it: a copy writes to the process's stdout


def plain_console() -> Console:
    """Lines to this process's stdout/stderr, no log (a test's, or a pickled console's)."""
    return Console(sys.stdout, sys.stderr, None)


def _terminal(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream that still reaches the terminal after fd `fd` is pointed at the log; True when it is a new one."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1), True
    except (AttributeError, OSError, ValueError):  # a test's capture object: it is not fd `fd` at all
        pass
    return stream, False


@contextlib.contextmanager
def logged_console(log_path: Path, verbose: bool = False) -> Iterator[Console]:
    """A Console on this process's terminal while fds 1 and 2 and sys.stdout/sys.stderr append to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    (out, own_out), (err, own_err) = _terminal(sys.stdout, 1), _terminal(sys.stderr, 2)
    saved_fds = [os.dup(1), os.dup(2)] if not verbose else []
    saved_streams = sys.stdout, sys.stderr
    console = Console(out, err, log)
    if not verbose:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
    try:
        yield console
    finally:
        for stream in (sys.stdout, sys.stderr, log):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        for stream, own in ((out, own_out), (err, own_err)):
            if own:
                stream.close()
        log.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _params(config: dict) -> str:
    shown = []
    for key, label in KEY_PARAMS:
        value = config.get(key)
        if value is not None:
            shown.append(f"{label}={value:.1e}" if key == "lr" else f"{label}={value}")
    return " ".join(shown)


@dataclass
class ConsoleCallback(Callback):
    """One line when a trial starts and one when it ends (how, after how many epochs, at what metric: read from the
    trial's record, filed by `TrialRecorder` before this callback), then a progress line over the search's budget.
    Picklable: Tune saves it for `--resume` (a resumed driver uses new callbacks)."""

    run: SearchRun
    metric: str
    num_samples: int
    max_epochs: int
    numbers: dict = field(default_factory=dict)  # trial id -> 1, 2, ... in the order trials started
    ended: set = field(default_factory=set)
    quiet_restarts: bool = False  # PBT restarts every trial at every round: say only its first start and exploits
    console: Console = field(default_factory=plain_console)  # the search's (logged_console)

    def _label(self, trial: Any) -> str:
        number = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        width = len(str(self.num_samples))
        return f"[{number:>{width}}/{self.num_samples}] {trial.trial_id}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.quiet_restarts and trial.trial_id in self.numbers:
            return
        config = dict(trial.config)
        family = config.get("family", "?")
        self.console.say(f"{self._label(trial)} started: {family} {_params(config)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        donor = result.get(EXPLOITED_FROM)  # PBT replaced its weights: its row ranks the epochs from here on
        if "epoch" in result and isinstance(donor, str) and donor:
            self.console.say(f"{self._label(trial)} continues the weights of {donor} with "
                          f"{_params(dict(trial.config))} wd={trial.config.get('weight_decay', 0):.1e} "
                          f"aug={trial.config.get('aug_strength', 0):.2f}")

    def _ended(self, trial: Any, progress: bool = True) -> None:
        record = record_of(self.run, trial)
        epochs = record.epochs_run()
        how = ending_text(self.run.status(record, self.max_epochs), epochs)
        best = record.best(self.metric)  # the epoch the row will name
        score = (f", best {self.metric} {best[self.metric]:.3f}{interval_text(best, self.metric)} (epoch "
                 f"{best['epoch']})" if best and not record.error else "")
        self.console.say(f"{self._label(trial)} {how}{score}" + (f": {record.error}" if record.error else ""))
        self.ended.add(trial.trial_id)
        if progress:
            self.console.say(self.progress())

    def progress(self) -> str:
        done, elapsed = len(self.ended), time.time() - self.run.launched
        epochs, budget = sum(r.epochs_run() for r in self.run.trials.values()), self.num_samples * self.max_epochs
        filled = int(20 * done / max(1, self.num_samples))
        eta = f", ~{_duration(elapsed * (self.num_samples - done) / done)} left" if 0 < done < self.num_samples else ""
        return (f"  [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.num_samples} trials, {epochs}/{budget} "
                f"epochs (at most), {_duration(elapsed)} elapsed{eta}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Trials the time budget (or an interrupt) ended get no completion callback from Tune: say how they ended."""
        for trial in trials:
            if trial.trial_id in self.numbers and trial.trial_id not in self.ended:
                self._ended(trial, progress=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)


def ending_text(status: Optional[str], epochs: int) -> str:
    return {"finished": f"finished {epochs} epochs", "stopped": f"stopped early after {epochs} epoch(s)",
            "time_budget": f"cut by the time budget after {epochs} epoch(s)",
            "error": f"FAILED after {epochs} epoch(s)"}.get(status or "", f"interrupted after {epochs} epoch(s)")


__all__ = ["Console", "ConsoleCallback", "logged_console", "plain_console"]
