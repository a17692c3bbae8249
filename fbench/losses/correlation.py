"""Correlation losses for valence/arousal regression: 1 - PCC and 1 - CCC.

The same definitions as `fbench.metrics.pcc` / `fbench.metrics.ccc` (population statistics;
Lin's CCC), written in torch for autograd: the metrics stay numpy float64 for scoring, and
tests/test_losses.py holds the two to each other.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _centred(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() == 1:
        pred, target = pred[:, None], target[:, None]
    if pred.shape[0] < 2:
        raise ValueError("correlation losses need at least 2 samples")
    return pred - pred.mean(0), target - target.mean(0)


def pcc_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation, per column of (B,) or (B, K) inputs, averaged over columns."""
    dp, dt = _centred(pred, target)
    r = (dp * dt).sum(0) / torch.sqrt((dp * dp).sum(0) * (dt * dt).sum(0) + eps)
    return (1 - r).mean()


def ccc_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - Lin's concordance correlation (population statistics), per column, averaged."""
    dp, dt = _centred(pred, target)
    mean_gap = pred.mean(0) - target.mean(0) if pred.dim() > 1 else (pred.mean() - target.mean())[None]
    cov = (dp * dt).mean(0)
    ccc = 2 * cov / ((dp * dp).mean(0) + (dt * dt).mean(0) + mean_gap ** 2 + eps)
    return (1 - ccc).mean()
