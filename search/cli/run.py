"""The main job: an Optuna + early-stopping search in Ray Tune over the model families, ranked into the leaderboard.

Its flags are search/cli/flags.py. Here they become the search's settings, in one place: --resume's saved file in
place of the flags not given (`resumed_flags`, before Ray starts, so a clash is refused early), then, once Ray is up,
the hardware profile of the cluster it is connected to (search/cli/profiles.py) fills the rest into one frozen
SearchSettings (`resolve_settings`; search/board/settings.py) that everything below the command line reads.
search/tuning/tuner.py runs the search with it. --warm-start is a saved setting like the others; the configs it
carries are computed once the search space is known (search/tuning/tuner.py) and travel beside the settings.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import ray

from search.board import leaderboard, search_files
from search.board.checks import check_storage
from search.board.namelock import claim_name
from search.board.paths import SEARCH_LOG, leaderboard_path, settings_path
from search.board.settings import SearchSettings, refuse_existing, resumed_values
from search.cli.flags import parse_args, settings_text, validate
from search.cli.preflight import (Preflight, check_before_launch, check_name, check_not_read_only, check_sizes,
                                  forget_unlaunched, sigterm_as_sigint)
from search.cli.profiles import apply_profile, choose_profile, gpu_node_types, nodes_to_plan_on
from search.cli.ray_start import start_ray
from search.tuning.console import logged_console
from search.tuning.plan import Plan, TrialResources, cluster_nodes, plan_concurrency
from search.tuning.tuner import run_search
from search.tuning.warmstart import check_warm_start

RESUMED_PROFILE = "the saved settings of the search"


def resumed_flags(flags: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """--resume: a copy of the flags with the saved settings in place of those not given (a contradiction is a
    ValueError naming the flag), and one note per setting the resumed run changes. Without --resume: the flags."""
    if not flags.resume:
        return flags, []
    values, notes = resumed_values(vars(flags), flags.given)
    return argparse.Namespace(**values), notes


def resolve_settings(flags: argparse.Namespace, nodes: list[dict[str, Any]],
                     node_types: Optional[dict[str, dict]] = None) -> tuple[SearchSettings, str]:
    """(the search's settings, why its profile): the profile a resumed search saved, or the one the cluster's nodes
    (and the GPU nodes its autoscaler can start) call for; each setting no flag gave comes from it. ValueError naming
    a flag the profile's values contradict."""
    saved_profile = vars(flags).get("profile") if flags.resume else None
    profile, why = (saved_profile, RESUMED_PROFILE) if saved_profile else choose_profile(flags, nodes, node_types)
    settings = SearchSettings.from_values(apply_profile(vars(flags), profile, nodes, node_types))
    validate(settings)
    return settings, why


def resolve_for_cluster(flags: argparse.Namespace, nodes: list[dict], found: Preflight,
                        say=print) -> tuple[SearchSettings, Plan]:
    """The settings and plan for the cluster Ray is connected to; ValueError naming the flag that cannot fit."""
    node_types = gpu_node_types()
    settings, why = resolve_settings(flags, nodes, node_types)
    say(f"profile: {settings.profile} ({why})")
    trial = TrialResources(settings.workers_per_trial, settings.cpus_per_worker, settings.gpus_per_worker)
    plan = plan_concurrency(nodes_to_plan_on(nodes, node_types) if settings.gpus_per_worker else nodes, trial)
    say(f"plan: {plan.reason}")
    check_sizes(settings, nodes, say, found)  # before decoding: families fit the sizes, the decoded set fits disk
    return settings, plan                     # and memory


def prepare(parsed: argparse.Namespace, found: Preflight) -> tuple[argparse.Namespace, list[str], Optional[Any]]:
    """What can be checked before Ray starts. Returns (the flags, with --resume's saved settings in place; notes on
    settings a --resume changed; the claim on the search's name, None for a dry run)."""
    check_name(parsed)  # before anything is written under it
    check_not_read_only(leaderboard_path(parsed.results), parsed.name)  # chmod a-w holds: refused, not replaced
    leaderboard.append_rows(leaderboard_path(parsed.results), [])  # fail now on unwritable results
    notes = restore_search_files(parsed) if parsed.resume else []  # a new head: the search's files from --storage
    flags, resumed = resumed_flags(parsed)
    notes += resumed
    if flags.warm_start and not flags.resume:  # the earlier search exists, with a config of a family searched here
        check_warm_start(flags.warm_start, flags.name, flags.results, flags.family)
    check_before_launch(flags, found)
    # one driver per name, claimed after the checks (nothing under searches/ for a refused command) and before the
    # name check: two drivers started together both passed it
    name_lock = None if flags.dry_run else claim_name(flags.results, flags.name)
    if not flags.resume and not flags.dry_run:
        try:
            refuse_existing(flags.results, flags.name)
        except ValueError:
            name_lock.release()
            raise
    return flags, notes, name_lock


def restore_search_files(args: argparse.Namespace) -> list[str]:
    """--resume on a head whose results folder lacks the search (a new head, an emptied folder): its files from
    <storage>/<name>/search_files/ (search/board/search_files.py); the storage is checked first."""
    if settings_path(args.results, args.name).is_file():
        return []
    check_storage(args.storage)
    restored = search_files.restore(args.storage, args.name, args.results)
    return [f"restored from {search_files.folder(args.storage, args.name)}: {', '.join(restored)}"] if restored else []


def log_path(args: argparse.Namespace) -> Path:
    """Where everything Ray, Tune and Train print goes: the search's own log (a dry run's is overwritten)."""
    return Path(args.results) / ("dry-run.log" if args.dry_run else f"{args.name}/{SEARCH_LOG}")


def main(argv: Optional[list[str]] = None) -> int:
    started, name_lock, found = time.time(), None, Preflight()  # started: the summary's wall time counts everything
    try:                                                         # the user waits for
        try:
            flags, notes, name_lock = prepare(parse_args(argv), found)
        except (ValueError, OSError, leaderboard.LeaderboardError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if flags.dry_run and log_path(flags).exists():
            log_path(flags).unlink()
        with logged_console(log_path(flags), verbose=flags.verbose) as console:
            console.say(f"search {flags.name}; full log: {_shown_path(log_path(flags))}"
                        + ("" if flags.verbose else " (--verbose shows it here)"))
            for note in notes:
                console.say(f"resume: {note}")
            return launch(flags, console, found, started)
    finally:
        if name_lock is not None:  # the process may go on (a test, a notebook)
            name_lock.release()


def launch(flags: argparse.Namespace, console: Any, found: Preflight, started: float) -> int:
    """Start (or join) Ray, resolve the settings for its cluster, then search (or, with --dry-run, stop there)."""


    own_ray, code = not ray.is_initialized(), 2
    try:
        start_ray(flags.address)
        settings, plan = resolve_for_cluster(flags, cluster_nodes(), found, console.say)
        if flags.dry_run:
            console.say(settings_text(settings))
            console.say("dry run: nothing decoded or trained; run the same command without --dry-run")
            return 0
        with sigterm_as_sigint():  # a scheduler's SIGTERM stops the search as Ctrl-C does: state saved, rows kept
            code = run_search(settings, plan, console, started)
        return code
    except (ValueError, ConnectionError) as error:
        console.error(str(error))
        return 2
    except KeyboardInterrupt:  # before Tune set its own handler (e.g. while decoding), or a second signal to it
        forgot = not flags.resume and forget_unlaunched(settings_path(flags.results, flags.name), flags.storage,
                                                        flags.name)
        console.error("interrupted before any trial started; run the same command again" if forgot else
                      f"interrupted; continue it with --resume --name {shlex.quote(flags.name)}")
        return 1
    finally:
        if code != 0 and not flags.resume and not flags.dry_run:  # a search that never launched must not hold its
            forget_unlaunched(settings_path(flags.results, flags.name), flags.storage, flags.name)  # name
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
