"""Two-stage selection (`--rerank-top N`): after a search on one validation split, re-train its top N configs with
K-fold cross-validation by patient and choose the winner on the pooled out-of-fold figure.

    code = rerank(settings, plan, console, mine, data, context, trial, trainable_for)   # mine: the ranked rows

The re-trained trials are a second search, `<name>-rerank` (its own Tune experiment and leaderboard rows, stage
"rerank", each row's `reranked_from` naming the first-stage trial whose config it re-trains). Every config trains
its K fold models for the search's --max-epochs, none stopped early: N x K trainings instead of K times every trial
(--cv). Its winner is the first row of `<name>-rerank`, whose checkpoint holds the K fold models: evaluate it with
`search/evaluate.py --search <name>-rerank`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any, Callable

import pandas as pd
from ray import tune
from ray.tune.search import BasicVariantGenerator

from leukmodels.config import TrainConfig
from leukmodels.values import plain
from search.board import leaderboard
from search.board.search_files import BackgroundCopies
from search.tuning.console import Console, ConsoleCallback
from search.tuning.crossval import config_key, cv_refs, describe_folds
from search.tuning.data import SearchData
from search.board.paths import in_storage, leaderboard_path, split_path
from search.board.settings import SearchSettings
from search.tuning.plan import Plan
from search.tuning.rows import SearchRun, TrialRecorder
from search.tuning.rows import LeaderboardCallback, SearchContext, rows_from_grid
from search.tuning.trial import TRAIN_RUNS_DIR, TrialSettings, checkpoint_config

STAGE = "rerank"
SUFFIX = "-rerank"  # the second stage's search name: <search><SUFFIX>
SHOWN = ["rank", "trial_id", "reranked_from", "family", "balanced_accuracy", "weighted_f1", "filters", "depth", "lr"]


def rerank_name(search: str) -> str:
    return f"{search}{SUFFIX}"


def top_configs(mine: pd.DataFrame, n: int) -> tuple[list[dict], dict[str, str]]:
    """The TrainConfig dicts of the search's top `n` rows that trained (rank order) and {config_key: trial id}."""
    fields = list(TrainConfig().to_dict())
    usable = mine[(mine["status"] != "error") & mine[mine["metric"].iloc[0]].notna()] if len(mine) else mine
    configs, origins = [], {}
    for _, row in usable.sort_values("rank", kind="stable").head(n).iterrows():
        config = TrainConfig.from_dict({key: plain(row[key]) for key in fields}).to_dict()
        configs.append(config)
        origins.setdefault(config_key(config), str(row["trial_id"]))
    return configs, origins


def rerank(settings: SearchSettings, plan: Plan, console: Console, mine: pd.DataFrame, data: SearchData,
           context: SearchContext, trial: TrialSettings, trainable_for: Callable[[TrialSettings, dict], Any]) -> int:
    """Re-train the top --rerank-top configs of the finished search with --rerank-folds folds; write and show the
    rerank rows and the winner chosen on the cross-validated figure. `context`, `trial` and `trainable_for` are
    the first stage's (search/tuning/tuner.py). Returns the exit code."""
    configs, origins = top_configs(mine, settings.rerank_top)
    name = rerank_name(settings.name)
    if len(configs) < 2:
        console.say(f"rerank: {len(configs)} trial(s) of {settings.name} trained; nothing to re-rank")
        return 0
    fold_of, refs = cv_refs(data, settings.rerank_folds, seed=settings.seed)
    console.say(f"\nrerank: the top {len(configs)} trials of {settings.name} re-trained with cross-validation as "
                f"search {name}, {settings.max_epochs} epochs each, none stopped early")
    console.say(describe_folds(data, fold_of, settings.rerank_folds))
    split_path(settings.results, name).parent.mkdir(parents=True, exist_ok=True)
    # evaluate.py reads it
    shutil.copyfile(split_path(settings.results, settings.name), split_path(settings.results, name))
    context = dataclasses.replace(context)
    context.search, context.searcher, context.scheduler, context.stage = name, "rerank", "fifo", STAGE
    context.origins = origins
    run = SearchRun()  # the second stage's own: its trials' records (no deadline, no early stops)
    copies = BackgroundCopies(settings.storage, name, settings.results)  # inert without --storage
    recorder = LeaderboardCallback(context, str(leaderboard_path(settings.results)), run, copies)
    progress = ConsoleCallback(run=run, metric=settings.metric, num_samples=len(configs),
                               max_epochs=settings.max_epochs, console=console)
    trial = dataclasses.replace(trial, cv=True, train_storage=in_storage(settings.storage, name, TRAIN_RUNS_DIR))
    tuner = tune.Tuner(
        # every key must be in the space for points_to_evaluate to set it: each a choice of the values the configs hold
        trainable_for(trial, refs), param_space={key: tune.choice(list(dict.fromkeys(c[key] for c in configs)))
                                                    for key in configs[0]},
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=configs),
                                    num_samples=len(configs), max_concurrent_trials=plan.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=settings.storage, verbose=1,
                                  callbacks=[TrialRecorder(run), recorder, progress],
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                  checkpoint_config=checkpoint_config(settings.metric, "max", for_tune=True)))
    grid = tuner.fit()
    rows = rows_from_grid(context, run, grid)
    table = leaderboard.append_rows(leaderboard_path(settings.results), rows) if rows else leaderboard.read(
        leaderboard_path(settings.results))
    ranked = leaderboard.rank_table(table, search=name)
    for line in winner_lines(mine, ranked, settings.metric, settings.results, name):
        console.say(line)
    return 0 if len(ranked) and (ranked["status"] != "error").any() else 1


def winner_lines(mine: pd.DataFrame, ranked: pd.DataFrame, metric: str, results: str, name: str) -> list[str]:
    """The rerank leaderboard, and which trial wins on the cross-validated `metric` against the one-split winner.
    `mine` and `ranked` are the two searches' rows, best first (ranks shown within each search); `results` the
    folder of their leaderboard."""
    if not len(ranked):
        return [f"rerank: no trial of {name} ended"]
    folds = [json.loads(text)[metric] if isinstance(text, str) else [] for text in ranked["fold_metrics"]]
    shown = ranked.assign(rank=range(1, len(ranked) + 1),
                          fold_metrics=[" ".join(f"{value:.3f}" for value in values) for values in folds])
    lines = [f"leaderboard of {name} (ranked by pooled out-of-fold {metric}; fold_metrics: its value per fold):",
             leaderboard.render(shown, [c for c in [*SHOWN, "fold_metrics"] if c in shown.columns])]
    winner, first = ranked.iloc[0], mine.iloc[0]
    origin = str(winner.get("reranked_from"))
    position = [i for i, trial in enumerate(mine["trial_id"].astype(str), start=1) if trial == origin]
    where = f"rank {position[0]} of {len(mine)} on the one split" if position else "its rank unknown"
    lines.append(f"winner chosen on the {int(winner['cv_folds'] or 0)}-fold cross-validated {metric}: "
                 f"{winner['trial_id']} ({winner[metric]:.4f}), the config of {origin} ({where}; the one "
                 f"split's winner was {first['trial_id']})")
    lines.append(f"next: python search/evaluate.py --search {name} --top 3 --leaderboard "
                 f"{leaderboard_path(results)}   # the K fold models' mean P(ALL) on unseen test patients")
    return lines


__all__ = ["rerank", "rerank_name", "top_configs", "winner_lines", "STAGE", "SUFFIX"]
