"""One Tune trial = one Ray Train run (TorchTrainer, DDP) of `leukmodels.train.fit` on the search's shared data.

    trainable = tune.with_parameters(run_trial, data_refs=refs, settings=TrialSettings(...))

The Tune function (`run_trial`) is only a driver: it checks the sampled config builds a model (an impossible config
fails here in milliseconds, before any worker starts), then builds a `TorchTrainer` whose workers each run
`train_worker`. Every epoch every rank calls `ray.train.report` (Train V2 requires all ranks to report); rank 0
attaches the epoch's checkpoint folder. A `TuneReportCallback` forwards rank 0's metrics to Tune, where ASHA and Optuna
see them. The Train run is named after the Tune trial id and stored under the search's storage, so a restarted trial
(Train-level retry after a worker dies, or `--resume` after the search driver died) finds its checkpoints and
continues from the last epoch via `ray.train.get_checkpoint()`.

Every report carries `nodes` (comma-joined node ids of all ranks, gathered once over the process group) and
`train_seconds` (since the worker function started), so the leaderboard records where and how long a trial ran, and
`placement_group` (the workers' placement group id). When ASHA stops a trial (early, or with its STOP at max_t that can
beat the trial's own return), Tune kills the trial's actor and with it the Train controller, which never gets to
remove its placement group; Ray Train's detached PlacementGroupCleaner should, but it finds its cluster through the
state API and gives up when several Ray instances run on one host. So the search's callback removes the group of
every trial that ends (`release_placement_group`), or the next trials would wait forever for CPUs nobody holds.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from search import faults
from search.spaces import check_buildable, train_config

TRAIN_RUNS_DIR = "train_runs"  # <storage>/<search name>/train_runs/<trial id>: one Ray Train run per Tune trial


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a search shares (the Tune config holds only the sampled hyperparameters)."""

    workers: int = 1  # Ray Train workers (DDP ranks) per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    train_storage: str = ""  # storage_path of the Train runs (folder or s3:// URI), e.g. <storage>/<name>/train_runs
    max_failures: int = 2  # Train-level retries of a trial from its last checkpoint (a dead worker, a lost node)
    metric: str = "weighted_f1"  # keeps the best epoch's checkpoint besides the latest

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _node_ids_of_all_ranks() -> list[str]:
    """This worker's Ray node id, all-gathered over the trial's process group (rank 0 is the one Tune hears from)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, node)
        return [str(n) for n in gathered]
    return [node]


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: fetch the shared arrays (zero-copy), train with `fit`, report every epoch."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from leukmodels.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from leukmodels.config import TrainConfig
    from leukmodels.train import fit

    started = time.time()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(loop_config["threads"])))  # one per reserved CPU: no oversubscription
    config = TrainConfig.from_dict(loop_config["config"])
    train_set, val_set = ray.get([loop_config["train_ref"], loop_config["val_ref"]])  # DecodedSet, read-only arrays
    nodes = ",".join(sorted(set(_node_ids_of_all_ranks())))
    group = ray.util.get_current_placement_group()  # the trial's worker PG: the Tune side frees it if Tune stops us
    group_id = group.id.hex() if group is not None else ""
    local_dir = tempfile.mkdtemp(prefix="leuk-ckpt-") if rank == 0 else None  # fit writes epoch_XXXX/ here

    reports: list[int] = []
    first_extras: dict[str, str] = {}

    def extras() -> dict:
        once = first_extras if not reports else {}
        return {"nodes": nodes, "world_size": world_size, "train_seconds": time.time() - started,
                "placement_group": group_id, **once}

    def on_epoch(metrics: dict, epoch_dir: Optional[str]) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(epoch_dir) if epoch_dir else None
        ray.train.report({**metrics, **extras()}, checkpoint=checkpoint)  # every rank; rank 0's metrics reach Tune
        reports.append(metrics["epoch"])
        if epoch_dir:
            shutil.rmtree(epoch_dir, ignore_errors=True)  # persisted to storage by the report above
        faults.after_report(context.get_experiment_name(), int(metrics["epoch"]), rank)  # TEST-ONLY; inert by default

    previous = ray.train.get_checkpoint()  # set when this run is a retry or a resumed trial
    try:
        with (previous.as_directory() if previous is not None else contextlib.nullcontext(None)) as folder:
            resume_from = os.path.join(folder, CHECKPOINT_FILE) if folder else None
            if resume_from and rank == 0:
                # the epochs before this restart: Tune's record of a restarted trial starts afresh, so the first
                # report carries them (JSON) and the leaderboard row still sees every epoch
                prior = load_checkpoint(resume_from)["extra"].get("history", [])
                first_extras["prior_epochs"] = json.dumps(prior)
            result = fit(config, train_set, val_set, device=ray.train.torch.get_device(), rank=rank,
                         world_size=world_size, checkpoint_dir=local_dir, on_epoch=on_epoch, resume_from=resume_from)
        if not reports:
            # resumed from the last epoch's checkpoint (the driver died between that report and the trial's end):
            # nothing left to train, but Tune must still get a final result with the metric
            ray.train.report({**result.history[-1], **extras()})
    finally:
        if local_dir:
            shutil.rmtree(local_dir, ignore_errors=True)


def release_placement_group(group_hex: str) -> bool:
    """Remove a trial's worker placement group by id (idempotent); True if a removal was requested."""
    if not group_hex:
        return False
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_hex)))
    if placement_group_table(group).get("state") == "REMOVED":
        return False
    remove_placement_group(group)
    return True


def run_trial(config: dict[str, Any], data_refs: Optional[dict] = None, settings: Optional[dict] = None) -> None:
    """The Tune function trainable: one TorchTrainer over `train_worker` with this trial's sampled config."""
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    settings_ = TrialSettings(**(settings or {}))
    train_cfg = train_config(config)
    check_buildable(train_cfg)  # ValueError naming the field: recorded as this trial's error, no worker started
    sizes = sorted((data_refs or {}).keys())
    if train_cfg.image_size not in (data_refs or {}):
        raise ValueError(f"image_size={train_cfg.image_size} was not decoded for this search (decoded: {sizes})")
    refs = data_refs[train_cfg.image_size]
    use_gpu = settings_.gpus_per_worker > 0
    resources = {"CPU": float(settings_.cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = float(settings_.gpus_per_worker)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": train_cfg.to_dict(), "train_ref": refs["train"], "val_ref": refs["val"],
                           "threads": max(1, int(settings_.cpus_per_worker))},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=settings_.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=ray.tune.get_context().get_trial_id(),  # a restarted trial finds this run's checkpoints
            storage_path=settings_.train_storage or None,
            failure_config=FailureConfig(max_failures=settings_.max_failures),
            # keep the best epoch (the leaderboard points at it) and, always, the latest (to resume from)
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=settings_.metric,
                                               checkpoint_score_order="min" if settings_.metric == "val_loss"
                                               else "max"),
            callbacks=[TuneReportCallback()]))
    trainer.fit()  # raises (TrainingFailedError) when retries are exhausted: Tune records the trial as error


__all__ = ["TrialSettings", "run_trial", "train_worker", "release_placement_group", "TRAIN_RUNS_DIR"]
