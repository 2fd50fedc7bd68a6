"""A sampled config that cannot be built fails once and is not retried like a crashed node (issue 20.10)."""
from __future__ import annotations

import pytest
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from search.tuning.trial import run_trial
from search.tuning.unbuildable import NoRetryForUnbuildable, build_error

UNBUILDABLE = {"family": "baseline", "depth": 5, "filters": 8, "image_size": 24, "epochs": 2}  # 24 px halved 5 times
BUILDABLE = {"family": "baseline", "depth": 2, "filters": 8, "image_size": 24, "epochs": 2}


def _started_trial(tmp_path, config: dict, trial_id: str) -> Trial:
    """A Tune trial allowed 2 retries (--max-failures 2), as Tune's controller holds it when the trial starts."""
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="s", trial_dir_name=f"run_{trial_id}")
    trial = Trial("run_trial", config=config, trial_id=trial_id, storage=storage, stub=True, max_failures=2)
    NoRetryForUnbuildable().on_trial_start(iteration=0, trials=[trial], trial=trial)
    return trial


def _fails(trial: Trial) -> None:
    """What Tune's `Trial.handle_error` counts for a user error (it also writes the error files, which need Ray)."""
    trial.run_metadata.num_failures += 1


def test_a_config_that_cannot_be_built_fails_once_with_its_cause(tmp_path):
    """What Tune's controller does on a failure (`_process_trial_failure`): count it, then retry while
    `trial.should_recover()`, else end the trial ERROR and tell the searcher `error=True` (Optuna: FAIL). The
    unbuildable trial's first failure is its last; a buildable one keeps its retries."""
    with pytest.raises(ValueError) as raised:  # the trainable's one attempt: refused on the meta device, no data
        run_trial(UNBUILDABLE, data_refs={})
    assert "image_size=24" in str(raised.value) and "depth=5" in str(raised.value)
    assert build_error(UNBUILDABLE) == str(raised.value)  # the driver's check is the trainable's

    unbuildable = _started_trial(tmp_path, UNBUILDABLE, "bad00001")
    _fails(unbuildable)
    assert unbuildable.run_metadata.num_failures == 1 and not unbuildable.should_recover()

    crashed = _started_trial(tmp_path, BUILDABLE, "good0001")  # a lost node: retried as before
    assert build_error(BUILDABLE) is None
    _fails(crashed)
    assert crashed.should_recover()
    _fails(crashed)
    _fails(crashed)
    assert crashed.run_metadata.num_failures == 3 and not crashed.should_recover()
