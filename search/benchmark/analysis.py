"""What a benchmark's searches found, read from their files: every epoch report, every trial's row and its metrics
on the held-out test patients; then the benchmark's tables, figures and headline written under its folder.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm.auto import tqdm

from leukmodels.atomic import atomic_path
from leukmodels.checkpoint import load_model
from leukmodels.data import DataError, decode, discover, split_by_patient
from leukmodels.metrics import classification_metrics, patient_confusion, predict_proba
from search.benchmark import resampling, selection
from search.benchmark import tables as report
from search.benchmark.figures import curve_figure
from search.board import leaderboard
from search.board.leaderboard import rank_table
from search.board.paths import leaderboard_path, split_path

if TYPE_CHECKING:
    from search.benchmark.runner import BenchmarkSettings, Search


def epoch_records(folder: Path, metric: str) -> pd.DataFrame:
    """Every epoch report of one search, from Tune's result.json in each trial folder (one JSON object per line)."""
    keep = list(dict.fromkeys(("trial_id", "epoch", "reported_at", "train_seconds", metric)))
    rows = []
    for path in sorted(folder.glob("*/result.json")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                report = json.loads(line)
                if isinstance(report, dict) and "epoch" in report:
                    rows.append({key: report.get(key) for key in keep})
    return pd.DataFrame(rows, columns=keep)


def held_out_sets(args: BenchmarkSettings, searches: list[Search]) -> dict[str, tuple[tuple, pd.DataFrame]]:
    """search -> (split key, its held-out test rows): `split_by_patient` with the seed and validation fraction its
    split.json records (the official preliminary test set when the tree has one). A test patient the search trained
    or validated on is refused (DataError)."""
    manifests: dict[str, pd.DataFrame] = {}
    tests: dict[tuple, pd.DataFrame] = {}
    out = {}
    for search in searches:
        path = split_path(args.runs, search.name)
        if not path.is_file():  # the search stopped before its data were ready: it has no trials
            continue
        record = json.loads(path.read_text())
        key = (record["root"], record["seed"], record["val_fraction"])
        if record["root"] not in manifests:
            manifests[record["root"]] = discover(record["root"])
        if key not in tests:
            tests[key] = split_by_patient(manifests[record["root"]], val_fraction=record["val_fraction"],
                                          seed=record["seed"])["test"]
        seen = sorted((set(record["train"]) | set(record["val"])) & set(tests[key]["patient"].astype(str)))
        if seen:
            raise DataError(f"{path}: test patients {seen} were trained or validated on; refusing to test on them")
        out[search.name] = (key, tests[key])
    return out


def held_out_metrics(trials: pd.DataFrame, tests: dict, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per trial (index of `trials`): test weighted F1, balanced accuracy and ROC AUC of its best-epoch checkpoint on
    its search's test patients, decoded once per (test set, image size); `left_out` says why a trial has none. Also
    {trial index: (test set key, patient names, P x 4 confusion counts)} for search.benchmark.resampling."""
    decoded: dict[tuple, Any] = {}
    out, confusions = {}, {}
    for index, trial in tqdm(trials.iterrows(), total=len(trials), desc="test patients", disable=not progress):
        if not isinstance(trial["checkpoint"], str) or trial["search"] not in tests:
            out[index] = {"left_out": f"no checkpoint ({trial['status']})"}
            continue
        try:
            model, config = load_model(trial["checkpoint"])
        except (FileNotFoundError, ValueError):
            out[index] = {"left_out": "checkpoint unreadable"}
            continue
        key, test = tests[trial["search"]]
        if (key, config.image_size) not in decoded:
            decoded[key, config.image_size] = decode(test, config.image_size, progress=False)
        images = decoded[key, config.image_size]  # uint8 N x 3 x S x S in the test rows' order
        prob_all = predict_proba(model, images.images, batch_size=512)
        scores = classification_metrics(images.labels, prob_all)
        out[index] = {f"test_{name}": scores[name] for name in ("weighted_f1", "balanced_accuracy", "roc_auc")}
        confusions[index] = (key, *patient_confusion(images.labels, prob_all, test["patient"].to_numpy()))
    columns = ["test_weighted_f1", "test_balanced_accuracy", "test_roc_auc", "left_out"]
    return pd.DataFrame.from_dict(out, orient="index", columns=columns).reindex(trials.index), confusions


def trial_rows(board: pd.DataFrame, search: Search, metric: str, label: str | None = None,
               rule: str | None = None) -> pd.DataFrame:
    """A search's leaderboard rows (best first) as the benchmark's trial columns; `label` names its strategy in the
    tables (default search.label), `rule` its selection rule (default: one split or cvK)."""
    rows = rank_table(board, search=search.name)
    return pd.DataFrame({"strategy": label or search.label, "seed": search.seed, "search": search.name,
                         "rule": rule or selection.rule_of(search),
                         "train_seconds": rows["train_seconds"], "reranked_from": rows["reranked_from"],
                         "trial_id": rows["trial_id"], "rank": rows["rank"], "status": rows["status"],
                         "epochs_run": rows["epochs_run"], "val_metric": rows[metric],
                         "val_weighted_f1": rows["weighted_f1"], "checkpoint": rows["checkpoint"],
                         "data_generated": rows["data_generated"], "data_root": rows["data_root"]})


def analyse(args: BenchmarkSettings, searches: list[Search], runs: dict, command: str,
            baseline: str) -> report.Results:
    """Curves from the searches' epoch reports, trials from their leaderboard rows plus test metrics, the tables."""
    board = leaderboard.read(leaderboard_path(args.runs))
    curves = pd.concat([report.best_so_far(epoch_records(args.storage / s.name, args.metric), args.metric)
                        .assign(strategy=s.label, seed=s.seed) for s in searches], ignore_index=True)
    second = selection.rerank_searches(searches)  # --rerank-top's second stages: tested, not curves of their own
    trials = pd.concat([trial_rows(board, s, args.metric) for s in searches]
                       + [trial_rows(board, s, args.metric, label, rule) for s, label, rule in second],
                       ignore_index=True)
    print(f"testing {trials['checkpoint'].notna().sum()} trial checkpoints on the held-out test patients")
    tested, confusions = held_out_metrics(trials, held_out_sets(args, [*searches, *(s for s, _, _ in second)]))
    trials = trials.join(tested)
    ran = pd.DataFrame([{"strategy": s.label, "seed": s.seed, "search": s.name, **runs[s.name]} for s in searches])
    table = pd.concat([report.strategy_table(curves[curves["strategy"].isin(labels)], trials, ran[ran["strategy"].isin(
        labels)], group_baseline) for group_baseline, labels in selection.strategy_groups(searches, baseline)],
        ignore_index=True)
    generated = trials["data_generated"].dropna()
    data = ("GENERATED C-NMC-like images (synthetic, not C-NMC)" if len(generated) and generated.all()
            else f"C-NMC images at {trials['data_root'].dropna().iloc[0] if len(trials) else args.data}")
    order = list(dict.fromkeys(s.label for s in searches))
    chosen = selection.selection_table(trials, searches)
    return report.Results(name=args.name, command=command, metric=args.metric, baseline=baseline, data=data,
                          table=table, summary=report.headline(table, order), trials=trials, curves=curves,
                          selection=chosen, selection_summary=selection.rule_summary(chosen, trials),
                          uncertainty=resampling.regret_uncertainty(trials, chosen, confusions),
                          yardstick=resampling.yardstick(confusions))


def write_outputs(args: BenchmarkSettings, results: report.Results) -> list[Path]:
    """Every output file, each written atomically; returns their paths."""
    figures = {"best_vs_epochs.png": "epochs", "best_vs_seconds.png": "seconds"}
    frames = {"table.parquet": results.table, "trials.parquet": results.trials, "curves.parquet": results.curves,
              "selection.parquet": results.selection}
    texts = {"benchmark.md": report.markdown(results, list(figures)),
             "headline.json": json.dumps(report.headline_record(results), indent=1)}
    target = results.table.loc[results.table["strategy"] == results.baseline, "target"].median()
    for name, x in figures.items():
        figure = curve_figure(results.curves, x, args.metric, f"{results.name}: {results.data}",
                                     results.baseline, target)
        with atomic_path(args.folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=120)
    for name, frame in frames.items():
        with atomic_path(args.folder / name) as tmp:
            frame.to_parquet(tmp, index=False)
    for name, text in texts.items():
        with atomic_path(args.folder / name) as tmp:
            tmp.write_text(text)
    return [args.folder / name for name in [*texts, *frames, *figures]]


__all__ = ["analyse", "epoch_records", "held_out_metrics", "held_out_sets", "trial_rows", "write_outputs"]
