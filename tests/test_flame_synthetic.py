"""The synthetic FLAME-format model: file formats read back independently, and geometry facts.

The files are read here with small restricted unpicklers written for this test (not
fbench's loader), so a format slip in the writer cannot hide behind the reader.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.flame.synthetic import (
    FILES,
    SYNTHETIC_MARKER,
    build_synthetic_flame,
    synthetic_ground_truth,
    write_synthetic_flame,
)

# SMIRK's 105 MediaPipe landmark indices (assets/mediapipe_landmark_embedding), a fact of their asset.
SMIRK_MP = [276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 249, 263,
            362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133, 144, 145, 153, 154, 155,
            157, 158, 159, 160, 161, 163, 173, 246, 168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358, 0, 13, 14,
            17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270, 291, 308,
            310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415]
MASKS = {"face", "eye_region", "left_eye_region", "right_eye_region", "lips", "nose", "forehead", "scalp", "boundary",
         "neck", "left_ear", "right_ear", "left_eyeball", "right_eyeball"}
PARENTS = [-1, 0, 1, 1, 1]


# --- independent readers

class _Ch:
    """What the test maps chumpy.ch.Ch to: keeps the pickled state."""

    def __setstate__(self, state):
        self.state = state


class _ModelUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode"), ("__builtin__", "set"), ("builtins", "set")}

    def find_class(self, module, name):
        if (module, name) == ("chumpy.ch", "Ch"):
            return _Ch
        if module.startswith("scipy.sparse") and name == "csc_matrix":
            return sp.csc_matrix
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"test reader refuses {module}.{name}")


class _TensorUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                              ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2")}:
            return super().find_class(module, name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda b: torch.load(io.BytesIO(b), weights_only=True)
        raise pickle.UnpicklingError(f"test reader refuses {module}.{name}")


def _globals(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def _npy_pickle_payload(path: Path) -> bytes:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        assert shape == () and dtype == np.dtype(object)
        return fh.read()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_synthetic_flame(tmp_path_factory.mktemp("synth") / "flame", seed=0)


@pytest.fixture(scope="module")
def model(model_dir) -> dict:
    data = (model_dir / "generic_model.pkl").read_bytes()
    out = _ModelUnpickler(io.BytesIO(data)).load()
    out["_chumpy_state"] = out["shapedirs"].state
    out["shapedirs"] = out["shapedirs"].state["x"]
    return out


@pytest.fixture(scope="module")
def lmk(model_dir) -> dict:
    array = _TensorUnpickler(io.BytesIO(_npy_pickle_payload(model_dir / "landmark_embedding.npy"))).load()
    return array[()]


@pytest.fixture(scope="module")
def masks(model_dir) -> dict:
    data = (model_dir / "FLAME_masks.pkl").read_bytes()
    assert data[:2] == b"\x80\x02"  # protocol 2
    return _ModelUnpickler(io.BytesIO(data)).load()


@pytest.fixture(scope="module")
def mp(model_dir) -> dict:
    with np.load(model_dir / "mediapipe_landmark_embedding.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _points(v: np.ndarray, f: np.ndarray, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    return np.einsum("lk,lkd->ld", np.asarray(bary, dtype=np.float64), v[f[np.asarray(faces)]])


def _lbs(model: dict, pose: np.ndarray, betas: np.ndarray | None = None) -> np.ndarray:
    """smplx's LBS (an independent implementation) on the model read from disk."""
    from smplx.lbs import lbs

    n = model["shapedirs"].shape[2]
    b = torch.zeros(1, n, dtype=torch.float64) if betas is None else torch.as_tensor(betas, dtype=torch.float64)[None]
    posedirs = torch.as_tensor(model["posedirs"].reshape(-1, 36).T)  # (36, V*3) as smplx wants it
    verts, _ = lbs(b, torch.as_tensor(pose, dtype=torch.float64).reshape(1, -1),
                   torch.as_tensor(model["v_template"])[None], torch.as_tensor(model["shapedirs"]), posedirs,
                   torch.as_tensor(model["J_regressor"].toarray()), torch.tensor(PARENTS),
                   torch.as_tensor(model["weights"]))
    return verts[0].numpy()


# --- files and formats

def test_writes_all_files_atomically_and_marker(model_dir, model):
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(FILES)  # no temporary files left
    marker = json.loads((model_dir / SYNTHETIC_MARKER).read_text())
    assert marker == {"generator": "fbench.flame.synthetic", "version": 1, "seed": 0,
                      "num_vertices": model["v_template"].shape[0], "num_faces": model["f"].shape[0]}


def test_deterministic_bytes(model_dir, tmp_path):
    build_synthetic_flame.cache_clear()  # rebuild from scratch, not from the cache
    again = write_synthetic_flame(tmp_path / "again", seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_seed_changes_only_the_random_bases(model):
    from fbench.flame.synthetic_rig import build_rig

    geometry = build_synthetic_flame(0).geometry  # the template does not depend on the seed
    np.testing.assert_array_equal(geometry.vertices, model["v_template"])
    shape = build_rig(geometry, seed=1).shapedirs
    assert not np.allclose(shape[:, :, :300], model["shapedirs"][:, :, :300])
    # The designed expressions do not depend on the seed, the random ones do.
    np.testing.assert_array_equal(shape[:, :, 300:320], model["shapedirs"][:, :, 300:320])
    assert not np.allclose(shape[:, :, 320:], model["shapedirs"][:, :, 320:])


def test_generic_model_format(model_dir, model):
    data = (model_dir / "generic_model.pkl").read_bytes()
    assert data[:2] == b"\x80\x02"
    names = _globals(data)
    assert "chumpy.ch Ch" in names and any(n.endswith(" csc_matrix") for n in names)
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert "NEWOBJ" in ops and "BUILD" in ops
    assert set(model["_chumpy_state"]) >= {"x", "_dirty_vars"} and model["_chumpy_state"]["_dirty_vars"] == set()

    v, f = model["v_template"], model["f"]
    n_v, n_f = v.shape[0], f.shape[0]
    assert 3000 <= n_v <= 4500 and n_v != 5023 and n_f != 9976
    assert v.dtype == np.float64 and v.shape == (n_v, 3)
    assert f.dtype == np.uint32 and f.shape == (n_f, 3) and f.max() == n_v - 1
    assert model["shapedirs"].dtype == np.float64 and model["shapedirs"].shape == (n_v, 3, 400)
    assert model["posedirs"].dtype == np.float64 and model["posedirs"].shape == (n_v, 3, 36)
    reg = model["J_regressor"]
    assert isinstance(reg, sp.csc_matrix) and reg.shape == (5, n_v) and reg.dtype == np.float64
    np.testing.assert_allclose(np.asarray(reg.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    kt = model["kintree_table"]
    assert kt.dtype == np.int64
    np.testing.assert_array_equal(kt, [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    w = model["weights"]
    assert w.dtype == np.float64 and w.shape == (n_v, 5) and (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert model["J"].shape == (5, 3) and model["J"].dtype == np.float64
    np.testing.assert_allclose(model["J"], reg @ v, atol=1e-12)
    assert model["bs_style"] == "lbs" and model["bs_type"] == "lrotmin"
    # Size like FLAME's template: ~0.16 m wide, ~0.3 m tall with the neck.
    extent = v.max(axis=0) - v.min(axis=0)
    assert 0.14 < extent[0] < 0.19 and 0.27 < extent[1] < 0.33 and 0.18 < extent[2] < 0.26


def test_landmark_embedding_format(model_dir, lmk, model):
    names = _globals(_npy_pickle_payload(model_dir / "landmark_embedding.npy"))
    assert {"torch._utils _rebuild_tensor_v2", "torch.storage _load_from_bytes", "collections OrderedDict"} <= names
    n_f = model["f"].shape[0]
    expect = {"static_lmk_faces_idx": (np.ndarray, np.int64, (51,)),
              "static_lmk_bary_coords": (np.ndarray, np.float64, (51, 3)),
              "dynamic_lmk_faces_idx": (torch.Tensor, torch.int64, (79, 17)),
              "dynamic_lmk_bary_coords": (torch.Tensor, torch.float32, (79, 17, 3)),
              "full_lmk_faces_idx": (np.ndarray, np.int64, (1, 68)),
              "full_lmk_bary_coords": (np.ndarray, np.float32, (1, 68, 3))}  # float32 in SMIRK's real file
    assert set(lmk) == set(expect)
    for key, (kind, dtype, shape) in expect.items():
        value = lmk[key]
        assert isinstance(value, kind) and value.dtype == dtype and tuple(value.shape) == shape, key
    for key in ("static_lmk", "dynamic_lmk", "full_lmk"):
        faces = np.asarray(lmk[f"{key}_faces_idx"])
        bary = np.asarray(lmk[f"{key}_bary_coords"], dtype=np.float64)
        assert faces.min() >= 0 and faces.max() < n_f
        assert (bary >= 0).all()
        np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)
    # Static = points 17..67 of the full set; the frontal bin (yaw 0) is the full set's contour.
    np.testing.assert_array_equal(lmk["full_lmk_faces_idx"][0, 17:], lmk["static_lmk_faces_idx"])
    np.testing.assert_allclose(lmk["full_lmk_bary_coords"][0, 17:], lmk["static_lmk_bary_coords"], atol=1e-7)
    np.testing.assert_array_equal(lmk["full_lmk_faces_idx"][0, :17], lmk["dynamic_lmk_faces_idx"][0].numpy())
    np.testing.assert_allclose(lmk["full_lmk_bary_coords"][0, :17], lmk["dynamic_lmk_bary_coords"][0].numpy())


def test_mediapipe_embedding_format(mp, model):
    assert mp["lmk_face_idx"].dtype == np.uint32 and mp["lmk_face_idx"].shape == (105,)
    assert mp["lmk_b_coords"].dtype == np.float64 and mp["lmk_b_coords"].shape == (105, 3)
    assert mp["landmark_indices"].dtype == np.int64
    assert mp["landmark_indices"].tolist() == SMIRK_MP
    assert mp["lmk_face_idx"].max() < model["f"].shape[0] and (mp["lmk_b_coords"] >= 0).all()
    np.testing.assert_allclose(mp["lmk_b_coords"].sum(1), 1.0, atol=1e-12)


def test_npz_is_a_plain_numpy_zip(model_dir):
    with zipfile.ZipFile(model_dir / "mediapipe_landmark_embedding.npz") as zf:
        assert [i.filename for i in zf.infolist()] == ["lmk_face_idx.npy", "lmk_b_coords.npy", "landmark_indices.npy"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_masks_format_and_consistency(masks, model):
    n_v = model["v_template"].shape[0]
    assert set(masks) == MASKS
    for name, ids in masks.items():
        assert ids.dtype == np.int64 and ids.ndim == 1 and len(ids) > 0, name
        assert (np.diff(ids) > 0).all() and ids.min() >= 0 and ids.max() < n_v, name
    v = model["v_template"]
    face = set(masks["face"].tolist())
    for other in ("scalp", "neck", "left_ear", "right_ear", "left_eyeball", "right_eyeball", "boundary"):
        assert not face & set(masks[other].tolist()), other
    for part in ("lips", "nose", "forehead", "left_eye_region", "right_eye_region", "eye_region"):
        assert set(masks[part].tolist()) <= face, part
    assert (v[masks["left_eye_region"], 0] > 0).all() and (v[masks["right_eye_region"], 0] < 0).all()
    assert (v[masks["left_ear"], 0] > 0).all() and (v[masks["right_ear"], 0] < 0).all()
    assert np.allclose(v[masks["boundary"], 1], v[:, 1].min())  # the open neck ring
    # Eyeballs are exactly the vertices skinned to the eye joints.
    np.testing.assert_array_equal(masks["left_eyeball"], np.nonzero(model["weights"][:, 3] == 1.0)[0])
    np.testing.assert_array_equal(masks["right_eyeball"], np.nonzero(model["weights"][:, 4] == 1.0)[0])


def test_eyelid_files(model_dir, model, masks):
    v = model["v_template"]
    for name, sign, eye in (("l_eyelid.npy", 1.0, "left"), ("r_eyelid.npy", -1.0, "right")):
        d = np.load(model_dir / name, allow_pickle=False)
        assert d.dtype == np.float64 and d.shape == v.shape
        moved = np.linalg.norm(d, axis=1) > 0
        assert moved.any()
        assert (sign * v[moved, 0] > 0).all()  # only that eye
        assert not np.isin(np.nonzero(moved)[0], masks[f"{eye}_eyeball"]).any()  # the lid, not the eyeball
        assert (d[moved, 1] <= 1e-12).all()  # the lid moves down
        assert 0.003 < np.linalg.norm(d, axis=1).max() < 0.015  # a few mm


# --- geometry facts

def test_orientation_outwards(model):
    v, f = model["v_template"], model["f"].astype(np.int64)
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = tri.mean(axis=1)
    gt = synthetic_ground_truth()
    # Eyeballs: exactly outwards from their centres.
    for eye in ("left", "right"):
        c = gt["eye_centres"][eye]
        on_ball = np.linalg.norm(centre - c, axis=1) < 0.0135
        assert on_ball.sum() > 100
        assert (np.einsum("ij,ij->i", normal[on_ball], centre[on_ball] - c) > 0).all()
    # Skin: away from the vertical axis through the head / neck (star-shaped around it).
    skin = (model["weights"][f, 3:].sum(axis=(1, 2)) == 0)
    axis_pt = np.stack([np.zeros(len(centre)), np.clip(centre[:, 1], -0.15, 0.0), np.full(len(centre), -0.015)], 1)
    outward = np.einsum("ij,ij->i", normal, centre - axis_pt)[skin] > 0
    assert outward.mean() > 0.99


def test_landmarks_on_the_right_regions(model, lmk, mp, masks):
    v, f = model["v_template"], model["f"].astype(np.int64)
    full = _points(v, f, lmk["full_lmk_faces_idx"][0], lmk["full_lmk_bary_coords"][0])
    mpts = _points(v, f, mp["lmk_face_idx"].astype(np.int64), mp["lmk_b_coords"])
    mp_at = dict(zip(SMIRK_MP, mpts))
    tri68 = f[lmk["full_lmk_faces_idx"][0]]
    tri_mp = f[mp["lmk_face_idx"].astype(np.int64)]

    def in_mask(tris, name):
        return np.isin(tris, masks[name]).all(axis=-1)

    # All landmarks sit on face skin (never the eyeballs).
    assert in_mask(tri68, "face").all() and in_mask(tri_mp, "face").all()
    # Eyes: iBUG 36-41 right (x<0), 42-47 left (x>0), in their eye regions.
    assert (full[36:42, 0] < 0).all() and in_mask(tri68[36:42], "right_eye_region").all()
    assert (full[42:48, 0] > 0).all() and in_mask(tri68[42:48], "left_eye_region").all()
    assert full[36, 0] < full[39, 0] < 0 < full[42, 0] < full[45, 0]  # outer/inner corners
    assert full[37:39, 1].min() > full[40:42, 1].max()  # upper lid above lower lid
    # Brows above the eyes; nose bridge down to the tip; the tip is the most forward landmark.
    assert full[17:27, 1].min() > full[36:48, 1].max()
    assert (np.diff(full[27:31, 1]) < 0).all()
    assert np.argmax(np.concatenate([full[:, 2], mpts[:, 2]])) == 30
    # Mouth: corners left/right of the mouth centre; lips in the lips mask.
    centre = 0.5 * (full[51] + full[57])
    assert full[48, 0] < centre[0] - 0.015 and full[54, 0] > centre[0] + 0.015
    assert full[51, 1] > full[62, 1] and full[57, 1] < full[66, 1]
    assert in_mask(tri68[48:68], "lips").all()
    # Jaw contour: below the eyes, right to left, chin lowest.
    assert full[:17, 1].max() < full[36:48, 1].min()
    assert (full[:8, 0] < 0).all() and (full[9:17, 0] > 0).all() and np.argmin(full[:17, 1]) in (7, 8, 9)
    # MediaPipe: eyes in their regions, lips in the lips mask, orientation facts.
    k = {i: n for n, i in enumerate(SMIRK_MP)}
    left_eye = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
    right_eye = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
    assert in_mask(tri_mp[[k[i] for i in left_eye]], "left_eye_region").all()
    assert in_mask(tri_mp[[k[i] for i in right_eye]], "right_eye_region").all()
    lips = [0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269,
            270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415]
    assert in_mask(tri_mp[[k[i] for i in lips]], "lips").all()
    assert mp_at[33][0] < mp_at[133][0] < 0 < mp_at[362][0] < mp_at[263][0]
    assert mp_at[159][1] > mp_at[145][1] and mp_at[386][1] > mp_at[374][1]
    assert mp_at[61][0] < 0 < mp_at[291][0]
    assert mp_at[0][1] > mp_at[13][1] >= mp_at[14][1] > mp_at[17][1]
    assert mp_at[70][1] > mp_at[46][1] and mp_at[300][1] > mp_at[276][1]  # upper vs lower brow edge
    assert mp_at[168][1] > mp_at[6][1] > mp_at[197][1] > mp_at[195][1] > mp_at[5][1] > mp_at[4][1] > mp_at[2][1]
    assert mp_at[98][0] < 0 < mp_at[327][0] and mp_at[129][0] < mp_at[98][0] and mp_at[358][0] > mp_at[327][0]
    # iBUG and MediaPipe agree where they mark the same point.
    for ibug, mpi in ((36, 33), (39, 133), (42, 362), (45, 263), (48, 61), (54, 291), (51, 0), (57, 17)):
        assert np.linalg.norm(full[ibug] - mp_at[mpi]) < 0.004, (ibug, mpi)


def test_dynamic_contour_follows_yaw(model, lmk, masks):
    v, f = model["v_template"], model["f"].astype(np.int64)
    faces, bary = lmk["dynamic_lmk_faces_idx"].numpy(), lmk["dynamic_lmk_bary_coords"].numpy()
    contour = np.stack([_points(v, f, faces[b], bary[b]) for b in range(79)])
    front = contour[0]
    for yaw in (20, 39):
        pos, neg = contour[yaw], contour[39 + yaw]  # bins: yaw y at y, -y at 39 + y
        # Face turned towards the subject's left (+yaw, a rotation about +y as rot_mat_to_euler
        # reports it): the left outline moves forward onto the cheek, the right one back.
        # the right one stays on the face's side boundary or moves back.
        assert (pos[12:17, 2] > front[12:17, 2] + 0.005).all() and (pos[:5, 2] < front[:5, 2] + 1e-3).all()
        # The head is symmetric, so -yaw is the mirror image with the points reversed.
        np.testing.assert_allclose(neg, (pos * [-1.0, 1.0, 1.0])[::-1], atol=1e-6)
    # Side points of a bin lie on the outline of the face turned by that yaw: no face skin at the
    # same height reaches further out in the image.
    region = np.zeros(len(v), bool)
    region[masks["face"]] = True
    for name in ("nose", "lips"):
        region[masks[name]] = False
    for b, yaw in ((0, 0.0), (25, 25.0), (64, -25.0)):
        a = np.radians(yaw)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        pr, vr = contour[b] @ rot.T, v @ rot.T
        for k in (1, 2, 3, 13, 14, 15):
            band = region & (np.abs(v[:, 1] - contour[b][k, 1]) < 0.004)
            if k < 8:
                assert vr[band, 0].min() > pr[k, 0] - 0.002, (b, k)
            else:
                assert vr[band, 0].max() < pr[k, 0] + 0.002, (b, k)


def test_mouth_opens_with_the_jaw(model, lmk):
    v, f = model["v_template"], model["f"].astype(np.int64)
    gt = synthetic_ground_truth()
    up, lo = gt["mouth_slit_upper"], gt["mouth_slit_lower"]
    mid = len(up) // 2
    assert np.allclose(v[up], v[lo])  # closed in the template
    pose = np.zeros(15)
    pose[6] = 0.25  # jaw, about x: opens the mouth
    posed = _lbs(model, pose)
    gap = np.linalg.norm(posed[up[mid]] - posed[lo[mid]])
    assert gap > 0.01
    assert np.linalg.norm(posed[up[mid]] - v[up[mid]]) < 0.002  # the upper lip stays
    full = _points(posed, f, lmk["full_lmk_faces_idx"][0], lmk["full_lmk_bary_coords"][0])
    assert full[62, 1] - full[66, 1] > 0.008  # inner lip landmarks separate
    chin = np.argmin(np.where(model["weights"][:, 2] > 0.99, v[:, 1], np.inf))
    assert posed[chin, 1] < v[chin, 1] - 0.01
    # Corners of the mouth stretch, the forehead and eyes do not move.
    assert np.abs(posed[v[:, 1] > 0.02] - v[v[:, 1] > 0.02]).max() < 1e-9


def test_weights_and_joints(model, masks):
    v, w, j = model["v_template"], model["weights"], model["J"]
    gt = synthetic_ground_truth()
    # Root below neck below jaw below eyes; jaw hinge on the midline in front of the neck joint.
    assert j[0, 1] < j[1, 1] < j[2, 1] < j[3, 1]
    assert abs(j[2, 0]) < 1e-9 and abs(j[1, 0]) < 1e-9 and j[2, 2] > j[1, 2]
    np.testing.assert_allclose(j[3], gt["eye_centres"]["left"], atol=1e-12)
    np.testing.assert_allclose(j[4], gt["eye_centres"]["right"], atol=1e-12)
    up, lo = gt["mouth_slit_upper"][1:-1], gt["mouth_slit_lower"][1:-1]
    mid = len(up) // 2
    assert w[lo[mid], 2] > 0.95 and w[up[mid], 2] < 0.05  # lower lip follows the jaw, upper lip does not
    assert w[masks["forehead"], 2].max() == 0.0 and w[masks["scalp"], 2].max() < 1e-6
    assert (w[masks["boundary"], 0] > 0.99).all()  # the neck base follows the root


def test_shape_bases_orthogonal_and_decreasing(model, masks):
    s = model["shapedirs"][:, :, :300].reshape(-1, 300)
    gram = s.T @ s
    d = np.diag(gram)
    off = gram - np.diag(d)
    assert np.abs(off).max() < 1e-9 * d.max()
    assert (np.diff(d) < 0).all()
    first = np.linalg.norm(model["shapedirs"][:, :, 0], axis=1).max()
    assert 0.003 < first < 0.03
    # Eyeballs move rigidly with the head shape.
    for ball in ("left_eyeball", "right_eyeball"):
        disp = model["shapedirs"][masks[ball]][:, :, :300]
        assert np.abs(disp - disp[:1]).max() < 1e-15


def test_expression_bases_local_and_independent(model, masks):
    e = model["shapedirs"][:, :, 300:]
    outside = np.concatenate([masks[m] for m in ("scalp", "neck", "left_ear", "right_ear", "left_eyeball",
                                                 "right_eyeball", "boundary")])
    assert np.abs(e[outside]).max() == 0.0
    mag = np.linalg.norm(e, axis=1).max(axis=0)  # per basis, the largest vertex displacement
    assert (mag > 2e-4).all() and mag.max() < 0.008  # a unit coefficient moves a few mm at most
    assert (mag[:20] > 0.0015).all()  # the designed ones are clearly visible
    a = model["shapedirs"].reshape(-1, 400)
    a = a / np.linalg.norm(a, axis=0)
    assert np.linalg.eigvalsh(a.T @ a).min() > 1e-8  # identity + expression are linearly independent


def test_expression_mouth_open_parts_the_lips(model):
    gt = synthetic_ground_truth()
    up, lo = gt["mouth_slit_upper"], gt["mouth_slit_lower"]
    mid = len(up) // 2
    d = model["shapedirs"][:, :, 300]
    assert gt["expression_names"][0] == "mouth_open"
    assert d[up[mid], 1] > 0.001 and d[lo[mid], 1] < -0.001
    smile_left = model["shapedirs"][:, :, 301]
    corner = gt["mouth_corners"]["left"]
    k = np.argmin(np.linalg.norm(model["v_template"] - corner, axis=1))
    assert smile_left[k, 1] > 0.001  # the left mouth corner goes up
    assert np.abs(smile_left[model["v_template"][:, 0] < -0.03]).max() < 1e-3  # barely touches the right


def test_eyelid_closes_the_lid(model_dir, model):
    gt = synthetic_ground_truth()
    v = model["v_template"]
    for name, eye in (("l_eyelid.npy", "left"), ("r_eyelid.npy", "right")):
        d = np.load(model_dir / name)
        up, lo = gt[f"{eye}_lid_upper"], gt[f"{eye}_lid_lower"]
        mid = len(up) // 2
        before = np.linalg.norm(v[up[mid]] - v[lo[mid]])
        after = np.linalg.norm(v[up[mid]] + d[up[mid]] - v[lo[mid]])
        assert before > 0.006 and after < 0.0005


def test_pose_correctives_localised(model, masks):
    p = model["posedirs"]
    v = model["v_template"]
    neck = np.linalg.norm(p[:, :, 0:9], axis=(1, 2)) > 0
    jaw = np.linalg.norm(p[:, :, 9:18], axis=(1, 2)) > 0
    assert neck.any() and jaw.any()
    assert v[neck, 1].max() < -0.09  # the lower neck only
    assert not np.isin(np.nonzero(jaw)[0], masks["forehead"]).any() and v[jaw, 1].max() < 0.02
    eyes = np.abs(p[:, :, 18:36]).max()
    assert 0 < eyes < 0.005  # near zero: lids follow the gaze a little
    assert np.abs(p[np.concatenate([masks["left_eyeball"], masks["right_eyeball"]])]).max() == 0.0


@settings(max_examples=8, deadline=None)
@given(st.lists(st.floats(-0.4, 0.4), min_size=15, max_size=15))
def test_eyeballs_rigid_and_output_finite(model, pose):
    posed = _lbs(model, np.array(pose))
    assert np.isfinite(posed).all()
    gt = synthetic_ground_truth()
    v = model["v_template"]
    ball = np.nonzero(model["weights"][:, 3] == 1.0)[0]
    # Rigid: pairwise distances on the eyeball are kept whatever the pose.
    a, b = ball[:20], ball[-20:]
    np.testing.assert_allclose(np.linalg.norm(posed[a] - posed[b], axis=1), np.linalg.norm(v[a] - v[b], axis=1),
                               atol=1e-12)
    assert gt["eyeball_radius"] > 0


def test_loads_in_smplx_flame(model, lmk, tmp_path):
    from smplx import FLAME

    np.savez(tmp_path / "FLAME_NEUTRAL.npz", v_template=model["v_template"], f=model["f"].astype(np.int64),
             shapedirs=model["shapedirs"], posedirs=model["posedirs"], J_regressor=model["J_regressor"].toarray(),
             kintree_table=model["kintree_table"], weights=model["weights"])
    with open(tmp_path / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": lmk["static_lmk_faces_idx"], "lmk_b_coords": lmk["static_lmk_bary_coords"]}, fh)
    flame = FLAME(model_path=str(tmp_path), ext="npz", num_expression_coeffs=100, dtype=torch.float64)
    with torch.no_grad():
        out = flame()
    np.testing.assert_allclose(out.vertices[0].numpy(), model["v_template"], atol=1e-12)
    # Its forward with a jaw pose agrees with smplx's bare LBS on the same arrays.
    with torch.no_grad():
        jaw = flame(jaw_pose=torch.tensor([[0.2, 0.0, 0.05]], dtype=torch.float64)).vertices[0].numpy()
    pose = np.zeros(15)
    pose[6:9] = [0.2, 0.0, 0.05]
    np.testing.assert_allclose(jaw, _lbs(model, pose), atol=1e-7)


def test_ground_truth_matches_files(model):
    gt = synthetic_ground_truth()
    for i, name in enumerate(("global", "neck", "jaw", "left_eye", "right_eye")):
        np.testing.assert_allclose(gt["joints"][name], model["J"][i], atol=1e-12)
    assert len(gt["landmarks68"]) == 68 and len(gt["landmarks_mp"]) == 105
    assert collections.Counter(gt["expression_names"]).most_common(1)[0][1] == 1  # unique names
