"""What `search/benchmark/runner.py`'s numbers and tables are, computed from plain frames: best-so-far curves, the budget a
strategy needs to reach the baseline's best and its share of the baseline's budget, the per-search table, the
headline, rank correlations, and the Markdown page. No Ray, no torch and no files: the unit tests build the frames.

    curve = best_so_far(records, "balanced_accuracy")      # one search's epoch reports -> epochs, seconds, best
    table = strategy_table(curves, trials, searches, "random-fifo")  # one row per (strategy, seed)
    summary = headline(table)                              # per strategy: medians over seeds, "not reached" counted
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from leukmodels.values import finite_or
from search.benchmark import resampling, selection
from search.board.leaderboard import to_markdown

TOLERANCE = 1e-12  # a best "reaches" a target equal to it up to float noise
CURVE_COLUMNS = ("epochs", "seconds", "best")
SHARE_COLUMNS = ("strategy", "seed", "best_val", "epochs", "seconds", "target", "epochs_to_target", "epochs_share",
                 "seconds_to_target", "seconds_share")


def best_so_far(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One search's epoch reports -> its best-so-far curve, one row per epoch trained, in the order reported.

    records: one row per report with `trial_id`, `epoch`, `reported_at` (wall clock, s), `metric` (NaN allowed: the
    epoch was still trained) and optionally `train_seconds` (seconds since that trial began training). A (trial,
    epoch) reported twice (a retried trial re-reporting) counts once, at its first report. Returns `epochs` (1..n:
    epochs trained by all trials together), `seconds` (since the first trial began training) and `best` (running
    maximum of the metric; NaN until a finite value has been seen)."""
    if records.empty:
        return pd.DataFrame({"epochs": pd.Series(dtype="int64"), "seconds": pd.Series(dtype="float64"),
                             "best": pd.Series(dtype="float64")})
    ordered = records.sort_values("reported_at", kind="stable").drop_duplicates(["trial_id", "epoch"], keep="first")
    reported = ordered["reported_at"].astype(float)
    starts = reported - ordered["train_seconds"].astype(float) if "train_seconds" in ordered else reported
    start = min(reported.min(), starts.min())  # min skips NaN: a report without train_seconds starts at its report
    values = pd.to_numeric(ordered[metric], errors="coerce").astype(float)
    values[~np.isfinite(values)] = np.nan
    return pd.DataFrame({"epochs": np.arange(1, len(ordered) + 1, dtype="int64"),
                         "seconds": (reported - start).to_numpy(),
                         "best": values.cummax().ffill().to_numpy()})


def first_reach(curve: pd.DataFrame, target: float, x: str = "epochs") -> float:
    """The smallest `x` (cumulative epochs or seconds) at which the curve's best is >= target; NaN when it never is
    (or there is no target)."""
    if target is None or not math.isfinite(target):
        return math.nan
    hit = curve.loc[curve["best"] >= target - TOLERANCE, x]
    return float(hit.iloc[0]) if len(hit) else math.nan


def reach_shares(curves: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (strategy, seed), how much of the baseline's budget the strategy needed to reach the baseline's best.

    curves: long frame of every search's best_so_far curve with `strategy` and `seed` columns. A strategy is compared
    with the baseline run of the same seed (same patient split, so the same validation patients). Returns one row
    per (strategy, seed): best_val and epochs and seconds (the end of its curve), target (the baseline's final best),
    epochs_to_target and seconds_to_target (NaN: not reached), epochs_share and seconds_share (to_target / the
    baseline's total; inf when not reached; NaN when the baseline did not run on that seed or has no best)."""
    ends = {key: curve.iloc[-1] for key, curve in curves.groupby(["strategy", "seed"], sort=False)}  # never empty
    out = []
    for (strategy, seed), curve in curves.groupby(["strategy", "seed"], sort=False):
        base = ends.get((baseline, seed))
        target = float(base["best"]) if base is not None else math.nan
        end = ends[strategy, seed]
        row = {"strategy": strategy, "seed": seed, "best_val": float(end["best"]), "epochs": int(end["epochs"]),
               "seconds": float(end["seconds"]), "target": target}
        for x in ("epochs", "seconds"):
            needed = first_reach(curve, target, x)
            total = float(base[x]) if base is not None else math.nan
            row[f"{x}_to_target"] = needed
            row[f"{x}_share"] = (math.nan if not math.isfinite(target) or not total > 0
                                 else math.inf if math.isnan(needed) else needed / total)
        out.append(row)
    return pd.DataFrame(out, columns=list(SHARE_COLUMNS))


def strategy_table(curves: pd.DataFrame, trials: pd.DataFrame, searches: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per search: how it ran (`searches`: strategy, seed, search, exit_code, wall_seconds), its curve's end and
    its reach of the baseline's best (reach_shares), its trials and how many have a test result, and its winner (the
    best-ranked trial that did not fail) with validation and test weighted F1.

    trials: one row per trial with search, trial_id, rank, status, val_weighted_f1 and test_weighted_f1."""
    shares = reach_shares(curves, baseline)
    ranked = trials[trials["status"] != "error"].sort_values(["search", "rank"], kind="stable")
    winners = ranked.groupby("search").head(1).set_index("search")
    winners = winners[["trial_id", "val_weighted_f1", "test_weighted_f1"]].add_prefix("winner_")
    counts = trials.groupby("search").agg(trials=("trial_id", "size"), tested=("test_weighted_f1", "count"))
    table = searches.merge(shares, on=["strategy", "seed"], how="left").join(counts, on="search")
    table[["trials", "tested"]] = table[["trials", "tested"]].fillna(0).astype("int64")
    return table.join(winners, on="search")


def median_share(shares: pd.Series) -> float:
    """Median over seeds, counting a seed that never reached the target (inf) as worse than any that did; NaN
    seeds (no baseline) are left out. inf means the median seed did not reach it."""
    values = shares.to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else math.nan


def _share_cell(share: float) -> str:
    return "n/a" if pd.isna(share) else "not reached" if math.isinf(share) else f"{share:.0%}"


def share_text(share: float, reached: int, seeds: int) -> str:
    """'38% (3/3 seeds)', 'not reached (1/3 seeds)', or 'n/a' without a baseline."""
    return "n/a" if pd.isna(share) else f"{_share_cell(share)} ({reached}/{seeds} seeds)"


def headline(table: pd.DataFrame, order: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per strategy (in `order`), over its seeds: median share of the baseline's epochs and seconds needed to reach
    the baseline's best (inf = not reached by the median seed), how many seeds reached it, and the medians of the
    best validation metric, epochs trained, wall seconds and the winner's test weighted F1.

    table: one row per (strategy, seed) with the reach_shares columns plus wall_seconds and winner_test_weighted_f1."""
    rows = []
    for strategy in order or list(dict.fromkeys(table["strategy"])):
        mine = table[table["strategy"] == strategy]
        rows.append({"strategy": strategy, "seeds": len(mine),
                     "reached": int(np.isfinite(mine["epochs_to_target"].astype(float)).sum()),
                     "epochs_share": median_share(mine["epochs_share"]),
                     "seconds_share": median_share(mine["seconds_share"]),
                     **{f"median_{c}": float(mine[c].astype(float).median())
                        for c in ("best_val", "epochs", "wall_seconds", "winner_test_weighted_f1")}})
    return pd.DataFrame(rows)


def headline_text(summary: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """The headline as the strings a reader sees (console and Markdown)."""
    cell = selection.cell_text
    return pd.DataFrame({
        "strategy": summary["strategy"],
        f"share of {baseline}'s epochs to reach its best": [share_text(s, r, n) for s, r, n in zip(
            summary["epochs_share"], summary["reached"], summary["seeds"])],
        f"share of {baseline}'s seconds": [share_text(s, r, n) for s, r, n in zip(
            summary["seconds_share"], summary["reached"], summary["seeds"])],
        f"best val {metric}": [cell(v, ".4f") for v in summary["median_best_val"]],
        "epochs": [cell(v, ".0f") for v in summary["median_epochs"]],
        "wall s": [cell(v, ".0f") for v in summary["median_wall_seconds"]],
        "winner test weighted F1": [cell(v, ".4f") for v in summary["median_winner_test_weighted_f1"]],
    })


def rank_correlation(trials: pd.DataFrame, x: str, y: str) -> tuple[float, int]:
    """Spearman's rho between columns x and y over the rows that have both (NaN under 3 such rows), and that count."""
    both = trials[[x, y]].astype(float).dropna()
    if len(both) < 3 or both[x].nunique() < 2 or both[y].nunique() < 2:
        return math.nan, len(both)
    return float(both[x].corr(both[y], method="spearman")), len(both)


def correlations(trials: pd.DataFrame, metric: str) -> dict[str, tuple[float, int]]:
    """How well each validation metric ranks trials as the test patients do: Spearman's rho against test weighted F1
    (and the trials counted) for the search metric and for weighted F1, both at the epoch the search kept; over the
    one-split searches' trials (the other selection rules have their own rho: benchmark_selection)."""
    if "rule" in trials:
        trials = trials[trials["rule"] == selection.ONE_SPLIT]
    return {f"val {metric}": rank_correlation(trials, "val_metric", "test_weighted_f1"),
            "val weighted_f1": rank_correlation(trials, "val_weighted_f1", "test_weighted_f1")}


def target_verdict(summary: pd.DataFrame, baseline: str, strategy: str = "tpe-asha", most: float = 0.5) -> str:
    """Issue 12's target in words: `strategy` reaches the baseline's best with at most `most` of its epochs and its
    winner's test weighted F1 is not lower (medians over seeds); '' when either strategy did not run."""
    rows = summary.set_index("strategy")
    if strategy not in rows.index or baseline not in rows.index:
        return ""
    mine, base = rows.loc[strategy], rows.loc[baseline]
    share, f1 = mine["epochs_share"], mine["median_winner_test_weighted_f1"]
    f1_base = base["median_winner_test_weighted_f1"]
    met = bool(share <= most and f1 >= f1_base)  # NaN compares False: not met
    reached = share_text(share, int(mine["reached"]), int(mine["seeds"]))
    return (f"target ({strategy} reaches {baseline}'s best with <= {most:.0%} of its epochs, winner's test weighted "
            f"F1 not lower): {'met' if met else 'NOT met'}: {reached} of the epochs; "
            f"winner test weighted F1 {f1:.4f} vs {f1_base:.4f} (medians over seeds)")


def table_text(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The per-search table as strings (Markdown)."""
    cell = selection.cell_text
    return pd.DataFrame({
        "strategy": table["strategy"], "seed": table["seed"], "exit": table["exit_code"],
        f"best val {metric}": [cell(v, ".4f") for v in table["best_val"]],
        "epochs": [cell(v, ".0f") for v in table["epochs"]],
        "wall s": [cell(v, ".0f") for v in table["wall_seconds"]],
        "epochs to target": ["-" if pd.isna(share) else "not reached" if math.isinf(share) else cell(needed, ".0f")
                             for needed, share in zip(table["epochs_to_target"], table["epochs_share"])],
        "share": [_share_cell(share) for share in table["epochs_share"]],
        "trials (tested)": [f"{n} ({t})" for n, t in zip(table["trials"], table["tested"])],
        "winner": table["winner_trial_id"].fillna("-"),
        "winner val weighted F1": [cell(v, ".4f") for v in table["winner_val_weighted_f1"]],
        "winner test weighted F1": [cell(v, ".4f") for v in table["winner_test_weighted_f1"]]})


@dataclass
class Results:
    """What a benchmark found (built by `search.benchmark.runner.analyse`), rendered by the functions below."""

    name: str
    command: str
    metric: str
    baseline: str
    data: str  # where the images came from, in words ("GENERATED ..." or the C-NMC folder)
    table: pd.DataFrame  # one row per search: strategy_table
    summary: pd.DataFrame  # one row per strategy: headline
    trials: pd.DataFrame  # one row per trial: val_metric, val_weighted_f1, test_*, left_out (why no test result)
    curves: pd.DataFrame  # every search's best_so_far curve, with strategy and seed
    selection: pd.DataFrame = None  # one row per (search, selection rule): benchmark_selection.selection_table
    selection_summary: pd.DataFrame = None  # one row per rule: benchmark_selection.rule_summary
    uncertainty: pd.DataFrame = None  # one row per rule: resampling.regret_uncertainty
    yardstick: dict = None  # the test patients' reliability: resampling.yardstick


def finding_lines(results: Results) -> list[str]:
    """The headline's sentences after its table: rank correlations, trials left out, the issue's target."""
    lines = [f"Spearman rho, {name} vs test weighted F1 over {n} trials: "
             f"{'n/a (under 3 trials or no spread)' if math.isnan(rho) else f'{rho:+.3f}'}"
             for name, (rho, n) in correlations(results.trials, results.metric).items()]
    left = results.trials["left_out"].dropna()
    if len(left):
        lines.append(f"{len(left)} trial(s) left out of the test metrics: "
                     + "; ".join(f"{count} {why}" for why, count in left.value_counts().items()))
    verdict = target_verdict(results.summary, results.baseline)
    cv_verdicts = [target_verdict(results.summary, group, f"tpe-asha{group[len(results.baseline):]}")
                   for group in dict.fromkeys(results.summary["strategy"]) if group.startswith(f"{results.baseline}+")]
    return lines + ([verdict] if verdict else []) + [v for v in cv_verdicts if v] + selection.finding_lines(
        results.selection_summary, results.selection) + resampling.finding_lines(
        results.uncertainty if results.uncertainty is not None else pd.DataFrame(), results.yardstick or {})


def markdown(results: Results, figures: Sequence[str]) -> str:
    """benchmark.md: what ran, on which data, the headline, the per-search table and the figures."""
    parts = [f"# Search efficiency benchmark {results.name}", "",
             f"Data: {results.data}. Validation metric: {results.metric}. Command: `{results.command}`", "",
             f"Share: epochs (or seconds) a strategy trained, all trials together, until its best validation "
             f"{results.metric} first reached {results.baseline}'s final best on the same seed (same validation "
             f"patients), over {results.baseline}'s total; median over seeds, a seed that never reached it counting "
             f"as the worst. Winner: a search's top-ranked trial; test = held-out test patients, never seen by a "
             f"search.", "", "## Headline", "",
             to_markdown(headline_text(results.summary, results.metric, results.baseline)).rstrip(), "",
             *[f"- {line}" for line in finding_lines(results)], "", "## Per strategy and seed", "",
             to_markdown(table_text(results.table, results.metric)).rstrip(), "",
             *selection_markdown(results)]
    return "\n".join(parts + [f"![{name}]({name})\n" for name in figures])


def selection_markdown(results: Results) -> list[str]:
    """benchmark.md's section on the selection rules (none when the benchmark compared one rule only)."""
    if results.selection_summary is None or len(results.selection_summary) < 2:
        return []
    return ["## Selection rules", "", "Per rule over every strategy and seed: where the winner ranks among its search's"
            " trials on the test patients, its regret (the best trial's test weighted F1 minus the winner's), and the "
            "trial training it cost. A rerank winner is ranked and scored as its one-split trial (the same trials "
            "as the one split); its K-fold model's own test F1 is the next column.", "",
            to_markdown(selection.summary_text(results.selection_summary)).rstrip(), ""]


def headline_record(results: Results) -> dict:
    """headline.json: the headline's numbers (a share is null when not reached, with `reached` of `seeds`), the rank
    correlations and the target, for scripts."""
    return {"name": results.name, "command": results.command, "metric": results.metric, "baseline": results.baseline,
            "data": results.data,
            "strategies": [{key: finite_or(value) if isinstance(value, float) else value for key, value in row.items()}
                           for row in results.summary.to_dict("records")],
            "rank_correlation_with_test_weighted_f1": {name: {"spearman": finite_or(rho), "trials": n} for name, (rho, n)
                                                       in correlations(results.trials, results.metric).items()},
            "trials_left_out": int(results.trials["left_out"].notna().sum()),
            "target": target_verdict(results.summary, results.baseline),
            "selection": [] if results.selection_summary is None else [
                _json_safe(row) for row in results.selection_summary.to_dict("records")],
            "selection_uncertainty": [] if results.uncertainty is None else [
                _json_safe(row) for row in results.uncertainty.to_dict("records")],
            "yardstick": _json_safe(results.yardstick or {})}


def _json_safe(record: dict) -> dict:
    """The record with non-finite floats as None (finite_or), as headline.json holds them."""
    return {key: finite_or(value) if isinstance(value, float) else value for key, value in record.items()}


def console_lines(results: Results, written: Sequence[Path]) -> list[str]:
    """The console's closing summary: the headline, its findings, the files and what to look at first."""
    shown = headline_text(results.summary, results.metric, results.baseline)
    rules = results.selection_summary
    chosen = ([f"selection rules ({results.data}):", selection.summary_text(rules).to_string(index=False)]
              if rules is not None and len(rules) > 1 else [])
    return ["", f"headline ({results.data}; medians over seeds):", shown.to_string(index=False), *chosen,
            *finding_lines(results), "", f"wrote {written[0].parent}/: {', '.join(p.name for p in written)}",
            f"look at {written[0]} first (headline and per-seed table), then {written[-2].name} (best-so-far against "
            f"epochs trained); per-search logs in {written[0].parent / 'logs'}"]


__all__ = ["Results", "console_lines", "strategy_table", "table_text", "finding_lines", "markdown", "headline_record",
           "correlations", "target_verdict", "best_so_far", "first_reach", "reach_shares", "median_share",
           "share_text", "headline", "headline_text", "rank_correlation", "CURVE_COLUMNS", "SHARE_COLUMNS"]
