"""A deterministic synthetic head model in FLAME2020's file formats.

`write_synthetic_flame(out_dir, seed)` writes, into one directory, the same files
a real FLAME setup for SMIRK has, in the same formats:

    generic_model.pkl                 FLAME2020 layout (protocol-2 pickle; shapedirs a chumpy.ch.Ch)
    landmark_embedding.npy            DECA/SMIRK 68-landmark embedding (static, dynamic contour, full)
    mediapipe_landmark_embedding.npz  SMIRK's 105 MediaPipe landmarks
    FLAME_masks.pkl                   vertex masks (face, lips, eyes, ...)
    l_eyelid.npy, r_eyelid.npy        SMIRK's eyelid-closing blendshapes
    SYNTHETIC.json                    marker: generator, version, seed, sizes (written last)

The head is *not* FLAME: it has its own topology (4430 vertices, 8732 triangles;
read them from the files, never assume them), so anything that hard-codes 5023
vertices breaks on it, as it should. It has a
face, eyes with separate eyeballs, a mouth that opens when the jaw rotates, ears,
a neck open at the bottom; 5 joints (global, neck, jaw, left eye, right eye);
300 smooth orthogonal identity bases, 100 expression bases (20 designed, named in
`SyntheticFlame.expression_names`, then random localised ones), pose correctives
and eyelid blendshapes; landmark embeddings on the matching regions. How each part
is built is described in `synthetic_geometry`, `synthetic_rig` and
`synthetic_landmarks`.

Determinism: the same seed gives byte-identical files with the same numpy/scipy/
torch versions (fixed RNG, sorted keys, fixed zip timestamps). The seed only
changes the random parts of the identity and expression bases; the template,
rig, masks and landmarks are the same for every seed.
"""

from __future__ import annotations

import copyreg
import functools
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

from fbench.io import atomic_write

from fbench.flame.synthetic_geometry import EYEBALL_RADIUS, HeadGeometry, build_geometry
from fbench.flame.synthetic_landmarks import SMIRK_MEDIAPIPE_INDICES, Embedding, LandmarkSet, build_landmarks
from fbench.flame.synthetic_rig import JOINT_NAMES, KINTREE, MASK_NAMES, Rig, build_rig

__all__ = ["SYNTHETIC_MARKER", "SYNTHETIC_VERSION", "SyntheticFlame", "build_synthetic_flame",
           "synthetic_ground_truth", "write_synthetic_flame"]

SYNTHETIC_MARKER = "SYNTHETIC.json"
SYNTHETIC_VERSION = 1
GENERATOR = "fbench.flame.synthetic"
FILES = ("generic_model.pkl", "landmark_embedding.npy", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl",
         "l_eyelid.npy", "r_eyelid.npy", SYNTHETIC_MARKER)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the .npz bytes do not depend on when it was written


@dataclass(frozen=True)
class SyntheticFlame:
    """Everything that goes into the files, plus the ground truth used to build it.

    Arrays are shared with a cache (`build_synthetic_flame`); do not modify them.
    """

    seed: int
    geometry: HeadGeometry
    rig: Rig
    landmarks: LandmarkSet
    expression_names: list[str] = field(default_factory=list)

    @property
    def v_template(self) -> np.ndarray:
        return self.geometry.vertices

    @property
    def faces(self) -> np.ndarray:
        return self.geometry.faces

    @property
    def num_vertices(self) -> int:
        return int(self.geometry.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.geometry.faces.shape[0])

    def landmark_points(self, embedding: Embedding, vertices: np.ndarray | None = None) -> np.ndarray:
        """3D positions of an embedding on the template (or on given (V,3) vertices)."""
        return embedding.points(self.v_template if vertices is None else vertices, self.faces)


@functools.lru_cache(maxsize=2)
def build_synthetic_flame(seed: int = 0) -> SyntheticFlame:
    """Build the synthetic model in memory (cached: a second call with the same seed is free)."""
    geometry = build_geometry()
    rig = build_rig(geometry, seed)
    landmarks = build_landmarks(geometry, rig.masks)
    return SyntheticFlame(seed=seed, geometry=geometry, rig=rig, landmarks=landmarks,
                          expression_names=list(rig.expression_names))


def synthetic_ground_truth(seed: int = 0) -> dict[str, Any]:
    """The semantic facts the synthetic model was built from (metres, template pose).

    Keys: joints (name -> (3,)), eye_centres (left, right), eyeball_radius,
    landmarks68 / landmarks_mp (3D points, iBUG-68 order / SMIRK's MediaPipe order),
    mediapipe_indices, region_centres (mask name -> centroid), mouth_corners
    (right, left), nose_tip, mouth_slit_upper / mouth_slit_lower and
    {left,right}_lid_upper / _lower (vertex ids of the two sides of the openings,
    corner to corner), expression_names.
    """
    m = build_synthetic_flame(seed)
    g, rig = m.geometry, m.rig
    v = g.vertices
    mouth_corners = v[g.grid[g.mouth.row, list(g.mouth.corners)]]
    out: dict[str, Any] = {
        "joints": {name: rig.joints[i].copy() for i, name in enumerate(JOINT_NAMES)},
        "eye_centres": {"left": g.eye_centres[0].copy(), "right": g.eye_centres[1].copy()},
        "eyeball_radius": EYEBALL_RADIUS,
        "landmarks68": m.landmark_points(m.landmarks.full),
        "landmarks_mp": m.landmark_points(m.landmarks.mediapipe),
        "mediapipe_indices": np.array(SMIRK_MEDIAPIPE_INDICES, np.int64),
        "region_centres": {name: v[ids].mean(axis=0) for name, ids in rig.masks.items()},
        "mouth_corners": {"right": mouth_corners[0], "left": mouth_corners[1]},
        "nose_tip": m.landmark_points(m.landmarks.full)[30],
        "expression_names": list(m.expression_names),
    }
    corners = lambda slit: g.grid[slit.row, list(slit.corners)]  # noqa: E731
    for name, slit in (("mouth_slit", g.mouth), ("left_lid", g.left_eye), ("right_lid", g.right_eye)):
        c = corners(slit)
        key_up, key_lo = (f"{name}_upper", f"{name}_lower")
        out[key_up] = np.concatenate([[c[0]], slit.upper, [c[1]]])
        out[key_lo] = np.concatenate([[c[0]], slit.lower, [c[1]]])
    return out


# --- writers

class _ChumpyArray:
    """An array to be pickled as a chumpy.ch.Ch, the way FLAME2020 stores shapedirs.

    It pickles as NEWOBJ of the class followed by BUILD with chumpy's state dict; the class
    names itself chumpy.ch.Ch so that is the GLOBAL the pickle records.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __reduce_ex__(self, protocol: int) -> tuple:
        return copyreg.__newobj__, (type(self),), {"x": self.x, "_dirty_vars": set()}


_ChumpyArray.__module__, _ChumpyArray.__qualname__, _ChumpyArray.__name__ = "chumpy.ch", "Ch", "Ch"


def _dump_with_chumpy(obj: Any, fh: BinaryIO) -> None:
    """Protocol-2 pickle of obj, with `_ChumpyArray`s recorded as chumpy.ch.Ch.

    chumpy is not installed (and must not be needed): the pickler checks that a class can be
    found under the name it records, so modules chumpy and chumpy.ch holding the stand-in are
    registered in sys.modules only for the duration of the dump; whatever was there before
    (a real chumpy, or nothing) is put back afterwards.
    """
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch = _ChumpyArray
    package.ch = module
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    try:
        sys.modules["chumpy"], sys.modules["chumpy.ch"] = package, module
        pickle.Pickler(fh, protocol=2).dump(obj)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _model_dict(m: SyntheticFlame) -> dict[str, Any]:
    g, rig = m.geometry, m.rig
    reg = sp.csc_matrix(rig.j_regressor, dtype=np.float64)
    reg.sort_indices()
    model = {
        "J": np.ascontiguousarray(rig.joints, dtype=np.float64),
        "J_regressor": reg,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "f": np.ascontiguousarray(g.faces, dtype=np.uint32),
        "kintree_table": KINTREE.copy(),
        "posedirs": np.ascontiguousarray(rig.posedirs, dtype=np.float64),
        "shapedirs": _ChumpyArray(np.ascontiguousarray(rig.shapedirs, dtype=np.float64)),
        "v_template": np.ascontiguousarray(g.vertices, dtype=np.float64),
        "weights": np.ascontiguousarray(rig.weights, dtype=np.float64),
    }
    return dict(sorted(model.items()))


def _landmark_dict(m: SyntheticFlame) -> dict[str, Any]:
    import torch

    lm = m.landmarks
    # Layout, dtypes and containers as in DECA/SMIRK's landmark_embedding.npy: numpy for the static
    # and full embeddings (the full one with a leading axis of one), torch tensors for the dynamic one.
    return {
        "static_lmk_faces_idx": lm.static.faces.astype(np.int64),
        "static_lmk_bary_coords": lm.static.bary.astype(np.float64),
        "dynamic_lmk_faces_idx": torch.from_numpy(lm.dynamic_faces.astype(np.int64)),
        "dynamic_lmk_bary_coords": torch.from_numpy(lm.dynamic_bary.astype(np.float32)),
        "full_lmk_faces_idx": lm.full.faces.astype(np.int64)[None],
        "full_lmk_bary_coords": lm.full.bary.astype(np.float32)[None],
    }


def _write_npz(fh: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's layout (stored .npy members) with fixed member timestamps."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o600 << 16
            info.create_system = 3
            zf.writestr(info, buf.getvalue())


def _save_npy_with_tensors(fh: BinaryIO, value: dict[str, Any]) -> None:
    """np.save(fh, value, allow_pickle=True), with torch storages pickled reproducibly.

    A torch tensor pickled by plain pickle keeps its storage as legacy torch.save bytes, which
    name the storage by its memory address; that key is replaced by "0" so the same data gives
    the same bytes. The structure is unchanged (torch.storage._load_from_bytes reads it back).
    """
    import torch

    class NpyPickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, torch.storage.TypedStorage):
                buf = io.BytesIO()
                torch.save(obj, buf, _use_new_zipfile_serialization=False)
                blob = buf.getvalue()
                for cdata in {obj._cdata, obj._untyped_storage._cdata}:
                    key = str(cdata).encode()
                    pickled = b"X" + struct.pack("<I", len(key)) + key  # BINUNICODE key
                    if blob.count(pickled) == 2:  # the persistent id and the list of storage keys
                        blob = blob.replace(pickled, b"X" + struct.pack("<I", 1) + b"0")
                        break
                else:
                    raise RuntimeError("unexpected torch legacy serialisation layout")
                return torch.storage._load_from_bytes, (blob,)
            return NotImplemented

    array = np.asanyarray(value)  # the 0-d object array np.save would write
    np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
    NpyPickler(fh, protocol=3).dump(array)  # np.save pickles object arrays with protocol 3


def write_synthetic_flame(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the synthetic FLAME-format model into out_dir (created if needed); returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = build_synthetic_flame(int(seed))
    rig, lm = m.rig, m.landmarks

    atomic_write(out / "generic_model.pkl", lambda fh: _dump_with_chumpy(_model_dict(m), fh))
    atomic_write(out / "landmark_embedding.npy", lambda fh: _save_npy_with_tensors(fh, _landmark_dict(m)))
    atomic_write(out / "mediapipe_landmark_embedding.npz", lambda fh: _write_npz(fh, {
        "lmk_face_idx": lm.mediapipe.faces.astype(np.uint32),
        "lmk_b_coords": lm.mediapipe.bary.astype(np.float64),
        "landmark_indices": lm.mediapipe_indices.astype(np.int64),
    }))
    masks = {name: np.asarray(rig.masks[name], dtype=np.int64) for name in sorted(MASK_NAMES)}
    atomic_write(out / "FLAME_masks.pkl", lambda fh: pickle.dump(masks, fh, protocol=2))
    atomic_write(out / "l_eyelid.npy", lambda fh: np.save(fh, rig.l_eyelid.astype(np.float64)))
    atomic_write(out / "r_eyelid.npy", lambda fh: np.save(fh, rig.r_eyelid.astype(np.float64)))
    marker = {"generator": GENERATOR, "version": SYNTHETIC_VERSION, "seed": int(seed),
              "num_vertices": m.num_vertices, "num_faces": m.num_faces}
    atomic_write(out / SYNTHETIC_MARKER,
                  lambda fh: fh.write((json.dumps(marker, sort_keys=True, indent=2) + "\n").encode()))
    return out
