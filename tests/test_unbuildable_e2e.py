"""A sampled config that cannot be built, in a real Tune run with Optuna (issue 20.10): one attempt, not
`max_failures` + 1, the trial ends ERROR naming the cause, and the Optuna trial is FAIL."""
from __future__ import annotations

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.tuning.trial import run_trial
from search.tuning.unbuildable import NoRetryForUnbuildable

pytestmark = pytest.mark.slow


class Attempts(tune.Callback):
    """Counts how often each trial was started: the first start and every retry (a retry starts it again)."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.starts[trial.trial_id] = self.starts.get(trial.trial_id, 0) + 1


@pytest.mark.parametrize("guarded, attempts", [(True, 1), (False, 3)])
def test_an_unbuildable_config_is_tried_once_and_failed_in_optuna(ray_2cpu, tmp_path, guarded, attempts):
    """Baseline depth 5 at 24 px (24 px halved 5 times); --max-failures 2. Without the callback: 3 attempts (before)."""
    space = {"family": tune.choice(["baseline"]), "depth": tune.choice([5]), "image_size": tune.choice([24]),
             "filters": tune.choice([8]), "epochs": tune.choice([2])}
    searcher = OptunaSearch(space, metric="balanced_accuracy", mode="max", seed=0)
    counter = Attempts()
    tuner = tune.Tuner(
        tune.with_parameters(run_trial, data_refs={}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=1),
        run_config=tune.RunConfig(name="unbuildable", storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  callbacks=[counter, *([NoRetryForUnbuildable()] if guarded else [])]))
    grid = tuner.fit()
    assert len(grid) == 1 and len(grid.errors) == 1
    assert "image_size=24" in str(grid.errors[0]) and "depth=5" in str(grid.errors[0])
    assert list(counter.starts.values()) == [attempts]
    study_trials = searcher._ot_study.get_trials(deepcopy=False)  # the searcher's own study (Ray 2.60)
    assert [t.state for t in study_trials] == [optuna.trial.TrialState.FAIL]
