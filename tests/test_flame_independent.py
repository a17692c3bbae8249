"""fbench's FLAME loader and forward against an independent reader of the same files and smplx.

Nothing on the reference side goes through `fbench.flame.io` or `fbench.safe_pickle`: the model
directory is read by `tests/independent_flame.py` (plain pickle/np.load), smplx builds its FLAME
from those raw arrays, and every landmark set is evaluated with `smplx.lbs.vertices2landmarks`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fbench.flame import FLAME, FlameParams
from independent_flame import read_flame_dir

smplx = pytest.importorskip("smplx")
from smplx.lbs import vertices2landmarks  # noqa: E402

FIELDS = ("v_template", "faces", "shapedirs", "posedirs", "j_regressor", "parents", "weights", "static_lmk_faces",
          "static_lmk_bary", "dynamic_lmk_faces", "dynamic_lmk_bary", "full_lmk_faces", "full_lmk_bary",
          "mp_lmk_faces", "mp_lmk_bary", "mp_landmark_indices", "l_eyelid", "r_eyelid")


@pytest.fixture(scope="module")
def raw(flame_dir) -> dict:
    return read_flame_dir(flame_dir)


def test_loader_matches_an_independent_reader_field_by_field(flame_assets, raw):
    for name in FIELDS:
        ours, ref = getattr(flame_assets, name), raw[name]
        assert ours.shape == ref.shape, name
        # Exact: the loader may widen dtypes (float32 -> float64, uint32 -> int64) but never change a value.
        np.testing.assert_array_equal(ours, ref.astype(ours.dtype), err_msg=name)
        assert np.array_equal(ours.astype(np.float64), ref.astype(np.float64)), name
    assert set(flame_assets.masks) == set(raw["masks"])
    for name, idx in raw["masks"].items():
        np.testing.assert_array_equal(flame_assets.masks[name], np.unique(idx.reshape(-1)), err_msg=name)


@pytest.fixture(scope="module")
def smplx_model_dir(raw, tmp_path_factory) -> Path:
    """smplx's FLAME layout written straight from the independently read arrays (no fbench on this side)."""
    d = tmp_path_factory.mktemp("smplx-independent")
    np.savez(d / "FLAME_NEUTRAL.npz", v_template=raw["v_template"], f=raw["faces"], shapedirs=raw["shapedirs"],
             posedirs=raw["posedirs"], J_regressor=raw["j_regressor"], weights=raw["weights"],
             kintree_table=raw["kintree_table"])
    with open(d / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": raw["static_lmk_faces"], "lmk_b_coords": raw["static_lmk_bary"]}, f)
    # DECA/SMIRK bin the contour by round(yaw) (0..39 for yaw >= 0, 39 - yaw for negative yaw:
    # decalib/models/FLAME.py _find_dynamic_lmk_idx_and_bcoords); smplx bins by -yaw
    # (smplx/lbs.py find_dynamic_lmk_idx_and_bcoords), so smplx's bin k must hold the file's bin for -yaw_k.
    yaw = np.r_[np.arange(40), 39 - np.arange(40, 79)]
    mirrored = np.where(-yaw < 0, 39 + yaw, -yaw)
    np.save(d / "flame_dynamic_embedding.npy", np.array({"lmk_face_idx": raw["dynamic_lmk_faces"][mirrored],
                                                         "lmk_b_coords": raw["dynamic_lmk_bary"][mirrored]},
                                                        dtype=object))
    return d


def _params(batch: int, n_shape: int, n_exp: int, seed: int) -> FlameParams:
    g = torch.Generator().manual_seed(seed)
    p = FlameParams.zeros(batch, n_shape, n_exp, dtype=torch.float64)
    p.shape = torch.randn(batch, n_shape, generator=g, dtype=torch.float64)
    p.expression = torch.randn(batch, n_exp, generator=g, dtype=torch.float64)
    for name, scale in (("jaw", 0.2), ("global_pose", 0.3), ("eyes", 0.2), ("translation", 0.05)):
        setattr(p, name, scale * torch.randn(getattr(p, name).shape, generator=g, dtype=torch.float64))
    return p


def test_vertices_and_every_landmark_set_match_smplx_on_independent_arrays(flame_dir, raw, smplx_model_dir):
    n_shape = min(300, raw["shapedirs"].shape[2])
    n_exp = raw["shapedirs"].shape[2] - n_shape
    batch = 4
    ref = smplx.FLAME(model_path=str(smplx_model_dir), ext="npz", num_betas=n_shape, num_expression_coeffs=n_exp,
                      batch_size=batch, dtype=torch.float64, use_face_contour=True)
    ours = FLAME(flame_dir, dtype=torch.float64)
    p = _params(batch, n_shape, n_exp, seed=7)  # no neck pose: smplx's contour follows the root joint only
    out = ours(p)
    r = ref(betas=p.shape, expression=p.expression, global_orient=p.global_pose, neck_pose=p.neck, jaw_pose=p.jaw,
            leye_pose=p.eyes[:, :3], reye_pose=p.eyes[:, 3:], transl=p.translation)
    # smplx rounds the model arrays to float32 on load (smplx/utils.py to_np): about 1e-7 relative.
    tol = 1e-6 * float(r.vertices.abs().max())
    torch.testing.assert_close(out.vertices, r.vertices, rtol=0, atol=tol)
    num_j = raw["j_regressor"].shape[0]
    torch.testing.assert_close(out.landmarks[:, 17:], r.joints[:, num_j:num_j + 51], rtol=0, atol=tol)
    torch.testing.assert_close(out.landmarks[:, :17], r.joints[:, num_j + 51:num_j + 68], rtol=0, atol=tol)

    faces = torch.as_tensor(raw["faces"].astype(np.int64))

    def embed(face_idx, bary):
        idx = torch.as_tensor(face_idx.astype(np.int64)).expand(batch, -1).contiguous()
        b = torch.as_tensor(bary.astype(np.float64)).expand(batch, -1, -1).contiguous()
        return vertices2landmarks(r.vertices, faces, idx, b)

    torch.testing.assert_close(out.landmarks_full, embed(raw["full_lmk_faces"], raw["full_lmk_bary"]),
                               rtol=0, atol=tol)
    torch.testing.assert_close(out.landmarks_mp, embed(raw["mp_lmk_faces"], raw["mp_lmk_bary"]), rtol=0, atol=tol)
    # The comparison is sensitive: rolling the barycentric coordinates moves the landmarks by far more.
    rolled = embed(raw["full_lmk_faces"], np.roll(raw["full_lmk_bary"], 1, axis=1))
    assert (rolled - out.landmarks_full).abs().max() > 100 * tol
