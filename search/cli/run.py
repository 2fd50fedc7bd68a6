"""The main job: an Optuna + early-stopping search in Ray Tune over the model families, ranked into the leaderboard.

Its flags are search/cli/flags.py; once Ray is up, search/tuning/tuner.py runs the search.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from search.cli.flags import parse_args, settings_text, validate
from search.board.paths import SEARCH_LOG, leaderboard_path

REPO = Path(__file__).resolve().parents[2]
# Ray Train settings for DDP trials: poll workers every 0.25 s instead of 2 s (a report and the end of a run are
# seen sooner; measured 10.5 -> 7.1 s per 2-worker trial here), no metrics exporter.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_METRICS_ENABLED": "0",
             # a search may take a minute to start a worker group on a busy small machine (Ray's default: 60 s)
             "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # no spot preemption on one machine


def resolve_for_cluster(args: argparse.Namespace, nodes: list[dict], say=print):
    """Profile, settings and plan for the cluster Ray is connected to; ValueError naming the flag that cannot fit."""
    from search.tuning.plan import TrialResources, plan_concurrency
    from search.cli.preflight import check_sizes
    from search.cli.profiles import apply_profile, choose_profile, gpu_node_types, nodes_to_plan_on

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
            from search.cli.loopback import LOOPBACK, loopback_only

            with loopback_only():  # its servers listen on 127.0.0.1 only, not on every interface
                ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                             p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}})
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exception or RuntimeError when it cannot come up
        from search.cli.preflight import ray_start_error

        raise ValueError(ray_start_error(args, error)) from None


def prepare(args: argparse.Namespace) -> list[str]:
    """What can be checked before Ray starts; returns notes on settings a --resume changed."""
    from search.board import leaderboard
    from search.board.namelock import claim_name
    from search.cli.preflight import check_before_launch, check_name, check_not_read_only
    from search.board.settings import load_settings, refuse_existing

    check_name(args)  # before anything is written under it
    check_not_read_only(leaderboard_path(args.results), args.name)  # chmod a-w holds: refused, not replaced
    leaderboard.append_rows(leaderboard_path(args.results), [])  # fail now on unwritable results
    notes = restore_search_files(args) if args.resume else []  # a new head: the search's files from --storage
    notes += load_settings(args, args.given) if args.resume else []
    if args.warm_start and not args.resume:
        from search.tuning.warmstart import check_warm_start

        check_warm_start(args)  # the earlier search exists and has a config of a family searched here
    check_before_launch(args)
    if not args.dry_run:  # one driver per name, claimed after the checks (nothing under searches/ for a refused
        # command) and before the name check: two drivers started together both passed it
        args.name_lock = claim_name(args.results, args.name)
    if not args.resume and not args.dry_run:
        refuse_existing(args)
    return notes


def restore_search_files(args: argparse.Namespace) -> list[str]:
    """--resume on a head whose results folder lacks the search (a new head, an emptied folder): its files from
    <storage>/<name>/search_files/ (search/board/search_files.py); the storage is checked first."""
    from search.board import search_files
    from search.board.paths import settings_path
    from search.board.checks import check_storage

    if settings_path(args.results, args.name).is_file():
        return []
    check_storage(args.storage)
    restored = search_files.restore(args.storage, args.name, args.results)
    return [f"restored from {search_files.folder(args.storage, args.name)}: {', '.join(restored)}"] if restored else []


def log_path(args: argparse.Namespace) -> Path:
    """Where everything Ray, Tune and Train print goes: the search's own log (a dry run's is overwritten)."""
    return Path(args.results) / ("dry-run.log" if args.dry_run else f"{args.name}/{SEARCH_LOG}")


def main(argv: Optional[list[str]] = None) -> int:
    from search.board import leaderboard
    from search.tuning.console import logged_console

    started, args = time.time(), None
    try:
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
    finally:
        if getattr(args, "name_lock", None) is not None:  # the process may go on (a test, a notebook)
            args.name_lock.release()


def launch(args: argparse.Namespace, console: Any) -> int:
    """Start (or join) Ray, fit the settings to its cluster, then search (or, with --dry-run, stop there)."""
    import ray

    from search.cli.preflight import forget_unlaunched, sigterm_as_sigint
    from search.board.paths import settings_path

    own_ray, code = not ray.is_initialized(), 2
    try:
        start_ray(args)
        from search.tuning.plan import cluster_nodes

        plan = resolve_for_cluster(args, cluster_nodes(), console.say)
        if args.dry_run:
            console.say(settings_text(args))
            console.say("dry run: nothing decoded or trained; run the same command without --dry-run")
            return 0
        from search.tuning.tuner import run_search  # Ray-side half, imported once Ray is up

        with sigterm_as_sigint():  # a scheduler's SIGTERM stops the search as Ctrl-C does: state saved, rows kept
            code = run_search(args, plan, console)
        return code
    except (ValueError, ConnectionError) as error:
        console.error(str(error))
        return 2
    except KeyboardInterrupt:  # before Tune set its own handler (e.g. while decoding), or a second signal to it
        forgot = not args.resume and forget_unlaunched(settings_path(args.results, args.name), args.storage, args.name)
        console.error("interrupted before any trial started; run the same command again" if forgot else
                      f"interrupted; continue it with --resume --name {shlex.quote(args.name)}")
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
