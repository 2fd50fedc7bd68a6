"""The Ray side of `search/run.py`: plan, prepare data, build the Tuner (or restore it), fit, write the leaderboard.

    code = run_search(args, started)   # args from search.run.resolve_args; Ray already initialised

Order matters: the concurrency plan is checked first (an impossible request fails before any data work), then the
data is decoded and `ray.put` once, then Tune runs with one `LeaderboardCallback` row per ended trial, and at the end
every trial of the ResultGrid is written again (same (search, trial_id) key: replaced, never duplicated).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search import leaderboard
from search.data import prepare_data
from search.plan import TrialResources, cluster_nodes, driver_resources, plan_for_cluster
from search.rows import LeaderboardCallback, RecordingASHA, SearchContext, rows_from_grid
from search.spaces import SearchSpace
from search.trial import TRAIN_RUNS_DIR, TrialSettings, run_trial


def _join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


def optuna_storage(results: str):
    """The study lives in results/optuna.db (one SQLite file, a study per search): `optuna-dashboard sqlite:///...`."""
    import optuna

    Path(results).mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{Path(results) / 'optuna.db'}")


def run_search(args: argparse.Namespace, started: float) -> int:
    resources = TrialResources(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker)
    plan = plan_for_cluster(resources)  # ValueError naming the flag when no node can ever hold a trial
    print(f"plan: {plan.reason}", flush=True)
    if not args.resume:
        from search.run import save_or_load_settings

        save_or_load_settings(args, write=True)  # results/searches/<name>.json, read back by --resume

    data = prepare_data(args.data, args.image_sizes, split_seed=args.seed, progress=True)
    print(data.describe(), flush=True)
    data.write_split(Path(args.results) / args.name / "split.json")  # read by search/evaluate.py
    refs = data.put()
    settings = TrialSettings(workers=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures,
                             train_storage=_join(args.storage, args.name, TRAIN_RUNS_DIR), metric=args.metric)
    trainable = tune.with_resources(tune.with_parameters(run_trial, data_refs=refs, settings=settings.to_dict()),
                                    driver_resources(plan.driver_cpus, cluster_nodes()))
    context = SearchContext(search=args.name, metric=args.metric, max_epochs=args.max_epochs,
                            data_fingerprint=data.fingerprint, data_generated=data.generated, data_root=data.root,
                            code_version=leaderboard.code_version(), time_budget_s=args.time_budget)
    board = str(Path(args.results) / "leaderboard.parquet")
    experiment = _join(args.storage, args.name)

    if args.resume:
        if not tune.Tuner.can_restore(experiment):
            raise ValueError(f"--resume: no Tune experiment at {experiment}")
        print(f"resuming {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        scheduler = RecordingASHA(time_attr="epoch", max_t=args.max_epochs, grace_period=args.grace_epochs,
                                  reduction_factor=args.reduction_factor, metric=args.metric, mode="max",
                                  search=args.name)
        space = SearchSpace(args.family, image_sizes=args.image_sizes, batch_sizes=args.batch_sizes,
                            epochs=args.max_epochs, seed=args.seed)
        import optuna

        searcher = OptunaSearch(space=space, metric=args.metric, mode="max", study_name=args.name,
                                storage=optuna_storage(args.results),
                                sampler=optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=min(
                                    10, max(2, args.num_samples // 3))))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=args.num_samples,
                                        max_concurrent_trials=plan.max_concurrent_trials,
                                        time_budget_s=args.time_budget),
            run_config=tune.RunConfig(name=args.name, storage_path=args.storage, verbose=1,
                                      callbacks=[LeaderboardCallback(context, board)]))
    print(f"search {args.name}: {args.num_samples} trials of {'+'.join(args.family)} at "
          f"{'/'.join(map(str, args.image_sizes))} px, up to {args.max_epochs} epochs (ASHA grace "
          f"{args.grace_epochs}), {plan.max_concurrent_trials} at once; storage {experiment}", flush=True)
    grid = tuner.fit()

    rows = rows_from_grid(context, grid)
    table = leaderboard.append_rows(board, rows) if rows else leaderboard.read(board)
    mine = leaderboard.rank_table(table, search=args.name)
    print(f"\nleaderboard of {args.name} ({len(mine)} trials; all searches: {board}):")
    if len(mine):
        leaderboard.main(["--path", board, "--search", args.name, "--columns", ",".join(
            [*leaderboard.KEY_COLUMNS, "asha_stopped", "train_seconds"])])
    print(summary_line(grid, time.time() - started), flush=True)
    # every trial of the grid has a row unless an interrupt cut it short (rows written before a kill count too)
    pending = len({_trial_id(result) for result in grid} - set(mine["trial_id"]))
    if pending:  # an interrupt left trials unfinished; their rows are written when --resume finishes them
        print(f"search interrupted with {pending} trial(s) unfinished; continue it with: python search/run.py "
              f"--resume --name {args.name} --results {args.results} --storage {args.storage}", flush=True)
        return 1
    try:
        fail_orphaned_optuna_trials(args)
    except Exception as failure:  # noqa: BLE001 - tidying the study must not fail a finished search
        print(f"warning: could not check the Optuna study {args.name} for orphaned trials: {failure}", flush=True)
    return 0 if any(r["status"] != "error" for r in rows) else 1


def fail_orphaned_optuna_trials(args: argparse.Namespace) -> int:
    """Once every Tune trial of the search has ended, any trial still RUNNING in its Optuna study is an orphan (the
    driver was killed between Optuna's ask and Tune's state save): mark it FAIL so the study shows no live trials."""
    import optuna

    study = optuna.load_study(study_name=args.name, storage=optuna_storage(args.results))
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if orphans:
        print(f"marked {len(orphans)} orphaned Optuna trial(s) {orphans} of study {args.name} as FAIL", flush=True)
    return len(orphans)


def _trial_id(result) -> str:
    from search.rows import _trial_id_from_path

    return (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)


def summary_line(grid, wall_s: float) -> str:
    """Wall time and, per trial, the Tune trial's total time against the time its workers spent in training."""
    totals, training = [], []
    for result in grid:
        metrics = result.metrics or {}
        if "time_total_s" in metrics and "train_seconds" in metrics:
            totals.append(float(metrics["time_total_s"]))
            training.append(float(metrics["train_seconds"]))
    if not totals:
        return f"wall time {wall_s:.0f} s; no trial reported"
    n = len(totals)
    mean_total, mean_train = sum(totals) / n, sum(training) / n
    return (f"wall time {wall_s:.0f} s for {len(grid)} trials; per trial mean {mean_total:.1f} s in Tune, of which "
            f"{mean_train:.1f} s in the training function and {mean_total - mean_train:.1f} s starting the worker "
            f"group (Ray Train overhead)")


__all__ = ["run_search", "optuna_storage", "summary_line"]
