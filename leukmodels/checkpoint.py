"""Checkpoints that resume exactly and load with `torch.load(weights_only=True)`.

A checkpoint is one file (by convention `<run>/epoch_XXXX/checkpoint.pt`, a directory per epoch so that the Ray layer
can hand the directory to `ray.train.Checkpoint.from_directory`). Its contents are only tensors and primitives:

    {"format": "leukemia-tune-checkpoint/1", "model": state_dict (no DDP "module." prefix), "optimizer": state_dict,
     "scheduler": state_dict, "epoch": completed epochs (1-based), "config": TrainConfig.to_dict(),
     "metrics": that epoch's metrics, "rng": torch / cuda / numpy / python RNG states, "extra": dict (optional)}

The training loop's "extra" holds the epoch history and, when it could fit one on validation patients, the
temperature of temperature scaling ("temperature": float, leukmodels/calibration.py); a checkpoint without it (older
ones, a retrain on train + val) means T = 1.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from leukmodels.atomic import atomic_path
from leukmodels.config import TrainConfig
from leukmodels.ensemble import FoldEnsemble

FORMAT = "leukemia-tune-checkpoint/1"
# K fold models of one cross-validated run in one file (leukmodels/crossval.py): {"format": CV_FORMAT, "folds": [{
# "model", "optimizer", "scheduler"} per fold], and "epoch", "config", "metrics", "rng", "extra" as above}
CV_FORMAT = "leukemia-tune-cv-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
PathLike = Union[str, os.PathLike]


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint file, or a directory holding `checkpoint.pt`, -> the file's path."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if isinstance(inner, torch.nn.Module) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def clean_state_dict(state: dict) -> dict:
    """Strip the "module." (DDP) and "_orig_mod." (torch.compile) prefixes a wrapped model's keys carry."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


# -- RNG state, encoded with tensors and primitives only ---------------------------------------------------------
def capture_rng_state() -> dict:
    algo, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),  # ByteTensor
        "numpy": {"algo": str(algo), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(v) for v in mt_state], "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # list of ByteTensors, one per visible device
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    np.random.set_state((npy["algo"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- save / load -------------------------------------------------------------------------------------------------
def save_checkpoint(path: PathLike, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    scheduler: Optional[Any], epoch: int, config: Union[TrainConfig, dict], metrics: dict,
                    extra: Optional[dict] = None) -> Path:
    """Write atomically (temporary file in the same directory, then os.replace); returns the file's path."""
    payload = {
        "format": FORMAT,
        "model": clean_state_dict(unwrapped(model).state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "config": config.to_dict() if isinstance(config, TrainConfig) else dict(config),
        "metrics": dict(metrics),
        "rng": capture_rng_state(),
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file (or directory holding checkpoint.pt) with weights_only=True.

    Raises FileNotFoundError when missing and ValueError "<path>: not a leukemia-tune checkpoint (...)" when the file
    is anything else (another program's pickle, a bare state_dict, a text file, a newer format).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler objects to, the file is not ours
        raise ValueError(f"{path}: not a leukemia-tune checkpoint ({_load_failure(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, CV_FORMAT):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a leukemia-tune checkpoint (format {found!r}, expected {FORMAT!r})")
    return payload


def _load_failure(error: Exception) -> str:
    """What torch.load objected to, without its advice to load the file again with weights_only=False: that runs
    whatever code a malicious file holds (cut at 200 characters, the warning after the advice was lost)."""
    text = " ".join(str(error).split())
    unpickler = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if unpickler:
        return f"the safe unpickler refused it: {unpickler[1].strip()}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first if "weights_only" not in first else "torch.load with weights_only=True refused it"


def temperature_of(payload: dict) -> float:
    """The checkpoint's temperature-scaling T (extra["temperature"]), 1.0 when it has none."""
    value = (payload.get("extra") or {}).get("temperature")
    return 1.0 if value is None else float(value)


def load_temperature(path: PathLike) -> float:
    """temperature_of the checkpoint at `path` (a file, or a folder holding checkpoint.pt)."""
    return temperature_of(load_checkpoint(path))


def load_model(path: PathLike, device: Any = None) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint, load its weights, put it in eval mode on `device` (default CPU). A
    cross-validated checkpoint gives its K fold models as one `FoldEnsemble` (their mean P(ALL))."""
    from leukmodels.models import build_model  # here: torchvision, measured +1.7 s after torch; reading needs none

    payload = load_checkpoint(path)
    file = resolve_checkpoint(path)
    try:
        config = TrainConfig.from_dict(payload["config"])
        states = [fold["model"] for fold in payload["folds"]] if payload["format"] == CV_FORMAT else [payload["model"]]
        models = [build_model(config.replace(pretrained=None)) for _ in states]  # weights come from the checkpoint
    except (TypeError, ValueError) as error:  # an edited config, or one this version cannot build
        raise ValueError(f"{file}: its config does not build a model ({error})") from None
    for model, state in zip(models, states):
        try:
            model.load_state_dict(state)
        except RuntimeError as error:  # "Error(s) in loading state_dict ...:\n\tsize mismatch for stem.0.weight: ..."
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ValueError(f"{file}: its weights do not match its config ({'; '.join(lines[1:2]) or lines[0]})"
                             ) from None
    if payload["format"] == CV_FORMAT:
        return FoldEnsemble(models).to(device or "cpu").eval(), config
    return models[0].to(device or "cpu").eval(), config


__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "load_temperature", "temperature_of",
           "resolve_checkpoint", "clean_state_dict", "unwrapped", "capture_rng_state", "restore_rng_state", "FORMAT",
           "CV_FORMAT",
           "CHECKPOINT_FILE"]
