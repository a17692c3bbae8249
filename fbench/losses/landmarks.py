"""Landmark losses with validity masks, and parameter regularisers."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def landmark_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
                  kind: Literal["mse", "l1"] = "mse") -> Tensor:
    """Mean squared (or absolute) coordinate error over the valid landmarks.

    pred, target: (B, N, D). valid: (B,) per sample (SMIRK's `flag_landmarks_fan`), (B, N) per
    point, or None; a target point with a NaN coordinate is invalid either way, and its NaN
    never reaches the gradient. With every point valid this is `F.mse_loss(pred, target)`; with
    a per-sample mask, SMIRK's `F.mse_loss(pred[valid], target[valid])` (smirk_trainer.py:57-60).
    No valid point: a zero that keeps the graph (SMIRK returns a plain 0).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"landmark_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, N, D)")
    mask = torch.isfinite(target).all(-1)
    if valid is not None:
        valid = valid.to(device=pred.device, dtype=torch.bool)
        mask = mask & (valid[:, None] if valid.dim() == 1 else valid)
    weight = mask.unsqueeze(-1).to(pred.dtype)
    diff = pred - torch.where(mask.unsqueeze(-1), target, pred.detach())
    err = diff.abs() if kind == "l1" else diff * diff
    count = weight.sum() * pred.shape[-1]
    if count == 0:
        return pred.sum() * 0.0
    return (err * weight).sum() / count


def regulariser(params: Tensor, base: Tensor | None = None) -> Tensor:
    """Mean squared distance of parameters to zero, or to a base model's prediction (SMIRK's
    expression/shape/jaw regularisation, smirk_trainer.py:64-72). The base is not trained."""
    if base is None:
        return (params * params).mean()
    if base.shape != params.shape:
        raise ValueError(f"regulariser: params {tuple(params.shape)} and base {tuple(base.shape)} differ")
    d = params - base.detach()
    return (d * d).mean()
