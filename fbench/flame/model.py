"""Differentiable, batched FLAME forward pass.

Linear blend skinning as in FLAME (Li et al. 2017) and its PyTorch ports (DECA, SMIRK,
smplx), arranged for speed: identity/expression blendshapes and pose correctives are
single matrix products against pre-flattened bases, joints come from a
pre-regressed joint basis (J_regressor is linear, so regressing the shaped mesh equals
regressing each basis), and skinning blends 3x4 joint transforms without forming a
4x4 matrix per vertex.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fbench.flame.io import FlameAssets, FlameFileError, load_flame_assets
from fbench.flame.params import FlameParams

YAW_BINS_MAX_DEG = 39  # DECA/SMIRK dynamic contour: yaw bins for -39..39 degrees


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula, (..., 3) -> (..., 3, 3); smooth at zero (the angle gets a tiny epsilon)."""
    angle = torch.linalg.vector_norm(axis_angle + 1e-8, dim=-1, keepdim=True)
    axis = axis_angle / angle
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin * skew + (1 - cos) * (skew @ skew)


def yaw_from_matrix(rot: Tensor) -> Tensor:
    """Rotation about the vertical axis in radians, as DECA/SMIRK's rot_mat_to_euler."""
    return torch.atan2(-rot[..., 2, 0], torch.sqrt(rot[..., 0, 0] ** 2 + rot[..., 1, 0] ** 2))


def barycentric_points(vertices: Tensor, face_vertices: Tensor, bary: Tensor) -> Tensor:
    """Points given by triangles' vertex ids (..., L, 3) and barycentrics (..., L, 3) on (B,V,3) meshes."""
    batch = vertices.shape[0]
    if face_vertices.ndim == 2:  # shared by the whole batch
        corners = vertices[:, face_vertices]  # (B,L,3,3)
    else:
        corners = torch.gather(vertices, 1, face_vertices.reshape(batch, -1, 1).expand(-1, -1, 3))
        corners = corners.reshape(batch, -1, 3, 3)
    return (corners * bary[..., None]).sum(-2)


def forward_kinematics(rots: Tensor, joints: Tensor, parents: list[int]) -> tuple[Tensor, Tensor]:
    """World rotations (B,J,3,3) and posed joint positions (B,J,3) from local rotations and rest joints.

    parents[j] < j for every non-root joint (FLAME's kinematic tree order).
    """
    world_rot, world_t = [rots[:, 0]], [joints[:, 0]]
    for i in range(1, len(parents)):
        parent = parents[i]
        world_rot.append(world_rot[parent] @ rots[:, i])
        offset = (joints[:, i] - joints[:, parent])[..., None]
        world_t.append(world_t[parent] + (world_rot[parent] @ offset)[..., 0])
    return torch.stack(world_rot, dim=1), torch.stack(world_t, dim=1)


def blend_skinning(points: Tensor, rotations: Tensor, translations: Tensor, weights_t: Tensor) -> Tensor:
    """Linear blend skinning of planar points (B,3,V) by per-joint transforms (B,J,3,3), (B,J,3).

    weights_t: (J,V) skinning weights. Planar layout (all x, then all y, then all z) keeps
    every elementwise operation on contiguous (B,V) rows. The blended rotation (B,3,3,V) and
    translation (B,3,V) come from two products with the weights and are applied with one
    broadcast multiply and a sum over the middle axis, which keeps the backward pass free of
    stacks and zero-filled slices.
    """
    batch, joints = rotations.shape[:2]
    rot = rotations.reshape(batch, joints, 9).transpose(1, 2).reshape(batch * 9, joints) @ weights_t
    trans = translations.transpose(1, 2).reshape(batch * 3, joints) @ weights_t
    return (rot.view(batch, 3, 3, -1) * points[:, None]).sum(2) + trans.view(batch, 3, -1)


@dataclass
class FlameOutput:
    vertices: Tensor  # (B,V,3)
    joints: Tensor  # (B,J,3) posed joints
    landmarks: Tensor  # (B,68,3): 17 yaw-dependent contour points, then 51 static (SMIRK's landmarks_fan)
    landmarks_full: Tensor  # (B,68,3) fixed 3D landmarks (SMIRK's landmarks_fan_3d)
    landmarks_mp: Tensor  # (B,105,3) MediaPipe landmarks (SMIRK's landmarks_mp)
    # A model loaded without landmark_embedding.npy / the MediaPipe embedding has (B,0,3) here;
    # code that needs landmarks calls `FLAME.require` first, which names the missing file.


class FLAME(nn.Module):
    """FLAME head model. Sizes (vertices, joints, components, landmarks) come from the files."""

    def __init__(self, assets: FlameAssets | str | Path, n_shape: int = 300, n_exp: int = 100,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not isinstance(assets, FlameAssets):
            assets = load_flame_assets(assets)
        self.assets_files = dict(assets.files)
        self.missing = dict(assets.missing)  # absent companion files (see require)
        self.n_shape = min(n_shape, assets.num_shape)
        self.n_exp = min(n_exp, assets.num_expression)
        self.num_vertices = assets.num_vertices
        self.num_joints = assets.j_regressor.shape[0]
        self.dtype = dtype
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        idx = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731

        v, j = self.num_vertices, self.num_joints
        dirs = np.concatenate([assets.shapedirs[:, :, :self.n_shape],
                               assets.shapedirs[:, :, assets.num_shape:assets.num_shape + self.n_exp]], axis=2)
        self.register_buffer("v_template", t(assets.v_template))
        self.register_buffer("faces", idx(assets.faces))
        # Vertex quantities are planar inside the forward pass (all x, then all y, then all z:
        # see blend_skinning). Blendshapes are one (B,K) @ (K,3V) product.
        self.register_buffer("template_planar", t(assets.v_template.T.reshape(-1)))
        self.register_buffer("blend_dirs", t(dirs.transpose(2, 1, 0).reshape(-1, 3 * v)))
        self.register_buffer("joint_template", t(assets.j_regressor @ assets.v_template))
        self.register_buffer("joint_dirs", t(np.einsum("jv,vck->kjc", assets.j_regressor, dirs).reshape(-1, j * 3)))
        self.register_buffer("pose_dirs", t(assets.posedirs.transpose(2, 1, 0).reshape(-1, 3 * v)))  # (9(J-1), 3V)
        self.register_buffer("lbs_weights", t(assets.weights))
        self.register_buffer("lbs_weights_t", t(assets.weights.T))  # (J,V) for planar skinning
        self.parents = [int(p) for p in assets.parents]
        unit_offsets = np.kron(np.eye(3), np.ones((1, v)))  # row k moves every vertex by the k-th unit vector
        self.register_buffer("post_skinning_dirs", t(np.concatenate(
            [assets.l_eyelid.T.reshape(1, -1), assets.r_eyelid.T.reshape(1, -1), unit_offsets])))

        faces = assets.faces
        self.register_buffer("static_lmk_vertices", idx(faces[assets.static_lmk_faces]))
        self.register_buffer("static_lmk_bary", t(assets.static_lmk_bary))
        self.register_buffer("dynamic_lmk_vertices", idx(faces[assets.dynamic_lmk_faces]))  # (79,17,3)
        self.register_buffer("dynamic_lmk_bary", t(assets.dynamic_lmk_bary))
        self.register_buffer("full_lmk_vertices", idx(faces[assets.full_lmk_faces]))
        self.register_buffer("full_lmk_bary", t(assets.full_lmk_bary))
        self.register_buffer("mp_lmk_vertices", idx(faces[assets.mp_lmk_faces]))
        self.register_buffer("mp_lmk_bary", t(assets.mp_lmk_bary))
        self.register_buffer("mp_landmark_indices", idx(assets.mp_landmark_indices))
        self.register_buffer("fixed_lmk_vertices", torch.cat(
            [self.static_lmk_vertices, self.full_lmk_vertices, self.mp_lmk_vertices]))
        self.register_buffer("fixed_lmk_bary", torch.cat([self.static_lmk_bary, self.full_lmk_bary, self.mp_lmk_bary]))
        self.landmark_split = (assets.dynamic_lmk_faces.shape[1], len(assets.static_lmk_faces),
                               len(assets.full_lmk_faces), len(assets.mp_lmk_faces))
        self.mask_names = sorted(assets.masks)
        for name in self.mask_names:
            self.register_buffer(f"mask_{name}", idx(assets.masks[name]))
        # The contour follows the head's yaw relative to the body: rotations of the
        # neck joint's chain (neck then root), as SMIRK (NECK_IDX = 1).
        chain, joint = [], 1 if j > 1 else 0
        while joint != -1:
            chain.append(joint)
            joint = self.parents[joint]
        self.neck_chain = chain

    def require(self, *companions: str) -> None:
        """Raise FlameFileError naming the file when a companion this use needs is absent:
        "landmarks" (68), "mediapipe" (105), "masks", "eyelids"."""
        keys = [k for c in companions for k in (("l_eyelid", "r_eyelid") if c == "eyelids" else (c,))]
        absent = [self.missing[k] for k in keys if k in self.missing]
        if absent:
            raise FlameFileError(f"this needs FLAME companion file(s) the model directory lacks: {'; '.join(absent)} "
                                 "(`fbench assets` says where to get SMIRK's FLAME assets)")

    @property
    def masks(self) -> dict[str, Tensor]:
        self.require("masks")
        return {name: getattr(self, f"mask_{name}") for name in self.mask_names}

    @property
    def source(self) -> Path:
        return self.assets_files["model"]

    def _pad(self, x: Tensor, width: int, name: str) -> Tensor:
        if x.shape[1] > width:
            raise ValueError(f"{name} has {x.shape[1]} components but this FLAME model uses {width}")
        return x if x.shape[1] == width else torch.nn.functional.pad(x, (0, width - x.shape[1]))

    def forward(self, params: FlameParams) -> FlameOutput:
        batch = params.batch_size
        dtype, device = self.v_template.dtype, self.v_template.device
        p = params.to(dtype=dtype, device=device)
        coeffs = torch.cat([self._pad(p.shape, self.n_shape, "shape"),
                            self._pad(p.expression, self.n_exp, "expression")], dim=1)

        v_shaped = torch.addmm(self.template_planar[None], coeffs, self.blend_dirs)  # (B, 3V) planar
        joints = torch.addmm(self.joint_template.reshape(1, -1), coeffs, self.joint_dirs).reshape(batch, -1, 3)

        # FLAME's pose vector: global, neck, jaw, left eye, right eye.
        pose = torch.cat([p.global_pose, p.neck, p.jaw, p.eyes], dim=1).reshape(batch, -1, 3)
        rots = axis_angle_to_matrix(pose)  # (B,J,3,3)
        eye = torch.eye(3, dtype=dtype, device=device)
        pose_feature = (rots[:, 1:] - eye).reshape(batch, -1)
        v_posed = torch.addmm(v_shaped, pose_feature, self.pose_dirs).reshape(batch, 3, -1)

        world_rot, posed_joints = forward_kinematics(rots, joints, self.parents)
        # Skinning transform of joint j maps rest-pose x to R_j (x - J_j) + T_j.
        rel_t = posed_joints - (world_rot @ joints[..., None])[..., 0]
        planar = blend_skinning(v_posed, world_rot, rel_t, self.lbs_weights_t)

        # Eyelids are added after skinning, as SMIRK does (src/FLAME/FLAME.py), and then the
        # translation: both linear, so one product with [l_eyelid; r_eyelid; unit x/y/z offsets].
        if "l_eyelid" in self.missing and bool(p.eyelids.any()):
            self.require("eyelids")
        post = torch.cat([p.eyelids, p.translation], dim=1)
        planar = torch.addmm(planar.reshape(batch, -1), post, self.post_skinning_dirs).reshape(batch, 3, -1)
        vertices = planar.transpose(1, 2).contiguous()
        posed_joints = posed_joints + p.translation[:, None]

        # All landmark sets in one gather (its backward is one scatter into a (B,V,3) zero tensor).
        bins = self.contour_bins(rots)
        points = barycentric_points(
            vertices, torch.cat([self.dynamic_lmk_vertices[bins], self.fixed_lmk_vertices.expand(batch, -1, -1)], 1),
            torch.cat([self.dynamic_lmk_bary[bins], self.fixed_lmk_bary.expand(batch, -1, -1)], 1))
        contour, static, full, mp = points.split(self.landmark_split, dim=1)
        return FlameOutput(vertices=vertices, joints=posed_joints, landmarks=torch.cat([contour, static], dim=1),
                           landmarks_full=full, landmarks_mp=mp)

    def contour_bins(self, rots: Tensor) -> Tensor:
        """Yaw bin per item: 0..39 for yaw 0..39 degrees, 40..78 for -1..-39 (DECA/SMIRK layout)."""
        rel = rots[:, self.neck_chain[-1]]
        for joint in reversed(self.neck_chain[:-1]):
            rel = rel @ rots[:, joint]
        yaw = torch.round(torch.rad2deg(yaw_from_matrix(rel.detach()))).long()
        yaw = yaw.clamp(-YAW_BINS_MAX_DEG, YAW_BINS_MAX_DEG)
        return torch.where(yaw < 0, YAW_BINS_MAX_DEG - yaw, yaw)

