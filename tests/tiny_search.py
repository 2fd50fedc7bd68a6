"""A tiny generated search built without Ray, for the post-search commands' tests (evaluate, report, predict, export).

`build_tiny_search` writes a small generated C-NMC tree, trains the CONFIGS for 2 epochs with leukmodels.train.fit on
the search's train/val split (prepared by search.tuning.data.prepare_data exactly as the Ray search does), appends their
leaderboard rows and records the trials (and a fourth, for parameter importances) in an Optuna study in SQLite, all
under one folder. conftest.py builds it once per session (`tiny_search`) and runs evaluate on it (`evaluated`).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from search.board.paths import OPTUNA_DB, TEST_METRICS, TEST_PREDICTIONS, leaderboard_path, optuna_url

SEARCH = "tiny"
IMAGE_SIZE = 32
CONFIGS = {  # trial id -> config overrides; two families so "best score by family" has two bars, two image sizes
    "tiny_00000": dict(family="baseline", filters=8, depth=2, kernel_size=3, lr=3e-3),
    "tiny_00001": dict(family="resnet", filters=8, depth=1, stages=2, lr=1e-3),
    "tiny_00002": dict(family="baseline", filters=8, depth=2, kernel_size=3, lr=2e-3, image_size=24),
}
ENSEMBLE = "ensemble-top3"  # the `evaluated` fixture's --ensemble 3: every trial, at 32 and 24 px


def build_tiny_search(base: Path) -> dict:
    """Everything a post-search command needs, under `base`: returns paths and the split."""
    import optuna

    from leukmodels.config import TrainConfig
    from leukmodels.data import discover, split_by_patient
    from leukmodels.synthetic import generate
    from leukmodels.metrics import best_report
    from leukmodels.train import fit
    from search.tuning.data import prepare_data
    from search.board.leaderboard import append_rows

    root = generate(base / "data", n_all=6, n_hem=4, images_per_patient=8, n_prelim=4, n_final=1, seed=0,
                    workers=1, cell_skew=0.0, difficulty=0.0)
    results = base / "results"
    cache = base / "cache"
    sizes = sorted({overrides.get("image_size", IMAGE_SIZE) for overrides in CONFIGS.values()})
    data = prepare_data(str(root), image_sizes=sizes, split_seed=0, cache_dir=str(cache), progress=False)
    train, val = data.sets[IMAGE_SIZE]["train"], data.sets[IMAGE_SIZE]["val"]
    rows, histories = [], {}
    for trial_id, overrides in CONFIGS.items():
        config = TrainConfig(**{"image_size": IMAGE_SIZE, "epochs": 2, "batch_size": 16, "warmup_epochs": 0.0,
                                "aug_strength": 0.2, **overrides})
        train, val = data.sets[config.image_size]["train"], data.sets[config.image_size]["val"]
        started = dt.datetime.now(dt.timezone.utc)
        result = fit(config, train, val, device="cpu", checkpoint_dir=str(results / SEARCH / "runs" / trial_id),
                     log=None)
        histories[trial_id] = result.history
        best = best_report(result.history, "weighted_f1")
        checkpoint = results / SEARCH / "runs" / trial_id / f"epoch_{best['epoch']:04d}" / "checkpoint.pt"
        metric_values = {k: best[k] for k in ("weighted_f1", "accuracy", "balanced_accuracy", "roc_auc",
                                                      "macro_f1", "sensitivity", "specificity", "val_loss")}
        rows.append({"search": SEARCH, "trial_id": trial_id, "metric": "weighted_f1", "status": "finished",
                     **config.to_dict(), **metric_values, "best_epoch": best["epoch"],
                     "epochs_run": len(result.history), "early_stopped": False,
                     "num_parameters": int(best["num_parameters"]), "checkpoint": str(checkpoint),
                     "data_fingerprint": data.fingerprint, "data_generated": data.generated, "data_root": data.root,
                     "started_at": started, "finished_at": dt.datetime.now(dt.timezone.utc)})
    append_rows(leaderboard_path(results), rows)

    # the Optuna study as OptunaSearch leaves it: one trial per Tune trial, value = the trial's weighted F1
    study = optuna.create_study(study_name=SEARCH, storage=optuna_url(results),
                                direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "filters": optuna.distributions.IntDistribution(8, 64)}
    for i, row in enumerate(rows + [dict(rows[0], lr=5e-4, filters=16, weighted_f1=0.3)]):
        study.add_trial(optuna.trial.create_trial(params={"lr": row["lr"], "filters": row["filters"]},
                                                  distributions=dists, value=float(row["weighted_f1"]),
                                                  user_attrs={"trial_id": row["trial_id"]}))
    splits = {name: set(frame["patient"]) for name, frame in split_by_patient(discover(root), seed=0).items()}
    return {"base": base, "root": str(root), "results": results, "cache": cache,
            "leaderboard": leaderboard_path(results), "optuna": results / OPTUNA_DB, "splits": splits,
            "train_patients": set(train.patients), "val_patients": set(val.patients), "histories": histories}


def evaluate_tiny_search(tiny: dict) -> dict:
    """evaluate.main run on the tiny search: top 2, the ensemble of the top 3 (so all 3 trials are evaluated), TTA
    both ways, the best retrained."""
    from search.evaluation import evaluate

    out = tiny["results"] / TEST_METRICS
    code = evaluate.main(["--leaderboard", str(tiny["leaderboard"]), "--top", "2", "--ensemble", "3", "--tta", "both",
                          "--retrain", "--out", str(out), "--cache-dir", str(tiny["cache"])])
    assert code == 0
    return {"metrics": pd.read_parquet(out), "predictions": pd.read_parquet(out.with_name(TEST_PREDICTIONS)),
            "out": out}
