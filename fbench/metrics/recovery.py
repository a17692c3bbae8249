"""Parameter recovery: how well a method's FLAME expression and jaw match known ground truth.

For images whose true FLAME parameters are known (the synthetic datasets' ground truth,
`fbench.synth.ground_truth`), two errors per image:

- **expression-driven vertex-offset error (mm)**. The offsets are what expression, jaw and
  eyelids do to the neutral head, both evaluated on the SAME true identity:

      neutral  = FLAME(shape_true)                                          (everything else zero)
      d_true   = FLAME(shape_true, expression_true, jaw_true, eyelids_true) - neutral
      d_pred   = FLAME(shape_true, expression_pred, jaw_pred, eyelids_pred) - neutral
      error    = mean over the region's vertices of || d_pred - d_true ||,  x 1000 (metres -> mm)

  Head pose, neck, eyes, camera and translation are zero in all three, so the error is blind
  to identity (the predicted shape is never used), to head pose and to framing: it measures
  the expression the method recovered, in the geometry that expression produces. Eyelids
  count only when the FLAME model has SMIRK's eyelid blendshapes (`eyelids` in the result
  says whether they did); a prediction with fewer expression components than the ground
  truth (or more) is compared with the missing ones at zero. `neutral_mm` is the same
  error for a prediction of no expression at all (|| d_true || averaged): the scale of the
  offsets, and what a method that always predicts the neutral face scores.
- **jaw error (degrees)**: the angle of the rotation between the true and the predicted jaw
  rotations (axis-angle), i.e. the geodesic distance angle(R_true^T R_pred) on SO(3).

The region is a FLAME mask (default "face", SMIRK's face region; "all" for every vertex).
`summary` gives mean and median over images of each error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fbench.flame import FlameParams
from fbench.flame.model import axis_angle_to_matrix

M_TO_MM = 1000.0


@dataclass
class RecoveryErrors:
    """Per-image errors (numpy float64, one entry per image) and what was measured."""

    offset_mm: np.ndarray  # expression-driven vertex-offset error
    jaw_deg: np.ndarray  # jaw rotation error
    neutral_mm: np.ndarray  # the error a neutral prediction would have (mean || d_true ||)
    region: str
    n_vertices: int
    eyelids: bool  # eyelid blendshapes part of the offsets

    def __len__(self) -> int:
        return len(self.offset_mm)

    def summary(self) -> dict[str, Any]:
        def stats(x: np.ndarray) -> tuple[float, float]:
            return (float(np.mean(x)), float(np.median(x))) if len(x) else (float("nan"), float("nan"))

        out: dict[str, Any] = {}
        for name, values, unit in (("offset", self.offset_mm, "mm"), ("jaw", self.jaw_deg, "deg"),
                                   ("neutral_offset", self.neutral_mm, "mm")):
            out[f"{name}_mean_{unit}"], out[f"{name}_median_{unit}"] = stats(values)
        out.update(n_items=len(self), region=self.region, region_vertices=self.n_vertices, eyelids=self.eyelids)
        return out


def jaw_angle_deg(true_jaw: Tensor, pred_jaw: Tensor) -> Tensor:
    """(B,) degrees: the angle of R(true)^T R(pred) for axis-angle jaw rotations (B, 3).

    From the chordal distance, ||R_t - R_p||_F = 2 sqrt(2) sin(angle / 2), which stays exact for
    small angles (arccos of the trace loses them) and is 0 for equal rotations."""
    rt = axis_angle_to_matrix(true_jaw.double())
    rp = axis_angle_to_matrix(pred_jaw.double())
    chord = (rt - rp).flatten(1).norm(dim=1)
    return torch.rad2deg(2 * torch.arcsin((chord / (2 * math.sqrt(2))).clamp(max=1.0)))


def region_vertices(flame: Any, region: str) -> Tensor | None:
    """Vertex indices of FLAME mask `region`, or None for "all"."""
    if region == "all":
        return None
    masks = flame.masks  # raises naming the missing FLAME_masks file
    if region not in masks:
        raise ValueError(f"no FLAME mask named {region!r} (this model has: {', '.join(sorted(masks))}, or 'all')")
    return masks[region]


def _expression_only(shape: Tensor, expression: Tensor, jaw: Tensor, eyelids: Tensor) -> FlameParams:
    p = FlameParams.zeros(shape.shape[0], n_shape=shape.shape[1], n_exp=expression.shape[1],
                          dtype=shape.dtype, device=shape.device)
    p.shape, p.expression, p.jaw, p.eyelids = shape, expression, jaw, eyelids
    return p


def _match_width(x: Tensor, width: int) -> Tensor:
    return x[:, :width] if x.shape[1] >= width else torch.nn.functional.pad(x, (0, width - x.shape[1]))


@torch.no_grad()
def recovery_errors(flame: Any, true: FlameParams, pred: FlameParams, region: str = "face",
                    batch_size: int = 64) -> RecoveryErrors:
    """Errors of `pred` against `true` (same batch), measured with `flame` (see the module doc).

    `flame` must be the model the ground truth was made with; it is evaluated in float64."""
    if true.batch_size != pred.batch_size:
        raise ValueError(f"{true.batch_size} true rows but {pred.batch_size} predictions")
    flame = _float64(flame)
    device = flame.v_template.device
    idx = region_vertices(flame, region)
    eyelids = "l_eyelid" not in flame.missing
    n_exp = max(true.expression.shape[1], pred.expression.shape[1])
    if n_exp > flame.n_exp:
        if torch.count_nonzero(true.expression[:, flame.n_exp:]) or torch.count_nonzero(pred.expression[:, flame.n_exp:]):
            raise ValueError(f"expression has {n_exp} components; this FLAME model uses {flame.n_exp}: load it "
                             "with n_exp >= the widest parameters")
        n_exp = flame.n_exp
    offsets, jaws, neutrals = [], [], []
    for s in range(0, true.batch_size, batch_size):
        t, q = true[s:s + batch_size], pred[s:s + batch_size]
        shape = t.shape.to(device, torch.float64)
        zeros_e, zeros3, zeros2 = (shape.new_zeros(shape.shape[0], n) for n in (n_exp, 3, 2))

        def verts(exp: Tensor, jaw: Tensor, lids: Tensor) -> Tensor:
            lids = lids if eyelids else torch.zeros_like(lids)
            v = flame(_expression_only(shape, _match_width(exp.to(device, torch.float64), n_exp),
                                       jaw.to(device, torch.float64), lids.to(device, torch.float64))).vertices
            return v if idx is None else v[:, idx]

        neutral = verts(zeros_e, zeros3, zeros2)
        d_true = verts(t.expression, t.jaw, t.eyelids) - neutral
        d_pred = verts(q.expression, q.jaw, q.eyelids) - neutral
        offsets.append((d_pred - d_true).norm(dim=-1).mean(-1) * M_TO_MM)
        neutrals.append(d_true.norm(dim=-1).mean(-1) * M_TO_MM)
        jaws.append(jaw_angle_deg(t.jaw, q.jaw))
    n_vertices = int(flame.num_vertices if idx is None else len(idx))
    return RecoveryErrors(offset_mm=torch.cat(offsets).cpu().numpy(), jaw_deg=torch.cat(jaws).cpu().numpy(),
                          neutral_mm=torch.cat(neutrals).cpu().numpy(), region=region, n_vertices=n_vertices,
                          eyelids=eyelids)


def _float64(flame: Any) -> Any:
    if flame.v_template.dtype == torch.float64:
        return flame
    import copy

    return copy.deepcopy(flame).double()


def reconstruct_all(method: Any, images: Tensor, items: Sequence[Any] | None = None,
                    batch_size: int = 16) -> FlameParams:
    """`method.reconstruct` over (N, 3, S, S) crops in batches (no gradients), rows in order."""
    parts = []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            chunk = None if items is None else list(items[s:s + batch_size])
            parts.append(method.reconstruct(images[s:s + batch_size], chunk))
    return FlameParams.cat([p.detach().to("cpu") for p in parts])


def evaluate_recovery(method: Any, images: Tensor, true: FlameParams, flame: Any, items: Sequence[Any] | None = None,
                      region: str = "face", batch_size: int = 16) -> tuple[RecoveryErrors, FlameParams]:
    """Any `fbench.plugins.Reconstructor` on (N, 3, S, S) crops in [0, 1] (its `crop` spec) whose
    true parameters are `true`; returns the errors and the predictions."""
    if images.shape[0] != true.batch_size:
        raise ValueError(f"{images.shape[0]} images but {true.batch_size} ground-truth rows")
    pred = reconstruct_all(method, images, items, batch_size)
    return recovery_errors(flame, true, pred, region=region), pred
