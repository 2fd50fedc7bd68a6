"""The Ray side of `search/run.py`: prepare the data, build the Tuner (or restore it), fit, write the leaderboard.

    code = run_search(settings, plan, console, started)   # settings: search/cli/run.py; Ray already up

The data are decoded and `ray.put` once, then Tune runs with a leaderboard row per ended trial; at the end every
trial of the ResultGrid is written again (same (search, trial_id) key: replaced, never duplicated).
"""
from __future__ import annotations

import time
from pathlib import Path
from shlex import quote
from typing import Any, Optional

import optuna
from ray import tune

from leukmodels.metrics import SINGLE_CLASS_SHARE
from search.board import leaderboard, search_files
from search.board.pareto import direction, front_lines, marked_search, searcher_objectives
from search.board.paths import REPORT, RESULTS, deadline_path, in_storage, leaderboard_path, optuna_url, split_path
from search.board.schema import SEARCH_END_COLUMNS
from search.board.settings import SearchSettings, save_settings
from search.board.study_storage import dashboard_target
from search.board.study_storage import open_storage as optuna_storage
from search.tuning import timeline
from search.tuning.console import Console, ConsoleCallback
from search.tuning.crossval import search_refs
from search.tuning.data import SearchData, prepare_data
from search.tuning.pbt import describe, population, prune_checkpoints
from search.tuning.plan import Plan, cluster_nodes, driver_resources
from search.tuning.ray_private import restored_configs
from search.tuning.rerank import rerank
from search.tuning.resume_guard import MissingCheckpointGuard
from search.tuning.rows import (LeaderboardCallback, SearchContext, SearchRun, TrialRecorder, result_trial_id,
                                rows_from_grid)
from search.tuning.spaces import SearchSpace
from search.tuning.storage_full import fit_or_full
from search.tuning.storage_lost import StorageWatch
from search.tuning.strategies import BudgetStopper, attach_run, make_scheduler, make_searcher, write_deadline
from search.tuning.timeline_tune import TimelineCallback
from search.tuning.trial import TRAIN_RUNS_DIR, TrialSettings, checkpoint_config, run_trial
from search.tuning.unbuildable import NoRetryForUnbuildable
from search.tuning.uncertainty import tie_line
from search.tuning.warmstart import warm_start_points


def study_url(settings: SearchSettings) -> str:
    """--optuna-storage (without its password), or the default SQLite file in results/ (a study per search)."""
    return settings.optuna_storage or optuna_url(settings.results)


def trial_settings(settings: SearchSettings, plan: Plan) -> TrialSettings:
    return TrialSettings(resources=plan.per_trial,
                         train_storage=in_storage(settings.storage, settings.name, TRAIN_RUNS_DIR),
                         max_failures=settings.max_failures, metric=settings.metric, mode="max",
                         cv=bool(settings.cv))


def trial_request(settings: TrialSettings, nodes: list[dict]) -> dict[str, float]:
    """What Tune reserves for one trial's actor: the worker's CPUs and GPUs when it trains in place; for a DDP trial
    only its driver (the workers get their own placement group from Ray Train), pinned to the node of `nodes` that
    declares the driver resource (the head of clusters/*.yaml)."""
    return settings.resources.worker_resources() if settings.in_process else driver_resources(nodes=nodes)


def trainable_for(settings: TrialSettings, refs: dict) -> Any:
    """`run_trial` with the shared data and settings bound, asking Tune for `trial_request`."""
    nodes = [] if settings.in_process else cluster_nodes()
    return tune.with_resources(tune.with_parameters(run_trial, data_refs=refs, settings=settings),
                               trial_request(settings, nodes))


def search_space(settings: SearchSettings) -> SearchSpace:
    return SearchSpace(settings.family, image_sizes=settings.image_sizes, batch_sizes=settings.batch_sizes,
                       epochs=settings.max_epochs, seed=settings.seed)


def build_tuner(settings: SearchSettings, plan: Plan, trainable: Any, callbacks: list, run: SearchRun,
                warm_start_points: Optional[list[dict]] = None) -> tune.Tuner:
    """A new Tuner, whose first trials are `warm_start_points` (configs), or the search's own restored from its
    storage with `--resume`: it runs with this driver's callbacks and run (its pickled callbacks, scheduler and
    searcher hold an empty run)."""
    experiment = in_storage(settings.storage, settings.name)
    if settings.resume:
        if not tune.Tuner.can_restore(experiment):
            raise ValueError(f"--resume: no Tune experiment at {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
        restored_run, restored_tune = restored_configs(tuner)
        restored_run.callbacks, restored_run.stop = callbacks, budget_stopper(settings)
        attach_run([restored_tune.scheduler, restored_tune.search_alg], run)
        return tuner
    searcher, param_space = _searcher(settings, run, warm_start_points)
    scheduler = make_scheduler(settings.scheduler, run=run, metric=settings.metric,
                               max_epochs=settings.max_epochs, grace_epochs=settings.grace_epochs,
                               reduction_factor=settings.reduction_factor, seed=settings.seed)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config(settings, plan, searcher, scheduler),
                      run_config=run_config(settings, plan, callbacks))


def _searcher(settings: SearchSettings, run: SearchRun,
              warm_start_points: Optional[list[dict]]) -> tuple[Any, Optional[dict]]:
    """(search algorithm, param_space): OptunaSearch over the define-by-run space (no param_space), or for PBT, which
    refuses a searcher, Tune's generator over a population drawn at random from the same space (search/tuning/pbt.py)."""
    if settings.scheduler == "pbt":
        return population(search_space(settings), settings.num_samples, seed=settings.seed)
    # lists with --objectives; the scheduler uses the first
    metric, mode = searcher_objectives(settings.metric, settings.objectives)
    return make_searcher(settings.searcher, search=settings.name, run=run, space=search_space(settings), metric=metric,
                         mode=mode, storage=optuna_storage(study_url(settings)), seed=settings.seed,
                         num_samples=settings.num_samples,
                         max_epochs=settings.max_epochs, points_to_evaluate=warm_start_points), None


def tune_config(settings: SearchSettings, plan: Plan, searcher: Any, scheduler: Any) -> tune.TuneConfig:
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples,
                           # PBT: the whole population must exist at once (paused trials free their slot); a
                           # one-worker trial's actor holds its resources, so they bound it
                           max_concurrent_trials=None if settings.scheduler == "pbt" else plan.max_concurrent_trials,
                           # the next trial reuses a trial's actor (process, Ray, torch imported; a one-worker
                           # trial's data fetched). A DDP trial Tune stops ends its Train run (train_stop.py); PBT's
                           # DDP trials are paused and restored, so they keep an actor each (docs/ray-notes.md)
                           reuse_actors=plan.per_trial.in_process or settings.scheduler != "pbt")


def budget_stopper(settings: SearchSettings) -> BudgetStopper:
    return BudgetStopper(deadline_path(settings.results, settings.name))


def run_config(settings: SearchSettings, plan: Plan, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(
        name=settings.name, storage_path=settings.storage, verbose=1, callbacks=callbacks,
        stop=budget_stopper(settings),
        # one-worker trials are retried by Tune from their last checkpoint; DDP trials by Ray Train
        failure_config=tune.FailureConfig(max_failures=settings.max_failures if plan.per_trial.in_process else 0),
        checkpoint_config=checkpoint_config(settings.metric, "max", for_tune=True,
                                            keep_all=settings.scheduler == "pbt"))


def search_context(settings: SearchSettings, data: SearchData) -> SearchContext:
    return SearchContext(search=settings.name, metric=settings.metric, max_epochs=settings.max_epochs,
                         data_fingerprint=data.fingerprint, data_generated=data.generated, data_root=data.root,
                         code_version=leaderboard.code_version(), searcher=settings.searcher,
                         scheduler=settings.scheduler,
                         objectives=",".join(settings.objectives or []), storage=settings.storage)


def run_search(settings: SearchSettings, plan: Plan, console: Console, started: Optional[float] = None) -> int:
    """Decode, launch (or resume) the Tune experiment, write and show the rows; returns the CLI's exit code.
    `started`: when the command started (the summary's wall time), by default now."""
    started = time.time() if started is None else started
    points = None  # with --warm-start: the earlier search's best configs, mapped onto this space: the first trials
    if not settings.resume:
        if settings.warm_start:
            points = warm_start_points(settings, search_space(settings), console.say)
        save_settings(settings, points)  # results/searches/<name>.json, read back by --resume
    data = prepare_data(settings.data, settings.image_sizes, split_seed=settings.seed,
                        val_fraction=settings.val_fraction,
                        progress=console.out)
    console.say(data.describe())
    data.write_split(split_path(settings.results, settings.name))  # read by search/evaluate.py
    run = SearchRun()  # what this driver learns of the search: its trials' records, early stops, deadline
    copies = search_files.BackgroundCopies(settings.storage, settings.name, settings.results)  # to --storage
    recorder = LeaderboardCallback(search_context(settings, data), str(leaderboard_path(settings.results)), run,
                                   copies)
    refs = search_refs(settings.cv, settings.seed, data, console.say)  # with --cv: the pooled set and its folds
    tuner = build_tuner(settings, plan, trainable_for(trial_settings(settings, plan), refs),
                        search_callbacks(settings, run, recorder, console), run, points)
    _say_failure(console, copies.now())  # a new head can resume
    start_clock(settings, run)
    console.say(f"searching: {settings.num_samples} trials of {'+'.join(settings.family)}, up to "
                f"{settings.max_epochs} epochs each, {plan.max_concurrent_trials} at once ({settings.searcher} + "
                f"{settings.scheduler}, {goal(settings)} "
                f"on {'the pooled out-of-fold predictions' if settings.cv else 'the validation patients'}"
                f")")
    if settings.scheduler == "pbt":
        console.say(describe(settings.max_epochs, settings.num_samples))
    fit_started = time.time()
    grid, full = fit_or_full(tuner, settings, run)  # full: the storage filled up or stopped working; the rows are kept
    slot_seconds = (time.time() - fit_started) * plan.max_concurrent_trials  # what the trial slots were held for
    mine = write_rows(settings, recorder.context, run, grid, console)
    code = finish(settings, run, grid, mine, console, summary_line(mine, time.time() - started, slot_seconds))
    if full:
        console.error(full)
        code = code or 1
    _say_failure(console, copies.now())  # ended or interrupted
    if code == 0 and settings.rerank_top:  # the second stage: the top trials re-trained with K folds
        code = rerank(settings, plan, console, mine, data, search_context(settings, data),
                      trial_settings(settings, plan),
                      trainable_for)
    return code


def search_callbacks(settings: SearchSettings, run: SearchRun, recorder: LeaderboardCallback,
                     console: Console) -> list:
    """Tune's callbacks in the order it calls them: the record keeper first (the others read its records), the
    leaderboard rows, the console; a resumed trial never errors for a checkpoint Tune's saved state names but the
    storage lost (resume_guard.py); a config that cannot be built fails once (unbuildable.py); a bucket gone
    mid-search ends it (storage_lost.py); with $LEUKTUNE_TIMELINE, the trial timeline."""
    progress = ConsoleCallback(run=run, metric=settings.metric, num_samples=settings.num_samples,
                               max_epochs=settings.max_epochs, quiet_restarts=settings.scheduler == "pbt",
                               console=console)
    callbacks = [TrialRecorder(run), recorder, progress, MissingCheckpointGuard(console.say), NoRetryForUnbuildable(),
                 StorageWatch(settings.storage, run, deadline_path(settings.results, settings.name))]
    return callbacks + ([TimelineCallback()] if timeline.enabled() else [])


def start_clock(settings: SearchSettings, run: SearchRun) -> None:
    """The run starts now: its --time-budget deadline, also written where BudgetStopper reads it."""
    run.launched = time.time()
    run.deadline = run.launched + settings.time_budget if settings.time_budget else None
    write_deadline(deadline_path(settings.results, settings.name), run.deadline)


def _say_failure(console: Console, warning: Optional[str]) -> None:
    if warning:
        console.say(warning)


def write_rows(settings: SearchSettings, context: SearchContext, run: SearchRun, grid: Any,
               console: Console) -> Any:
    """Every ended trial of the ResultGrid into the leaderboard again (the Pareto flags set over the whole search,
    PBT's exploit-only checkpoints pruned once it finished); returns the search's ranked rows."""
    board = leaderboard_path(settings.results)
    rows = rows_from_grid(context, run, grid)
    if settings.objectives:  # the front over every ended trial of the search, this run's and a resumed one's earlier
        rows = marked_search(board, settings.name, rows, settings.objectives)
    table = leaderboard.append_rows(board, rows) if rows else leaderboard.search_rows(board, settings.name)
    if settings.scheduler == "pbt" and rows and len(rows) == len(grid):  # finished: no exploit needs the donors' now
        removed, freed = prune_checkpoints(grid, rows)
        console.say(f"pbt: removed {removed} checkpoint(s) kept for exploits ({freed / 2**20:.0f} MiB); each trial "
                    f"keeps its best and its latest")
    return ranked_within(table, settings.name)


def ranked_within(table: Any, search: str) -> Any:
    """The search's rows, best first, ranked 1, 2, ... among themselves: the file's rank spans every search of the
    leaderboard (its console table showed ranks 3 and 4 for a search of 2 trials)."""
    mine = leaderboard.rank_table(table, search=search)
    return mine.assign(rank=range(1, len(mine) + 1))


def finish(settings: SearchSettings, run: SearchRun, grid: Any, mine: Any, console: Console, summary: str) -> int:
    """Show the search's rows, timing and what to run next; tidy the Optuna study; the exit code says whether
    anything trained."""
    say = console.say
    where = "pooled out-of-fold predictions" if settings.cv else "validation patients"
    say(f"\nleaderboard of {settings.name} ({len(mine)} trials, ranked by {settings.metric} on the {where}):")
    if len(mine):
        say(leaderboard.render(mine, [c for c in SEARCH_END_COLUMNS if c in mine.columns]))
        say(f"(every column: python search/leaderboard.py --search {quote(settings.name)} --columns all"
            f"{_board_flag(settings, '--path')})")
    for line in front_lines(mine):  # multi-objective searches only
        say(line)
    if tie_line(mine):  # the trials the validation patients cannot tell from the winner
        say(tie_line(mine))
    say(summary)
    for warning in single_class_warnings(mine):
        say(warning)
    pending = len({result_trial_id(result) for result in grid} - set(mine["trial_id"]))
    if pending and not run.budget_spent():  # an interrupt left trials to --resume
        say(f"search interrupted with {pending} trial(s) unfinished; continue it with: {settings.resume_command()}")
        return 1
    try:
        if settings.scheduler != "pbt":  # a PBT search has no Optuna study
            close_open_optuna_trials(settings, run.budget_spent(), say)
    except Exception as failure:  # noqa: BLE001 - tidying the study must not fail a finished search
        say(f"warning: could not check the Optuna study {settings.name} for open trials: {failure}")
    if not (mine["epochs_run"].fillna(0) > 0).any():
        budget = f" within --time-budget {settings.time_budget:g} s" if settings.time_budget else ""
        console.error(f"no trial of {settings.name} trained a single epoch{budget}")
        return 1
    say(next_steps(settings))
    return 0 if (mine["status"] != "error").any() else 1


def goal(settings: SearchSettings) -> str:
    """What the sampler optimises, in words: "maximising balanced_accuracy", or with several objectives
    "maximising balanced_accuracy and minimising num_parameters" (the scheduler stops on the first)."""
    words = {"max": "maximising", "min": "minimising"}
    return " and ".join(f"{words[direction(o)]} {o}" for o in (settings.objectives or [settings.metric]))


def single_class_warnings(mine: Any) -> list[str]:
    """Lines about trials that call (almost) every validation cell one class, the winner's first."""
    flagged = mine[mine["single_class"].fillna(False).astype(bool)] if len(mine) else mine
    if not len(flagged):
        return []
    lines = [f"note: {len(flagged)} of {len(mine)} trials call {SINGLE_CLASS_SHARE:.0%} or more of the validation "
             f"cells one class (column single_class): they learnt the class ratio, not the cells"]
    winner = mine.iloc[0]
    if bool(winner.get("single_class")):
        lines.append(f"warning: the winner {winner['trial_id']} is one of them (it calls "
                     f"{winner['predicted_all']:.0%} of the validation cells ALL): do not trust its ranking")
    return lines


def _board_flag(settings: SearchSettings, flag: str) -> str:
    """` <flag> <leaderboard>` for a command that reads the leaderboard, unless it is the default one."""
    results = Path(settings.results)
    return "" if results == Path(RESULTS).resolve() else f" {flag} {quote(str(leaderboard_path(results)))}"


def next_steps(settings: SearchSettings) -> str:
    """The commands that come next, with this search's own name and folders filled in, shell-quoted: each line pastes
    into a shell as it is, whatever the folders are called."""
    results, board, name = Path(settings.results), _board_flag(settings, "--leaderboard"), quote(settings.name)
    return "\n".join([
        "next:",
        f"  python search/evaluate.py --search {name} --top 3{board}   # the top trials on unseen test patients",
        f"  python search/report.py --search {name}{board}   # HTML report: {results / settings.name / REPORT}",
        *([] if settings.scheduler == "pbt" else [
            f"  optuna-dashboard {quote(dashboard_target(study_url(settings)))}   # the study '{settings.name}'"]),
        f"  tensorboard --logdir {quote(in_storage(settings.storage, settings.name))}"
        f"   # learning curves of every trial"])


def close_open_optuna_trials(settings: SearchSettings, spent: bool, say=print) -> int:
    """Once every Tune trial of the search has ended, a trial still RUNNING in its Optuna study is one Tune never
    reported back: cut by the time budget (Tune ends such trials without telling the searcher; PRUNED at its last
    value when it trained, as the row's time_budget), never started, or left by a driver killed between Optuna's
    ask and Tune's state save (FAIL). The study then shows no live trials."""
    study = optuna.load_study(study_name=settings.name, storage=optuna_storage(study_url(settings)))
    closed = {"PRUNED": [], "FAIL": []}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        state = optuna.trial.TrialState.PRUNED if spent and trial.intermediate_values else optuna.trial.TrialState.FAIL
        study.tell(trial.number, state=state)
        closed[state.name].append(trial.number)
    if closed["PRUNED"]:
        say(f"closed Optuna trial(s) {closed['PRUNED']} of study {settings.name} as PRUNED: cut by the time budget")
    if closed["FAIL"]:
        why = "the time budget ended the search before they trained" if spent else "orphans of an interrupted driver"
        say(f"closed Optuna trial(s) {closed['FAIL']} of study {settings.name} as FAIL: {why}")
    return len(closed["PRUNED"]) + len(closed["FAIL"])


def summary_line(rows: Any, wall_s: float, slot_seconds: float) -> str:
    """Wall time; per trial the time in the training function against the rest of its time as the driver saw it
    (the trial's overhead); and the share of the trial slots' time (Tune's wall time x trials at once) not spent
    training: start-ups, scheduling gaps and slots left idle, everything the user waits for."""
    timed = rows.dropna(subset=["train_seconds"]) if len(rows) else rows
    if not len(timed):
        return f"wall time {wall_s:.0f} s; no trial reported"
    train = timed["train_seconds"].astype(float)
    overhead = timed["overhead_seconds"].dropna().astype(float)
    share = overhead.sum() / max(1e-9, train.sum() + overhead.sum())
    idle = max(0.0, 1.0 - train.sum() / max(1e-9, slot_seconds))
    per_trial = (f"{overhead.median():.1f} s overhead ({share:.0%} of trial time)" if len(overhead) else
                 "overhead not measured (no trial ended on its own)")
    return (f"wall time {wall_s:.0f} s for {len(rows)} trials; per trial median {train.median():.1f} s training and "
            f"{per_trial}; {idle:.0%} of the trial slots' time was not training")


__all__ = ["run_search", "build_tuner", "tune_config", "run_config", "trainable_for", "trial_request", "optuna_storage", "study_url",
           "summary_line", "next_steps", "close_open_optuna_trials"]
