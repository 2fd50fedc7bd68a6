"""One Tune trial: train a sampled config on the search's shared data and report every epoch to Tune.

    trainable = tune.with_parameters(run_trial, data_refs=refs, settings=TrialSettings(...))

A one-worker trial trains inside the Tune trainable itself: no Ray Train worker group to start (18-50 s on a small
machine), and Tune reuses the actor for the next trial. A DDP trial (workers > 1) builds a Ray Train run with
torch's process group (a DataParallelTrainer with `ray_private.TorchOnWorkers`) whose workers run `train_worker`; a
TuneReportCallback forwards rank 0's reports to Tune. Both paths report the same metrics, save a checkpoint every
epoch and continue from the last one after a retry or `--resume`.

Ray's and torch's modules are imported inside each path's function: every Train worker imports this module, and
Ray Tune, which only the trial's own process uses, would add its import to each worker's start.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from search.tuning import faults, timeline
from search.tuning.plan import TrialResources
from search.tuning.reporting_thread import BackgroundReports
from search.tuning.scratch import scratch_folder
from search.board.settings import DEFAULT_METRIC
from search.tuning.spaces import check_buildable, train_config

TRAIN_RUNS_DIR = "train_runs"  # <storage>/<search name>/train_runs/<trial id>: the Ray Train run of a DDP trial
ORIGIN_FILE = "origin.json"  # beside each epoch's checkpoint.pt: {"trial_id": who wrote it, "epoch": its epoch}
TIME_ATTR = "epoch"  # every report carries the epoch it ends: schedulers count in epochs, not Tune iterations
PRIOR_EPOCHS = "prior_epochs"  # report key: JSON of the epochs before a restart, on a restarted trial's first report
EXPLOITED_FROM = "exploited_from"  # report key: "<donor trial id>@<epoch>" on a trial's first report after PBT
# replaced its weights with that donor's checkpoint of that epoch (see search/tuning/pbt.py)
ACTOR_STARTED = "actor_started_at"  # report key: when the trial's actor process started (epoch seconds), on the
# first report of the first trial an actor runs: its start-up comes before Tune's on_trial_start, and is overhead


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a search shares (the Tune config holds only the sampled hyperparameters)."""

    resources: TrialResources
    train_storage: str = ""  # storage_path of DDP trials' Train runs (folder or s3:// URI)
    max_failures: int = 2  # retries of a trial from its last checkpoint (a dead worker, a lost node)
    metric: str = DEFAULT_METRIC  # Train keeps the best epoch's checkpoint by it, besides the latest
    mode: str = "max"
    cv: bool = False  # --cv: each trial trains its K fold models in sequence in place (search/tuning/crossval.py)

    @property
    def in_process(self) -> bool:
        return self.resources.in_process


class _Reporter:
    """Sends one epoch's metrics (plus where and how long the trial ran) and its checkpoint folder to `send`.

    The first report of a restarted trial carries the epochs before the restart (`prior_epochs`, JSON): Tune's record
    of a resumed trial starts afresh, and the leaderboard row must still see every epoch. When the checkpoint it
    restarted from is another trial's (a PBT exploit), that first report also names it (`exploited_from`)."""

    def __init__(self, send: Callable[[dict, Optional[str]], None], trial_id: str, rank: int, world_size: int,
                 nodes: str, placement_group: str = "", actor_started: Optional[float] = None) -> None:
        self.send, self.trial_id, self.rank = send, trial_id, rank
        self.started = time.time()
        self.fixed = {"nodes": nodes, "world_size": world_size, "placement_group": placement_group}
        self.prior_epochs: Optional[str] = None
        self.exploited_from: Optional[str] = None
        self.actor_started = actor_started
        self.epochs: list[int] = []
        self.fault = faults.hook()  # TEST-ONLY (search/tuning/faults.py): None in a real run, checked once here

    def extras(self) -> dict:
        once = {} if self.epochs else {key: value for key, value in (
            (PRIOR_EPOCHS, self.prior_epochs), (EXPLOITED_FROM, self.exploited_from),
            (ACTOR_STARTED, self.actor_started)) if value}
        now = time.time()  # reported_at: sub-second wall clock (Tune's timestamp is whole seconds)
        return {**self.fixed, "train_seconds": now - self.started, "reported_at": now, **once}

    def on_epoch(self, metrics: dict, epoch_dir: Optional[str]) -> None:
        if epoch_dir:  # who trained these weights: a trial restored from them knows whether they are its own
            with open(os.path.join(epoch_dir, ORIGIN_FILE), "w") as out:
                json.dump({"trial_id": self.trial_id, "epoch": int(metrics["epoch"])}, out)
        self.send({**metrics, **self.extras()}, epoch_dir)
        timeline.mark(self.trial_id, "report_sent", self.rank, epoch=int(metrics["epoch"]))
        self.epochs.append(int(metrics["epoch"]))
        if epoch_dir:
            shutil.rmtree(epoch_dir, ignore_errors=True)  # persisted to storage by the report above
        if self.fault is not None:
            self.fault(self.trial_id, int(metrics["epoch"]), self.rank)

    def finish(self, result: Any) -> None:
        """A trial resumed from its last epoch's checkpoint has nothing left to train, but Tune must still hear a
        final result with the metric."""
        if not self.epochs:
            self.send({**result.history[-1], **self.extras()}, None)


def donor_of(folder: str, trial_id: str) -> Optional[str]:
    """"<trial id>@<epoch>" when the checkpoint in `folder` was written by another trial (PBT handed this trial a
    better one's weights), None when it is this trial's own (a retry, a pause, `--resume`) or says nothing."""
    path = os.path.join(folder, ORIGIN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as origin_file:
        origin = json.load(origin_file)
    return None if origin.get("trial_id") in (None, trial_id) else f"{origin['trial_id']}@{origin['epoch']}"


@contextlib.contextmanager
def _resume_point(previous: Any, reporter: _Reporter) -> Iterator[tuple[Optional[str], bool]]:
    """The checkpoint file to resume from (None for a fresh trial) and whether it is another trial's (an exploit);
    remembers the epochs it already holds."""
    from leukmodels.checkpoint import CHECKPOINT_FILE, load_checkpoint

    with (previous.as_directory() if previous is not None else contextlib.nullcontext(None)) as folder:
        resume_from = os.path.join(folder, CHECKPOINT_FILE) if folder else None
        reporter.exploited_from = donor_of(folder, reporter.trial_id) if folder else None
        if resume_from and reporter.rank == 0:
            reporter.prior_epochs = json.dumps(load_checkpoint(resume_from)["extra"].get("history", []))
        yield resume_from, reporter.exploited_from is not None


def _fit_and_report(config: Any, train_set: Any, val_set: Any, device: Any, rank: int, world_size: int,
                    reporter: _Reporter, previous: Any) -> None:
    from leukmodels.train import fit

    local_dir = scratch_folder("ckpt") if rank == 0 else None  # fit writes epoch_XXXX/ here
    try:
        with _resume_point(previous, reporter) as (resume_from, exploit):
            result = fit(config, train_set, val_set, device=device, rank=rank, world_size=world_size,
                         checkpoint_dir=local_dir, on_epoch=reporter.on_epoch, resume_from=resume_from,
                         exploit=exploit)  # another trial's weights: PBT's perturbed lr/decay/augmentation apply
        reporter.finish(result)
    finally:
        if local_dir:
            shutil.rmtree(local_dir, ignore_errors=True)


# -- one worker: training inside the Tune trainable ------------------------------------------------------------------
def _train_in_trial(config: Any, refs: dict, settings: TrialSettings, actor_started: Optional[float]) -> None:
    import ray
    import torch
    from ray import tune

    use_gpu = settings.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    torch.set_num_threads(max(1, int(settings.resources.cpus_per_worker)))  # one per reserved CPU
    train_set, val_set = ray.get([refs["train"], refs["val"]])  # DecodedSet, read-only zero-copy arrays

    def send(metrics: dict, epoch_dir: Optional[str]) -> None:
        checkpoint = tune.Checkpoint.from_directory(epoch_dir) if epoch_dir else None
        tune.report(metrics, checkpoint=checkpoint)  # persisted to the trial's storage before it returns

    try:
        with BackgroundReports(send) as send_later:  # the upload of epoch N overlaps the training of epoch N+1
            reporter = _Reporter(send_later, tune.get_context().get_trial_id(), rank=0, world_size=1,
                                 nodes=ray.get_runtime_context().get_node_id(), actor_started=actor_started)
            _fit_and_report(config, train_set, val_set, "cuda" if use_gpu else "cpu", 0, 1, reporter,
                            tune.get_checkpoint())
    finally:
        if use_gpu:
            torch.cuda.empty_cache()  # the actor is reused by the next trial


# -- --cv: the K fold models in sequence inside the Tune trainable (search/tuning/crossval.py) --------------------------
def train_cv_in_trial(config: Any, refs: dict, settings: Any, actor_started: Optional[float]) -> None:
    """A Tune trial of a --cv search: fit_cv in this process, reporting the pooled out-of-fold metrics every epoch
    with the epoch's CV checkpoint; continues from the trial's last checkpoint (a retry, --resume, a PBT exploit)."""
    import ray
    import torch
    from ray import tune

    from leukmodels.crossval import fit_cv

    use_gpu = settings.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    torch.set_num_threads(max(1, int(settings.resources.cpus_per_worker)))
    data, folds = ray.get([refs["all"], refs["folds"]])

    def send(metrics: dict, epoch_dir: Optional[str]) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(epoch_dir) if epoch_dir else None)

    local_dir = scratch_folder("cv")
    try:
        with BackgroundReports(send) as send_later:  # the upload of epoch N overlaps the training of epoch N+1
            reporter = _Reporter(send_later, tune.get_context().get_trial_id(), rank=0, world_size=1,
                                 nodes=ray.get_runtime_context().get_node_id(), actor_started=actor_started)
            with _resume_point(tune.get_checkpoint(), reporter) as (resume_from, exploit):
                result = fit_cv(config, data, folds, device="cuda" if use_gpu else "cpu", checkpoint_dir=local_dir,
                                on_epoch=reporter.on_epoch, resume_from=resume_from, exploit=exploit)
            reporter.finish(result)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
        if use_gpu:
            torch.cuda.empty_cache()


# -- several workers: a Ray Train run (DDP) per trial ----------------------------------------------------------------
def _node_ids_of_all_ranks() -> list[str]:
    """This worker's Ray node id, all-gathered over the trial's process group."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, node)
        return [str(n) for n in gathered]
    return [node]


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: every rank reports every epoch (Train V2 requires it); rank 0 attaches the
    epoch's checkpoint folder and its metrics reach Tune."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    timeline.mark(context.get_experiment_name(), "worker_fn_start", rank, with_process_start=True)
    torch.set_num_threads(max(1, int(loop_config["threads"])))  # one per reserved CPU: no oversubscription
    train_set, val_set = ray.get([loop_config["train_ref"], loop_config["val_ref"]])
    timeline.mark(context.get_experiment_name(), "worker_data_ready", rank)
    group = ray.util.get_current_placement_group()  # the Tune side frees it if Tune stops this trial

    def send(metrics: dict, epoch_dir: Optional[str]) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(epoch_dir) if epoch_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    reporter = _Reporter(send, context.get_experiment_name(), rank, world_size,
                         nodes=",".join(sorted(set(_node_ids_of_all_ranks()))),
                         placement_group=group.id.hex() if group is not None else "",
                         actor_started=loop_config.get("actor_started"))
    _fit_and_report(loop_config["config"], train_set, val_set, ray.train.torch.get_device(), rank, world_size,
                    reporter, ray.train.get_checkpoint())
    timeline.mark(context.get_experiment_name(), "worker_fn_end", rank)


def _train_with_ray_train(config: Any, refs: dict, settings: TrialSettings, actor_started: Optional[float]) -> None:
    import ray.tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from search.tuning.ray_private import TorchOnWorkers, ddp_trainer
    from search.tuning.train_stop import StopWhenAsked, fit_unless_stopped

    trial_id = ray.tune.get_context().get_trial_id()
    use_gpu = settings.resources.gpus_per_worker > 0
    trainer = ddp_trainer()(  # the driver frees the run's placement group (rows.py)
        train_worker,
        train_loop_config={"config": config, "train_ref": refs["train"], "val_ref": refs["val"],
                           "actor_started": actor_started,
                           "threads": max(1, int(settings.resources.cpus_per_worker))},
        backend_config=TorchOnWorkers(backend="nccl" if use_gpu else "gloo"),  # the controller skips torch's import
        scaling_config=ScalingConfig(num_workers=settings.resources.workers, use_gpu=use_gpu,
                                     resources_per_worker=settings.resources.worker_resources()),
        run_config=RunConfig(
            name=trial_id,  # a restarted trial finds this run's checkpoints
            storage_path=settings.train_storage or None,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            # every epoch kept: the driver prunes a run's other checkpoints when the trial ends (rows.py), since a
            # run Tune stopped may report past the epoch Tune ranked, and keep-one would delete that one's
            checkpoint_config=checkpoint_config(settings.metric, settings.mode, keep_all=True),
            callbacks=[TuneReportCallback(), StopWhenAsked(trial_id), *_timeline_callbacks(trial_id)]))
    timeline.mark(trial_id, "trainer_fit_start", with_process_start=True)
    fit_unless_stopped(trainer, trial_id)  # raises (TrainingFailedError) when retries are exhausted: the trial errs
    timeline.mark(trial_id, "trainer_fit_end")


def _timeline_callbacks(trial_id: str) -> list:
    if not timeline.enabled():
        return []
    from search.tuning.timeline_train import TrainTimeline  # here: only when asked

    return [TrainTimeline(trial_id)]


def checkpoint_config(metric: str, mode: str, for_tune: bool = False, keep_all: bool = False):
    """Keep the best epoch by the search metric (the leaderboard points at it) and, always, the latest (to resume
    from). Ray breaks ties in favour of the later epoch; `leukmodels.metrics.best_report` does the same. `keep_all`
    (PBT): every checkpoint stays, since a donor's may be needed a round later (docs/ray-notes.md)."""
    from ray import train, tune

    kind = tune.CheckpointConfig if for_tune else train.CheckpointConfig
    return kind(num_to_keep=None if keep_all else 1, checkpoint_score_attribute=metric, checkpoint_score_order=mode)


def run_trial(config: dict[str, Any], data_refs: Optional[dict] = None,
              settings: Optional[TrialSettings] = None) -> None:
    """The Tune function trainable: check the sampled config builds (milliseconds, on the meta device), then train it
    here (one worker) or over a Ray Train worker group (DDP)."""
    settings = settings or TrialSettings(TrialResources(1))
    train_cfg = train_config(config)
    check_buildable(train_cfg)  # ValueError naming the field: recorded as this trial's error
    data_refs = data_refs or {}
    if train_cfg.image_size not in data_refs:
        raise ValueError(f"image_size={train_cfg.image_size} was not decoded for this search "
                         f"(decoded: {sorted(data_refs)})")
    train = _train_in_trial if settings.in_process else _train_with_ray_train
    if settings.cv:
        train = train_cv_in_trial
    train(train_cfg, data_refs[train_cfg.image_size], settings, _first_trial_start())


_ran_a_trial = False  # this process ran a trial before: Tune reuses actors, and only a new one's start is this trial's


def _first_trial_start() -> Optional[float]:
    """This process's start (epoch seconds) when the trial calling is the first it runs, else None."""
    global _ran_a_trial
    first, _ran_a_trial = not _ran_a_trial, True
    return timeline.process_started() if first else None


def release_placement_group(group_hex: str) -> bool:
    """Remove a DDP trial's worker placement group by id (idempotent); True if a removal was requested.

    A Train run removes its group when it ends or aborts; one whose controller died first (its trial's actor was
    killed) leaves it. The driver is the only cleaner: DDP runs start without Train's PlacementGroupCleaner actor
    (search/tuning/ray_private.py), which cost each trial a process and up to a second at its end."""
    if not group_hex:
        return False
    from ray import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))
    if placement_group_table(group).get("state") == "REMOVED":
        return False
    remove_placement_group(group)
    return True


__all__ = ["ACTOR_STARTED", "TrialSettings", "run_trial", "train_worker", "release_placement_group", "checkpoint_config",
           "donor_of", "TRAIN_RUNS_DIR", "ORIGIN_FILE", "EXPLOITED_FROM", "PRIOR_EPOCHS", "TIME_ATTR"]
