"""Loading a FLAME model directory: FLAME2020 plus SMIRK's companion assets.

A FLAME directory holds (real FLAME2020 with SMIRK's assets, or the synthetic model):

    generic_model.pkl | generic_model.npz   FLAME2020 (chumpy-free load)
    landmark_embedding.npy                  68 landmarks: 51 static + 17 dynamic contour (79 yaw bins)
    mediapipe_landmark_embedding.npz        105 MediaPipe landmarks
    FLAME_masks.pkl                         vertex masks (face, lips, eyes, ...)
    l_eyelid.npy, r_eyelid.npy              SMIRK's eyelid blendshapes
    FLAME_masks_triangles.npy               optional: SMIRK's triangle indices per face area (its masking
                                            sampler; `load_mask_triangles`; methods.smirk.masking derives
                                            an equivalent from FLAME_masks.pkl when it is absent)

SMIRK's own `assets/` layout (sub-folders FLAME2020/, FLAME_masks/,
mediapipe_landmark_embedding/) is accepted as it is. Sizes always come from the files.

Only the model file is required: a directory holding just FLAME2020's `generic_model.pkl`
decodes meshes. A companion file is required by what uses it (landmarks, masks, eyelids),
and that use names the missing file (`FlameAssets.missing`, `fbench.flame.FLAME.require`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbench.safe_pickle import safe_load_npy, safe_load_pickle

# Where each file may sit inside a FLAME directory, first match wins.
FILE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "model": ("generic_model.pkl", "generic_model.npz", "FLAME2020/generic_model.pkl", "FLAME2020/generic_model.npz"),
    "landmarks": ("landmark_embedding.npy",),
    "mediapipe": ("mediapipe_landmark_embedding.npz", "mediapipe_landmark_embedding/mediapipe_landmark_embedding.npz"),
    "masks": ("FLAME_masks.pkl", "FLAME_masks/FLAME_masks.pkl"),
    "l_eyelid": ("l_eyelid.npy",),
    "r_eyelid": ("r_eyelid.npy",),
    "mask_triangles": ("FLAME_masks_triangles.npy", "FLAME_masks/FLAME_masks_triangles.npy"),
}
MASK_NAMES = ("face", "eye_region", "left_eye_region", "right_eye_region", "lips", "nose", "forehead", "scalp",
              "boundary", "neck", "left_ear", "right_ear", "left_eyeball", "right_eyeball")
NUM_SHAPE_MAX = 300  # FLAME's shapedirs: the first 300 components are identity, the rest expression


class FlameFileError(ValueError):
    """A FLAME file is missing or malformed; the message names the file."""


@dataclass
class FlameAssets:
    """Everything a FLAME model needs, as numpy arrays (float64 / int64)."""

    v_template: np.ndarray  # (V,3) metres
    faces: np.ndarray  # (F,3)
    shapedirs: np.ndarray  # (V,3,K): identity then expression components
    posedirs: np.ndarray  # (V,3,9*(J-1))
    j_regressor: np.ndarray  # (J,V) dense
    parents: np.ndarray  # (J,), -1 for the root
    weights: np.ndarray  # (V,J)
    static_lmk_faces: np.ndarray  # (51,)
    static_lmk_bary: np.ndarray  # (51,3)
    dynamic_lmk_faces: np.ndarray  # (79,17)
    dynamic_lmk_bary: np.ndarray  # (79,17,3)
    full_lmk_faces: np.ndarray  # (68,)
    full_lmk_bary: np.ndarray  # (68,3)
    mp_lmk_faces: np.ndarray  # (105,)
    mp_lmk_bary: np.ndarray  # (105,3)
    mp_landmark_indices: np.ndarray  # (105,) indices into MediaPipe's 478 points
    l_eyelid: np.ndarray  # (V,3)
    r_eyelid: np.ndarray  # (V,3)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    # companion -> what was looked for, for the companions absent from the directory; their
    # arrays above are empty (no landmarks, no masks) or zero (eyelid blendshapes)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_shape(self) -> int:
        return min(NUM_SHAPE_MAX, self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return self.shapedirs.shape[2] - self.num_shape


def find_flame_files(flame_dir: str | Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Locate the FLAME files of a directory: (found, missing companions -> the names looked for).
    Raises when the model itself is missing."""
    flame_dir = Path(flame_dir)
    if not flame_dir.is_dir():
        raise FlameFileError(f"FLAME directory {flame_dir} does not exist")
    found, missing = {}, {}
    for key, candidates in FILE_CANDIDATES.items():
        path = next((flame_dir / c for c in candidates if (flame_dir / c).is_file()), None)
        if path is None:
            missing[key] = " or ".join(f"{flame_dir}/{c}" for c in candidates)
        else:
            found[key] = path
    if "model" in missing:
        raise FlameFileError(
            f"FLAME directory {flame_dir} lacks the model: {missing['model']}. "
            "Run `fbench assets` for where to obtain it, or `fbench flame synth --out DIR` for a synthetic model.")
    return found, missing


def _as_array(value: Any, path: Path, key: str, dtype: Any, ndim: int | None = None) -> np.ndarray:
    if hasattr(value, "toarray"):  # scipy sparse
        value = value.toarray()
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise FlameFileError(f"{path}: '{key}' is not numeric ({exc})") from exc
    if ndim is not None and array.ndim != ndim:
        raise FlameFileError(f"{path}: '{key}' should have {ndim} dimensions, has shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FlameFileError(f"{path}: '{key}' contains NaN or infinite values")
    return array


def _load_mapping(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        elif path.suffix == ".npy":
            data = safe_load_npy(path)
            if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
                data = data[()]
        else:
            data = safe_load_pickle(path)
    except FlameFileError:
        raise
    except Exception as exc:  # truncated, wrong format, refused by the allow-list
        raise FlameFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise FlameFileError(f"{path}: expected a dictionary of arrays, found {type(data).__name__}")
    return data


def _require(data: dict[str, Any], path: Path, *keys: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise FlameFileError(f"{path}: missing key(s) {missing}")


def _check_indices(array: np.ndarray, upper: int, path: Path, key: str) -> None:
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise FlameFileError(f"{path}: '{key}' has indices outside [0, {upper})")


def _mask_indices(value: Any, num_v: int, path: Path, key: str) -> np.ndarray:
    """A vertex mask as it must be: a non-empty array of distinct vertex indices in [0, num_v)."""
    array = _as_array(value, path, key, None).reshape(-1)
    if array.dtype.kind == "f" and np.array_equal(array, np.round(array)):
        array = array.astype(np.int64)  # whole numbers stored as floats are still indices
    if array.dtype.kind not in "iu":
        raise FlameFileError(f"{path}: mask '{key}' is not an array of vertex indices (dtype {array.dtype})")
    if array.size == 0:
        raise FlameFileError(f"{path}: mask '{key}' is empty")
    array = array.astype(np.int64)
    _check_indices(array, num_v, path, key)
    unique = np.unique(array)
    if unique.size != array.size:
        raise FlameFileError(f"{path}: mask '{key}' repeats {array.size - unique.size} vertex index(es)")
    return unique


def _check_shape(array: np.ndarray, expected: tuple[int | None, ...], path: Path, key: str) -> None:
    if array.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, array.shape)):
        shown = tuple("*" if e is None else e for e in expected)
        raise FlameFileError(f"{path}: '{key}' has shape {array.shape}, expected {shown}")


def load_flame_model(path: str | Path) -> dict[str, np.ndarray]:
    """Read generic_model.pkl/.npz into plain arrays and check that they fit together."""
    path = Path(path)
    data = _load_mapping(path)
    _require(data, path, "v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
    v_template = _as_array(data["v_template"], path, "v_template", np.float64, 2)
    num_v = v_template.shape[0]
    _check_shape(v_template, (None, 3), path, "v_template")
    faces = _as_array(data["f"], path, "f", np.int64, 2)
    _check_shape(faces, (None, 3), path, "f")
    _check_indices(faces, num_v, path, "f")
    shapedirs = _as_array(data["shapedirs"], path, "shapedirs", np.float64, 3)
    _check_shape(shapedirs, (num_v, 3, None), path, "shapedirs")
    j_regressor = _as_array(data["J_regressor"], path, "J_regressor", np.float64, 2)
    num_j = j_regressor.shape[0]
    _check_shape(j_regressor, (num_j, num_v), path, "J_regressor")
    posedirs = _as_array(data["posedirs"], path, "posedirs", np.float64, 3)
    _check_shape(posedirs, (num_v, 3, 9 * (num_j - 1)), path, "posedirs")
    weights = _as_array(data["weights"], path, "weights", np.float64, 2)
    _check_shape(weights, (num_v, num_j), path, "weights")
    kintree = _as_array(data["kintree_table"], path, "kintree_table", np.int64, 2)
    _check_shape(kintree, (2, num_j), path, "kintree_table")
    parents = kintree[0].copy()
    parents[0] = -1  # stored as uint32 max
    if (parents[1:] < 0).any() or (parents[1:] >= np.arange(1, num_j)).any():
        raise FlameFileError(f"{path}: kintree_table parents must precede their children")
    return {"v_template": v_template, "faces": faces, "shapedirs": shapedirs, "posedirs": posedirs,
                "j_regressor": j_regressor, "parents": parents, "weights": weights}


def load_flame_assets(flame_dir: str | Path) -> FlameAssets:
    """Load and cross-check every file of a FLAME directory."""
    files, missing = find_flame_files(flame_dir)
    model = load_flame_model(files["model"])
    num_v, num_f = model["v_template"].shape[0], model["faces"].shape[0]
    if "landmarks" in files:
        lmk = _load_landmarks(files["landmarks"], num_f)
    else:  # no landmarks: 17 contour points in 79 yaw bins, 51 static, 68 full (all empty)
        lmk = (np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((79, 0), np.int64), np.zeros((79, 0, 3)),
               np.zeros(0, np.int64), np.zeros((0, 3)))
    if "mediapipe" in files:
        mp = _load_mediapipe(files["mediapipe"], num_f)
    else:
        mp = (np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, np.int64))
    masks = _load_masks(files["masks"], num_v) if "masks" in files else {}
    eyelids = {}
    for key in ("l_eyelid", "r_eyelid"):
        path = files.get(key)
        if path is None:
            eyelids[key] = np.zeros((num_v, 3))
            continue
        try:
            eyelids[key] = np.load(path, allow_pickle=False).astype(np.float64)
        except Exception as exc:
            raise FlameFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
        _check_shape(eyelids[key], (num_v, 3), path, key)
    static_faces, static_bary, dynamic_faces, dynamic_bary, full_faces, full_bary = lmk
    return FlameAssets(
        **model, static_lmk_faces=static_faces, static_lmk_bary=static_bary, dynamic_lmk_faces=dynamic_faces,
        dynamic_lmk_bary=dynamic_bary, full_lmk_faces=full_faces, full_lmk_bary=full_bary, mp_lmk_faces=mp[0],
        mp_lmk_bary=mp[1], mp_landmark_indices=mp[2], l_eyelid=eyelids["l_eyelid"],
        r_eyelid=eyelids["r_eyelid"], masks=masks, files=files, missing=missing,
    )


def _load_landmarks(path: Path, num_f: int) -> tuple[np.ndarray, ...]:
    lmk = _load_mapping(path)
    keys = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
            "full_lmk_faces_idx", "full_lmk_bary_coords")
    _require(lmk, path, *keys)
    static_faces = _as_array(lmk["static_lmk_faces_idx"], path, "static_lmk_faces_idx", np.int64).reshape(-1)
    static_bary = _as_array(lmk["static_lmk_bary_coords"], path, "static_lmk_bary_coords", np.float64).reshape(-1, 3)
    dynamic_faces = _as_array(lmk["dynamic_lmk_faces_idx"], path, "dynamic_lmk_faces_idx", np.int64, 2)
    dynamic_bary = _as_array(lmk["dynamic_lmk_bary_coords"], path, "dynamic_lmk_bary_coords", np.float64, 3)
    # SMIRK stores the full 68 with a leading batch axis of one.
    full_faces = _as_array(lmk["full_lmk_faces_idx"], path, "full_lmk_faces_idx", np.int64).reshape(-1)
    full_bary = _as_array(lmk["full_lmk_bary_coords"], path, "full_lmk_bary_coords", np.float64).reshape(-1, 3)
    _check_shape(static_bary, (static_faces.shape[0], 3), path, "static_lmk_bary_coords")
    _check_shape(dynamic_bary, (*dynamic_faces.shape, 3), path, "dynamic_lmk_bary_coords")
    _check_shape(full_bary, (full_faces.shape[0], 3), path, "full_lmk_bary_coords")
    if dynamic_faces.shape[0] != 79:
        raise FlameFileError(f"{path}: dynamic landmarks need 79 yaw bins (-39..39 degrees), found {dynamic_faces.shape[0]}")
    if dynamic_faces.shape[1] + static_faces.shape[0] != full_faces.shape[0]:
        raise FlameFileError(f"{path}: {dynamic_faces.shape[1]} contour + {static_faces.shape[0]} static landmarks "
                             f"do not add up to the {full_faces.shape[0]} full landmarks")
    for key, arr in (("static_lmk_faces_idx", static_faces), ("dynamic_lmk_faces_idx", dynamic_faces),
                     ("full_lmk_faces_idx", full_faces)):
        _check_indices(arr, num_f, path, key)
    return static_faces, static_bary, dynamic_faces, dynamic_bary, full_faces, full_bary


def _load_mediapipe(path: Path, num_f: int) -> tuple[np.ndarray, ...]:
    mp = _load_mapping(path)
    _require(mp, path, "lmk_face_idx", "lmk_b_coords", "landmark_indices")
    mp_faces = _as_array(mp["lmk_face_idx"], path, "lmk_face_idx", np.int64, 1)
    mp_bary = _as_array(mp["lmk_b_coords"], path, "lmk_b_coords", np.float64, 2)
    mp_indices = _as_array(mp["landmark_indices"], path, "landmark_indices", np.int64, 1)
    _check_shape(mp_bary, (mp_faces.shape[0], 3), path, "lmk_b_coords")
    _check_shape(mp_indices, (mp_faces.shape[0],), path, "landmark_indices")
    _check_indices(mp_faces, num_f, path, "lmk_face_idx")
    _check_indices(mp_indices, 478, path, "landmark_indices")
    return mp_faces, mp_bary, mp_indices


def load_mask_triangles(path: str | Path, num_faces: int) -> dict[str, np.ndarray]:
    """SMIRK's FLAME_masks_triangles.npy (a pickled dict: area name -> triangle indices), read
    through the restricted unpickler; each value as a sorted unique int64 array in [0, num_faces)."""
    path = Path(path)
    raw = _load_mapping(path)
    areas = {}
    for name, value in raw.items():
        areas[str(name)] = np.unique(_as_array(value, path, str(name), np.int64).reshape(-1))
        _check_indices(areas[str(name)], num_faces, path, str(name))
    return areas


def _load_masks(path: Path, num_v: int) -> dict[str, np.ndarray]:
    raw_masks = _load_mapping(path)
    missing = [m for m in MASK_NAMES if m not in raw_masks]
    if missing:
        raise FlameFileError(f"{path}: missing mask(s) {missing}")
    masks = {}
    for name, value in raw_masks.items():
        masks[name] = _mask_indices(value, num_v, path, name)
    return masks
