"""search/run.py's flags: the parser, and each setting checked on its own (a ValueError naming the flag).

    args = parse_args(["--family", "resnet"])   # the flags as given; profile defaults are filled once Ray is up

A flag given twice is refused, a list flag given twice merges its values, and a parse error is a ValueError, so that
`main` prints one line instead of argparse's usage text.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from search.board.pareto import check_objectives
from search.board.paths import RESULTS
from search.board.settings import METRICS, SearchSettings
from search.board.study_storage import resolved
from search.tuning.crossval import parse_cv
from search.tuning.plan import TrialResources
from search.tuning.spaces import resolve_families
from search.tuning.strategies import SCHEDULERS, SEARCHERS

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
Outputs: results/leaderboard/ (one ranked row per trial), results/optuna.db (study = search name),
results/<name>/search.log (everything Ray printed), results/ray/<name>/ (Tune state and checkpoints)."""


class RaisingParser(argparse.ArgumentParser):
    """Errors are a ValueError (one line for `main`), not argparse's usage text and exit (also the benchmark's)."""

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
    p = RaisingParser(
        prog="python search/run.py", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search CNN architectures and training settings that tell leukemic blasts (ALL) from normal "
                    "cells (HEM) in C-NMC 2019: Optuna proposes configs, a scheduler (ASHA) stops weak trials "
                    "early, every trial is ranked into results/leaderboard/. Data are split by patient; "
                    "the test patients are never used here.")

    def add(*names: str, **kwargs: Any) -> None:
        if kwargs.get("nargs") == "+":
            p.add_argument(*names, action=_Merge, **kwargs)
        elif kwargs.pop("flag", False):
            p.add_argument(*names, action=_Once, nargs=0, const=True, default=False, **kwargs)
        else:
            p.add_argument(*names, action=_Once, **kwargs)

    for flags in (_what_to_search, _what_a_trial_gets, _where_it_runs, _what_wins, _how_it_runs):  # --help's order
        flags(add)
    return p


# A flag's default is the SearchSettings field's: one home for both.
DEFAULTS = {field.name: field.default for field in dataclasses.fields(SearchSettings)
            if field.default is not dataclasses.MISSING}


def _what_to_search(add: Callable[..., None]) -> None:
    """Families, data, trial count and length, the strategy."""
    add("--family", nargs="+", metavar="NAME", help="model family/families to search, or 'all' (required; "
        "'resnet' with --smoke-test); given twice, the families are merged")
    add("--data", metavar="DIR", help="C-NMC folder (Kaggle or TCIA layout); default: the generated C-NMC-like set, "
        "built once and reused ($LEUKTUNE_DATA)")
    add("--num-samples", type=int, help="trials to run (cpu profile 12, gpu 32)")
    add("--max-epochs", type=int, help="epochs of a trial that is never stopped (cpu 8, gpu 20)")
    add("--grace-epochs", type=int, help="epochs before the scheduler may stop a trial (cpu 2, gpu 3)")
    add("--reduction-factor", type=int, default=DEFAULTS["reduction_factor"],
        help="ASHA keeps the top 1/factor at each rung (default 2)")
    add("--searcher", default=DEFAULTS["searcher"],
        choices=SEARCHERS, help="Optuna sampler that proposes configs (default tpe)")
    add("--scheduler", default=DEFAULTS["scheduler"],
        choices=SCHEDULERS, help="early stopping: asha, median (Tune's median "
        "stopping rule) or fifo (every trial runs --max-epochs); or pbt, population-based training: every trial runs "
        "--max-epochs, and every quarter of them the worst quarter continue the best quarter's weights with "
        "perturbed lr, weight decay and augmentation (one-worker trials; population drawn at random) (default asha)")


def _what_a_trial_gets(add: Callable[..., None]) -> None:
    """Workers, CPUs, GPUs, image sizes and the validation share."""
    add("--workers-per-trial", type=int, help="training processes per trial: 1 trains inside the Tune trial, 2 or "
        "more with Ray Train DDP (default 1)")
    add("--cpus-per-worker", type=float, help="CPUs per worker (cpu 1, gpu up to 4)")
    add("--gpus-per-worker", type=float, help="GPUs per worker; fractions (0.25) only with one worker per trial")
    add("--image-sizes", type=int, nargs="+", metavar="S", help="candidate image sizes in px (cpu 32, gpu 64 96 128)")
    add("--batch-sizes", type=int, nargs="+", metavar="B", help="candidate batch sizes per worker (cpu 32 64, gpu 64 "
        "128 256)")
    add("--val-fraction", type=float, default=DEFAULTS["val_fraction"],
        help="share of the training patients held out for validation, "
        "drawn by patient (default 0.2)")


def _where_it_runs(add: Callable[..., None]) -> None:
    """The Ray cluster, the storage, the results folder, the search's name."""
    add("--address", help="Ray cluster to join: 'auto' or ray://host:10001 (default: start a local Ray)")
    add("--storage", default=DEFAULTS["storage"],
        help="Tune/Train storage: a folder or an s3:// URI (default results/ray; "
        "must be shared storage on a multi-node cluster)")
    add("--results", default=RESULTS, help="folder for the leaderboard, optuna.db, searches/ (default results)")
    add("--optuna-storage", metavar="URL", help="where the Optuna study goes (study = search name): a database URL "
        "such as postgresql://user:PASSWORD@host/db (pip install -e '.[postgres]') that several searches and heads "
        "share, or a journal file (journal:///path/optuna.log, or a path ending .log) on a shared file system "
        "(default: sqlite:///<results>/optuna.db). The password is never saved or shown: give the URL again with "
        "--resume, or use PGPASSWORD / ~/.pgpass")
    add("--name", help="search name (default: <families>-<YYYYmmdd-HHMMSS>); the Optuna study has the same name")
    add("--resume", flag=True, help="continue the search --name from its storage: finished trials are kept, "
        "unfinished ones continue from their last checkpoint (only --time-budget may change)")


def _what_wins(add: Callable[..., None]) -> None:
    """The seed, the metric or objectives, a warm start."""
    add("--seed", type=int, default=DEFAULTS["seed"],
        help="seeds the sampler, the patient split and every trial (default 0)")
    add("--metric", default=DEFAULTS["metric"], choices=METRICS, help="what the scheduler and the sampler maximise "
        "on the validation patients (default balanced_accuracy: a one-class predictor scores 0.5 whatever the class "
        "ratio); weighted F1, the challenge metric, is reported beside it")
    add("--objectives", nargs="+", metavar="NAME", help="search for several objectives at once, e.g. "
        "'balanced_accuracy num_parameters' (small and accurate). The first is a validation metric, maximised, that "
        "the scheduler stops on and the leaderboard ranks by (it replaces --metric); the others are metric columns "
        "(val_loss minimised, the rest maximised) or num_parameters (minimised). Optuna's TPE sampler proposes the "
        "configs: it handles several objectives and models the space from a few trials, where NSGA-II's first "
        "generation (50) would be random search at these budgets. Rows get a pareto flag (the front of the finished "
        "and stopped trials); the console and the report show the front and the smallest model within 0.01 of the "
        "best first objective. No latency objective: timings on a shared CPU machine are not stable enough to rank")
    add("--cv", metavar="K", help="cross-validated selection: pool the train and val patients (the test patients "
        "stay out), split them into K patient-disjoint folds, and let every trial train K fold models and be scored "
        "on their pooled out-of-fold predictions (every training patient validated once); 'official' uses C-NMC's "
        "fold_0/1/2 when they are patient-disjoint; 0 = one validation split. The trial's checkpoint holds the K "
        "models, whose mean P(ALL) evaluate/predict/export use. About K times the training per trial (default 0)")
    add("--rerank-top", type=int, metavar="N", help="after the search, re-train its top N trials' configs with "
        "cross-validation over --rerank-folds folds (a second search NAME-rerank, rows linked by reranked_from) and "
        "choose the winner on that figure: cheaper than --cv for a large search")
    add("--rerank-folds", default="3", metavar="K", help="folds of --rerank-top's cross-validation, or 'official' "
        "(default 3)")
    add("--warm-start", metavar="SEARCH", help="run the best configs of an earlier search of the same leaderboard "
        "first (e.g. a 32 px search before a 48 px one): its top 3 by its own metric, at most half of --num-samples "
        "(at least 1). Each is mapped onto this search's space, one line per change: values clipped to the new "
        "ranges, image and batch sizes moved to the nearest offered, parameters the space lacks dropped, configs of "
        "families not searched here skipped")


def _how_it_runs(add: Callable[..., None]) -> None:
    """The time budget, retries, and what is shown."""
    add("--time-budget", type=float, metavar="SECONDS", help="stop the whole search after this many seconds")
    add("--max-failures", type=int, default=DEFAULTS["max_failures"],
        help="retries of a trial from its checkpoint (default 2)")
    add("--dry-run", flag=True, help="connect (or start the local Ray), print the profile, settings and plan, stop")
    add("--verbose", flag=True, help="show everything Ray, Tune and Train print (by default it goes to "
        "results/<name>/search.log and the console shows one line per trial event)")
    add("--smoke-test", flag=True, help="a real but tiny search: 2 trials of 2 epochs at 24 px")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags as given, normalised (families, paths, --cv) and checked, with `given` (the flags on the command
    line); profile defaults are filled once the cluster is known (search/cli/run.py). ValueError naming a bad
    flag."""
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
    args.optuna_storage = resolved(args.optuna_storage, args.results)  # without its password, kept in memory
    _parse_cv(args)
    if args.scheduler == "pbt":
        _check_pbt_flags(args)
    validate(args)
    return args


def validate(settings: Any) -> None:
    """Each setting that is set, checked on its own; ValueError with one line naming the flag. `settings`: the parsed
    flags (before the profile) or the resolved SearchSettings (search/cli/run.py)."""
    for flag in ("num_samples", "max_epochs", "grace_epochs", "workers_per_trial"):
        value = getattr(settings, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {value} must be >= 1")
    if settings.reduction_factor < 2:
        raise ValueError(f"--reduction-factor {settings.reduction_factor} must be >= 2")
    if settings.grace_epochs and settings.max_epochs and settings.grace_epochs > settings.max_epochs:
        raise ValueError(f"--grace-epochs {settings.grace_epochs} must be <= --max-epochs {settings.max_epochs}")
    budget = settings.time_budget
    if budget is not None and not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"--time-budget {budget:g} must be a positive number of seconds")
    if settings.max_failures < -1:
        raise ValueError(f"--max-failures {settings.max_failures} must be >= 0 (or -1: retry forever)")
    if not 0 < settings.val_fraction < 1:
        raise ValueError(f"--val-fraction {settings.val_fraction:g} must be between 0 and 1")
    small = [s for s in settings.image_sizes or [] if s < 16]
    if small:
        raise ValueError(f"--image-sizes {small[0]} is too small: use 16 px or more")
    _check_cv(settings)
    if settings.objectives:
        check_objectives(settings.objectives, METRICS)
    if settings.data is not None and not Path(settings.data).expanduser().is_dir():
        raise ValueError(f"--data {settings.data}: no such folder")
    if settings.scheduler == "pbt" and (settings.workers_per_trial or 1) > 1:
        raise ValueError(f"--scheduler pbt needs --workers-per-trial 1 (got {settings.workers_per_trial}): PBT "
                         f"restarts a trial from another trial's checkpoint, which Ray Train does not do for a DDP run")
    _check_resources(settings)


def _check_resources(settings: Any) -> None:
    """Each amount given is checked now, before Ray starts; what is not given stands in for the profile's value."""
    if (settings.workers_per_trial, settings.cpus_per_worker, settings.gpus_per_worker) != (None, None, None):
        cpus = settings.cpus_per_worker if settings.cpus_per_worker is not None else 1.0
        gpus = settings.gpus_per_worker if settings.gpus_per_worker is not None else (0.0 if cpus else 1.0)
        TrialResources(settings.workers_per_trial or 1, cpus, gpus).validate()


def _parse_cv(args: argparse.Namespace) -> None:
    """--cv and --rerank-folds parsed into fold counts (or 'official'); --rerank-top runs its first stage on one
    split, whatever a profile's --cv default."""
    args.cv = parse_cv(args.cv) if args.cv is not None else None
    args.rerank_folds = parse_cv(args.rerank_folds or "3")
    if args.rerank_top and args.cv is None:
        args.cv = 0


def _check_cv(settings: Any) -> None:
    """Fold models train in sequence in one process (no DDP); re-ranking needs two trials or more, and folds."""
    if settings.cv and (settings.workers_per_trial or 1) > 1:
        raise ValueError(f"--cv {settings.cv} needs --workers-per-trial 1 (got {settings.workers_per_trial}): a trial "
                         f"trains its fold models one after another in its own process")
    if settings.rerank_top is not None and settings.rerank_top < 2:
        raise ValueError(f"--rerank-top {settings.rerank_top} must be >= 2: re-ranking one trial changes nothing")
    if settings.rerank_top and settings.cv:
        raise ValueError(f"--rerank-top with --cv {settings.cv}: every trial is cross-validated already; drop one")
    if settings.rerank_top and not settings.rerank_folds:
        raise ValueError("--rerank-folds 0: re-ranking needs cross-validation folds (>= 2 or 'official')")


def _check_pbt_flags(args: argparse.Namespace) -> None:
    """PBT's population is drawn at random (Tune's PBT takes no searcher), and it stops no trial early: flags given
    for a searcher or early stopping are refused, and the searcher becomes `random`."""
    if args.searcher != "random" and "searcher" in _given(args):
        raise ValueError(f"--searcher {args.searcher} cannot drive --scheduler pbt: Tune's PBT takes no searcher "
                         f"and draws its population at random from the space (drop --searcher)")
    unused = [f"--{key.replace('_', '-')}" for key in ("warm_start", "objectives", "grace_epochs", "reduction_factor")
              if key in _given(args)]
    if unused:
        raise ValueError(f"{' '.join(unused)} with --scheduler pbt: PBT takes no searcher to seed or to give several "
                         f"objectives, and stops no trial early (drop {'them' if len(unused) > 1 else 'it'})")
    args.searcher = "random"


def settings_text(settings: SearchSettings) -> str:
    """Every saved setting of a search, as --dry-run shows them."""
    return "settings: " + ", ".join(f"{key}={_text(value)}" for key, value in settings.saved().items())


__all__ = ["build_parser", "parse_args", "settings_text", "validate", "DEFAULTS", "EPILOG"]
