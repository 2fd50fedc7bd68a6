"""A one-worker trial's reports sent from a background thread, so that a checkpoint upload does not hold up training.

    with BackgroundReports(send) as send_later:   # send(metrics, folder or None): tune.report, uploads the folder
        fit(..., on_epoch=...)                    # ... where each epoch calls send_later(metrics, epoch_folder)
    # leaving the block waits for the last report; a report that raised raises here (the trial fails as before)

At most one report is in flight: handing over the next one first waits for the previous one, so Tune hears the
epochs in order and at most one epoch is unsaved while the next one trains. The epoch's folder is moved (a rename on
the same disk) into this object's own temporary folder before `send_later` returns, since the caller deletes the
folder it passed, and its parent when training ends; the thread deletes it once reported.

Tune's session (ray/train/_internal/session.py) keeps the trial's report waiting until the driver takes the next
step; when the driver stops the trial instead (ASHA, PBT, the search's end), the waiting report gets SystemExit.
With a synchronous report that SystemExit ended the training thread at once; here the training thread is busy with
the next epoch, so the reporting thread raises the same SystemExit in it (PyThreadState_SetAsyncExc, delivered at
its next Python instruction): Tune reuses the actor only if the training function ends within 2 s of the stop.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import threading
from typing import Callable, Optional

from search.tuning.scratch import scratch_folder

FAULT_DIR_ENV = "LEUKTUNE_FAULT_DIR"  # set by tests/test_faults.py only (search/tuning/faults.py): reports are then
# waited for at once, since the fault hook kills or parks the trial "after epoch N was persisted"
JOIN_POLL_S = 0.2  # the training thread waits in steps: a SystemExit raised in it arrives between two steps

Send = Callable[[dict, Optional[str]], None]


def raise_in_thread(thread: threading.Thread, kind: type[BaseException]) -> bool:
    """Raise `kind` in `thread` at its next Python instruction; False when the thread has ended."""
    if thread.ident is None or not thread.is_alive():
        return False
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(kind)) == 1


class BackgroundReports:
    """`send` called from one background thread, one report at a time, in the order they were handed over."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.trainer = threading.current_thread()  # the thread that trains (Tune's runner thread)
        self.pending: Optional[threading.Thread] = None
        self.failure: Optional[BaseException] = None
        self.staging: Optional[str] = None  # holds the epoch folder whose report is in flight

    def __call__(self, metrics: dict, folder: Optional[str]) -> None:
        self.wait()
        if folder:  # the caller deletes `folder` when this returns: the report reads the moved copy
            self.staging = self.staging or scratch_folder("sending")
            folder = shutil.move(folder, os.path.join(self.staging, os.path.basename(folder.rstrip(os.sep))))
        self.pending = threading.Thread(target=self._report, args=(metrics, folder), daemon=True,
                                        name="leuk-report")
        self.pending.start()
        if os.environ.get(FAULT_DIR_ENV):  # TEST-ONLY: the fault hook after this call must find the epoch persisted
            self.wait()

    def _report(self, metrics: dict, folder: Optional[str]) -> None:
        try:
            self.send(metrics, folder)
        except SystemExit:  # Tune stopped the trial while this report waited for its next step
            raise_in_thread(self.trainer, SystemExit)
        except BaseException as error:  # an upload that failed: raised in the training thread by wait()
            self.failure = error
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    def wait(self) -> None:
        """Until the report in flight is done; raises what it raised."""
        while self.pending is not None and self.pending.is_alive():
            self.pending.join(JOIN_POLL_S)
        self.pending = None
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def __enter__(self) -> "BackgroundReports":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self._finish(kind)
        finally:
            if self.staging is not None and (self.pending is None or not self.pending.is_alive()):
                shutil.rmtree(self.staging, ignore_errors=True)

    def _finish(self, kind: Optional[type]) -> None:
        if kind is None:
            self.wait()  # the last report reaches Tune before the trial's function returns
        elif issubclass(kind, Exception):  # training failed: the epochs handed over before still reach Tune
            try:
                self.wait()
            except Exception:  # noqa: S110 - the training error is the one the trial is recorded with
                pass
        # SystemExit (Tune stopped the trial): the reporting thread has ended or is ending; nothing to wait for


__all__ = ["BackgroundReports", "raise_in_thread"]
