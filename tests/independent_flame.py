"""An independent reader of a FLAME directory, for tests only.

It shares no code with `fbench.flame.io` or `fbench.safe_pickle`: plain `pickle` (the files
under test are trusted fixtures written by the test session), `np.load`, scipy's own sparse
unpickling, and a stand-in for chumpy's `Ch` that keeps the pickled state (chumpy stores the
array value in the state's `x`, chumpy/ch.py `Ch.__setstate__`/`x` term). Only file layouts
are assumed, as the public FLAME2020 / DECA / SMIRK assets have them:

- generic_model.pkl: v_template, f, shapedirs (chumpy), posedirs, J_regressor (scipy csc),
  kintree_table (2,J) with the root's parent stored as uint32 max, weights
  (smplx/body_models.py SMPL.__init__ reads exactly these keys).
- landmark_embedding.npy: a pickled dict (DECA decalib/models/FLAME.py `lmk_embeddings`
  keys static_lmk_faces_idx, static_lmk_bary_coords, dynamic_lmk_faces_idx,
  dynamic_lmk_bary_coords, full_lmk_faces_idx, full_lmk_bary_coords).
- mediapipe_landmark_embedding.npz: lmk_face_idx, lmk_b_coords, landmark_indices
  (SMIRK src/FLAME/FLAME.py reads these three keys).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


class _Ch:
    def __setstate__(self, state):
        self.state = state


class _TrustedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("chumpy"):
            return _Ch
        return super().find_class(module, name)


def _plain(value) -> np.ndarray:
    if isinstance(value, _Ch):
        value = value.state["x"]
    if hasattr(value, "toarray"):
        value = value.toarray()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def read_pickle(path: Path):
    with open(path, "rb") as f:
        return _TrustedUnpickler(f, encoding="latin1").load()


def read_flame_dir(flame_dir: Path) -> dict[str, np.ndarray]:
    """Every array of a FLAME directory, named as fbench's FlameAssets names them, in plain numpy."""
    flame_dir = Path(flame_dir)
    model = read_pickle(flame_dir / "generic_model.pkl")
    lmk = np.load(flame_dir / "landmark_embedding.npy", allow_pickle=True).item()
    mp = dict(np.load(flame_dir / "mediapipe_landmark_embedding.npz"))
    kintree = _plain(model["kintree_table"]).astype(np.int64)
    parents = kintree[0].copy()
    parents[0] = -1
    out = {
        "v_template": _plain(model["v_template"]),
        "faces": _plain(model["f"]),
        "shapedirs": _plain(model["shapedirs"]),
        "posedirs": _plain(model["posedirs"]),
        "j_regressor": _plain(model["J_regressor"]),
        "parents": parents,
        "kintree_table": kintree,
        "weights": _plain(model["weights"]),
        "static_lmk_faces": _plain(lmk["static_lmk_faces_idx"]).reshape(-1),
        "static_lmk_bary": _plain(lmk["static_lmk_bary_coords"]).reshape(-1, 3),
        "dynamic_lmk_faces": _plain(lmk["dynamic_lmk_faces_idx"]),
        "dynamic_lmk_bary": _plain(lmk["dynamic_lmk_bary_coords"]),
        "full_lmk_faces": _plain(lmk["full_lmk_faces_idx"]).reshape(-1),
        "full_lmk_bary": _plain(lmk["full_lmk_bary_coords"]).reshape(-1, 3),
        "mp_lmk_faces": mp["lmk_face_idx"],
        "mp_lmk_bary": mp["lmk_b_coords"],
        "mp_landmark_indices": mp["landmark_indices"],
        "l_eyelid": np.load(flame_dir / "l_eyelid.npy"),
        "r_eyelid": np.load(flame_dir / "r_eyelid.npy"),
    }
    masks = read_pickle(flame_dir / "FLAME_masks.pkl")
    out["masks"] = {k: _plain(v) for k, v in masks.items()}
    return out
