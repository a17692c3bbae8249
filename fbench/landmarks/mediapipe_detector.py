"""MediaPipe 478-point face landmarks in source pixels.

Two backends give the same (478, 3) layout:
- "facemesh": the legacy `mediapipe.solutions.face_mesh.FaceMesh` with the models bundled in
  mediapipe 0.10.21 (static_image_mode=True, refine_landmarks=True, max_num_faces=1);
- "tasks": the Tasks `FaceLandmarker` with a `face_landmarker.task` file (asset
  'mediapipe-face-landmarker'; SMIRK's own preprocessing uses this one,
  datasets/preprocess_scripts/apply_mediapipe_to_dataset.py).
"auto" picks tasks when the asset is present, else facemesh. Both run with MediaPipe's default
confidence thresholds, as SMIRK's preprocessing script does.

Coordinates: x = x_norm * width, y = y_norm * height, z = z_norm * width (MediaPipe's z has
the scale of x). NaN everywhere when no face is found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fbench.landmarks.indices import MEDIAPIPE_POINTS

log = logging.getLogger(__name__)

Backend = Literal["auto", "facemesh", "tasks"]
TASK_ASSET = "mediapipe-face-landmarker"

# A serialised NormalizedLandmarkList whose landmarks carry exactly x, y, z is a run of
# 17-byte records: field-1 tag, length 15, then three tagged little-endian floats. Reading
# that with numpy is ~10x faster than walking 478 protobuf objects in Python.
_WIRE = np.dtype([("tag", "u1"), ("len", "u1"), ("tx", "u1"), ("x", "<f4"), ("ty", "u1"), ("y", "<f4"),
                  ("tz", "u1"), ("z", "<f4")])
_WIRE_TAGS = (0x0A, 15, 0x0D, 0x15, 0x1D)


def nan_landmarks(n: int = MEDIAPIPE_POINTS, dims: int = 3) -> np.ndarray:
    return np.full((n, dims), np.nan, dtype=np.float32)


def normalized_list_to_array(landmark_list: Any) -> np.ndarray:
    """(N, 3) float32 normalised x, y, z from a NormalizedLandmarkList protobuf."""
    raw = landmark_list.SerializeToString()
    n = len(landmark_list.landmark)
    if len(raw) == n * _WIRE.itemsize:
        rec = np.frombuffer(raw, _WIRE)
        if all((rec[f] == v).all() for f, v in zip(("tag", "len", "tx", "ty", "tz"), _WIRE_TAGS)):
            return np.stack([rec["x"], rec["y"], rec["z"]], axis=1)
    # Some landmark lacks a field (an exact 0.0 is not serialised) or carries visibility: slow path.
    return np.array([[p.x, p.y, p.z] for p in landmark_list.landmark], dtype=np.float32)


def to_pixels(normalized: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised MediaPipe landmarks to source pixels (z scaled by the width, like x)."""
    out = np.asarray(normalized, dtype=np.float32).copy()
    out[:, 0] *= width
    out[:, 1] *= height
    out[:, 2] *= width
    return out


def tasks_result_to_array(result: Any, width: int, height: int, index: int = 0) -> np.ndarray:
    """(478, 3) source pixels of face `index` of a Tasks FaceLandmarkerResult, NaN when none."""
    faces = getattr(result, "face_landmarks", None) or []
    if len(faces) <= index:
        return nan_landmarks()
    points = np.array([[p.x, p.y, p.z] for p in faces[index]], dtype=np.float32)
    if points.shape != (MEDIAPIPE_POINTS, 3):
        raise RuntimeError(f"MediaPipe FaceLandmarker returned {points.shape[0]} points, expected {MEDIAPIPE_POINTS}")
    return to_pixels(points, width, height)


def task_asset_path() -> Path | None:
    from fbench.assets import get_asset

    asset = get_asset(TASK_ASSET)
    return asset.paths()[0] if asset.present else None


def resolve_backend(backend: Backend) -> tuple[str, Path | None]:
    """The backend to use and, for tasks, the model file. 'tasks' without the asset is an error."""
    if backend not in ("auto", "facemesh", "tasks"):
        raise ValueError(f"unknown MediaPipe backend {backend!r} (auto, facemesh, tasks)")
    if backend == "facemesh":
        return "facemesh", None
    path = task_asset_path()
    if path is not None:
        return "tasks", path
    if backend == "tasks":
        from fbench.assets import get_asset

        asset = get_asset(TASK_ASSET)
        raise FileNotFoundError(f"MediaPipe backend 'tasks' needs {asset.paths()[0]} (asset {TASK_ASSET!r}); "
                                f"obtain it from {asset.source}, or use --mediapipe-backend facemesh")
    return "facemesh", None


def describe_backend(backend: str, task_path: Path | None = None) -> str:
    """How a resolved backend is named in manifests and sample JSON."""
    import importlib.metadata

    version = importlib.metadata.version("mediapipe")
    if backend == "facemesh":
        return f"mediapipe {version} FaceMesh (legacy bundled model, refine_landmarks)"
    return f"mediapipe {version} FaceLandmarker ({task_path.name if task_path else 'face_landmarker.task'})"


class MediaPipeDetector:
    """One MediaPipe model instance; create once per process and reuse (graph set-up is the slow part)."""

    def __init__(self, backend: Backend = "auto", max_faces: int = 1) -> None:
        import mediapipe as mp

        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        self.max_faces = max_faces
        self.backend, self.task_path = resolve_backend(backend)
        if self.backend == "facemesh":
            self._model = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                                          max_num_faces=max_faces)
            self._direct = self._direct_stream()
        else:
            from mediapipe.tasks import python as mp_python
            from mediapipe.tasks.python import vision

            options = vision.FaceLandmarkerOptions(
                base_options=mp_python.BaseOptions(model_asset_path=str(self.task_path)),
                running_mode=vision.RunningMode.IMAGE, num_faces=max_faces)
            self._model = vision.FaceLandmarker.create_from_options(options)
            self._mp_image = mp.Image
            self._srgb = mp.ImageFormat.SRGB

    def describe(self) -> str:
        return describe_backend(self.backend, self.task_path)

    def _direct_stream(self) -> tuple[str, Any] | None:
        """The graph's input stream, when this mediapipe's SolutionBase has the internals the direct
        path relies on (0.10.21: the pinned version); else None and `process()` is used."""
        m = self._model
        needed = ("_graph", "_graph_outputs", "_simulated_timestamp", "_make_packet", "_input_stream_type_info",
                  "_output_stream_type_info")
        if not all(hasattr(m, a) for a in needed) or len(m._input_stream_type_info or {}) != 1 or \
                "multi_face_landmarks" not in (m._output_stream_type_info or {}):
            return None
        return next(iter(m._input_stream_type_info.items()))

    def _facemesh(self, image: np.ndarray):
        """FaceMesh's landmark lists for one image. The direct path does what FaceMesh.process does
        minus building a namedtuple class per call (~0.3 ms, 5% of the inference)."""
        m = self._model
        if self._direct is None:
            return m.process(image).multi_face_landmarks
        from mediapipe.python import packet_getter

        stream, stream_type = self._direct
        m._graph_outputs.clear()
        m._simulated_timestamp += 33333  # as process(): 30 fps timestamps
        m._graph.add_packet_to_input_stream(stream=stream,
                                            packet=m._make_packet(stream_type, image).at(m._simulated_timestamp))
        m._graph.wait_until_idle()
        packet = m._graph_outputs.get("multi_face_landmarks")
        if packet is None or packet.is_empty():
            return None
        return packet_getter.get_proto_list(packet)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(478, 3) float32 landmarks of the most prominent face in an RGB uint8 image, NaN if none."""
        faces = self.detect_faces(image)
        return faces[0] if faces else nan_landmarks()

    def detect_faces(self, image: np.ndarray) -> list[np.ndarray]:
        """(478, 3) float32 landmarks of each face found (at most `max_faces`), in MediaPipe's order."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MediaPipe needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        image = np.ascontiguousarray(image)
        if self.backend == "facemesh":
            return [to_pixels(normalized_list_to_array(face), width, height) for face in self._facemesh(image) or []]
        result = self._model.detect(self._mp_image(image_format=self._srgb, data=image))
        return [tasks_result_to_array(result, width, height, i) for i in range(len(result.face_landmarks or []))]

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> "MediaPipeDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
