"""A leaderboard row with every column set: for the tests of the leaderboard and of the Pareto front."""
import datetime as dt

from leukmodels.config import TrainConfig
from search.board import leaderboard as lb


def make_row(trial_id: str, search: str = "s1", f1: float = 0.8, status: str = "finished", **changes) -> dict:
    """A row with every column set (except the computed rank and schema_version)."""
    config = TrainConfig(family="resnet", filters=32, depth=3, lr=3e-4, pretrained=None).to_dict()
    row = {**config, "search": search, "trial_id": trial_id, "metric": "weighted_f1", "status": status,
           "weighted_f1": f1, "accuracy": 0.85, "balanced_accuracy": 0.79, "roc_auc": 0.9, "macro_f1": 0.78,
           "sensitivity": 0.9, "specificity": 0.68, "val_loss": 0.41, "best_epoch": 4, "epochs_run": 6,
           "early_stopped": status == "stopped", "predicted_all": 0.7, "single_class": False,
           "error": "boom" if status == "error" else None,
           "notes": None, "num_parameters": 123456, "train_seconds": 12.5, "overhead_seconds": 0.4,
           "images_per_s": 850.0, "nodes": "node-b,node-a", "searcher": "tpe", "scheduler": "asha",
           "objectives": None, "pareto": None,  # a single-objective search's (test_pareto.py sets them)
           "cv_folds": 3, "fold_metrics": '{"weighted_f1": [0.7, 0.8, 0.9]}', "stage": "search", "reranked_from": None,
           "metric_lo": 0.74, "metric_hi": 0.86,  # the ranking metric's patient-bootstrap interval
           "checkpoint": f"/tmp/ckpt/{trial_id}", "data_fingerprint": "abc123def", "data_generated": True,
           "data_root": "/data/C-NMC_Leukemia", "code_version": lb.code_version(),
           "started_at": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc), "finished_at": "2024-05-01T12:03:00Z"}
    row.update(changes)
    return row
