"""FLAME helpers for fitting: variable layouts, identity-specialised models, Jacobians, rigid moves.

Fitting optimises flat float64 vectors; a :class:`Layout` says which FlameParams fields
(and how many columns of each) a vector holds, and converts both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from fbench.flame import FlameParams
from fbench.flame.model import axis_angle_to_matrix

if TYPE_CHECKING:
    from fbench.fitting.fast_flame import FittingFlame

# Per-frame variables of a registration or scan fit: TF_FLAME's (rot, trans, pose = neck,
# jaw, eyeballs, exp) without the identity, which is per subject.
FRAME_FIELDS = ("global_pose", "translation", "neck", "jaw", "eyes", "expression")
JAW_JOINT = 2  # FLAME's kinematic tree: global, neck, jaw, left eye, right eye
NECK_JOINT = 1


@dataclass(frozen=True)
class Layout:
    """An ordered list of (field, width) packed into one vector per row."""

    fields: tuple[tuple[str, int], ...]

    @classmethod
    def frame(cls, n_exp: int) -> "Layout":
        widths = {"global_pose": 3, "translation": 3, "neck": 3, "jaw": 3, "eyes": 6, "expression": n_exp}
        return cls(tuple((name, widths[name]) for name in FRAME_FIELDS))

    @property
    def size(self) -> int:
        return sum(w for _, w in self.fields)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, width in self.fields:
            out[name] = slice(start, start + width)
            start += width
        return out

    def pack(self, params: FlameParams) -> Tensor:
        cols = []
        for name, width in self.fields:
            value = getattr(params, name)
            if value.shape[1] < width:
                value = torch.nn.functional.pad(value, (0, width - value.shape[1]))
            cols.append(value[:, :width])
        return torch.cat(cols, dim=1)

    def unpack(self, x: Tensor, base: FlameParams) -> FlameParams:
        """FlameParams with this layout's fields from ``x`` (B, P), the others from ``base`` (B or 1 rows)."""
        values = {}
        for name, value in base.as_dict().items():
            values[name] = value.to(x.dtype).expand(x.shape[0], -1) if value.shape[0] == 1 else value.to(x.dtype)
        for name, sl in self.slices().items():
            values[name] = x[:, sl]
        return FlameParams(**values)


def finite_difference_jacobian(fn: Callable[[Tensor], Tensor], x0: Tensor, step: float = 1e-6,
                               chunk: int = 256) -> Tensor:
    """Central-difference Jacobian (M, P) of ``fn`` (batched: (n, P) -> (n, M)) at ``x0`` (P,).

    All 2P perturbed points go through ``fn`` as one batch (in chunks), so this costs a
    few batched forward passes; in float64 it is accurate to ~1e-9 relative, plenty for a
    Gauss-Newton preconditioner.
    """
    size = x0.numel()
    eye = torch.eye(size, dtype=x0.dtype, device=x0.device) * step
    points = torch.cat([x0[None] + eye, x0[None] - eye])
    outs = []
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            outs.append(fn(points[start:start + chunk]))
    out = torch.cat(outs)
    return ((out[:size] - out[size:]) / (2 * step)).T


def rigid_vertex_ids(model: "FittingFlame", masks: dict[str, Tensor], threshold: float = 0.05,
                     min_count: int = 50) -> Tensor:
    """Vertices that move rigidly with the head: skinned to the neck joint only, no expression.

    Used for the closed-form rigid stage. Expression displacement below ``threshold`` x
    its maximum counts as none (FLAME's PCA bases are small but non-zero on the scalp).
    Falls back to the forehead/scalp/nose ``masks`` when too few vertices qualify.
    """
    weights = model.lbs_weights
    expr = model.expr_dirs.reshape(model.expr_dirs.shape[0], -1, 3)
    norm = expr.norm(dim=-1).amax(0) if expr.shape[0] else torch.zeros(weights.shape[0], dtype=weights.dtype)
    head = weights[:, NECK_JOINT] >= 0.99 if weights.shape[1] > NECK_JOINT else torch.ones_like(norm, dtype=torch.bool)
    still = norm <= threshold * norm.max().clamp_min(1e-30)
    ids = torch.nonzero(head & still).squeeze(1)
    if ids.numel() >= min_count:
        return ids
    parts = [masks[n] for n in ("forehead", "scalp", "nose") if n in masks]
    if not parts:
        raise ValueError("cannot find rigid head vertices for the rigid stage (no forehead/scalp/nose masks)")
    return torch.unique(torch.cat(parts))


def compose_rigid(global_pose: Tensor, translation: Tensor, rotation: Tensor, offset: Tensor,
                  root: Tensor) -> tuple[Tensor, Tensor]:
    """Apply a rigid motion ``x -> R x + t`` (per row) on top of FLAME's global pose and translation.

    FLAME rotates about the rest root joint ``J0``: ``v = R_g (x - J0) + J0 + t_g``, so the
    composed pose is ``R R_g`` and the translation ``R (J0 + t_g) + t - J0``.
    Returns the new (global_pose, translation).
    """
    rot_g = axis_angle_to_matrix(global_pose)
    new_rot = rotation @ rot_g
    new_t = (rotation @ (root + translation)[..., None])[..., 0] + offset - root
    return matrix_to_axis_angle(new_rot), new_t


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi] (scipy, robust near pi)."""
    from scipy.spatial.transform import Rotation

    r = rot.detach().cpu().double().numpy().reshape(-1, 3, 3)
    out = Rotation.from_matrix(r).as_rotvec()
    return torch.as_tensor(out.reshape(*rot.shape[:-2], 3), dtype=rot.dtype, device=rot.device)
