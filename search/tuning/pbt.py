"""Population-based training (`--scheduler pbt`): Tune's PopulationBasedTraining over one-worker trials, the method of
Prellberg & Kramer's C-NMC 2019 entry.

    search_alg, param_space = population(space, size=12, seed=0)   # the initial population, from the Optuna space
    scheduler = make_pbt(metric="balanced_accuracy", max_epochs=8)

Every quarter of the run, in synchronous rounds, each trial in the bottom quarter takes the checkpoint and config of
a top-quarter trial with its lr, weight decay and augmentation perturbed; the trainable sees that the checkpoint is
another trial's (`search.tuning.trial.donor_of`) and `fit` continues it (`exploit=True`). Tune's PBT takes no searcher, so
the population is drawn from the same space with Optuna's seeded random sampler. Why these sizes: docs/ray-notes.md.
"""
from __future__ import annotations

import math
import random
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from leukmodels.train import EXPLOIT_CHANGES
from search.board.storage import folder_name
from search.tuning.ray_private import next_pbt_round, pbt_interval, set_next_pbt_round, set_pbt_round
from search.tuning.spaces import AUG_RANGE, LR_RANGE, WEIGHT_DECAY_RANGE, SearchSpace, check_buildable, sample_configs
from search.tuning.trial import TIME_ATTR

QUANTILE_FRACTION = 0.25
RESAMPLE_PROBABILITY = 0.25  # Tune's default; otherwise a value is multiplied by 0.8 or 1.2 (Tune's factors)
RANGES = {"lr": LR_RANGE, "weight_decay": WEIGHT_DECAY_RANGE, "aug_strength": AUG_RANGE}  # the space's bounds
MUTATIONS = {"lr": tune.loguniform(*LR_RANGE), "weight_decay": tune.loguniform(*WEIGHT_DECAY_RANGE),
             "aug_strength": tune.uniform(*AUG_RANGE)}  # what a resample draws from: the space's distributions
assert set(MUTATIONS) == EXPLOIT_CHANGES, "PBT may perturb exactly the fields fit accepts on an exploit"


def perturbation_interval(max_epochs: int) -> int:
    """Epochs between PBT rounds: a quarter of the run, at least 1 (see the module docstring)."""
    return max(1, int(max_epochs) // 4)


def clip_to_space(config: dict) -> dict:
    """Tune's explore step multiplies by 0.8 or 1.2 without bounds: keep each perturbed value inside the range the
    space samples (an aug_strength above 1 is not even a valid TrainConfig)."""
    for key, (low, high) in RANGES.items():
        config[key] = min(high, max(low, float(config[key])))
    return config


class SearchPBT(PopulationBasedTraining):
    """PopulationBasedTraining that leaves a trial's last epoch alone (exploiting there would restore a checkpoint
    with no epoch left to train, so the trial would end on the donor's weights without a report of its own), and puts
    the trials of a resumed search back on the grid of rounds."""

    def __init__(self, *, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_epochs = int(max_epochs)
        self._resumed = False  # True once a restored trial has set the next round (see on_trial_add)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(TIME_ATTR, 0) >= self.max_epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """`--resume` restores the trials but not PBT's state (the scheduler comes back as it was built): a restored
        trial's times start at 0 and the next round at the first one, so trials perturb off the grid and the
        synchronous rounds end up waiting for a time no paused trial is below: every trial stays paused forever
        (seen here). Give each restored trial its last round and resume the rounds at the earliest next one."""
        super().on_trial_add(tune_controller, trial)
        epoch = int((trial.last_result or {}).get(TIME_ATTR) or 0)
        if not epoch:  # a new trial
            return
        interval = pbt_interval(self)
        last_round = epoch // interval * interval
        set_pbt_round(self, trial, last_round)
        upcoming = last_round + interval
        set_next_pbt_round(self, min(next_pbt_round(self), upcoming) if self._resumed else upcoming)
        self._resumed = True


def make_pbt(*, metric: str, max_epochs: int, mode: str = "max", seed: int = 0) -> SearchPBT:
    """The scheduler of a PBT search; Tune's PBT draws donors and perturbations from Python's `random`, seeded here
    so that a search repeated on the same results makes the same choices."""
    random.seed(seed)
    return SearchPBT(max_epochs=max_epochs, time_attr=TIME_ATTR, metric=metric, mode=mode,
                     perturbation_interval=perturbation_interval(max_epochs), hyperparam_mutations=dict(MUTATIONS),
                     quantile_fraction=QUANTILE_FRACTION, resample_probability=RESAMPLE_PROBABILITY,
                     custom_explore_fn=clip_to_space, synch=True)


def population(space: SearchSpace, size: int, seed: int = 0) -> tuple[BasicVariantGenerator, dict]:
    """Tune's plain generator over `size` configs drawn at random from `space` (each builds: a config too deep for
    its image size is drawn again rather than wasting a member), one trial each, in order; and the `param_space`
    Tune needs beside it (every key of the points must be in it: a choice among the members' values where they
    differ, the constant where they agree, so a trial's folder name shows only what varies)."""
    drawn = [config.to_dict() for config in sample_configs(space, 4 * size, seed=seed) if _builds(config)][:size]
    if len(drawn) < size:
        raise ValueError(f"--image-sizes {' '.join(map(str, space.image_sizes))}: only {len(drawn)} of "
                         f"{4 * size} configs drawn for the PBT population build at these sizes; use larger sizes")
    values = {key: list(dict.fromkeys(point[key] for point in drawn)) for key in drawn[0]}
    param_space = {key: tune.choice(seen) if len(seen) > 1 else seen[0] for key, seen in values.items()}
    return BasicVariantGenerator(points_to_evaluate=drawn, random_state=seed), param_space


def _builds(config: Any) -> bool:
    try:
        check_buildable(config)
        return True
    except ValueError:
        return False


def prune_checkpoints(grid: Any, rows: list[dict]) -> tuple[int, int]:
    """Once a PBT search has finished, delete the checkpoints kept only for exploits (`checkpoint_config(keep_all)`):
    each trial keeps the one its row points at and its latest (report.py reads the history there). Returns (folders
    removed, bytes freed); a trial without a row or a checkpoint is left as it is."""
    best = {row["trial_id"]: folder_name(row["checkpoint"]) for row in rows if row.get("checkpoint")}
    removed = freed = 0
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id not in best or result.checkpoint is None:
            continue
        keep, fs = {best[trial_id], folder_name(result.checkpoint.path)}, result.filesystem
        for info in fs.get_file_info(pyarrow.fs.FileSelector(result.path)):
            if info.type == pyarrow.fs.FileType.Directory and folder_name(info.path).startswith("checkpoint_") \
                    and folder_name(info.path) not in keep:
                freed += sum(f.size or 0 for f in fs.get_file_info(pyarrow.fs.FileSelector(info.path, recursive=True)))
                fs.delete_dir(info.path)
                removed += 1
    return removed, freed


def describe(max_epochs: int, num_samples: int) -> str:
    """One line for the console: what PBT will do with this search's settings."""
    interval = perturbation_interval(max_epochs)
    rounds = len(range(interval, int(max_epochs), interval))
    per_round = min(math.ceil(num_samples * QUANTILE_FRACTION), num_samples // 2)  # as Tune's PBT counts them
    return (f"pbt: {rounds} round(s), every {interval} epoch(s): the bottom {per_round} of {num_samples} trials "
            f"continue the weights of top ones with {', '.join(sorted(EXPLOIT_CHANGES))} perturbed; the initial "
            f"population is drawn at random from the search space (Tune's PBT takes no Optuna searcher)")


__all__ = ["make_pbt", "population", "perturbation_interval", "clip_to_space", "SearchPBT", "describe",
           "prune_checkpoints",
           "QUANTILE_FRACTION", "MUTATIONS"]
