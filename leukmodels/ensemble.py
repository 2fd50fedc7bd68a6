"""K models of one config as one classifier: the fold models of a cross-validated run (leukmodels/crossval.py)."""
from __future__ import annotations

import math

import torch
from torch import nn


class FoldEnsemble(nn.Module):
    """K fold models as one classifier: the log of their mean softmax, N x 2. Its log_softmax (predict_log_proba)
    is itself and its softmax (the exported graph) the folds' mean P(ALL): evaluate, predict and export use it as
    they use one model."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(model(x).float(), dim=1) for model in self.folds])  # K x N x 2
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.folds))  # N x 2


__all__ = ["FoldEnsemble"]
