"""search.benchmark.resampling: how sure a benchmark's selection figures are, on frames and counts built here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukmodels.metrics import classification_metrics, patient_confusion
from search.benchmark import resampling
from search.benchmark.selection import ONE_SPLIT

KEY = ("root", 0, 0.2)


def _test_set(rng, n_all: int = 10, n_hem: int = 6, cells: int = 30):
    """Labels and patient names of a test set: whole patients of one class each."""
    labels = np.repeat([1] * n_all + [0] * n_hem, cells)
    patients = np.repeat([f"p{i}" for i in range(n_all + n_hem)], cells)
    return labels, patients


def _prob(rng, labels, patients, accuracy_of):
    """P(ALL) calling each cell right with its patient's probability `accuracy_of(patient number)`."""
    number = np.array([int(p[1:]) for p in patients])
    right = rng.random(labels.size) < np.array([accuracy_of(n) for n in number])
    return np.where(right == (labels == 1), 0.9, 0.1)


def _confusions(rng, labels, patients, accuracies: dict) -> dict:
    """{trial index: (KEY, names, counts)} for trials of the given per-patient accuracy functions."""
    return {index: (KEY, *patient_confusion(labels, _prob(rng, labels, patients, acc), patients))
            for index, acc in accuracies.items()}


def test_weighted_f1_of_counts_equals_the_metric_of_the_pooled_cells():
    rng = np.random.default_rng(0)
    labels, patients = _test_set(rng)
    prob = rng.random(labels.size)
    _, counts = patient_confusion(labels, prob, patients)
    ones = np.ones((1, counts.shape[0]))
    assert resampling.weighted_f1(counts[None], ones)[0, 0] == pytest.approx(
        classification_metrics(labels, prob)["weighted_f1"])
    twice = ones.copy()
    twice[0, 0] = 2  # patient p0 drawn twice: its cells count twice
    doubled = np.concatenate([np.flatnonzero(patients == "p0"), np.arange(labels.size)])
    assert resampling.weighted_f1(counts[None], twice)[0, 0] == pytest.approx(
        classification_metrics(labels[doubled], prob[doubled])["weighted_f1"])


def _benchmark(rng, seeds=(0, 1, 2, 3)):
    """Trials and selection table of two rules on the same seeds: 'good' always picks the best trial (accuracy 0.9 on
    every patient), the one split picks a clearly worse one (0.7); two fillers at 0.8."""
    labels, patients = _test_set(rng)
    trials, chosen, accuracies = [], [], {}
    for seed in seeds:
        for rule in (ONE_SPLIT, "good"):
            search = f"{rule}-s{seed}"
            for n, acc in enumerate((0.9, 0.8, 0.8, 0.7)):
                accuracies[len(trials)] = lambda _, a=acc: a
                trials.append({"search": search, "trial_id": f"t{n}", "seed": seed})
            chosen.append({"search": search, "rule": rule, "seed": seed, "winner": "t3" if rule == ONE_SPLIT else "t0"})
    return pd.DataFrame(trials), pd.DataFrame(chosen), _confusions(rng, labels, patients, accuracies)


def test_a_rule_that_always_picks_the_best_trial_is_told_apart_from_one_that_never_does():
    trials, chosen, confusions = _benchmark(np.random.default_rng(1))
    frame = resampling.regret_uncertainty(trials, chosen, confusions, resamples=300).set_index("rule")
    assert frame.loc[ONE_SPLIT, "mean_regret_lo"] > 0.1  # 0.9 vs 0.7 accuracy: about 0.2 regret
    assert frame.loc["good", "mean_regret_hi"] < 0.05
    assert frame.loc["good", "vs_one_split_hi"] < 0 and frame.loc["good", "lower_than_one_split"] == 1.0
    assert np.isnan(frame.loc[ONE_SPLIT, "vs_one_split_lo"])
    lines = resampling.finding_lines(frame.reset_index(), {})
    assert "told apart" in lines[1] and "NOT" not in lines[1]


def test_two_rules_picking_equal_trials_are_not_told_apart():
    rng = np.random.default_rng(2)
    trials, chosen, confusions = _benchmark(rng)
    chosen.loc[chosen["rule"] == "good", "winner"] = "t1"  # both rules now pick a 0.8 trial
    chosen.loc[chosen["rule"] == ONE_SPLIT, "winner"] = "t2"
    frame = resampling.regret_uncertainty(trials, chosen, confusions, resamples=300).set_index("rule")
    assert frame.loc["good", "vs_one_split_lo"] < 0 < frame.loc["good", "vs_one_split_hi"]
    assert "NOT told apart" in resampling.finding_lines(frame.reset_index(), {})[1]


def test_an_untested_winner_leaves_its_search_out():
    trials, chosen, confusions = _benchmark(np.random.default_rng(3), seeds=(0,))
    del confusions[4]  # the 'good' search's winner t0 has no test result
    frame = resampling.regret_uncertainty(trials, chosen, confusions, resamples=50)
    assert list(frame["rule"]) == [ONE_SPLIT]


def test_split_half_reliability_is_high_for_consistent_trials_and_low_for_noise():
    rng = np.random.default_rng(4)
    labels, patients = _test_set(rng, n_all=12, n_hem=8, cells=40)
    spread = {i: (lambda _, a=0.6 + 0.03 * i: a) for i in range(10)}  # trials 0.6 .. 0.87 on every patient
    consistent = resampling.group_by_test_set(_confusions(rng, labels, patients, spread))[0]
    assert resampling.split_half_reliability(consistent, halves=50) > 0.9
    # equal trials, each with its own luck per patient: the halves disagree
    luck = {i: (lambda n, s=i: 0.5 + 0.45 * np.sin(7.3 * n + 11.1 * s)) for i in range(10)}
    noisy = resampling.group_by_test_set(_confusions(rng, labels, patients, luck))[0]
    assert resampling.split_half_reliability(noisy, halves=50) < 0.5
    line = resampling.finding_lines(pd.DataFrame(columns=list(resampling.UNCERTAINTY_COLUMNS)),
                                    resampling.yardstick(_confusions(rng, labels, patients, spread), halves=20))[0]
    assert line.startswith("test patients as a yardstick (20 patients, 10 trials)") and "rho above about" in line
