"""Which selection rule picks a model that holds on unseen patients, and at what cost (`python -m search.benchmark
--cv K --rerank-top N`): per search, its winner's rank among its own trials on the test patients and its regret (the
best trial's test weighted F1 minus the winner's); per rule, those over every strategy and seed, the rank correlation
of the selection figure with the test, and the training it cost in CPU-hours (trial training seconds; one CPU per
trial here, one GPU per trial on the gpu profile). No Ray, no torch, no files: the unit tests build the frames.

Rules: "one split" (the search's own validation patients), "cvK" (every trial scored on K-fold pooled out-of-fold
predictions) and "rerankN" (the one-split search's top N configs re-trained with K folds; the winner is the config
with the best cross-validated figure, ranked and scored as its one-split trial, so that the rule is compared on the
same trials as the one split; the K-fold model's own test figure is `model_test_weighted_f1`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd

from leukmodels.values import missing
from search.tuning.rerank import rerank_name

if TYPE_CHECKING:
    from search.benchmark.runner import Search

ONE_SPLIT = "one split"
SELECTION_COLUMNS = ("strategy", "seed", "rule", "search", "trials", "winner", "winner_test_weighted_f1",
                     "median_test_weighted_f1", "best_test_weighted_f1", "winner_test_rank", "regret",
                     "at_least_median", "model_test_weighted_f1", "spearman", "cpu_hours")


def rule_of(search: Search) -> str:
    return f"cv{search.cv}" if search.cv else ONE_SPLIT


def rerank_searches(searches: list[Search]) -> list[tuple[Search, str]]:
    """The second stage of every --rerank-top search, as (a Search named <name>-rerank, its strategy label, its
    selection rule)."""
    return [(dataclasses.replace(s, name=rerank_name(s.name), cv=s.rerank_folds, rerank=0),
             f"{s.strategy}+rerank{s.rerank}", f"rerank{s.rerank}") for s in searches if s.rerank]


def strategy_groups(searches: list[Search], baseline: str) -> list[tuple[str, list[str]]]:
    """(baseline label, strategy labels) per --cv setting: a cross-validated search is measured against the baseline
    strategy on the same selection rule (the same objective on the same patients)."""
    groups: dict[int, list[str]] = {}
    for search in searches:
        groups.setdefault(search.cv, [])
        if search.label not in groups[search.cv]:
            groups[search.cv].append(search.label)
    return [(f"{baseline}+cv{cv}" if cv else baseline, labels) for cv, labels in groups.items()]


def spearman(frame: pd.DataFrame, x: str = "val_metric", y: str = "test_weighted_f1") -> float:
    both = frame[[x, y]].astype(float).dropna()
    if len(both) < 3 or both[x].nunique() < 2 or both[y].nunique() < 2:
        return math.nan
    return float(both[x].corr(both[y], method="spearman"))


def winner_figures(candidates: pd.DataFrame, winner_id: Optional[str]) -> dict:
    """The winner's test figures among `candidates` (trials with test_weighted_f1): its rank there (1 = the best on
    the test patients; ties share the better rank), its regret, and the median and best trial's."""
    tested = candidates.dropna(subset=["test_weighted_f1"])
    mine = tested[tested["trial_id"].astype(str) == str(winner_id)]
    if not len(tested) or not len(mine):
        return {"trials": len(tested), "winner": winner_id}
    f1, scores = float(mine["test_weighted_f1"].iloc[0]), tested["test_weighted_f1"].astype(float)
    return {"trials": len(tested), "winner": str(winner_id), "winner_test_weighted_f1": f1,
            "median_test_weighted_f1": float(scores.median()), "best_test_weighted_f1": float(scores.max()),
            "winner_test_rank": int((scores > f1 + 1e-12).sum()) + 1, "regret": float(scores.max() - f1),
            "at_least_median": bool(f1 >= scores.median() - 1e-12)}


def _first(trials: pd.DataFrame) -> Optional[pd.Series]:
    ranked = trials[trials["status"] != "error"].sort_values("rank", kind="stable")
    return ranked.iloc[0] if len(ranked) else None


def selection_table(trials: pd.DataFrame, searches: list[Search]) -> pd.DataFrame:
    """One row per (search, rule): the winner's test rank, regret and the rule's cost (SELECTION_COLUMNS)."""
    rows = []
    for search in searches:
        mine = trials[trials["search"] == search.name]
        winner = _first(mine)
        base = {"strategy": search.strategy, "seed": search.seed, "search": search.name}
        rows.append({**base, "rule": rule_of(search), **winner_figures(mine, None if winner is None else
                                                                         winner["trial_id"]),
                     "model_test_weighted_f1": None if winner is None else winner.get("test_weighted_f1"),
                     "spearman": spearman(mine), "cpu_hours": mine["train_seconds"].fillna(0).sum() / 3600})
        if not search.rerank:
            continue
        second = trials[trials["search"] == rerank_name(search.name)]
        top = _first(second)
        origin = None if top is None else top.get("reranked_from")
        # rho of the K-fold figure of the re-trained configs against their one-split trials' test figures
        paired = second[["reranked_from", "val_metric"]].merge(
            mine[["trial_id", "test_weighted_f1"]], left_on="reranked_from", right_on="trial_id")
        rows.append({**base, "rule": f"rerank{search.rerank}", **winner_figures(mine, origin),
                     "model_test_weighted_f1": None if top is None else top.get("test_weighted_f1"),
                     "spearman": spearman(paired),
                     "cpu_hours": (mine["train_seconds"].fillna(0).sum() + second["train_seconds"].fillna(0).sum())
                     / 3600})
    return pd.DataFrame(rows).reindex(columns=list(SELECTION_COLUMNS))


def rule_summary(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per rule over every search: median and mean regret, median winner test rank (of how many), searches whose
    winner is at or above their median trial, Spearman rho over all its trials (selection figure vs test), median
    CPU-hours per search, and the regret it saves per extra CPU-hour against the one split."""
    rows = []
    for rule, mine in table.groupby("rule", sort=False):
        pooled = trials[trials["rule"] == rule]
        rows.append({"rule": rule, "searches": len(mine), "median_regret": float(mine["regret"].median()),
                     "mean_regret": float(mine["regret"].mean()),
                     "median_winner_test_rank": float(mine["winner_test_rank"].median()),
                     "median_trials": float(mine["trials"].median()),
                     "at_least_median": int(mine["at_least_median"].fillna(False).astype(bool).sum()),
                     "median_winner_test_weighted_f1": float(mine["winner_test_weighted_f1"].median()),
                     "median_model_test_weighted_f1": float(pd.to_numeric(mine["model_test_weighted_f1"]).median()),
                     "spearman_all_trials": spearman(pooled) if not rule.startswith("rerank") else float(
                         mine["spearman"].median()),
                     "median_cpu_hours": float(mine["cpu_hours"].median())})
    summary = pd.DataFrame(rows)
    if len(summary) and (summary["rule"] == ONE_SPLIT).any():
        single = summary[summary["rule"] == ONE_SPLIT].iloc[0]
        extra = summary["median_cpu_hours"] - single["median_cpu_hours"]
        saved = single["mean_regret"] - summary["mean_regret"]
        summary["regret_saved_per_extra_cpu_hour"] = np.where(extra > 0, saved / extra.where(extra > 0), np.nan)
    return summary


def cell_text(value: Any, spec: str) -> str:
    """A table cell: `value` formatted with `spec`, "-" when it is missing."""
    return "-" if missing(value) else format(value, spec)


def summary_text(summary: pd.DataFrame) -> pd.DataFrame:
    """The rule summary as the strings a reader sees."""
    return pd.DataFrame({
        "selection rule": summary["rule"], "searches": summary["searches"],
        "winner test rank (median, of n)": [f"{cell_text(r, '.1f')} of {cell_text(n, '.0f')}" for r, n in zip(
            summary["median_winner_test_rank"], summary["median_trials"])],
        "regret median / mean": [f"{cell_text(a, '.4f')} / {cell_text(b, '.4f')}" for a, b in zip(
            summary["median_regret"], summary["mean_regret"])],
        "winner >= median trial": [f"{a}/{n}" for a, n in zip(summary["at_least_median"], summary["searches"])],
        "winner test F1": [cell_text(v, ".4f") for v in summary["median_winner_test_weighted_f1"]],
        "its model's test F1": [cell_text(v, ".4f") for v in summary["median_model_test_weighted_f1"]],
        "Spearman rho": [cell_text(v, "+.3f") for v in summary["spearman_all_trials"]],
        "CPU-hours per search": [cell_text(v, ".3f") for v in summary["median_cpu_hours"]],
        "regret saved per extra CPU-hour": [cell_text(v, ".3f") for v in summary.get(
            "regret_saved_per_extra_cpu_hour", pd.Series([np.nan] * len(summary)))]})


def finding_lines(summary: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The selection headline in sentences: the rule with the lowest regret, the issue-19 checks for each CV rule."""
    if summary is None or not len(summary):
        return []
    best = summary.sort_values(["mean_regret", "median_cpu_hours"]).iloc[0]
    lines = [f"selection: lowest mean regret with '{best['rule']}' ({best['mean_regret']:.4f}, median "
             f"{best['median_cpu_hours']:.3f} CPU-hours per search of trial training)"]
    single = summary[summary["rule"] == ONE_SPLIT]
    for _, row in summary[summary["rule"] != ONE_SPLIT].iterrows():
        half = float(single["mean_regret"].iloc[0]) / 2 if len(single) else math.nan
        mine = table[table["rule"] == row["rule"]]
        every = bool(mine["at_least_median"].fillna(False).astype(bool).all())
        lines.append(f"{row['rule']}: Spearman rho {cell_text(row['spearman_all_trials'], '+.3f')} "
                     f"({'>= 0.7' if row['spearman_all_trials'] >= 0.7 else 'below 0.7'}); winner at or above the "
                     f"median trial in {int(row['at_least_median'])}/{int(row['searches'])} searches "
                     f"({'every' if every else 'NOT every'} search); mean regret {row['mean_regret']:.4f} vs one "
                     f"split's {2 * half:.4f} ({'at most' if row['mean_regret'] <= half + 1e-12 else 'MORE than'} "
                     f"half)")
    return lines


__all__ = ["ONE_SPLIT", "SELECTION_COLUMNS", "cell_text", "finding_lines", "rerank_searches", "rule_of", "rule_summary",
           "selection_table", "spearman", "strategy_groups", "summary_text", "winner_figures"]
