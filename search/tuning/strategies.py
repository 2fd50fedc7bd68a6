"""Search strategies: which Optuna sampler proposes configs and which Tune scheduler stops trials early.

    sampler = make_sampler("tpe", seed=0, num_samples=12)
    scheduler = make_scheduler("asha", run=run, metric="balanced_accuracy", max_epochs=8, grace_epochs=1)

Schedulers record in the search's run (search/tuning/rows.py) which trials they stopped before max_epochs, so a
leaderboard row can say "stopped early" (a STOP at max_epochs is only the end of training), and `BudgetStopper` ends
the search at the run's deadline. `--resume` restores pickled copies of the scheduler and searcher, each with an empty
run: `attach_run` hands them the resumed driver's. The stopper cannot be handed one (Tune puts back the stopper
pickled in its experiment state), so it reads the deadline from the file the driver writes (`write_deadline`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import optuna
from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from leukmodels.atomic import atomic_path
from search.tuning.pbt import make_pbt
from search.tuning.ray_private import completed_trials, optuna_study, optuna_trials
from search.tuning.rows import SearchRun
from search.tuning.trial import TIME_ATTR

SEARCHERS = ("tpe", "random")
SCHEDULERS = ("asha", "median", "fifo", "pbt")



class BudgetStopper(Stopper):
    """Ends the whole search at its deadline; Tune then stops every running trial. The deadline is read from the file
    the driver writes for each run (`write_deadline`: `--resume` may give a new budget), not held: a resumed Tune
    runs with the stopper pickled in its experiment state, not the one it is given (tests/test_ray_private.py)."""

    READ_EVERY_S = 1.0  # Tune asks every step; the file is read at most this often

    def __init__(self, deadline_file: Optional[str]) -> None:
        self.deadline_file = str(deadline_file) if deadline_file else None
        self._deadline, self._read_at = None, -math.inf

    def __getstate__(self) -> dict:
        return {"deadline_file": self.deadline_file}

    def __setstate__(self, state: dict) -> None:
        # a stopper pickled before the deadline file (it held its search's name) reads none: no deadline
        self.__init__(state.get("deadline_file"))

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.time()
        if self.deadline_file and now - self._read_at >= self.READ_EVERY_S:
            self._deadline, self._read_at = read_deadline(self.deadline_file), now
        return self._deadline is not None and now >= self._deadline


def write_deadline(path: Path, deadline: Optional[float]) -> None:
    """This run's deadline (None: no --time-budget) where its stopper reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"deadline": deadline}))


def read_deadline(path: str) -> Optional[float]:
    try:
        return json.loads(Path(path).read_text()).get("deadline")
    except (OSError, ValueError, AttributeError):  # not written (yet), or not ours: no deadline
        return None


def make_sampler(name: str, seed: int, num_samples: int):
    """The Optuna sampler behind OptunaSearch. TPE starts with a few random trials (a third of the budget, 2 to 10)
    before it models the space; `random` is the baseline every strategy is measured against."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, num_samples // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--searcher {name!r}: choose from {SEARCHERS}")


class _RecordsEarlyStops:
    """Mixin for a Tune scheduler: remember each STOP decided before `max_epochs`."""

    run: SearchRun
    max_epochs: float = math.inf

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        if decision != TrialScheduler.STOP:
            return decision
        if result.get(TIME_ATTR, math.inf) >= self.max_epochs:
            # the last epoch: the trial returns by itself. A STOP would kill it while a DDP trial's Train run is
            # still closing, and its controller would retry the workers whose placement group is being freed
            return TrialScheduler.CONTINUE
        self.run.early_stops.add(trial.trial_id)
        return decision


class RecordingASHA(_RecordsEarlyStops, ASHAScheduler):
    pass


class RecordingMedian(_RecordsEarlyStops, MedianStoppingRule):
    pass


def make_scheduler(name: str, *, run: SearchRun, metric: str, max_epochs: int, grace_epochs: int,
                   reduction_factor: int = 2, mode: str = "max", seed: int = 0) -> Optional[TrialScheduler]:
    """ASHA (stops a trial at epoch grace x factor^k unless it is in the top 1/factor there), the median stopping
    rule (stops a trial whose running mean falls below the median of the others at the same epoch, after the grace
    epochs), FIFO (every trial runs max_epochs), or population-based training (every trial runs max_epochs; the
    worst copy the best's weights and perturb their lr, weight decay and augmentation: search/tuning/pbt.py)."""
    if name == "pbt":
        return make_pbt(metric=metric, mode=mode, max_epochs=max_epochs, seed=seed)
    if name == "asha":
        scheduler = RecordingASHA(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=grace_epochs,
                                  reduction_factor=reduction_factor, metric=metric, mode=mode)
    elif name == "median":
        scheduler = RecordingMedian(time_attr=TIME_ATTR, metric=metric, mode=mode, grace_period=grace_epochs,
                                    min_samples_required=3)
    elif name == "fifo":
        return FIFOScheduler()
    else:
        raise ValueError(f"--scheduler {name!r}: choose from {SCHEDULERS}")
    scheduler.run, scheduler.max_epochs = run, max_epochs
    return scheduler


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that closes a trial the time budget cut short as PRUNED at its last value (FAIL when it trained
    no epoch), not as COMPLETE: the study then holds the same ending as the leaderboard row."""

    def __init__(self, *args: Any, run: Optional[SearchRun] = None, max_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run, self.max_epochs = run or SearchRun(), max_epochs

    def restore(self, checkpoint_path: str) -> None:
        """OptunaSearch restores its whole __dict__ from the saved searcher: keep this driver's run."""
        run = self.run
        super().restore(checkpoint_path)
        self.run = run

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._unrecorded():
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # a trial that ended just before the driver died: the study has its end, Tune's saved state did not, so
            # --resume restored it and it re-reports its last epoch. The study keeps what it has.
            completed_trials(self).add(trial_id)
        except KeyError as missing:  # optuna's "Record does not exist.": see _unrecorded
            self._note_unrecorded(trial_id, missing)

    def _note_unrecorded(self, trial_id: str, missing: KeyError) -> None:
        if "Record does not exist" not in str(missing):
            raise missing
        self._unrecorded().add(trial_id)

    def _unrecorded(self) -> set:
        """Trials the study does not hold: a study restored from the bucket on a new head (search/board/search_files.py)
        can be older than Tune's saved state, which names trials asked after the study's last copy. They still train
        and get their rows; the study hears nothing of them. (Kept in __dict__: a pickled searcher may predate it.)"""
        return self.__dict__.setdefault("_unrecorded_trials", set())

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        run = self.run
        epochs = int((result or {}).get(TIME_ATTR) or 0)
        cut = not error and run.budget_spent() and trial_id not in run.early_stops and epochs < self.max_epochs
        if trial_id in self._unrecorded():
            return None
        if not cut or trial_id in completed_trials(self) or trial_id not in optuna_trials(self):
            try:
                return super().on_trial_complete(trial_id, result=result, error=error)
            except KeyError as missing:  # not in the study: see _unrecorded
                self._note_unrecorded(trial_id, missing)
                return None
        state = optuna.trial.TrialState.PRUNED if epochs else optuna.trial.TrialState.FAIL
        optuna_study(self).tell(optuna_trials(self)[trial_id], state=state)
        completed_trials(self).add(trial_id)


def make_searcher(sampler_name: str, *, search: str, run: SearchRun, space: Any, metric: Any, mode: Any, storage: Any,
                  seed: int, num_samples: int, max_epochs: int,
                  points_to_evaluate: Optional[list[dict]] = None) -> BudgetAwareOptunaSearch:
    """OptunaSearch over `space` with the named sampler; its study is stored under the search's name. `metric` and
    `mode` are lists for a multi-objective search (the sampler then proposes for all of them); `points_to_evaluate`
    (a warm start) are enqueued in the study, so they are the first trials."""
    return BudgetAwareOptunaSearch(space=space, metric=metric, mode=mode, study_name=search, storage=storage,
                                   sampler=make_sampler(sampler_name, seed, num_samples), run=run,
                                   max_epochs=max_epochs, points_to_evaluate=points_to_evaluate or None)


def attach_run(parts: list, run: SearchRun) -> None:
    """Hand this driver's run to the scheduler and searcher of a restored Tuner (pickled, theirs is empty)."""
    for part in parts:
        if isinstance(part, (_RecordsEarlyStops, BudgetAwareOptunaSearch)):
            part.run = run


__all__ = ["SEARCHERS", "SCHEDULERS", "make_sampler", "make_scheduler", "attach_run", "BudgetStopper", "write_deadline",
           "BudgetAwareOptunaSearch", "make_searcher", "RecordingASHA", "RecordingMedian"]
