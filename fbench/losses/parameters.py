"""Supervised parameter losses: a regression of predicted parameters onto targets that only some
samples of a batch have (e.g. FLAME fits of some datasets in a mixed batch)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

NORMS = ("mse", "l1", "smooth_l1")


def parameter_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
                   norm: Literal["mse", "l1", "smooth_l1"] = "mse", beta: float = 0.1) -> Tensor:
    """Mean element-wise error between (B, K) predictions and targets over the valid samples.

    `valid` (B,) bool marks the samples that have a target (None: all); a target row that is not
    finite counts as invalid, and an invalid row's values never reach the gradient. `norm`:
    squared error, absolute error, or the Huber-like smooth L1 with threshold `beta`. With every
    row valid, "mse" is `F.mse_loss(pred, target)`. No valid row: a zero that keeps the graph.
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"parameter_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be (B, K)")
    if norm not in NORMS:
        raise ValueError(f"parameter_loss: norm must be one of {NORMS}, got {norm!r}")
    keep = target.isfinite().all(1)
    if valid is not None:
        keep = keep & valid.to(device=pred.device, dtype=bool).reshape(-1)
    if not bool(keep.any()):
        return pred.sum() * 0.0
    p, t = pred[keep], target[keep].to(pred.dtype)
    if norm == "mse":
        return F.mse_loss(p, t)
    if norm == "l1":
        return F.l1_loss(p, t)
    return F.smooth_l1_loss(p, t, beta=beta)
