"""The search-efficiency benchmark: its arithmetic on hand-built frames (fast), its flags, and one real smoke run.

The smoke run (`--smoke-test` on the tiny generated tree: random-fifo and tpe-asha, seed 0, 3 trials x 2 epochs at
24 px) checks that every file exists and holds what it claims: a row per strategy and seed, monotone best-so-far
curves whose epochs are the trials' epochs, and a headline whose numbers are the table's.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from search.benchmark import runner as benchmark, analysis as benchmark_analysis
from search.benchmark import tables as report
from search.benchmark.figures import on_grid


def _records(*reports: tuple) -> pd.DataFrame:
    """(trial_id, epoch, reported_at, value[, train_seconds]) -> records frame with metric column `m`."""
    rows = [dict(trial_id=r[0], epoch=r[1], reported_at=r[2], m=r[3], train_seconds=r[4] if len(r) > 4 else 0.0)
            for r in reports]
    return pd.DataFrame(rows)


def _curve(strategy: str, seed: int, bests: list[float], seconds: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"strategy": strategy, "seed": seed, "epochs": np.arange(1, len(bests) + 1),
                         "seconds": seconds or [float(i) for i in range(1, len(bests) + 1)], "best": bests})


# -- best-so-far curves ---------------------------------------------------------------------------------------------
def test_best_so_far_orders_epochs_of_concurrent_trials_by_reported_at():
    records = _records(("b", 1, 103.0, 0.7, 2.0), ("a", 1, 101.5, 0.6, 1.5), ("a", 2, 104.0, 0.65, 4.0),
                       ("b", 2, 102.0, 0.9, 1.0))  # b's epoch 2 claims an earlier time than its epoch 1: kept as told
    curve = report.best_so_far(records, "m")
    assert list(curve["epochs"]) == [1, 2, 3, 4]
    assert list(curve["best"]) == [0.6, 0.9, 0.9, 0.9]  # a1 (101.5), b2 (102), b1 (103), a2 (104)
    assert curve["seconds"].tolist() == pytest.approx([1.5, 2.0, 3.0, 4.0])  # from the earliest start: 103 - 2 = 101


def test_best_so_far_counts_a_nan_epoch_and_a_repeated_report_once():
    records = _records(("a", 1, 10.0, float("nan")), ("a", 2, 11.0, 0.5), ("a", 2, 12.0, 0.8), ("b", 1, 13.0, 0.4))
    curve = report.best_so_far(records, "m")
    assert list(curve["epochs"]) == [1, 2, 3]  # a1 (trained, no value), a2 once (its first report), b1
    assert math.isnan(curve["best"].iloc[0]) and list(curve["best"].iloc[1:]) == [0.5, 0.5]
    assert curve["best"].dropna().is_monotonic_increasing


def test_best_so_far_of_no_records_is_empty():
    curve = report.best_so_far(pd.DataFrame(columns=["trial_id", "epoch", "reported_at", "m"]), "m")
    assert list(curve.columns) == ["epochs", "seconds", "best"] and curve.empty


# -- epochs to reach a target, shares ---------------------------------------------------------------------------------
def test_first_reach_is_the_first_epoch_at_or_above_the_target():
    curve = _curve("x", 0, [0.5, 0.7, 0.7, 0.9], seconds=[3.0, 5.0, 8.0, 9.0])
    assert report.first_reach(curve, 0.7) == 2
    assert report.first_reach(curve, 0.7, x="seconds") == 5.0
    assert report.first_reach(curve, 0.9 + 1e-15) == 4  # float noise still counts as reaching it
    assert math.isnan(report.first_reach(curve, 0.95)) and math.isnan(report.first_reach(curve, float("nan")))


def test_reach_shares_compare_each_seed_with_the_baseline_of_that_seed():
    curves = pd.concat([
        _curve("random-fifo", 0, [0.5, 0.6, 0.6, 0.8]),  # target 0.8 with 4 epochs; it reached it at epoch 4
        _curve("random-fifo", 1, [0.7, 0.7]),            # target 0.7 with 2 epochs
        _curve("tpe-asha", 0, [0.8, 0.8]),               # reaches 0.8 at epoch 1: 1/4 of the baseline's epochs
        _curve("tpe-asha", 1, [0.6, 0.65, 0.69]),        # never reaches 0.7
    ])
    table = report.reach_shares(curves, "random-fifo").set_index(["strategy", "seed"])
    assert table.loc[("random-fifo", 0), "epochs_share"] == 1.0  # its own best came with its last epoch
    assert table.loc[("random-fifo", 1), "epochs_share"] == 0.5
    assert table.loc[("tpe-asha", 0), "epochs_share"] == 0.25
    assert table.loc[("tpe-asha", 0), "epochs_to_target"] == 1 and table.loc[("tpe-asha", 0), "target"] == 0.8
    assert math.isinf(table.loc[("tpe-asha", 1), "epochs_share"])
    assert math.isnan(table.loc[("tpe-asha", 1), "epochs_to_target"])
    assert table.loc[("tpe-asha", 1), "epochs"] == 3 and table.loc[("tpe-asha", 1), "best_val"] == 0.69


def test_share_without_a_baseline_on_that_seed_is_nan():
    curves = pd.concat([_curve("random-fifo", 0, [0.5]), _curve("tpe-asha", 7, [0.9])])
    table = report.reach_shares(curves, "random-fifo").set_index(["strategy", "seed"])
    assert math.isnan(table.loc[("tpe-asha", 7), "epochs_share"])


def test_headline_median_counts_not_reached_as_worst_and_says_so():
    table = pd.DataFrame({
        "strategy": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
        "epochs_share": [0.25, math.inf, 0.5, math.inf, math.inf, 0.3],
        "seconds_share": [0.2, math.inf, 0.4, math.inf, math.inf, 0.3],
        "epochs_to_target": [2, math.nan, 4, math.nan, math.nan, 3],
        "best_val": [0.8, 0.7, 0.9, 0.6, 0.6, 0.9], "epochs": [10, 12, 14, 8, 8, 8],
        "wall_seconds": [30.0, 31.0, 29.0, 20.0, 21.0, 22.0],
        "winner_test_weighted_f1": [0.7, 0.8, 0.9, 0.5, 0.6, 0.7]})
    summary = report.headline(table, ["b", "a"]).set_index("strategy")
    assert list(summary.index) == ["b", "a"]
    assert summary.loc["a", "epochs_share"] == 0.5 and summary.loc["a", "reached"] == 2
    assert math.isinf(summary.loc["b", "epochs_share"]) and summary.loc["b", "reached"] == 1
    assert summary.loc["a", "median_best_val"] == 0.8 and summary.loc["a", "median_winner_test_weighted_f1"] == 0.8
    text = report.headline_text(summary.reset_index(), "m", "a").set_index("strategy")
    assert text.loc["a", "share of a's epochs to reach its best"] == "50% (2/3 seeds)"
    assert text.loc["b", "share of a's epochs to reach its best"] == "not reached (1/3 seeds)"
    assert report.share_text(math.nan, 0, 3) == "n/a"


def test_target_verdict_needs_both_the_share_and_the_test_f1():
    def summary(share: float, f1: float) -> pd.DataFrame:
        return pd.DataFrame({"strategy": ["random-fifo", "tpe-asha"], "seeds": [3, 3], "reached": [3, 3],
                             "epochs_share": [1.0, share], "median_winner_test_weighted_f1": [0.80, f1]})

    assert ": met:" in report.target_verdict(summary(0.4, 0.80), "random-fifo")
    assert "NOT met" in report.target_verdict(summary(0.6, 0.90), "random-fifo")
    assert "NOT met" in report.target_verdict(summary(0.3, 0.79), "random-fifo")
    assert "NOT met" in report.target_verdict(summary(math.inf, 0.90), "random-fifo")
    assert report.target_verdict(summary(0.3, 0.9).iloc[:1], "random-fifo") == ""


# -- per-search table, correlation, curves on a grid ------------------------------------------------------------------
def test_strategy_table_winner_is_the_best_ranked_trial_that_did_not_fail():
    trials = pd.DataFrame({"search": ["s"] * 3, "trial_id": ["t1", "t2", "t3"], "rank": [2, 1, 3],
                           "status": ["finished", "error", "stopped"], "val_weighted_f1": [0.7, 0.9, 0.6],
                           "test_weighted_f1": [0.65, math.nan, 0.5]})
    searches = pd.DataFrame({"strategy": ["random-fifo"], "seed": [0], "search": ["s"], "exit_code": [0],
                             "wall_seconds": [12.0]})
    table = report.strategy_table(_curve("random-fifo", 0, [0.5, 0.7]), trials, searches, "random-fifo")
    row = table.iloc[0]
    assert (row["winner_trial_id"], row["winner_test_weighted_f1"]) == ("t1", 0.65)
    assert (row["trials"], row["tested"], row["epochs"], row["best_val"]) == (3, 2, 2, 0.7)


def test_rank_correlation_is_spearman_and_nan_when_it_cannot_be():
    trials = pd.DataFrame({"v": [0.1, 0.2, 0.3, 0.4], "t": [1.0, 4.0, 9.0, 16.0], "flat": [0.5] * 4})
    assert report.rank_correlation(trials, "v", "t") == (pytest.approx(1.0), 4)
    assert report.rank_correlation(trials.assign(t=-trials["t"]), "v", "t")[0] == pytest.approx(-1.0)
    assert math.isnan(report.rank_correlation(trials, "v", "flat")[0])
    assert math.isnan(report.rank_correlation(trials.iloc[:2], "v", "t")[0])


def test_on_grid_reads_a_step_curve_and_holds_its_end():
    values = on_grid(np.array([2.0, 4.0]), np.array([0.5, 0.8]), np.array([1.0, 2.0, 3.0, 4.0, 6.0]))
    assert np.isnan(values[0]) and values[1:].tolist() == [0.5, 0.5, 0.8, 0.8]


# -- flags and files --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["--strategies", "tpe-asha"], "--strategies must include random-fifo"),
    (["--strategies", "random-fifo", "tpe-hyperband"], "--strategies tpe-hyperband"),
    (["--seeds", "1", "1"], "--seeds 1 1"),
    (["--seeds", "-1"], "--seeds -1"),
    (["--num-samples", "0"], "--num-samples 0"),
    (["--metric", "loss"], "--metric"),
    (["--image-sizes", "8"], "--image-sizes 8"),
    (["--name", "a/b"], "--name"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5"),
])
def test_bad_flags_are_one_line_naming_the_flag(argv, says, tmp_path, capsys):
    assert benchmark.main([*argv, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err
    assert not (tmp_path / "benchmarks").exists() or not any((tmp_path / "benchmarks").rglob("*.parquet"))


@pytest.mark.parametrize("folder", ["nowhere", "empty"])
def test_a_data_folder_that_is_missing_or_no_cnmc_tree_is_refused_before_ray(folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert benchmark.main(["--data", str(tmp_path / folder), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path / folder) in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written, no Ray started


def test_a_rerun_may_add_seeds_but_not_drop_one_or_change_another_setting(tmp_path):
    def prepare(*flags: str) -> dict:
        args = benchmark.parse_args(["--name", "b", "--results", str(tmp_path), "--seeds", *flags])
        return benchmark.prepare_folder(args, "python -m search.benchmark ...")

    assert prepare("0", "1") == {}
    (tmp_path / "benchmarks" / "b" / benchmark.RUNS).write_text('{"b-random-fifo-s0": {"exit_code": 0}}')
    assert prepare("0", "1", "2") == {"b-random-fifo-s0": {"exit_code": 0}}  # seed 2 added; seed 0's search reused
    saved = json.loads((tmp_path / "benchmarks" / "b" / benchmark.SAVED_SETTINGS).read_text())["settings"]
    assert saved["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"--seeds \[0, 1, 2\] \(now \[0, 1\]\)"):
        prepare("0", "1")
    with pytest.raises(ValueError, match="--num-samples"):
        benchmark.prepare_folder(benchmark.parse_args(["--name", "b", "--results", str(tmp_path), "--seeds", "0", "1",
                                                       "2", "--num-samples", "5"]), "")


def test_val_fraction_reaches_every_search_and_a_rerun_must_keep_it(tmp_path):
    args = benchmark.parse_args(["--name", "v", "--results", str(tmp_path), "--val-fraction", "0.05", "--cv", "3"])
    for search in benchmark.plan_searches(args):
        flags = search.argv(args)
        assert flags[flags.index("--val-fraction") + 1] == "0.05"
    benchmark.prepare_folder(args, "")
    with pytest.raises(ValueError, match=r"--val-fraction 0.05 \(now None\)"):
        benchmark.prepare_folder(benchmark.parse_args(["--name", "v", "--results", str(tmp_path), "--cv", "3"]), "")


def test_epoch_records_read_every_trial_and_skip_a_cut_line(tmp_path):
    for trial, lines in {"t1": ['{"epoch": 1, "trial_id": "t1", "reported_at": 1.0, "m": 0.5}',
                                '{"epoch": 2, "trial_id": "t1", "repor'],
                         "t2": ['{"epoch": 1, "trial_id": "t2", "reported_at": 2.0, "m": 0.7, "train_seconds": 1.5}',
                                '{"trial_id": "t2", "done": true}']}.items():
        (tmp_path / f"run_trial_{trial}").mkdir()
        (tmp_path / f"run_trial_{trial}" / "result.json").write_text("\n".join(lines) + "\n")
    records = benchmark_analysis.epoch_records(tmp_path, "m")
    assert sorted(records["trial_id"]) == ["t1", "t2"] and list(records.columns) == [
        "trial_id", "epoch", "reported_at", "train_seconds", "m"]


# -- the smoke run, end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_benchmark_writes_consistent_files(tiny_cnmc, tmp_path, capsys):
    argv = ["--smoke-test", "--data", str(tiny_cnmc), "--results", str(tmp_path), "--name", "smoke"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "benchmarks" / "smoke"
    assert "headline" in out and str(folder / "benchmark.md") in out
    for name in ("benchmark.md", "headline.json", "table.parquet", "trials.parquet", "curves.parquet"):
        assert (folder / name).is_file(), name
    for name in ("best_vs_epochs.png", "best_vs_seconds.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    table = pd.read_parquet(folder / "table.parquet")
    trials = pd.read_parquet(folder / "trials.parquet")
    curves = pd.read_parquet(folder / "curves.parquet")
    smoke = benchmark.SMOKE
    assert sorted(zip(table["strategy"], table["seed"])) == sorted(
        (s, seed) for s in smoke["strategies"] for seed in smoke["seeds"])
    assert (table["exit_code"] == 0).all() and (table["trials"] == smoke["num_samples"]).all()
    for (strategy, seed), curve in curves.groupby(["strategy", "seed"]):
        mine = trials[(trials["strategy"] == strategy) & (trials["seed"] == seed)]
        row = table[(table["strategy"] == strategy) & (table["seed"] == seed)].iloc[0]
        assert list(curve["epochs"]) == list(range(1, len(curve) + 1))
        assert curve["best"].is_monotonic_increasing and curve["seconds"].is_monotonic_increasing
        assert len(curve) == mine["epochs_run"].sum() == row["epochs"]  # every epoch trained is on the curve
        assert curve["best"].iloc[-1] == pytest.approx(mine["val_metric"].max()) == pytest.approx(row["best_val"])
        assert row["epochs_to_target"] <= row["epochs"] or row["epochs_share"] == math.inf
    tested = trials.dropna(subset=["test_weighted_f1"])
    assert len(tested) == trials["checkpoint"].notna().sum() and tested["test_weighted_f1"].between(0, 1).all()

    headline = json.loads((folder / "headline.json").read_text())
    assert [s["strategy"] for s in headline["strategies"]] == smoke["strategies"]
    for entry in headline["strategies"]:
        mine = table[table["strategy"] == entry["strategy"]]
        share = float(np.median(mine["epochs_share"]))
        assert entry["epochs_share"] == (None if math.isinf(share) else pytest.approx(share))
        assert entry["reached"] == int(np.isfinite(mine["epochs_to_target"]).sum())
        assert entry["median_winner_test_weighted_f1"] == pytest.approx(mine["winner_test_weighted_f1"].median())
    assert headline["trials_left_out"] == trials["left_out"].notna().sum()
    assert headline["target"] and "GENERATED" in headline["data"]
    text = (folder / "benchmark.md").read_text()
    assert "GENERATED" in text and all(s in text for s in smoke["strategies"]) and "Spearman" in text

    # a rerun of the same name reuses every finished search (no Ray, no training); other settings are refused
    assert benchmark.main(argv) == 0
    assert capsys.readouterr().out.count("reused") == len(table)
    assert benchmark.main([*argv, "--num-samples", "4"]) == 2
    assert "--num-samples 3 (now 4)" in capsys.readouterr().err
