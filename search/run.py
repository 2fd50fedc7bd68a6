"""The main job: Optuna TPE + ASHA search in Ray Tune over Ray Train (DDP) trials, ranked into the leaderboard."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as `python search/run.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
METRICS = ("weighted_f1", "accuracy", "balanced_accuracy", "roc_auc", "macro_f1", "sensitivity", "specificity")

# Defaults by hardware (see --help). CPU: sized so the default main job (>= 8 trials with early stopping) finishes in
# well under 10 minutes on 2 cores (measured: 10 trials x 5 epochs in 170 s; 12 x 8 in the closing note), most of a
# trial being the ~20 s (40 s on a busy machine) it takes Ray Train to start its worker group.
PROFILES = {
    "cpu": dict(num_samples=12, max_epochs=8, grace_epochs=1, image_sizes=[32], batch_sizes=[32, 64],
                workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0),
    "gpu": dict(num_samples=32, max_epochs=20, grace_epochs=3, image_sizes=[64, 96, 128], batch_sizes=[64, 128, 256],
                workers_per_trial=1, cpus_per_worker=4.0, gpus_per_worker=1.0),
    "smoke": dict(num_samples=2, max_epochs=2, grace_epochs=1, image_sizes=[24], batch_sizes=[32],
                  workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0),
}

EPILOG = """examples:
  python search/run.py --family resnet                 # the main job: generated data, local Ray, >= 8 trials
  python search/run.py --smoke-test                    # a real but tiny search (2 trials, 2 epochs) in minutes
  python search/run.py --family baseline resnet --data ~/data/C-NMC_Leukemia --num-samples 40
  python search/run.py --family all --address auto --workers-per-trial 2 --gpus-per-worker 1 \\
      --storage s3://bucket/leukemia-tune               # on a Ray cluster (see clusters/)
  python search/run.py --resume --name resnet-20261127-120000   # continue a killed or interrupted search
  python search/leaderboard.py --top 10                # the ranked table of every search so far

defaults follow the hardware: without a GPU (as on a 2-core laptop) 12 trials of up to 8 epochs at 32 px, one
1-CPU worker per trial (two trials at once on 2 cores: a trial is mostly its worker start-up, so two small trials
side by side beat one 2-worker DDP trial there); with a GPU 32 trials of up to 20 epochs at 64/96/128 px, one GPU per trial.
ASHA stops a trial at epoch 1, 2, 4, ... (grace x reduction factor^k) when it is not in the top 1/2 there.
Outputs: results/leaderboard.parquet (one ranked row per trial), results/optuna.db (study = search name;
optuna-dashboard sqlite:///results/optuna.db), results/ray/<name>/ (Tune + Train runs, checkpoints)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python search/run.py", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search CNN architectures and training settings that tell leukemic blasts (ALL) from normal "
                    "cells (HEM) in C-NMC 2019: Optuna TPE picks configs, ASHA stops weak trials early, each trial "
                    "trains with Ray Train (DDP over --workers-per-trial workers), every trial is ranked into "
                    "results/leaderboard.parquet. Data are split by patient; the test patients are never used here.")
    a = p.add_argument
    a("--family", nargs="+", metavar="NAME", help="model family/families to search, or 'all' (required; "
      "'resnet' with --smoke-test)")
    a("--data", metavar="DIR", help="C-NMC folder (Kaggle or TCIA layout); default: the generated C-NMC-like set, "
      "built once and reused ($LEUKTUNE_DATA)")
    a("--num-samples", type=int, help="trials to run (cpu default 12, gpu 32)")
    a("--max-epochs", type=int, help="epochs of a trial that is never stopped (cpu 8, gpu 20)")
    a("--grace-epochs", type=int, help="epochs before ASHA may stop a trial (cpu 1, gpu 3)")
    a("--reduction-factor", type=int, default=2, help="ASHA keeps the top 1/factor at each rung (default 2)")
    a("--workers-per-trial", type=int, help="Ray Train workers (DDP ranks) per trial (default 1)")
    a("--cpus-per-worker", type=float, help="CPUs per worker (cpu 1, gpu 4)")
    a("--gpus-per-worker", type=float, help="GPUs per worker; fractions (0.25) only with one worker per trial")
    a("--image-sizes", type=int, nargs="+", metavar="S", help="candidate image sizes in px (cpu 32, gpu 64 96 128)")
    a("--address", help="Ray cluster to join: 'auto' or ray://host:10001 (default: start a local Ray)")
    a("--storage", default="results/ray", help="Tune/Train storage: a folder or an s3:// URI (default results/ray; "
      "must be shared storage on a multi-node cluster)")
    a("--results", default="results", help="folder for leaderboard.parquet, optuna.db, searches/ (default results)")
    a("--name", help="search name (default: <families>-<YYYYmmdd-HHMMSS>); the Optuna study has the same name")
    a("--resume", action="store_true", help="continue the search --name from its storage: finished trials are "
      "kept, unfinished ones continue from their last checkpoint")
    a("--seed", type=int, default=0, help="seeds the TPE sampler, the patient split and every trial (default 0)")
    a("--metric", default="weighted_f1", choices=METRICS, help="what ASHA and TPE maximise (default weighted_f1)")
    a("--time-budget", type=float, metavar="SECONDS", help="stop the whole search after this many seconds")
    a("--max-failures", type=int, default=2, help="Train-level retries of a trial from its checkpoint (default 2)")
    a("--smoke-test", action="store_true", help="a real but tiny search: 2 trials of 2 epochs at 24 px")
    return p


def resolve_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and validate the flags, filling hardware defaults; ValueError with one line naming the bad flag."""
    args = build_parser().parse_args(argv)
    from search.spaces import resolve_families

    if args.resume and not args.name:
        raise ValueError("--resume needs --name NAME: the search to continue (a folder under --storage)")
    if args.family is None and args.smoke_test:
        args.family = ["resnet"]
    if args.family is None and not args.resume:
        raise ValueError("--family is required: one or more model families, or 'all' (see --help)")
    if args.family is not None:
        args.family = resolve_families(args.family)
    profile = "smoke" if args.smoke_test else ("gpu" if _has_gpu() else "cpu")
    args.profile = profile
    for key, value in PROFILES[profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for flag in ("num_samples", "max_epochs", "grace_epochs", "workers_per_trial", "reduction_factor"):
        if getattr(args, flag) < 1 if flag != "reduction_factor" else args.reduction_factor < 2:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= "
                             f"{2 if flag == 'reduction_factor' else 1}")
    if args.grace_epochs > args.max_epochs:
        raise ValueError(f"--grace-epochs {args.grace_epochs} must be <= --max-epochs {args.max_epochs}")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise ValueError(f"--time-budget {args.time_budget:g} must be a positive number of seconds")
    if args.max_failures < -1:
        raise ValueError(f"--max-failures {args.max_failures} must be >= 0 (or -1: retry forever)")
    bad_sizes = [s for s in args.image_sizes if s < 16]
    if bad_sizes:
        raise ValueError(f"--image-sizes {bad_sizes[0]} is too small: use 16 px or more")
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        raise ValueError(f"--data {args.data}: no such folder")
    from search.plan import TrialResources

    TrialResources(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker).validate()
    if not args.name:
        args.name = f"{'+'.join(args.family) if len(args.family) < 4 else 'all'}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in args.name or args.name.startswith("."):
        raise ValueError(f"--name {args.name!r}: use a plain folder name")
    args.storage = args.storage if "://" in args.storage else str(Path(args.storage).expanduser().resolve())
    args.results = str(Path(args.results).expanduser().resolve())
    return args


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


SAVED_FIELDS = ("family", "data", "num_samples", "max_epochs", "grace_epochs", "reduction_factor",
                "workers_per_trial", "cpus_per_worker", "gpus_per_worker", "image_sizes", "batch_sizes", "seed",
                "metric", "time_budget", "max_failures", "profile", "storage")


def _search_file(args: argparse.Namespace) -> Path:
    return Path(args.results) / "searches" / f"{args.name}.json"


def save_or_load_settings(args: argparse.Namespace, write: bool = False) -> argparse.Namespace:
    """A new search writes its resolved settings to results/searches/<name>.json (`write=True`, once the plan is
    known to fit); --resume reads them back so the continued search uses the same space, data and budgets."""
    path = _search_file(args)
    if args.resume:
        if not path.is_file():
            raise ValueError(f"--resume --name {args.name}: no settings at {path} (is --results the same?)")
        saved = json.loads(path.read_text())
        for key in SAVED_FIELDS:
            setattr(args, key, saved[key])
        return args
    if path.exists():
        raise ValueError(f"--name {args.name}: a search of that name exists ({path}); use --resume or a new name")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({key: getattr(args, key) for key in SAVED_FIELDS}, indent=2))
    return args


def start_ray(args: argparse.Namespace) -> None:
    import ray

    if ray.is_initialized():  # called from a test or a notebook that started Ray itself
        return
    # A busy small machine can take over a minute to start a worker group (every worker imports torch); Ray Train's
    # default 60 s would fail such a trial. Inherited by the local Ray's processes; a cluster sets its own.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "180")
    try:
        if args.address:
            ray.init(address=args.address)
        else:  # a new local Ray ("local": never attach to another one running here); workers import this checkout
            ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}})
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exception or RuntimeError when it cannot come up
        from search.preflight import ray_start_error

        raise ValueError(ray_start_error(args, error)) from None


def main(argv: Optional[list[str]] = None) -> int:
    started = time.time()
    from search import leaderboard, preflight

    try:
        args = resolve_args(argv)
        preflight.check_name(args)  # before anything is written under it
        args = save_or_load_settings(args)
        leaderboard.append_rows(Path(args.results) / "leaderboard.parquet", [])  # fail now on unwritable results
        need = preflight.check_before_launch(args)
    except (ValueError, OSError, leaderboard.LeaderboardError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import ray

    own_ray = not ray.is_initialized()
    code = 2
    try:
        start_ray(args)
        preflight.check_object_store(need)  # before decoding: the store's size is known only now
        from search.tuning import run_search  # Ray-side half, imported once Ray is up

        with preflight.sigterm_as_sigint():
            code = run_search(args, started)
        return code
    except (ValueError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before Tune set its own handler (e.g. while decoding), or a second signal to it
        forgot = not args.resume and preflight.forget_unlaunched(_search_file(args), args.storage, args.name)
        print("error: interrupted before any trial started; run the same command again" if forgot else
              f"error: interrupted; continue it with --resume --name {args.name}", file=sys.stderr)
        return 1
    finally:
        if code != 0 and not args.resume:  # a new search that failed before launching must not hold its name
            preflight.forget_unlaunched(_search_file(args), args.storage, args.name)
        if own_ray and ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
