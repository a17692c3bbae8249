"""FAN 68-point landmarks through the `face-alignment` package, never downloading.

face-alignment fetches its weights from the internet when they are not in torch's hub
cache. fbench checks the two files first (asset 'fan-weights') and hands the S3FD file to
the detector explicitly, so construction can only read local files.

`--fan auto|off|required`: auto uses FAN when both files are present, off never does,
required stops before any work with a message naming the missing files.

The parsing of face-alignment's output (several faces, pick one) is `select_face`, a pure
function tested with a fake model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from fbench.landmarks.indices import FAN_POINTS

FanMode = Literal["auto", "off", "required"]
FAN_ASSET = "fan-weights"
FAN_NET_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"


class FanUnavailable(RuntimeError):
    """FAN was required but its weights are not installed."""


def hub_checkpoints() -> Path:
    """Where face-alignment looks for its weights: torch.hub.get_dir()/checkpoints.

    Worked out from the environment like torch does ($TORCH_HOME, $XDG_CACHE_HOME) without
    importing torch (seconds); once torch is imported, its own answer is used (it may have
    been moved with torch.hub.set_dir)."""
    import sys

    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    from fbench.assets import torch_hub_checkpoints

    return torch_hub_checkpoints()


def missing_fan_files() -> list[Path]:
    """The FAN weight files absent from torch's hub cache (empty when FAN can run offline)."""
    folder = hub_checkpoints()
    return [folder / name for name in (FAN_NET_FILE, S3FD_FILE) if not (folder / name).is_file()]


def fan_missing_message(missing: Sequence[Path]) -> str:
    from fbench.assets import get_asset

    asset = get_asset(FAN_ASSET)
    return (f"FAN landmarks need {', '.join(str(p) for p in missing)} (asset {FAN_ASSET!r}, missing). "
            f"Obtain them from {asset.source}; they are face-alignment's release files "
            f"https://www.adrianbulat.com/downloads/python-fan/{FAN_NET_FILE} and .../{S3FD_FILE}. "
            "Or run with --fan off.")


def resolve_fan_mode(mode: FanMode) -> bool:
    """Whether FAN runs. 'required' with missing weights raises FanUnavailable naming the files."""
    if mode == "off":
        return False
    if mode not in ("auto", "required"):
        raise ValueError(f"unknown --fan mode {mode!r} (auto, off, required)")
    missing = missing_fan_files()
    if missing and mode == "required":
        raise FanUnavailable(fan_missing_message(missing))
    return not missing


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_face(landmarks: Sequence[np.ndarray] | None, boxes: Sequence[Sequence[float]] | None,
                reference_box: Sequence[float] | None = None) -> np.ndarray:
    """One (68, 2) float32 face out of face-alignment's per-face output; NaN when there is none.

    With a reference box (the MediaPipe or annotation landmark box) the face whose detector
    box overlaps it most is taken, so FAN and MediaPipe describe the same person; without
    one, the largest detected face.
    """
    if not landmarks:
        return np.full((FAN_POINTS, 2), np.nan, dtype=np.float32)
    faces = [np.asarray(lm, dtype=np.float32)[:, :2] for lm in landmarks]
    for face in faces:
        if face.shape != (FAN_POINTS, 2):
            raise RuntimeError(f"face-alignment returned landmarks of shape {face.shape}, expected ({FAN_POINTS}, 2)")
    if boxes is None or len(boxes) != len(faces):
        # No detector boxes: use each face's landmark extent.
        boxes = [(f[:, 0].min(), f[:, 1].min(), f[:, 0].max(), f[:, 1].max()) for f in faces]
    boxes = [tuple(float(v) for v in b[:4]) for b in boxes]
    if reference_box is not None:
        scores = [box_iou(b, reference_box) for b in boxes]
    else:
        scores = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return faces[int(np.argmax(scores))]


class FanDetector:
    """face-alignment's 2D FAN with the S3FD detector on the CPU; create once per process.

    `model` replaces the face-alignment object (anything with its `get_landmarks_from_image`)."""

    def __init__(self, device: str = "cpu", model: Any | None = None) -> None:
        if model is None:
            missing = missing_fan_files()
            if missing:
                raise FanUnavailable(fan_missing_message(missing))
            import face_alignment

            # compile=False: no torch.compile on CPU and no compile cache written under ~/.cache.
            model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd",
                face_detector_kwargs={"path_to_detector": str(hub_checkpoints() / S3FD_FILE)}, compile=False)
        self.model = model

    @staticmethod
    def describe() -> str:
        import importlib.metadata

        return f"face-alignment {importlib.metadata.version('face-alignment')} 2DFAN4 + S3FD"

    def detect(self, image: np.ndarray, reference_box: Sequence[float] | None = None) -> np.ndarray:
        """(68, 2) float32 landmarks in source pixels of an RGB uint8 image, NaN when no face."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No faces were detected." is an expected outcome here
            landmarks, _scores, boxes = self.model.get_landmarks_from_image(image, return_bboxes=True)
        return select_face(landmarks, boxes, reference_box)
