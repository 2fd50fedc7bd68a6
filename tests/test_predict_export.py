"""search/predict.py and search/export.py on a checkpoint of the tiny generated search (tests/tiny_search.py)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest



@pytest.fixture(scope="module")
def trained(tiny_search):
    """A trial's checkpoint, its model, and the held-out test images decoded by the training decoder."""
    from leukmodels.checkpoint import load_model, load_temperature
    from leukmodels.data import decode, discover
    from search.board.leaderboard import read

    checkpoint = read(tiny_search["leaderboard"]).sort_values("trial_id")["checkpoint"].iloc[-1]
    model, config = load_model(checkpoint)
    temperature = load_temperature(checkpoint)
    manifest = discover(tiny_search["root"])
    test = manifest[manifest["source"] == "prelim_test"].head(12)
    decoded = decode(test, config.image_size, cache=False, progress=False)
    return {"checkpoint": checkpoint, "model": model, "config": config, "paths": list(test["path"]),
            "temperature": temperature, "patients": list(test["patient"]),
            "images": decoded.images, "folder": Path(test["path"].iloc[0]).parent}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("tta", [False, True])
def test_prediction_csv_matches_the_models_own_outputs(trained, tmp_path, tta, capsys):
    from leukmodels.calibration import apply_temperature
    from leukmodels.metrics import predict_proba
    from search.evaluation import predict

    out = tmp_path / "preds.csv"
    args = ["--checkpoint", trained["checkpoint"], "--out", str(out), *trained["paths"]] + (["--tta"] if tta else [])
    assert predict.main(args) == 0
    rows = read_csv(out)
    assert [r["path"] for r in rows] == trained["paths"]
    expected = apply_temperature(predict_proba(trained["model"], trained["images"], tta=tta), trained["temperature"])
    got = np.array([float(r["prob_all"]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert [r["label"] for r in rows] == ["ALL" if p > 0.5 else "HEM" for p in got]
    assert "12 image(s) predicted, 0 unreadable" in capsys.readouterr().err


def test_unreadable_images_are_reported_and_the_rest_predicted(trained, tmp_path, capsys):
    from search.evaluation import predict

    folder = tmp_path / "cells"
    folder.mkdir()
    for path in trained["paths"][:3]:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    broken = folder / "broken.bmp"
    broken.write_bytes(b"BM this is not a bitmap")
    missing = tmp_path / "missing.bmp"
    out = tmp_path / "preds.csv"
    code = predict.main(["--checkpoint", trained["checkpoint"], "--out", str(out), str(folder), str(missing)])
    assert code == 0  # something was predicted: the errors are on stderr
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("predict: error:")]
    assert len(error_lines) == 2
    assert any(str(broken) in line for line in error_lines) and any(str(missing) in line for line in error_lines)
    rows = read_csv(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(Path(p).name for p in trained["paths"][:3])
    assert "3 image(s) predicted, 2 unreadable" in err


def test_nothing_readable_exits_non_zero(trained, tmp_path, capsys):
    from search.evaluation import predict

    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert predict.main(["--checkpoint", trained["checkpoint"], str(broken)]) == 2
    assert "nothing predicted" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    from search.evaluation import predict

    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    assert predict.main(["--checkpoint", str(bogus), str(bogus)]) == 2
    assert "not a leukemia-tune checkpoint" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in torch 2.14; still works
def test_exported_torchscript_and_onnx_agree_with_pytorch(trained, tmp_path, capsys):
    import onnxruntime as ort
    import torch

    from leukmodels.calibration import apply_temperature
    from leukmodels.metrics import predict_proba
    from search.evaluation import export

    out = tmp_path / "export"
    assert export.main(["--checkpoint", trained["checkpoint"], "--out", str(out), "--images",
                        str(trained["folder"])]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" OK") == 2 and "MISMATCH" not in printed

    # independently of export.py's own check: run both files on 5 images (a batch size never traced)
    images = np.ascontiguousarray(trained["images"][:5])
    expected = apply_temperature(predict_proba(trained["model"], images), trained["temperature"])  # as predict.py
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        ts_probs = scripted(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    onnx_probs = session.run(None, {"images_uint8": images})[0]
    for probs in (ts_probs, onnx_probs):
        assert probs.shape == (5, 2)
        np.testing.assert_allclose(probs[:, 1], expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ts_probs, onnx_probs, rtol=0, atol=1e-4)


def test_export_check_fails_loudly_on_a_mismatch(trained, tmp_path, monkeypatch, capsys):
    from search.evaluation import export

    monkeypatch.setattr(export, "run_onnx", lambda path, images: np.tile([[0.9, 0.1]], (len(images), 1)))
    code = export.main(["--checkpoint", trained["checkpoint"], "--out", str(tmp_path), "--format", "onnx"])
    assert code == 1 and "MISMATCH" in capsys.readouterr().out


def test_a_decompression_bomb_is_one_line_and_the_rest_are_predicted(trained, tmp_path, capsys):
    from cnmc_trees import write_bomb_png
    from search.evaluation import predict

    bomb = write_bomb_png(tmp_path / "bomb.png", 20000)  # 400M pixels in a few dozen bytes
    out = tmp_path / "preds.csv"
    assert predict.main(["--checkpoint", trained["checkpoint"], "--out", str(out), str(bomb),
                         trained["paths"][0]]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"predict: error: cannot decode image {bomb}: Image size (400000000 pixels) exceeds")
    assert len(err) == 2 and err[1].startswith("predict: 1 image(s) predicted, 1 unreadable")
    assert [row["path"] for row in read_csv(out)] == [trained["paths"][0]]


@pytest.mark.parametrize("edit", ["filters", "family"])
def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_one_line_naming_it(edit, trained, tmp_path, capsys):
    """Weights of another width (filters changed in the config), or a config whose family was changed (a depth the
    new family refuses): one line naming the checkpoint, exit 2 (a size-mismatch traceback; a line without it)."""
    import torch

    from leukmodels.checkpoint import load_checkpoint
    from search.evaluation import predict

    payload = load_checkpoint(trained["checkpoint"])
    config = payload["config"]
    payload["config"] = ({**config, "filters": config["filters"] + 4} if edit == "filters" else
                         {**config, "family": "baseline", "depth": 1})
    edited = tmp_path / "checkpoint.pt"
    torch.save(payload, edited)
    assert predict.main(["--checkpoint", str(edited), trained["paths"][0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"predict: error: {edited}: its "), err
    assert ("weights do not match its config (size mismatch for" if edit == "filters" else
            "config does not build a model (") in err, err


# -- calibration and the per-patient answer (issue 21) -------------------------------------------------------------
def test_the_checkpoint_carries_a_temperature_that_predict_applies_and_uncalibrated_skips(trained, tmp_path):
    from leukmodels.metrics import predict_proba
    from search.evaluation import predict

    assert trained["temperature"] != 1.0  # fitted on the tiny search's validation patients as it trained
    out = tmp_path / "raw.csv"
    assert predict.main(["--checkpoint", trained["checkpoint"], "--uncalibrated", "--out", str(out),
                         *trained["paths"]]) == 0
    raw = np.array([float(r["prob_all"]) for r in read_csv(out)])
    np.testing.assert_allclose(raw, predict_proba(trained["model"], trained["images"]), rtol=0, atol=1e-6)


def test_a_checkpoint_without_a_temperature_means_one(trained, tmp_path):
    import torch

    from leukmodels.checkpoint import load_checkpoint, load_model, load_temperature

    payload = load_checkpoint(trained["checkpoint"])
    payload["extra"].pop("temperature")  # as every checkpoint written before temperatures were
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert load_temperature(old) == 1.0
    model, _ = load_model(old)  # and it still loads
    assert sum(p.numel() for p in model.parameters()) > 0


def test_per_patient_output_beside_the_per_cell_one(trained, tmp_path, capsys):
    import pandas as pd

    from search.evaluation import predict

    mapping = tmp_path / "patients.csv"
    pd.DataFrame({"image": [Path(p).name for p in trained["paths"]], "patient": trained["patients"]}).to_csv(
        mapping, index=False)  # matched by file name
    out = tmp_path / "preds.csv"
    assert predict.main(["--checkpoint", trained["checkpoint"], "--patients", str(mapping), "--out", str(out),
                         *trained["paths"]]) == 0
    cells = pd.read_csv(out)
    assert list(cells["patient"]) == trained["patients"]
    patients = pd.read_csv(tmp_path / "preds_patients.csv")
    expected = cells.groupby("patient")["prob_all"].mean()
    assert sorted(patients["patient"]) == sorted(expected.index)
    for _, row in patients.iterrows():
        assert row["mean_prob_all"] == pytest.approx(expected[row["patient"]])
        assert row["call"] == ("ALL" if row["mean_prob_all"] > 0.5 else "HEM")
        assert row["cells"] == trained["patients"].count(row["patient"])
    capsys.readouterr()
    pd.DataFrame({"image": [Path(trained["paths"][0]).name], "patient": ["p"]}).to_csv(mapping, index=False)
    assert predict.main(["--checkpoint", trained["checkpoint"], "--patients", str(mapping), *trained["paths"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"predict: error: --patients {mapping}: no patient for 11 image(s), e.g. {trained['paths'][1]}")
