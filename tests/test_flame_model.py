"""FLAME forward: agreement with smplx (an independent implementation), gradients, landmarks, sizes."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fbench.flame import FLAME, FlameParams
from fbench.flame.io import FlameAssets
from fbench.flame.model import axis_angle_to_matrix


def _random_params(batch: int, n_shape: int, n_exp: int, dtype=torch.float64, seed: int = 0, neck: bool = True):
    g = torch.Generator().manual_seed(seed)
    p = FlameParams.zeros(batch, n_shape, n_exp, dtype=dtype)
    p.shape = torch.randn(batch, n_shape, generator=g, dtype=dtype)
    p.expression = torch.randn(batch, n_exp, generator=g, dtype=dtype)
    for name, scale in (("jaw", 0.2), ("global_pose", 0.3), ("neck", 0.2 if neck else 0.0), ("eyes", 0.2),
                        ("translation", 0.05)):
        setattr(p, name, scale * torch.randn(getattr(p, name).shape, generator=g, dtype=dtype))
    return p


def _float32_exact(assets: FlameAssets) -> FlameAssets:
    """smplx rounds every model array to float32 on load; give both sides the same numbers."""
    fields = ("v_template", "shapedirs", "posedirs", "j_regressor", "weights", "static_lmk_bary", "dynamic_lmk_bary")
    return replace(assets, **{k: getattr(assets, k).astype(np.float32).astype(np.float64) for k in fields})


@pytest.fixture(scope="module")
def smplx_dir(flame_assets: FlameAssets, tmp_path_factory) -> Path:
    """The synthetic model in smplx's FLAME layout (FLAME_NEUTRAL.npz + landmark embeddings)."""
    a = _float32_exact(flame_assets)
    d = tmp_path_factory.mktemp("smplx")
    np.savez(d / "FLAME_NEUTRAL.npz", v_template=a.v_template, f=a.faces, shapedirs=a.shapedirs,
             posedirs=a.posedirs, J_regressor=a.j_regressor, weights=a.weights,
             kintree_table=np.stack([np.r_[4294967295, a.parents[1:]], np.arange(len(a.parents))]))
    with open(d / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": a.static_lmk_faces, "lmk_b_coords": a.static_lmk_bary}, f)
    # smplx negates the yaw that SMIRK/fbench bin by (smplx/lbs.py find_dynamic_lmk_idx_and_bcoords), so
    # hand it the bins mirrored: its bin for yaw y must hold our bin for -y.
    yaw = np.r_[np.arange(40), 39 - np.arange(40, 79)]
    mirrored = np.where(-yaw < 0, 39 + yaw, -yaw)
    np.save(d / "flame_dynamic_embedding.npy", np.array({"lmk_face_idx": a.dynamic_lmk_faces[mirrored],
                                                         "lmk_b_coords": a.dynamic_lmk_bary[mirrored]}, dtype=object))
    return d


def test_matches_smplx_in_float64(flame_assets, smplx_dir):
    smplx = pytest.importorskip("smplx")
    n_shape, n_exp, batch = flame_assets.num_shape, flame_assets.num_expression, 5
    ours = FLAME(_float32_exact(flame_assets), n_shape=n_shape, n_exp=n_exp, dtype=torch.float64)
    ref = smplx.FLAME(model_path=str(smplx_dir), ext="npz", num_betas=n_shape, num_expression_coeffs=n_exp,
                      batch_size=batch, dtype=torch.float64, use_face_contour=True)
    # smplx's contour follows the root joint only, SMIRK's the root and neck: compare contours with no neck pose.
    p = _random_params(batch, n_shape, n_exp, neck=False)
    out = ours(p)
    r = ref(betas=p.shape, expression=p.expression, global_orient=p.global_pose, neck_pose=p.neck, jaw_pose=p.jaw,
            leye_pose=p.eyes[:, :3], reye_pose=p.eyes[:, 3:], transl=p.translation)
    scale = out.vertices.abs().max()
    assert (out.vertices - r.vertices).abs().max() <= 1e-6 * scale
    assert (out.vertices - r.vertices).abs().max() <= 1e-12  # same numbers in: float64 agreement
    num_j = ours.num_joints
    torch.testing.assert_close(out.joints, r.joints[:, :num_j], rtol=0, atol=1e-12)
    # smplx appends the 51 static landmarks and then the 17 contour points after the joints. Its
    # landmark output sits up to ~2e-9 m (nanometres) off its own float64 vertices, so 1e-8 here.
    torch.testing.assert_close(out.landmarks[:, 17:], r.joints[:, num_j:num_j + 51], rtol=0, atol=1e-8)
    torch.testing.assert_close(out.landmarks[:, :17], r.joints[:, num_j + 51:num_j + 68], rtol=0, atol=1e-8)

    p = _random_params(batch, n_shape, n_exp, seed=1)  # with neck pose: vertices and joints still agree
    r = ref(betas=p.shape, expression=p.expression, global_orient=p.global_pose, neck_pose=p.neck, jaw_pose=p.jaw,
            leye_pose=p.eyes[:, :3], reye_pose=p.eyes[:, 3:], transl=p.translation)
    torch.testing.assert_close(ours(p).vertices, r.vertices, rtol=0, atol=1e-12)


def test_float32_agrees_with_float64(flame_dir):
    p = _random_params(3, 300, 100)
    v64 = FLAME(flame_dir, dtype=torch.float64)(p).vertices
    v32 = FLAME(flame_dir, dtype=torch.float32)(p.to(torch.float32)).vertices
    assert (v32.double() - v64).abs().max() < 1e-5  # metres: 0.01 mm


def test_gradcheck_small_case(flame_dir):
    model = FLAME(flame_dir, n_shape=4, n_exp=4, dtype=torch.float64)
    base = _random_params(2, 4, 4)

    def vertices(shape, expression, jaw, global_pose, neck, eyelids, translation):
        p = replace(base, shape=shape, expression=expression, jaw=jaw, global_pose=global_pose, neck=neck,
                    eyelids=eyelids, translation=translation)
        out = model(p)
        return out.vertices[:, ::211], out.landmarks[:, ::5], out.landmarks_mp[:, ::13]

    inputs = tuple(getattr(base, k).clone().requires_grad_(True)
                   for k in ("shape", "expression", "jaw", "global_pose", "neck", "eyelids", "translation"))
    # fast_mode checks the Jacobian along random directions: the same failures, far fewer backward passes.
    assert torch.autograd.gradcheck(vertices, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_sizes_come_from_the_files(flame_dir, flame_assets):
    model = FLAME(flame_dir)
    out = model(FlameParams.zeros(2))
    assert model.num_vertices == flame_assets.v_template.shape[0] != 5023
    assert out.vertices.shape == (2, flame_assets.v_template.shape[0], 3)
    assert out.landmarks.shape == (2, 68, 3) and out.landmarks_full.shape == (2, 68, 3)
    assert out.landmarks_mp.shape == (2, flame_assets.mp_lmk_faces.shape[0], 3)
    assert out.joints.shape == (2, flame_assets.j_regressor.shape[0], 3)
    assert set(model.masks) >= {"face", "lips", "left_eyeball", "right_eyeball", "neck", "scalp"}


def test_zero_params_give_the_template(flame_dir, flame_assets):
    out = FLAME(flame_dir, dtype=torch.float64)(FlameParams.zeros(1, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].numpy(), flame_assets.v_template, atol=1e-12)


def test_eyelids_are_added_after_skinning(flame_dir, flame_assets):
    model = FLAME(flame_dir, dtype=torch.float64)
    p = _random_params(1, 300, 100)
    closed = replace(p, eyelids=torch.tensor([[0.7, -0.3]], dtype=torch.float64))
    delta = (model(closed).vertices - model(p).vertices)[0].numpy()
    np.testing.assert_allclose(delta, 0.7 * flame_assets.l_eyelid - 0.3 * flame_assets.r_eyelid, atol=1e-12)


def test_landmarks_lie_on_the_posed_surface(flame_dir):
    from fbench.geometry import point_mesh_distance

    model = FLAME(flame_dir, dtype=torch.float64)
    out = model(_random_params(2, 300, 100, seed=3))
    faces = model.faces.numpy()
    for b in range(2):
        verts = out.vertices[b].numpy()
        for points in (out.landmarks[b], out.landmarks_full[b], out.landmarks_mp[b]):
            dist, _, _ = point_mesh_distance(points.numpy(), verts, faces)
            assert dist.max() < 1e-7


@pytest.mark.parametrize("yaw_deg, expected_bin", [(0, 0), (10, 10), (39, 39), (60, 39), (-1, 40), (-10, 49),
                                                   (-39, 78), (-70, 78)])
def test_contour_bins_follow_the_deca_smirk_layout(flame_dir, yaw_deg, expected_bin):
    model = FLAME(flame_dir, dtype=torch.float64)
    pose = torch.zeros(1, model.num_joints, 3, dtype=torch.float64)
    pose[0, 0, 1] = np.deg2rad(yaw_deg + 0.2 * np.sign(yaw_deg))  # away from rounding ties
    assert model.contour_bins(axis_angle_to_matrix(pose)).item() == expected_bin


def test_contour_uses_head_yaw_from_root_and_neck(flame_dir):
    # SMIRK's neck kinematic chain: turning the neck turns the contour like turning the root.
    model = FLAME(flame_dir, dtype=torch.float64)
    p_root, p_neck = FlameParams.zeros(1, dtype=torch.float64), FlameParams.zeros(1, dtype=torch.float64)
    p_root.global_pose[0, 1] = p_neck.neck[0, 1] = np.deg2rad(25.3)
    pose = lambda p: torch.cat([p.global_pose, p.neck, p.jaw, p.eyes], 1).reshape(1, -1, 3)  # noqa: E731
    assert model.contour_bins(axis_angle_to_matrix(pose(p_root))).item() == 25
    assert model.contour_bins(axis_angle_to_matrix(pose(p_neck))).item() == 25


def test_fewer_components_are_zero_padded(flame_dir):
    model = FLAME(flame_dir, n_shape=300, n_exp=50, dtype=torch.float64)
    p = _random_params(1, 300, 50)
    short = replace(p, shape=p.shape[:, :20], expression=p.expression[:, :10])
    padded = replace(p, shape=torch.nn.functional.pad(p.shape[:, :20], (0, 280)),
                     expression=torch.nn.functional.pad(p.expression[:, :10], (0, 40)))
    torch.testing.assert_close(model(short).vertices, model(padded).vertices)
    with pytest.raises(ValueError, match="expression has 60 components"):
        model(replace(p, expression=torch.zeros(1, 60, dtype=torch.float64)))


def test_flame_params_from_dict():
    p = FlameParams.from_dict({"jaw": [0.1, 0, 0], "expression": np.ones((1, 10))}, n_exp=50)
    assert p.batch_size == 1 and p.expression.shape == (1, 10) and p.shape.shape == (1, 300)
    assert p.jaw[0, 0].item() == pytest.approx(0.1) and p.eyes.abs().sum() == 0
    with pytest.raises(KeyError, match="unknown FLAME parameter"):
        FlameParams.from_dict({"jaw_pose": [0, 0, 0]})
    with pytest.raises(ValueError, match="'jaw' must have 3 columns"):
        FlameParams.from_dict({"jaw": [0, 0]})
    with pytest.raises(ValueError, match="disagree on batch size"):
        FlameParams.from_dict({"jaw": np.zeros((2, 3)), "neck": np.zeros((3, 3))})
