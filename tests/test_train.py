"""fit(): learning on held-out patients, exact resume, checkpoints, on_epoch contract, sharding, fail-fast errors."""
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from leukmodels.checkpoint import (FORMAT, clean_state_dict, load_checkpoint, load_model, save_checkpoint)
from leukmodels.data import DecodedSet
from leukmodels.metrics import INTERVAL_METRICS, best_report
from leukmodels.optim import WarmupCosine
from leukmodels.train import epoch_shard, fit
from cell_sets import cell_set, tiny_config

CONTRACT_KEYS = ["epoch", "train_loss", "val_loss", "weighted_f1", "macro_f1", "accuracy", "balanced_accuracy",
                 "roc_auc", "sensitivity", "specificity", "predicted_all",
                 *(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("lo", "hi")),  # patient-bootstrap intervals
                 "images_per_s", "lr", "num_parameters"]


@pytest.fixture(scope="module")
def small_sets():
    return cell_set(3, 3, 8, seed=1), cell_set(2, 2, 6, seed=2, first_patient=100)


def test_learns_and_beats_the_majority_class_on_held_out_patients():
    torch.manual_seed(0)
    train = cell_set(6, 6, 16, seed=0)  # 192 images, 12 patients
    val = cell_set(6, 3, 8, seed=1, first_patient=50)  # 72 images, 9 other patients, 2/3 ALL as in C-NMC
    assert not set(train.patients) & set(val.patients)
    result = fit(tiny_config(epochs=5, batch_size=16), train, val, log=None)
    losses = [m["train_loss"] for m in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    majority = f1_score(val.labels, np.ones_like(val.labels), average="weighted")  # always "ALL": ~0.53
    best = best_report(result.history, "weighted_f1")
    assert best["weighted_f1"] > majority + 0.25, (best, majority)
    assert best["balanced_accuracy"] > 0.75


def test_resumed_run_equals_uninterrupted_run(tmp_path, small_sets):
    train, val = small_sets
    config = tiny_config(fc_layers=2, dropout=0.3, label_smoothing=0.1, class_weighting=True)  # RNG-heavy
    full = fit(config, train, val, checkpoint_dir=tmp_path / "full", log=None)
    resumed = fit(config, train, val, checkpoint_dir=tmp_path / "resumed", log=None,
                  resume_from=tmp_path / "full" / "epoch_0001")  # the directory form; the file works as well
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    for a, b in zip(full.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "images_per_s"} == {
            k: v for k, v in b.items() if k != "images_per_s"}
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    assert not (tmp_path / "resumed" / "epoch_0001").exists()  # it continued after epoch 1
    final = load_checkpoint(tmp_path / "resumed" / "epoch_0003" / "checkpoint.pt")
    assert [m["epoch"] for m in final["extra"]["history"]] == [1, 2, 3]


def test_on_epoch_and_checkpoint_contract(tmp_path, small_sets):
    train, val = small_sets
    calls = []
    config = tiny_config(optimizer="sgd", lr=0.05)
    result = fit(config, train, val, checkpoint_dir=tmp_path, on_epoch=lambda m, d: calls.append((m, d)), log=None)
    assert [m["epoch"] for m, _ in calls] == [1, 2, 3]
    for metrics, directory in calls:
        assert list(metrics) == CONTRACT_KEYS
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
        assert (tmp_path / f"epoch_{metrics['epoch']:04d}" / "checkpoint.pt").is_file()
        assert directory == str(tmp_path / f"epoch_{metrics['epoch']:04d}")
    assert calls[0][0]["num_parameters"] == result.model.num_parameters()
    assert calls[-1][0]["lr"] < calls[0][0]["lr"]  # cosine decay
    assert result.last_checkpoint_path == str(tmp_path / "epoch_0003" / "checkpoint.pt")

    raw = torch.load(result.last_checkpoint_path, weights_only=True)  # only tensors and primitives inside
    assert raw["format"] == FORMAT and raw["epoch"] == 3 and raw["config"] == config.to_dict()
    assert set(raw["rng"]) >= {"torch", "numpy", "python"}
    assert set(raw["metrics"]["per_patient_accuracy"]) == set(val.patients)
    model, loaded_config = load_model(tmp_path / "epoch_0003")
    assert loaded_config == config and not model.training
    for p, q in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(p, q)

    no_dir = []
    fit(config.replace(epochs=1), train, val, on_epoch=lambda m, d: no_dir.append(d), log=None)
    assert no_dir == [None]


def test_foreign_files_are_not_checkpoints(tmp_path):
    state = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    pickled = tmp_path / "object.pt"
    torch.save({"format": FORMAT, "object": np.dtype("float32")}, pickled)  # not loadable with weights_only
    for path in (state, text, pickled):
        with pytest.raises(ValueError, match=f"{path}: not a leukemia-tune checkpoint"):
            load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_malicious_or_random_checkpoint_error_never_advises_weights_only_false(tmp_path):
    """PyTorch's refusal advises loading again with weights_only=False, which runs whatever a malicious file holds;
    cut at 200 characters its warning was lost. The line says what the safe unpickler refused, and nothing else
    (issue 20.10). The malicious file's code never runs."""
    import os
    import pickle

    class Malicious:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    malicious, random_bytes = tmp_path / "malicious.pt", tmp_path / "random.pt"
    malicious.write_bytes(pickle.dumps(Malicious()))
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (malicious, random_bytes):
        with pytest.raises(ValueError) as refused:
            load_checkpoint(path)
        line = str(refused.value)
        assert line.startswith(f"{path}: not a leukemia-tune checkpoint (") and "\n" not in line, line
        assert "weights_only" not in line and "Re-running" not in line, line
    assert "the safe unpickler refused it: Unsupported operand" in line
    assert not (tmp_path / "ran").exists()


def test_ddp_prefixes_are_stripped(tmp_path):
    class Wrapper(torch.nn.Module):  # looks like DDP: the real model is .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    inner = torch.nn.Linear(2, 2)
    assert clean_state_dict({"module._orig_mod.weight": 1, "bias": 2}) == {"weight": 1, "bias": 2}
    path = save_checkpoint(tmp_path / "c" / "checkpoint.pt", model=Wrapper(inner), optimizer=None, scheduler=None,
                           epoch=1, config=tiny_config(), metrics={"weighted_f1": 0.5})
    assert set(load_checkpoint(path)["model"]) == {"weight", "bias"}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_epoch_shards_are_disjoint_equal_and_seeded():
    shards = [epoch_shard(103, epoch=2, seed=7, rank=r, world_size=4) for r in range(4)]
    assert all(len(s) == 103 // 4 for s in shards)
    union = torch.cat(shards)
    assert len(set(union.tolist())) == len(union)  # disjoint
    assert torch.equal(epoch_shard(103, 2, 7, 1, 4), shards[1])  # deterministic
    assert not torch.equal(epoch_shard(103, 3, 7, 1, 4), shards[1])  # a new order every epoch
    single = epoch_shard(103, 2, 7, 0, 1)
    # batch k of all ranks together (b = 5 per rank) is batch k of one process with 4 x 5 images
    together = torch.cat([s[5:10] for s in shards])
    assert set(together.tolist()) == set(single[20:40].tolist())


def test_warmup_then_cosine_to_zero():
    schedule = WarmupCosine(warmup_steps=4, total_steps=12)
    factors = [schedule(s) for s in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[12] == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(0, 10)(0) == 1.0


def test_bad_setups_raise_valueerror_before_training(tmp_path, small_sets):
    train, val = small_sets
    config = tiny_config()
    config.lr = -1.0  # mutated after construction: fit validates again
    with pytest.raises(ValueError, match="lr"):
        fit(config, train, val, log=None)
    with pytest.raises(ValueError, match="image_size=64"):
        fit(tiny_config(image_size=64), train, val, log=None)
    with pytest.raises(ValueError, match="not initialised"):
        fit(tiny_config(), train, val, rank=0, world_size=2, log=None)
    with pytest.raises(ValueError, match="depth"):
        fit(tiny_config(depth=9), train, val, log=None)  # the model family refuses the config
    unlabelled = DecodedSet(val.images, np.full(len(val), -1), val.patients, val.image_ids, "x")
    with pytest.raises(ValueError, match="val set: labels"):
        fit(tiny_config(), train, unlabelled, log=None)
    fit(tiny_config(epochs=1, lr=1e-2), train, val, checkpoint_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match=r"config differs in \['epochs', 'lr'\]"):
        fit(tiny_config(), train, val, log=None, resume_from=tmp_path / "epoch_0001")


def test_nan_metrics_are_floats_not_crashes(small_sets):
    train, val = small_sets
    result = fit(tiny_config(epochs=1, lr=1e6, optimizer="sgd", warmup_epochs=0), train, val, log=None)
    metrics = result.history[0]
    assert list(metrics) == CONTRACT_KEYS
    # the run diverged: a model that trains ends its first epoch near log 2 = 0.69, this one far above (or at NaN) ...
    assert math.isnan(metrics["train_loss"]) or metrics["train_loss"] > 1e3, metrics["train_loss"]
    assert math.isnan(metrics["val_loss"])  # ... and predicts NaN on the validation cells
    # ... which the metrics take as P(ALL) = 0.5 everywhere, not as a crash
    assert isinstance(metrics["weighted_f1"], float) and 0.0 <= metrics["weighted_f1"] <= 1.0
    assert metrics["roc_auc"] == 0.5


def test_bench_smoke_writes_json_to_the_given_path(tmp_path, capsys):
    from leukmodels.bench import main

    out = tmp_path / "deep" / "bench.json"
    assert main(["--smoke-test", "--families", "baseline", "--io-workers", "1", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["device_type"] == "cpu" and saved["command"].startswith("python -m leukmodels.bench --smoke-test")
    (row,) = saved["rows"]
    assert row["family"] == "baseline" and row["mode"] == "fp32" and row["images_per_s"] > 0
    assert saved["data_path"]["ratio_cached_vs_imagefolder"] > 0
    assert "images/s" in capsys.readouterr().out


def test_one_best_epoch_rule_latest_on_ties_and_loss_lower_is_better():
    """The rule the search's rows and every caller of fit use: the best finite value, the later epoch on a tie (the
    checkpoint Ray keeps), the lowest for val_loss."""
    history = [{"epoch": 1, "weighted_f1": 0.7, "val_loss": 0.5}, {"epoch": 2, "weighted_f1": math.nan},
               {"epoch": 3, "weighted_f1": 0.7, "val_loss": 0.4}, {"epoch": 4, "weighted_f1": 0.6, "val_loss": 0.4}]
    assert best_report(history, "weighted_f1")["epoch"] == 3
    assert best_report(history, "val_loss")["epoch"] == 4
    assert best_report(history[1:2], "weighted_f1") is None
