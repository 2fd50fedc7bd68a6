"""The main job: an Optuna + early-stopping search in Ray Tune over the model families, ranked into the leaderboard."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as `python search/run.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.paths import RESULTS, SEARCH_LOG, STORAGE, leaderboard_path  # noqa: E402
from search.settings import DEFAULT_METRIC, METRICS  # noqa: E402
from search.strategies import SCHEDULERS, SEARCHERS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Ray Train settings for DDP trials: poll workers every 0.25 s instead of 2 s (a report and the end of a run are
# seen sooner; measured 10.5 -> 7.1 s per 2-worker trial here), no metrics exporter.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_METRICS_ENABLED": "0",
             # a search may take a minute to start a worker group on a busy small machine (Ray's default: 60 s)
             "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # no spot preemption on one machine

EPILOG = """examples:
  python search/run.py --family resnet                 # the main job: generated data, local Ray, >= 8 trials
  python search/run.py --smoke-test                    # a real but tiny search (2 trials, 2 epochs) in minutes
  python search/run.py --family baseline resnet --data ~/data/C-NMC_Leukemia --num-samples 40
  python search/run.py --family resnet --scheduler pbt   # population-based training (one-worker trials)
  python search/run.py --family resnet --address auto --dry-run     # what would this search do on this cluster?
  python search/run.py --family all --address auto --workers-per-trial 2 --gpus-per-worker 1 \\
      --storage s3://bucket/leukemia-tune               # on a Ray cluster (see clusters/)
  python search/run.py --resume --name resnet-20261127-120000   # continue a killed or interrupted search
  python search/leaderboard.py --top 10                # the ranked table of every search so far

defaults follow the cluster the search runs on (its nodes once Ray is up, or the GPU nodes its autoscaler can
start): without GPUs 12 trials of up to 8 epochs at 32 px, one 1-CPU worker per trial; with GPUs 32 trials of up to
20 epochs at 64/96/128 px, one GPU per trial. A one-worker trial trains inside its Tune trial (no Ray Train worker
group to start); --workers-per-trial 2 or more trains with Ray Train (DDP). ASHA stops a trial at epoch grace x
factor^k when it is not in the top 1/factor there. Any flag you give wins over the profile; --dry-run shows the result.
Outputs: results/leaderboard.parquet (one ranked row per trial), results/optuna.db (study = search name),
results/<name>/search.log (everything Ray printed), results/ray/<name>/ (Tune state and checkpoints)."""


class _Parser(argparse.ArgumentParser):
    """Errors are a ValueError (one line for `main`), not argparse's usage text and exit."""

    def error(self, message: str) -> None:
        raise ValueError(message)


class _Once(argparse.Action):
    """Stores a flag's value; the same flag given twice is refused (argparse would keep the last silently)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Optional[str] = None) -> None:
        given = _given(namespace)
        if self.dest in given:
            raise ValueError(f"{option} given twice ({_text(getattr(namespace, self.dest))} and {_text(values)}); "
                             f"give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values if self.const is None else self.const)


class _Merge(argparse.Action):
    """A list flag given twice merges its values: `--family resnet --family baseline` searches both."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Optional[str] = None) -> None:
        given = _given(namespace)
        before = list(getattr(namespace, self.dest) or []) if self.dest in given else []
        given.add(self.dest)
        setattr(namespace, self.dest, list(dict.fromkeys([*before, *values])))


def _given(namespace: Any) -> set:
    if not hasattr(namespace, "given"):
        namespace.given = set()
    return namespace.given


def _text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python search/run.py", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search CNN architectures and training settings that tell leukemic blasts (ALL) from normal "
                    "cells (HEM) in C-NMC 2019: Optuna proposes configs, a scheduler (ASHA) stops weak trials "
                    "early, every trial is ranked into results/leaderboard.parquet. Data are split by patient; "
                    "the test patients are never used here.")

    def a(*names: str, **kwargs: Any) -> None:
        if kwargs.get("nargs") == "+":
            p.add_argument(*names, action=_Merge, **kwargs)
        elif kwargs.pop("flag", False):
            p.add_argument(*names, action=_Once, nargs=0, const=True, default=False, **kwargs)
        else:
            p.add_argument(*names, action=_Once, **kwargs)

    a("--family", nargs="+", metavar="NAME", help="model family/families to search, or 'all' (required; "
      "'resnet' with --smoke-test); given twice, the families are merged")
    a("--data", metavar="DIR", help="C-NMC folder (Kaggle or TCIA layout); default: the generated C-NMC-like set, "
      "built once and reused ($LEUKTUNE_DATA)")
    a("--num-samples", type=int, help="trials to run (cpu profile 12, gpu 32)")
    a("--max-epochs", type=int, help="epochs of a trial that is never stopped (cpu 8, gpu 20)")
    a("--grace-epochs", type=int, help="epochs before the scheduler may stop a trial (cpu 1, gpu 3)")
    a("--reduction-factor", type=int, default=2, help="ASHA keeps the top 1/factor at each rung (default 2)")
    a("--searcher", default="tpe", choices=SEARCHERS, help="Optuna sampler that proposes configs (default tpe)")
    a("--scheduler", default="asha", choices=SCHEDULERS, help="early stopping: asha, median (Tune's median "
      "stopping rule) or fifo (every trial runs --max-epochs); or pbt, population-based training: every trial runs "
      "--max-epochs, and every quarter of them the worst quarter continue the best quarter's weights with "
      "perturbed lr, weight decay and augmentation (one-worker trials; population drawn at random) (default asha)")
    a("--workers-per-trial", type=int, help="training processes per trial: 1 trains inside the Tune trial, 2 or "
      "more with Ray Train DDP (default 1)")
    a("--cpus-per-worker", type=float, help="CPUs per worker (cpu 1, gpu up to 4)")
    a("--gpus-per-worker", type=float, help="GPUs per worker; fractions (0.25) only with one worker per trial")
    a("--image-sizes", type=int, nargs="+", metavar="S", help="candidate image sizes in px (cpu 32, gpu 64 96 128)")
    a("--val-fraction", type=float, default=0.2, help="share of the training patients held out for validation, "
      "drawn by patient (default 0.2)")
    a("--address", help="Ray cluster to join: 'auto' or ray://host:10001 (default: start a local Ray)")
    a("--storage", default=STORAGE, help="Tune/Train storage: a folder or an s3:// URI (default results/ray; "
      "must be shared storage on a multi-node cluster)")
    a("--results", default=RESULTS, help="folder for leaderboard.parquet, optuna.db, searches/ (default results)")
    a("--name", help="search name (default: <families>-<YYYYmmdd-HHMMSS>); the Optuna study has the same name")
    a("--resume", flag=True, help="continue the search --name from its storage: finished trials are kept, "
      "unfinished ones continue from their last checkpoint (only --time-budget may change)")
    a("--seed", type=int, default=0, help="seeds the sampler, the patient split and every trial (default 0)")
    a("--metric", default=DEFAULT_METRIC, choices=METRICS, help="what the scheduler and the sampler maximise "
      "on the validation patients (default balanced_accuracy: a one-class predictor scores 0.5 whatever the class "
      "ratio); weighted F1, the challenge metric, is reported beside it")
    a("--objectives", nargs="+", metavar="NAME", help="search for several objectives at once, e.g. "
      "'balanced_accuracy num_parameters' (small and accurate). The first is a validation metric, maximised, that "
      "the scheduler stops on and the leaderboard ranks by (it replaces --metric); the others are metric columns "
      "(val_loss minimised, the rest maximised) or num_parameters (minimised). Optuna's TPE sampler proposes the "
      "configs: it handles several objectives and models the space from a few trials, where NSGA-II's first "
      "generation (50) would be random search at these budgets. Rows get a pareto flag (the front of the finished "
      "and stopped trials); the console and the report show the front and the smallest model within 0.01 of the "
      "best first objective. No latency objective: timings on a shared CPU machine are not stable enough to rank")
    a("--warm-start", metavar="SEARCH", help="run the best configs of an earlier search of the same leaderboard "
      "first (e.g. a 32 px search before a 48 px one): its top 3 by its own metric, at most half of --num-samples "
      "(at least 1). Each is mapped onto this search's space, one line per change: values clipped to the new "
      "ranges, image and batch sizes moved to the nearest offered, parameters the space lacks dropped, configs of "
      "families not searched here skipped")
    a("--time-budget", type=float, metavar="SECONDS", help="stop the whole search after this many seconds")
    a("--max-failures", type=int, default=2, help="retries of a trial from its checkpoint (default 2)")
    a("--dry-run", flag=True, help="connect (or start the local Ray), print the profile, settings and plan, stop")
    a("--verbose", flag=True, help="show everything Ray, Tune and Train print (by default it goes to "
      "results/<name>/search.log and the console shows one line per trial event)")
    a("--smoke-test", flag=True, help="a real but tiny search: 2 trials of 2 epochs at 24 px")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags as given (profile defaults are filled once the cluster is known); ValueError naming a bad flag."""
    from search.spaces import resolve_families

    args = build_parser().parse_args(argv)
    _given(args)
    if args.resume and not args.name:
        raise ValueError("--resume needs --name NAME: the search to continue (a folder under --storage)")
    if args.family is None and args.smoke_test:
        args.family = ["resnet"]
    if args.family is None and not args.resume:
        raise ValueError("--family is required: one or more model families, or 'all' (see --help)")
    if args.family is not None:
        args.family = resolve_families(args.family)
    if args.objectives and "metric" in args.given and args.metric != args.objectives[0]:
        raise ValueError(f"--metric {args.metric} contradicts --objectives {' '.join(args.objectives)}: the first "
                         f"objective is the metric; drop --metric")
    if args.objectives:
        args.metric = args.objectives[0]
    if not args.name:
        args.name = f"{'+'.join(args.family) if len(args.family) < 4 else 'all'}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in args.name or args.name.startswith("."):
        raise ValueError(f"--name {args.name!r}: use a plain folder name")
    args.storage = args.storage if "://" in args.storage else str(Path(args.storage).expanduser().resolve())
    args.results = str(Path(args.results).expanduser().resolve())
    validate(args)
    return args


def validate(args: argparse.Namespace) -> None:
    """Each setting that is set, checked on its own; ValueError with one line naming the flag."""
    for flag in ("num_samples", "max_epochs", "grace_epochs", "workers_per_trial"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {value} must be >= 1")
    if args.reduction_factor < 2:
        raise ValueError(f"--reduction-factor {args.reduction_factor} must be >= 2")
    if args.grace_epochs and args.max_epochs and args.grace_epochs > args.max_epochs:
        raise ValueError(f"--grace-epochs {args.grace_epochs} must be <= --max-epochs {args.max_epochs}")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise ValueError(f"--time-budget {args.time_budget:g} must be a positive number of seconds")
    if args.max_failures < -1:
        raise ValueError(f"--max-failures {args.max_failures} must be >= 0 (or -1: retry forever)")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction {args.val_fraction:g} must be between 0 and 1")
    small = [s for s in args.image_sizes or [] if s < 16]
    if small:
        raise ValueError(f"--image-sizes {small[0]} is too small: use 16 px or more")
    if args.objectives:
        from search.pareto import check_objectives

        check_objectives(args.objectives, METRICS)
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        raise ValueError(f"--data {args.data}: no such folder")
    if args.scheduler == "pbt":
        _check_pbt(args)
    if args.workers_per_trial is not None:
        from search.plan import TrialResources

        TrialResources(args.workers_per_trial, args.cpus_per_worker if args.cpus_per_worker is not None else 1.0,
                       args.gpus_per_worker or 0.0).validate()


def _check_pbt(args: argparse.Namespace) -> None:
    """PBT trains one-worker trials only, and its population is drawn at random (Tune's PBT takes no searcher)."""
    if (args.workers_per_trial or 1) > 1:
        raise ValueError(f"--scheduler pbt needs --workers-per-trial 1 (got {args.workers_per_trial}): PBT restarts "
                         f"a trial from another trial's checkpoint, which Ray Train does not do for a DDP run")
    if args.searcher != "random" and "searcher" in _given(args):
        raise ValueError(f"--searcher {args.searcher} cannot drive --scheduler pbt: Tune's PBT takes no searcher "
                         f"and draws its population at random from the space (drop --searcher)")
    unused = [f"--{key.replace('_', '-')}" for key in ("warm_start", "objectives", "grace_epochs", "reduction_factor")
              if key in _given(args)]
    if unused:
        raise ValueError(f"{' '.join(unused)} with --scheduler pbt: PBT takes no searcher to seed or to give several "
                         f"objectives, and stops no trial early (drop {'them' if len(unused) > 1 else 'it'})")
    args.searcher = "random"


def resolve_for_cluster(args: argparse.Namespace, nodes: list[dict], say=print):
    """Profile, settings and plan for the cluster Ray is connected to; ValueError naming the flag that cannot fit."""
    from search.plan import TrialResources, plan_concurrency
    from search.preflight import check_sizes
    from search.settings import apply_profile, choose_profile, gpu_node_types, nodes_to_plan_on

    node_types = gpu_node_types()
    profile, why = choose_profile(args, nodes, node_types)
    if args.resume:
        profile, why = args.profile, "the saved settings of the search"
    apply_profile(args, profile, nodes, node_types)
    validate(args)
    say(f"profile: {profile} ({why})")
    trial = TrialResources(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker)
    plan = plan_concurrency(nodes_to_plan_on(nodes, node_types) if args.gpus_per_worker else nodes, trial)
    say(f"plan: {plan.reason}")
    check_sizes(args, nodes, say)  # before decoding: families fit the sizes, the decoded set fits disk and memory
    return plan


def settings_text(args: argparse.Namespace) -> str:
    from search.settings import SAVED_FIELDS

    shown = {key: getattr(args, key) for key in SAVED_FIELDS}
    return "settings: " + ", ".join(f"{key}={_text(value)}" for key, value in shown.items())


def start_ray(args: argparse.Namespace) -> None:
    import ray

    if ray.is_initialized():  # called from a test or a notebook that started Ray itself
        return
    env = {**TRAIN_ENV, **({} if args.address else LOCAL_TRAIN_ENV)}
    for key, value in env.items():
        os.environ.setdefault(key, value)  # inherited by a local Ray's processes
    try:
        if args.address:  # a job's runtime_env reaches every process of the job on a cluster
            ray.init(address=args.address, runtime_env={"env_vars": env})
        else:  # a new local Ray ("local": never attach to another one running here); workers import this checkout
            ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}})
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exception or RuntimeError when it cannot come up
        from search.preflight import ray_start_error

        raise ValueError(ray_start_error(args, error)) from None


def prepare(args: argparse.Namespace) -> list[str]:
    """What can be checked before Ray starts; returns notes on settings a --resume changed."""
    from search import leaderboard
    from search.preflight import check_before_launch, check_name
    from search.settings import load_settings, refuse_existing

    check_name(args)  # before anything is written under it
    notes = load_settings(args, args.given) if args.resume else []
    if not args.resume and not args.dry_run:
        refuse_existing(args)
    leaderboard.append_rows(leaderboard_path(args.results), [])  # fail now on unwritable results
    if args.warm_start and not args.resume:
        from search.warmstart import check_warm_start

        check_warm_start(args)  # the earlier search exists and has a config of a family searched here
    check_before_launch(args)
    return notes


def log_path(args: argparse.Namespace) -> Path:
    """Where everything Ray, Tune and Train print goes: the search's own log (a dry run's is overwritten)."""
    return Path(args.results) / ("dry-run.log" if args.dry_run else f"{args.name}/{SEARCH_LOG}")


def main(argv: Optional[list[str]] = None) -> int:
    from search import leaderboard
    from search.console import logged_console

    started = time.time()
    try:
        args = parse_args(argv)
        args.started = started  # the summary's wall time counts everything the user waits for
        notes = prepare(args)
    except (ValueError, OSError, leaderboard.LeaderboardError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run and log_path(args).exists():
        log_path(args).unlink()
    with logged_console(log_path(args), verbose=args.verbose) as console:
        console.say(f"search {args.name}; full log: {_shown_path(log_path(args))}"
                    + ("" if args.verbose else " (--verbose shows it here)"))
        for note in notes:
            console.say(f"resume: {note}")
        return launch(args, console)


def launch(args: argparse.Namespace, console: Any) -> int:
    """Start (or join) Ray, fit the settings to its cluster, then search (or, with --dry-run, stop there)."""
    import ray

    from search.preflight import forget_unlaunched, sigterm_as_sigint
    from search.paths import settings_path

    own_ray, code = not ray.is_initialized(), 2
    try:
        start_ray(args)
        from search.plan import cluster_nodes

        plan = resolve_for_cluster(args, cluster_nodes(), console.say)
        if args.dry_run:
            console.say(settings_text(args))
            console.say("dry run: nothing decoded or trained; run the same command without --dry-run")
            return 0
        from search.tuning import run_search  # Ray-side half, imported once Ray is up

        with sigterm_as_sigint():  # a scheduler's SIGTERM stops the search as Ctrl-C does: state saved, rows kept
            code = run_search(args, plan, console)
        return code
    except (ValueError, ConnectionError) as error:
        console.error(str(error))
        return 2
    except KeyboardInterrupt:  # before Tune set its own handler (e.g. while decoding), or a second signal to it
        forgot = not args.resume and forget_unlaunched(settings_path(args.results, args.name), args.storage, args.name)
        console.error("interrupted before any trial started; run the same command again" if forgot else
                      f"interrupted; continue it with --resume --name {args.name}")
        return 1
    finally:
        if code != 0 and not args.resume and not args.dry_run:  # a search that never launched must not hold its name
            forget_unlaunched(settings_path(args.results, args.name), args.storage, args.name)
        if own_ray and ray.is_initialized():
            ray.shutdown()


def _shown_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it (shorter to read and to paste)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
