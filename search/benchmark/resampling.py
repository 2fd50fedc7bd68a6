"""How sure a benchmark's selection figures are: a bootstrap over its seeds and its test patients, and the
reliability of the test patients as a yardstick. No Ray, no torch, no files: the unit tests build the arrays.

Issue 19 measured two rules whose mean regrets differed by 0.01 on 5 seeds and could not say whether that was a
difference. Here each of RESAMPLES resamples draws the seeds with replacement, the same draw for every rule (the rules
are compared on the same seeds), and the test patients within their class (leukmodels.bootstrap.patient_counts); every
trial is rescored on those patients from its per-patient confusion counts, and a winner stays the trial its rule chose
on its own data. Per rule: the 95% interval of its mean regret and, against the one split, of the difference and the
share of resamples in which the rule's is lower.

The yardstick: split the test patients into two halves (within class) HALVES times and rank the trials on each; the
mean Spearman rho of the halves, stepped up to the whole set (Spearman-Brown), is how reliably these patients rank
trials. Its square root bounds the rho any selection figure can reach against them (a figure that knew each trial's
true quality would still be compared with a noisy test).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from leukmodels.bootstrap import patient_counts, percentile_interval
from leukmodels.metrics import metrics_of_counts
from search.benchmark.selection import ONE_SPLIT

RESAMPLES = 1000
HALVES = 200
SEED = 0
UNCERTAINTY_COLUMNS = ("rule", "mean_regret_lo", "mean_regret_hi", "vs_one_split_lo", "vs_one_split_hi",
                       "lower_than_one_split")


@dataclass(frozen=True)
class TestScores:
    """The trials tested on one test set: their index in the benchmark's trials frame, their per-patient confusion
    counts (trials x P x 4: tp, fn, fp, tn) and each patient's class (P, True for ALL)."""
    trials: list
    counts: np.ndarray
    patient_all: np.ndarray


def group_by_test_set(confusions: dict) -> list[TestScores]:
    """{trial index: (test set key, patient names, P x 4 counts)} -> one TestScores per test set."""
    groups: dict = {}
    for index, (key, _, counts) in confusions.items():
        groups.setdefault(key, []).append((index, counts))
    out = []
    for members in groups.values():
        counts = np.stack([c for _, c in members])
        patient_all = counts[0, :, :2].sum(axis=1) >= counts[0, :, 2:].sum(axis=1)  # a patient's cells share a label
        out.append(TestScores([i for i, _ in members], counts, patient_all))
    return out


def weighted_f1(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Test weighted F1, resamples x trials, of trials x P x 4 counts with each patient weighed by resamples x P."""
    pooled = np.einsum("bp,tpk->btk", weights, counts)
    return metrics_of_counts(pooled.reshape(-1, 4))["weighted_f1"].reshape(pooled.shape[:2])


def resampled_test_f1(sets: list[TestScores], resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Every tested trial's weighted F1 on each resample of its test patients: resamples x trials (columns: the
    trials frame's index)."""
    frames = [pd.DataFrame(weighted_f1(s.counts, patient_counts(s.patient_all, resamples, seed + n)), columns=s.trials)
              for n, s in enumerate(sets)]
    return pd.concat(frames, axis=1) if frames else pd.DataFrame()


def search_regrets(f1: pd.DataFrame, trials: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Regret on each resample (resamples x rows of `chosen`, the selection table): the best of the search's tested
    trials minus its winner. A row whose winner was not tested is left out."""
    out = {}
    for row_at, row in chosen.iterrows():
        mine = trials.index[(trials["search"] == row["search"]) & trials.index.isin(f1.columns)]
        winner = [i for i in mine if str(trials.at[i, "trial_id"]) == str(row["winner"])]
        if winner:
            out[row_at] = f1[mine].max(axis=1) - f1[winner[0]]
    return pd.DataFrame(out)


def rule_means(regrets: pd.DataFrame, chosen: pd.DataFrame, draws: np.ndarray, seeds: list) -> dict[str, np.ndarray]:
    """Each rule's mean regret per resample: the mean over the drawn seeds (resamples x len(seeds) positions in
    `seeds`) of the mean over that seed's searches."""
    out = {}
    for rule, rows in chosen.loc[regrets.columns].groupby("rule", sort=False):
        per_seed = np.column_stack([regrets[rows.index[rows["seed"] == s]].mean(axis=1).to_numpy() for s in seeds])
        out[rule] = np.nanmean(np.take_along_axis(per_seed, draws, axis=1), axis=1)
    return out


def regret_uncertainty(trials: pd.DataFrame, chosen: pd.DataFrame, confusions: dict,
                       resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """UNCERTAINTY_COLUMNS per rule of the selection table `chosen`: its mean regret's 95% interval and, for a rule
    other than the one split, the interval of its mean regret minus the one split's and the share of resamples where
    it is lower. Empty without tested winners."""
    f1 = resampled_test_f1(group_by_test_set(confusions), resamples, seed)
    regrets = search_regrets(f1, trials, chosen) if len(f1.columns) else pd.DataFrame()
    if not len(regrets.columns):
        return pd.DataFrame(columns=list(UNCERTAINTY_COLUMNS))
    seeds = sorted(chosen.loc[regrets.columns, "seed"].unique())
    draws = np.random.default_rng(seed).integers(0, len(seeds), size=(len(f1), len(seeds)))
    means = rule_means(regrets, chosen, draws, seeds)
    rows = []
    for rule, values in means.items():
        row = dict(zip(("mean_regret_lo", "mean_regret_hi"), percentile_interval(values)), rule=rule)
        if rule != ONE_SPLIT and ONE_SPLIT in means:
            difference = values - means[ONE_SPLIT]
            row.update(zip(("vs_one_split_lo", "vs_one_split_hi"), percentile_interval(difference)))
            row["lower_than_one_split"] = float(np.mean(difference[np.isfinite(difference)] < 0))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(UNCERTAINTY_COLUMNS))


def split_half_reliability(scores: TestScores, halves: int = HALVES, seed: int = SEED) -> float:
    """Spearman-Brown reliability of the trials' test weighted F1 ranking: the mean Spearman rho between the rankings
    of two random halves of the test patients (drawn within class), stepped up to the whole set. nan under 3
    trials or 2 patients a class."""
    classes = [np.flatnonzero(scores.patient_all), np.flatnonzero(~scores.patient_all)]
    if len(scores.trials) < 3 or min(len(c) for c in classes) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(halves):
        first = np.zeros(scores.patient_all.size, dtype=bool)
        for members in classes:
            first[rng.permutation(members)[:members.size // 2]] = True
        a, b = (weighted_f1(scores.counts, side[None, :].astype(float))[0] for side in (first, ~first))
        rho = pd.Series(a).corr(pd.Series(b), method="spearman")
        if np.isfinite(rho):
            rhos.append(rho)
    if not rhos:
        return float("nan")
    half = float(np.mean(rhos))
    return 2 * half / (1 + half) if half > -1 else float("nan")


def yardstick(confusions: dict, halves: int = HALVES, seed: int = SEED) -> dict:
    """The test set(s)' reliability (trial-weighted mean over test sets), its test patients and trials."""
    sets = group_by_test_set(confusions)
    values = [(split_half_reliability(s, halves, seed), len(s.trials)) for s in sets]
    finite = [(r, n) for r, n in values if np.isfinite(r)]
    reliability = sum(r * n for r, n in finite) / sum(n for _, n in finite) if finite else float("nan")
    return {"reliability": reliability, "test_patients": [int(s.patient_all.size) for s in sets],
            "trials": sum(len(s.trials) for s in sets)}


def finding_lines(uncertainty: pd.DataFrame, reliability: dict) -> list[str]:
    """The resampling's sentences: each rule's interval, whether a rule is told apart from the one split, and the
    yardstick's reliability with the rho it allows."""
    lines = []
    for _, row in uncertainty.iterrows():
        line = (f"{row['rule']}: mean regret 95% interval {row['mean_regret_lo']:.4f}-{row['mean_regret_hi']:.4f} "
                f"(resampling seeds and test patients)")
        if pd.notna(row["vs_one_split_lo"]):
            apart = row["vs_one_split_hi"] < 0 or row["vs_one_split_lo"] > 0
            line += (f"; minus the one split's: {row['vs_one_split_lo']:+.4f} to {row['vs_one_split_hi']:+.4f}, lower "
                     f"in {row['lower_than_one_split']:.0%} of resamples ("
                     + ("told apart" if apart else "NOT told apart: add seeds or test patients") + ")")
        lines.append(line)
    if reliability and np.isfinite(reliability.get("reliability", float("nan"))):
        value = reliability["reliability"]
        lines.append(f"test patients as a yardstick ({'/'.join(map(str, reliability['test_patients']))} patients, "
                     f"{reliability['trials']} trials): split-half reliability {value:.2f}, so no selection figure "
                     f"can reach a Spearman rho above about {np.sqrt(max(value, 0.0)):.2f} against them")
    return lines


__all__ = ["HALVES", "RESAMPLES", "TestScores", "UNCERTAINTY_COLUMNS", "finding_lines", "group_by_test_set",
           "regret_uncertainty", "resampled_test_f1", "search_regrets", "split_half_reliability", "weighted_f1",
           "yardstick"]
