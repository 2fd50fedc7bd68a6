"""Export a trained checkpoint to TorchScript and ONNX, then check the exports against the PyTorch model.

    python search/export.py --checkpoint PATH --out DIR [--format torchscript onnx] [--images FILES_OR_FOLDERS ...]

The exported graph takes what the decoder produces, no preprocessing needed by the user:
    input  "images_uint8": uint8 N x 3 x S x S (RGB, channels first, S = the config's image_size; decode an image
           with leukmodels.data.load_image(path, S), or resize the whole frame to S x S and transpose to 3 x S x S)
    output "probabilities": float32 N x 2 softmax, column 1 = P(ALL), column 0 = P(HEM); the batch size N is dynamic.
Normalisation ((x / 255 - mean) / std, leukmodels.augment) is inside the graph, and so is the checkpoint's
temperature (softmax(logits / T), leukmodels/calibration.py; T = 1 for a checkpoint without one): the exported
P(ALL) is the calibrated one that search/predict.py prints. A cross-validated checkpoint (`--cv`) exports its K fold
models as one graph whose P(ALL) is their mean (leukmodels.ensemble.FoldEnsemble).

Writes DIR/model.torchscript.pt, DIR/model.onnx and DIR/export.json (config, input/output spec, check results).
The check runs the PyTorch model through leukmodels.metrics.predict_proba (the library's own inference path) and
each export (TorchScript in torch, ONNX in onnxruntime) on sample images: --images, else random uint8 frames with a
fixed seed; it prints the largest absolute difference in P(ALL) per format and fails (exit 1) above --atol (1e-4).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from leukmodels.augment import STAIN_MEAN, STAIN_STD
from leukmodels.calibration import apply_temperature
from leukmodels.labels import ALL
from leukmodels.metrics import predict_proba
from search.evaluation.predict import checkpoint_temperature, expand_images, load_images, load_trial_model

FORMATS = ("torchscript", "onnx")
INPUT_NAME, OUTPUT_NAME = "images_uint8", "probabilities"


class UInt8Classifier(nn.Module):
    """uint8 N x 3 x S x S -> float32 N x 2 class probabilities; the model's own normalisation baked in."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(STAIN_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STAIN_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = (images_uint8.float() / 255.0 - self.mean) / self.std  # N x 3 x S x S, as leukmodels.augment.normalise
        return torch.softmax(self.model(x).float() / self.temperature, dim=1)  # N x 2, temperature-scaled


def export_torchscript(wrapper: UInt8Classifier, example: torch.Tensor, path: Path) -> Path:
    """Traced and frozen. torch 2.14 marks torch.jit deprecated (FutureWarning, silenced here) but it still loads
    anywhere libtorch does, which is why it is offered next to ONNX."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=True)
        traced = torch.jit.freeze(traced.eval())
        traced.save(str(path))
    return path


def export_onnx(wrapper: UInt8Classifier, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """torch.export-based exporter (dynamo=True, torch's default) with a dynamic batch axis; the legacy TorchScript
    exporter (dynamo=False, deprecated) only as a fallback. Both handle every family here; the result is checked."""
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    try:
        batch = torch.export.Dim("batch", min=1)
        with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter prints its progress
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                              dynamic_shapes={INPUT_NAME: {0: batch}}, **names)
    except Exception as first:  # noqa: BLE001 - report both if the fallback fails too
        print(f"export: dynamo ONNX exporter failed ({str(first).splitlines()[0][:200]}); trying dynamo=False",
              file=sys.stderr)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=17,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)
        except Exception as second:  # noqa: BLE001
            raise RuntimeError(f"ONNX export failed: dynamo=True: {first}; dynamo=False: {second}") from second
    import onnx  # here: an optional dependency (pip install .[export]), measured +1 s

    onnx.checker.check_model(onnx.load(str(path)))
    return path


def run_torchscript(path: Path, images: np.ndarray) -> np.ndarray:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        return module(torch.from_numpy(np.ascontiguousarray(images))).numpy()


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # here: an optional dependency (pip install .[export])

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]


def sample_images(items: Sequence[str], size: int, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """uint8 N x 3 x S x S sample images and where they came from."""
    if items:
        images, good, errors = load_images(expand_images(items)[:count], size)
        for line in errors:
            print(f"export: warning: {line}", file=sys.stderr)
        if len(good):
            return images, f"{len(good)} image(s) from {' '.join(items)}"
        raise ValueError(f"--images {' '.join(items)}: no readable image")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 3, size, size), dtype=np.uint8), f"{count} random uint8 frames"


def export(checkpoint: str, out: Path, formats: Sequence[str] = FORMATS, images: Sequence[str] = (),
           count: int = 8, atol: float = 1e-4) -> dict:
    """Export and check; returns the summary written to export.json (summary["ok"] False when a check fails)."""
    model, config, ckpt_file = load_trial_model(checkpoint)
    temperature = checkpoint_temperature(ckpt_file)
    wrapper = UInt8Classifier(model, temperature).eval()
    samples, origin = sample_images(images, config.image_size, count)
    # N P(ALL): the library's inference path, then the checkpoint's temperature as predict.py applies it
    expected = apply_temperature(predict_proba(model, samples, tta=False), temperature)
    example = torch.from_numpy(np.ascontiguousarray(samples[:2]))  # trace at batch 2; the batch axis is dynamic
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": ckpt_file, "config": config.to_dict(), "samples": origin, "atol": atol,
               "temperature": temperature,
               "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, config.image_size,
                                                                         config.image_size]},
               "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", 2],
                          "columns": ["P(HEM)", "P(ALL)"]},
               "exports": {}}
    runners = {"torchscript": (export_torchscript, run_torchscript, "model.torchscript.pt"),
               "onnx": (export_onnx, run_onnx, "model.onnx")}
    for fmt in formats:
        write, run, name = runners[fmt]
        path = write(wrapper, example, out / name)
        probs = run(path, samples)  # N x 2
        max_diff = float(np.abs(probs[:, ALL].astype(np.float64) - expected).max())
        rows_sum = float(np.abs(probs.sum(axis=1) - 1.0).max())
        summary["exports"][fmt] = {"path": str(path), "max_abs_diff_prob_all": max_diff,
                                   "max_abs_row_sum_error": rows_sum, "ok": max_diff <= atol}
    summary["ok"] = all(e["ok"] for e in summary["exports"].values())
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="search/export.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or a folder holding checkpoint.pt")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), dest="formats")
    parser.add_argument("--images", nargs="*", default=[], help="sample image files/folders for the check")
    parser.add_argument("--num-samples", type=int, default=8, help="sample images for the check (8)")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance on P(ALL) (1e-4)")
    args = parser.parse_args(argv)
    try:
        summary = export(args.checkpoint, Path(args.out), args.formats, args.images, args.num_samples, args.atol)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"checked on {summary['samples']} against the PyTorch model (predict_proba, temperature "
          f"{summary['temperature']:.3f}), atol {args.atol:g}:")
    for fmt, result in summary["exports"].items():
        verdict = "OK" if result["ok"] else "MISMATCH"
        print(f"  {fmt:<12} {result['path']}  max |dP(ALL)| = {result['max_abs_diff_prob_all']:.2e}  {verdict}")
    print(f"input {INPUT_NAME}: uint8 N x 3 x {summary['config']['image_size']} x {summary['config']['image_size']};"
          f" output {OUTPUT_NAME}: float32 N x 2 (column 1 = P(ALL)); wrote {Path(args.out) / 'export.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
