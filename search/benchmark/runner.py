"""`python -m search.benchmark`: how much training each search strategy needs to find a good model, and how far the
validation patients predict unseen ones.

    python -m search.benchmark                  # random/TPE x FIFO/ASHA, seeds 0 1 2, 12 trials x 8 epochs, 32 px
    python -m search.benchmark --smoke-test     # random-fifo and tpe-asha, seed 0, 3 trials x 2 epochs, 24 px

Every search is a real `search.cli.run.main` call with the same family, space, data, trial count and maximum epochs; only
the sampler, the scheduler and the seed change, and all share one Ray start. Then every trial's best-epoch checkpoint
predicts the held-out test patients (search/benchmark/analysis.py). Everything goes under
results/benchmarks/<name>/; rerunning a --name reuses its finished searches and resumes an interrupted one, and a
rerun with more --seeds adds only the new seeds' searches.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import ray

from leukmodels.atomic import atomic_path
from leukmodels.data import DataError
from search.benchmark import tables as report
from search.benchmark.analysis import analyse, write_outputs
from search.board import leaderboard
from search.board.leaderboard import LeaderboardError
from search.board.paths import RESULTS, leaderboard_path, settings_path
from search.board.settings import DEFAULT_METRIC, METRICS
from search.cli import run
from search.cli.flags import RaisingParser
from search.cli.flags import parse_args as parse_search_flags
from search.cli.preflight import Preflight, check_before_launch
from search.cli.profiles import PROFILES
from search.cli.ray_start import start_ray
from search.tuning.strategies import SCHEDULERS, SEARCHERS

BASELINE = "random-fifo"  # every strategy is measured against random sampling without early stopping
STRATEGIES = tuple(f"{searcher}-{scheduler}" for searcher in SEARCHERS for scheduler in SCHEDULERS)
DEFAULTS = dict(family=["resnet"], strategies=[BASELINE, "random-asha", "tpe-fifo", "tpe-asha"], seeds=[0, 1, 2],
                **{key: PROFILES["cpu"][key] for key in ("num_samples", "max_epochs", "image_sizes")})
SMOKE = dict(strategies=[BASELINE, "tpe-asha"], seeds=[0], num_samples=3, max_epochs=2, image_sizes=[24])
SETTINGS = ("family", "data", "num_samples", "max_epochs", "grace_epochs", "reduction_factor", "strategies", "seeds",
            "image_sizes", "metric", "cv", "rerank_top", "rerank_strategies", "batch_sizes", "val_fraction")  # a rerun must match
SAVED_SETTINGS = "benchmark.json"  # <folder>/benchmark.json: SETTINGS (a rerun of the --name must match) and the command
RUNS = "runs.json"  # <folder>/runs.json: each search's exit code and wall time, rewritten after every search
HEARTBEAT_S = 20.0  # a progress line this often while a search runs


def build_parser() -> argparse.ArgumentParser:
    p = RaisingParser(prog="python -m search.benchmark", description="How much training each search strategy (sampler "
                      "x scheduler) needs to reach random sampling's best, over several seeds, and how well validation "
                      "metrics rank trials for unseen test patients. Writes RESULTS/benchmarks/NAME/.")
    p.add_argument("--family", nargs="+", help="model family searched by every strategy (default resnet)")
    p.add_argument("--data", help="C-NMC folder (default: the generated C-NMC-like set)")
    p.add_argument("--num-samples", type=int, help=f"trials per search (default {DEFAULTS['num_samples']})")
    p.add_argument("--max-epochs", type=int, help=f"epochs of a trial never stopped (default "
                   f"{DEFAULTS['max_epochs']})")
    p.add_argument("--grace-epochs", type=int, help="passed to every search (default: its profile's, 2 on CPUs)")
    p.add_argument("--reduction-factor", type=int, help="passed to every search (default: search/run.py's, 2)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds per strategy: sampler, patient split, trials "
                   "(default 0 1 2)")
    p.add_argument("--strategies", nargs="+", metavar="SEARCHER-SCHEDULER", help=f"from {', '.join(STRATEGIES)}; "
                   f"must include {BASELINE} (default {' '.join(DEFAULTS['strategies'])})")
    p.add_argument("--image-sizes", type=int, nargs="+", metavar="S", help="candidate image sizes (default "
                   f"{' '.join(map(str, DEFAULTS['image_sizes']))})")
    p.add_argument("--batch-sizes", type=int, nargs="+", metavar="B", help="candidate batch sizes (default: the "
                   "profile's; smaller ones train more steps per epoch on a small set)")
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=METRICS, help="validation metric every search "
                   "maximises (default balanced_accuracy)")
    p.add_argument("--name", help="benchmark name (default <family>-<YYYYmmdd-HHMMSS>); a rerun reuses finished "
                   "searches")
    p.add_argument("--results", default=RESULTS, help="outputs go to RESULTS/benchmarks/NAME (default results)")
    p.add_argument("--val-fraction", type=float, metavar="F", help="passed to every search: the share of training "
                   "patients its one validation split holds out (default: search/run.py's, 0.2); a small one "
                   "measures how a few validation patients rank trials")
    p.add_argument("--cv", type=int, metavar="K", help="also run every strategy with --cv K (cross-validated "
                   "selection), compared with the baseline on the same selection rule")
    p.add_argument("--rerank-top", type=int, metavar="N", help="every one-split search also re-ranks its top N "
                   "trials with K-fold cross-validation (K: --cv, else 3): the two-stage selection rule")
    p.add_argument("--rerank-strategies", nargs="+", metavar="SEARCHER-SCHEDULER", help="the strategies whose "
                   "one-split searches --rerank-top re-ranks (default: every strategy)")
    p.add_argument("--smoke-test", action="store_true", help="2 strategies x 1 seed x 3 trials x 2 epochs at 24 px")
    return p


@dataclass(frozen=True)
class BenchmarkSettings:
    """A benchmark's flags with their defaults filled (the smoke test's for flags not given), and its folders."""
    name: str
    results: str
    family: list[str]
    strategies: list[str]
    seeds: list[int]
    num_samples: int
    max_epochs: int
    image_sizes: list[int]
    metric: str
    data: Optional[str] = None
    grace_epochs: Optional[int] = None  # None: each search's profile's
    reduction_factor: Optional[int] = None
    val_fraction: Optional[float] = None  # None: search/run.py's
    batch_sizes: Optional[list[int]] = None
    cv: Optional[int] = None
    rerank_top: Optional[int] = None
    rerank_strategies: Optional[list[str]] = None
    smoke_test: bool = False

    @property
    def folder(self) -> Path:
        """RESULTS/benchmarks/NAME: everything the benchmark writes."""
        return Path(self.results).expanduser().resolve() / "benchmarks" / self.name

    @property
    def runs(self) -> Path:
        """--results of every search."""
        return self.folder / "runs"

    @property
    def storage(self) -> Path:
        """--storage of every search: its Tune folders are runs/ray/<search>/."""
        return self.runs / "ray"


def parse_args(argv: Optional[list[str]] = None) -> BenchmarkSettings:
    """The flags with defaults filled (the smoke test's for flags not given); ValueError naming a bad flag."""
    given = vars(build_parser().parse_args(argv))
    defaults = {**DEFAULTS, **(SMOKE if given["smoke_test"] else {})}
    values = {key: (list(defaults[key]) if isinstance(defaults[key], list) else defaults[key])
              if value is None and key in defaults else value for key, value in given.items()}
    bad = [s for s in values["strategies"] if s not in STRATEGIES]
    if bad:
        raise ValueError(f"--strategies {bad[0]}: choose from {', '.join(STRATEGIES)}")
    if BASELINE not in values["strategies"]:
        raise ValueError(f"--strategies must include {BASELINE}: the headline measures every strategy against it")
    for flag in ("strategies", "seeds"):
        if len(set(values[flag])) != len(values[flag]):
            raise ValueError(f"--{flag} {' '.join(map(str, values[flag]))}: give each once")
    if min(values["seeds"]) < 0:
        raise ValueError(f"--seeds {min(values['seeds'])} must be >= 0")
    if values["cv"] is not None and values["cv"] < 2:
        raise ValueError(f"--cv {values['cv']} must be >= 2 folds")
    if values["rerank_top"] is not None and values["rerank_top"] < 2:
        raise ValueError(f"--rerank-top {values['rerank_top']} must be >= 2")
    values["name"] = values["name"] or f"{'+'.join(values['family'])}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in values["name"] or values["name"].startswith("."):
        raise ValueError(f"--name {values['name']!r}: use a plain folder name")
    return BenchmarkSettings(**values)


@dataclass(frozen=True)
class Search:
    strategy: str
    seed: int
    name: str
    cv: int = 0  # --cv K of this search (0: one validation split)
    rerank: int = 0  # --rerank-top N of this one-split search (its second stage is the search <name>-rerank)
    rerank_folds: int = 3

    @property
    def label(self) -> str:
        """The strategy as tables show it: 'tpe-asha', or 'tpe-asha+cv3' for a cross-validated search."""
        return f"{self.strategy}+cv{self.cv}" if self.cv else self.strategy

    def argv(self, args: BenchmarkSettings) -> list[str]:
        """search/run.py's flags for this search: the benchmark's shared settings plus its strategy and seed."""
        searcher, scheduler = self.strategy.split("-")
        given = {"--data": args.data, "--grace-epochs": args.grace_epochs, "--reduction-factor": args.reduction_factor,
                 "--val-fraction": args.val_fraction}
        return ["--family", *args.family, "--num-samples", str(args.num_samples), "--max-epochs",
                str(args.max_epochs), "--image-sizes", *map(str, args.image_sizes), "--metric", args.metric,
                "--searcher", searcher, "--scheduler", scheduler, "--seed", str(self.seed), "--name", self.name,
                "--results", str(args.runs), "--storage", str(args.storage),
                *[item for flag, value in given.items() if value is not None for item in (flag, str(value))],
                *(["--cv", str(self.cv)] if self.cv else []),
                *(["--batch-sizes", *map(str, args.batch_sizes)] if args.batch_sizes else []),
                *(["--rerank-top", str(self.rerank), "--rerank-folds", str(self.rerank_folds)] if self.rerank else [])]


def plan_searches(args: BenchmarkSettings) -> list[Search]:
    """Every (strategy, seed), seed-major so an interrupted benchmark has every strategy on its first seeds. Each
    search's flags are checked by search/run.py's own parser now, before Ray starts, and the data, sizes and storage
    by its pre-launch checks once per seed (the seed draws the patient split)."""
    searches = []
    for seed in args.seeds:
        for cv in ([0, args.cv] if args.cv else [0]):
            searches += [Search(s, seed, f"{args.name}-{s}{f'-cv{cv}' if cv else ''}-s{seed}", cv=cv,
                                rerank=0 if cv or s not in (args.rerank_strategies or [s]) else (args.rerank_top or 0),
                                rerank_folds=args.cv or 3)
                         for s in args.strategies]
    checked = set()
    for search in searches:
        parsed = parse_search_flags(search.argv(args))
        if search.seed not in checked:
            check_before_launch(parsed, Preflight())
            checked.add(search.seed)
    return searches


def prepare_folder(args: BenchmarkSettings, command: str) -> dict:
    """Write (or check) benchmark.json; returns what earlier runs of this --name recorded per search (runs.json).
    A rerun must match every setting, except that it may add seeds: each seed's searches stand alone, so more seeds
    extend a benchmark and its figures are then taken over all of them."""
    settings = {key: getattr(args, key) for key in SETTINGS}
    saved_path, runs_path = args.folder / SAVED_SETTINGS, args.folder / RUNS
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())["settings"]
        more_seeds = set(saved.get("seeds") or []) <= set(settings["seeds"])
        clash = [f"--{k.replace('_', '-')} {saved.get(k)} (now {settings[k]})" for k in SETTINGS
                 if saved.get(k) != settings[k] and not (k == "seeds" and more_seeds)]
        if clash:
            raise ValueError(f"--name {args.name}: that benchmark ran with {'; '.join(clash)}; use a new --name")
    with atomic_path(saved_path) as tmp:
        tmp.write_text(json.dumps({"settings": settings, "command": command}, indent=1))
    return json.loads(runs_path.read_text()) if runs_path.is_file() else {}


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[int]:
    """Everything this process writes to file descriptors 1 and 2 (Tune's tables, Ray's worker logs, progress bars)
    goes to `path`; yields a descriptor of the console for progress lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    console, errors = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(console, 1), os.dup2(errors, 2)
            os.close(console), os.close(errors)


@contextlib.contextmanager
def heartbeat(folder: Path, label: str, console: int) -> Iterator[None]:
    """A line every HEARTBEAT_S seconds: epochs the search has reported so far (lines of its result.json files)."""
    stop, started = threading.Event(), time.time()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a file Tune is replacing: count it next time
                epochs = sum(len(p.read_bytes().splitlines()) for p in folder.glob("*/result.json"))
                os.write(console, f"    {label}: {epochs} epochs trained, {time.time() - started:.0f} s\n".encode())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Stop(Exception):
    """The benchmark cannot go on: a search refused its input (code 2) or was interrupted (code 1)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_searches(args: BenchmarkSettings, searches: list[Search], runs: dict, say=print) -> dict:
    """Run (or reuse, or resume) every search in this process's Ray; runs.json after each. Raises Stop when a search
    refused its input or was interrupted (Ctrl-C: Tune stops the search, which returns 1 saying so)."""
    for index, search in enumerate(searches, start=1):
        label, before = f"[{index}/{len(searches)}] {search.label} seed {search.seed}", runs.get(search.name, {})
        if before.get("exit_code") == 0:
            say(f"{label}: finished earlier ({before['wall_seconds']:.0f} s), reused")
            continue
        resume = settings_path(args.runs, search.name).is_file()
        argv = (["--resume", "--name", search.name, "--results", str(args.runs), "--storage", str(args.storage)]
                if resume else search.argv(args))
        log = args.folder / "logs" / f"{search.name}.log"
        say(f"{label}: {'resuming' if resume else 'running'} search {search.name} (log {log})")
        started = time.time()
        with output_to(log) as console, heartbeat(args.storage / search.name, label, console):
            code = run.main(argv)
        runs[search.name] = {"exit_code": code, "resumed": resume,
                             "wall_seconds": time.time() - started + (before.get("wall_seconds") or 0.0)}
        with atomic_path(args.folder / RUNS) as tmp:
            tmp.write_text(json.dumps(runs, indent=1))
        said = log.read_text(errors="replace").splitlines()
        if code == 2:
            error = next((line for line in reversed(said) if line.startswith("error:")), "error: input refused")
            raise Stop(f"{label}: {error[len('error: '):]} (log {log})", 2)
        if code and any(line.startswith("search interrupted") for line in said):
            raise Stop(f"{label}: interrupted; run the same command again to continue (finished searches are "
                       f"reused, this one resumed)", 1)
        board = leaderboard.read(leaderboard_path(args.runs))
        mine = board[board["search"] == search.name]
        say(f"{label}: exit {code} after {runs[search.name]['wall_seconds']:.0f} s: {len(mine)} trials, "
            f"{int(mine['epochs_run'].fillna(0).sum())} epochs, best val {args.metric} {mine[args.metric].max():.4f}")
    return runs


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        searches = plan_searches(args)
        command = " ".join(["python -m search.benchmark", *argv])
        runs = prepare_folder(args, command)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rules = " x (one split" + (f", --cv {args.cv}" if args.cv else "") + (
        f"; one split re-ranked with --rerank-top {args.rerank_top}" if args.rerank_top else "") + ")"
    print(f"benchmark {args.name}: {len(args.strategies)} strategies x {len(args.seeds)} seed(s)"
          f"{rules if args.cv or args.rerank_top else ''} = {len(searches)} searches of {args.num_samples} trials x "
          f"up to {args.max_epochs} epochs ({' '.join(args.family)}, "
          f"{' '.join(map(str, args.image_sizes))} px, val {args.metric}) on {args.data or 'the generated set'}")
    done = [s for s in searches if runs.get(s.name, {}).get("exit_code") == 0]
    own_ray = start_ray(None) if len(done) < len(searches) else False  # a rerun with every search finished: no Ray
    try:
        runs = run_searches(args, searches, runs)
    except Stop as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue (finished searches are reused)", file=sys.stderr)
        return 1
    finally:
        if own_ray and ray.is_initialized():
            with output_to(args.folder / "logs" / "ray.log"):  # worker lines Ray forwards late land here too
                ray.shutdown()
    try:
        results = analyse(args, searches, runs, command, BASELINE)
        written = write_outputs(args, results)
    except (DataError, LeaderboardError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for line in report.console_lines(results, written):
        print(line)
    return 0 if all(runs[s.name]["exit_code"] == 0 for s in searches) else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parse_args", "plan_searches", "BenchmarkSettings", "Search", "BASELINE", "STRATEGIES", "DEFAULTS",
           "SMOKE"]
