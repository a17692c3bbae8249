"""A lean FLAME forward for the fitting loops: one identity, vertices (and 68 landmarks) only.

Fitting evaluates FLAME hundreds of times per frame with the identity fixed, so this
module bakes the subject's shape into the template and joints once, and computes only
what the objectives need. It uses the buffers of a loaded :class:`fbench.flame.FLAME`
(blendshapes, pose correctives, joints, skinning weights, kinematic tree) and the same
LBS equations; ``tests/test_fitting_core.py`` checks that its vertices equal
``FLAME.forward`` to float64 precision. What differs:

* the identity's blendshape is applied once, at construction (unless ``free_shape``);
* vertices stay planar (all x, then all y, then all z) end to end, so objectives work on
  contiguous (B, V) rows;
* skinning (:func:`fbench.flame.model.blend_skinning`, shared with FLAME) is planar;
* no eyelids, camera or MediaPipe/contour landmarks are computed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fbench.flame import FLAME
from fbench.flame.model import axis_angle_to_matrix, barycentric_points, blend_skinning, forward_kinematics


class FittingFlame(nn.Module):
    """Vertices of one subject (fixed ``shape``) from per-frame pose and expression, float64 by default.

    Internally vertices are planar, (B, 3, V): every elementwise operation then runs on
    contiguous (B, V) rows, and autograd needs no reductions over axes of size 3.
    """

    def __init__(self, flame: FLAME, shape: Tensor | None = None, n_exp: int | None = None,
                 dtype: torch.dtype = torch.float64, free_shape: bool = False) -> None:
        super().__init__()
        n_shape = flame.n_shape
        n_exp = flame.n_exp if n_exp is None else min(n_exp, flame.n_exp)
        v = flame.num_vertices
        self.n_exp = n_exp
        self.num_vertices = v
        self.num_joints = flame.num_joints
        self.parents = list(flame.parents)
        coeff = torch.zeros(n_shape, dtype=torch.float64, device=flame.v_template.device)
        if shape is not None:
            s = shape.reshape(-1).to(coeff)[:n_shape]
            coeff[: s.numel()] = s
        blend = flame.blend_dirs.to(torch.float64)
        joints = flame.joint_dirs.to(torch.float64)
        template = flame.template_planar.to(torch.float64)[None] + coeff @ blend[:n_shape]  # FLAME's dirs are planar
        joint_template = flame.joint_template.to(torch.float64).reshape(-1) + coeff @ joints[:n_shape]
        self.register_buffer("template", template[0].to(dtype))  # (3V,) planar
        self.register_buffer("joint_template", joint_template.to(dtype))  # (J*3,)
        self.register_buffer("expr_dirs", blend[n_shape:n_shape + n_exp].to(dtype).contiguous())  # (E, 3V)
        self.register_buffer("expr_joint_dirs", joints[n_shape:n_shape + n_exp].to(dtype).contiguous())  # (E, J*3)
        # With free_shape the identity stays a variable (joint fits): shape bases kept, added per call.
        self.n_shape = n_shape if free_shape else 0
        self.register_buffer("shape_dirs", blend[:self.n_shape].to(dtype).contiguous())
        self.register_buffer("shape_joint_dirs", joints[:self.n_shape].to(dtype).contiguous())
        self.register_buffer("pose_dirs", flame.pose_dirs.to(dtype))
        self.register_buffer("lbs_weights_t", flame.lbs_weights.to(dtype).T.contiguous())  # (J, V)
        self.register_buffer("faces", flame.faces)
        self.register_buffer("lmk_vertices", flame.full_lmk_vertices)
        self.register_buffer("lmk_bary", flame.full_lmk_bary.to(dtype))

    @property
    def lbs_weights(self) -> Tensor:
        return self.lbs_weights_t.T

    @property
    def root(self) -> Tensor:
        """Rest position of the root joint (FLAME rotates the head about it)."""
        return self.joint_template[:3]

    def planar(self, global_pose: Tensor, translation: Tensor, neck: Tensor, jaw: Tensor, eyes: Tensor,
               expression: Tensor, shape: Tensor | None = None) -> Tensor:
        """(B, 3, V) vertices; arguments are FlameParams fields (B, width), expression up to n_exp wide.

        ``shape`` (B or 1, n_shape) only for a model built with ``free_shape=True``; it is
        added to the identity baked in at construction.
        """
        batch = expression.shape[0]
        dtype = self.template.dtype
        if expression.shape[1] < self.n_exp:
            expression = torch.nn.functional.pad(expression, (0, self.n_exp - expression.shape[1]))
        v_shaped = torch.addmm(self.template[None], expression, self.expr_dirs)  # (B, 3V)
        joints = torch.addmm(self.joint_template[None], expression, self.expr_joint_dirs)
        if shape is not None:
            if self.n_shape == 0:
                raise ValueError("this FittingFlame has a fixed identity (build it with free_shape=True)")
            shape = shape[:, :self.n_shape].expand(batch, -1)
            v_shaped = torch.addmm(v_shaped, shape, self.shape_dirs)
            joints = torch.addmm(joints, shape, self.shape_joint_dirs)
        joints = joints.reshape(batch, -1, 3)
        pose = torch.cat([global_pose, neck, jaw, eyes], dim=1).reshape(batch, -1, 3)
        rots = axis_angle_to_matrix(pose)
        eye = torch.eye(3, dtype=dtype, device=rots.device)
        v_posed = torch.addmm(v_shaped, (rots[:, 1:] - eye).reshape(batch, -1), self.pose_dirs)

        rot, posed = forward_kinematics(rots, joints, self.parents)
        rel_t = posed - (rot @ joints[..., None])[..., 0] + translation[:, None]
        return blend_skinning(v_posed.reshape(batch, 3, -1), rot, rel_t, self.lbs_weights_t)

    def linear_jacobian(self, x: Tensor, slices: dict[str, slice], which: str) -> Tensor:
        """(3V planar, K) derivative of the vertices w.r.t. the shape or expression coefficients at pose ``x`` (1, P).

        FLAME is linear in both for a fixed pose: a coefficient moves the rest vertices by its
        basis and the rest joints by its joint basis; skinning then applies the blended
        rotation to the first and the kinematic chain to the second. Exact (no finite
        differences), and a few element-wise products instead of one forward pass per column.
        """
        if which == "shape":
            basis, joint_basis = self.shape_dirs, self.shape_joint_dirs
        elif which == "expression":
            basis, joint_basis = self.expr_dirs, self.expr_joint_dirs
        else:
            raise ValueError(f"which must be 'shape' or 'expression', got {which!r}")
        k = basis.shape[0]
        if k == 0:
            return basis.new_zeros(3 * self.num_vertices, 0)
        pose = torch.cat([x[:, slices["global_pose"]], x[:, slices["neck"]], x[:, slices["jaw"]],
                          x[:, slices["eyes"]]], dim=1).reshape(-1, 3)
        rots = axis_angle_to_matrix(pose)  # (J, 3, 3)
        world = [rots[0]]
        for i in range(1, self.num_joints):
            world.append(world[self.parents[i]] @ rots[i])
        world_rot = torch.stack(world)  # (J, 3, 3)
        blended = (self.lbs_weights_t.T @ world_rot.reshape(-1, 9)).reshape(-1, 3, 3)  # (V, 3, 3)
        d_rest = basis.reshape(k, 3, -1)
        # out[k, c, v] = sum_d blended[v, c, d] d_rest[k, d, v], as element-wise products of (K, V) rows.
        out = torch.stack([sum(blended[:, c, d][None] * d_rest[:, d] for d in range(3)) for c in range(3)], dim=1)
        d_joints = joint_basis.reshape(k, -1, 3)  # (K, J, 3)
        d_posed = [d_joints[:, 0]]
        for i in range(1, self.num_joints):
            parent = self.parents[i]
            d_posed.append(d_posed[parent] + (d_joints[:, i] - d_joints[:, parent]) @ world[parent].T)
        d_t = torch.stack(d_posed, dim=1) - torch.einsum("jcd,kjd->kjc", world_rot, d_joints)  # (K, J, 3)
        out = out + (d_t.transpose(1, 2).reshape(-1, d_t.shape[1]) @ self.lbs_weights_t).reshape(k, 3, -1)
        return out.reshape(k, -1).T

    def forward(self, global_pose: Tensor, translation: Tensor, neck: Tensor, jaw: Tensor, eyes: Tensor,
                expression: Tensor, shape: Tensor | None = None) -> Tensor:
        """(B, V, 3) vertices (see :meth:`planar`)."""
        return self.planar(global_pose, translation, neck, jaw, eyes, expression, shape).transpose(1, 2)

    def from_vector(self, x: Tensor, slices: dict[str, slice], shape: Tensor | None = None,
                    planar: bool = False) -> Tensor:
        """Vertices from packed per-frame variables ``x`` (B, P) laid out by ``slices`` (see Layout)."""
        fn = self.planar if planar else self.forward
        return fn(x[:, slices["global_pose"]], x[:, slices["translation"]], x[:, slices["neck"]],
                  x[:, slices["jaw"]], x[:, slices["eyes"]], x[:, slices["expression"]], shape)

    def landmarks(self, vertices: Tensor) -> Tensor:
        """(B, 68, 3) fixed 3D landmarks (FLAME's full landmark embedding) on (B, V, 3) ``vertices``."""
        return barycentric_points(vertices, self.lmk_vertices, self.lmk_bary)
