"""Run the configured landmark sources on one image and choose the crop box.

Sources: MediaPipe (478 points), FAN (68 points, when enabled), the dataset's own
annotations (68 or 5 points, from the source item). The crop box comes from MediaPipe
when it found a face, else FAN, else the annotations; `box_source` records which.
With `landmarks="annotations"` no detector runs at all (how synthetic data with known
landmarks is prepped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fbench.landmarks.crop import CropBox, extent, landmark_box
from fbench.landmarks.indices import FAN_POINTS, MEDIAPIPE_POINTS

LandmarkMode = Literal["detect", "annotations"]


@dataclass(frozen=True)
class LandmarkConfig:
    """Which landmarks to compute and how to crop. Part of the prep config."""

    landmarks: LandmarkMode = "detect"  # detect: MediaPipe (+ FAN); annotations: the dataset's only
    fan: Literal["auto", "off", "required"] = "auto"
    mediapipe_backend: Literal["auto", "facemesh", "tasks"] = "auto"
    crop_scale: float = 2.2
    size: int = 448

    def __post_init__(self) -> None:
        if self.landmarks not in ("detect", "annotations"):
            raise ValueError(f"landmarks must be 'detect' or 'annotations', got {self.landmarks!r}")
        if self.fan not in ("auto", "off", "required"):
            raise ValueError(f"fan must be auto, off or required, got {self.fan!r}")
        if not self.crop_scale > 0 or self.size < 16:
            raise ValueError(f"crop_scale must be > 0 and size >= 16 (got {self.crop_scale}, {self.size})")


@dataclass
class FaceLandmarks:
    """Landmarks of one image in source pixels; NaN arrays where a source found nothing."""

    mp: np.ndarray  # (478, 3)
    fan: np.ndarray  # (68, 2)
    ann: np.ndarray | None  # (P, 2) dataset annotations
    box: CropBox | None
    box_source: str | None  # "mediapipe" | "fan" | "annotations" | None

    @property
    def mp_found(self) -> bool:
        return bool(np.isfinite(self.mp[:, :2]).all())

    @property
    def fan_found(self) -> bool:
        return bool(np.isfinite(self.fan).all())


def choose_box(mp: np.ndarray, fan: np.ndarray, ann: np.ndarray | None,
               scale: float) -> tuple[CropBox | None, str | None]:
    """MediaPipe box when detected, else FAN, else annotations, else none."""
    for name, points in (("mediapipe", mp), ("fan", fan), ("annotations", ann)):
        if points is not None and np.isfinite(points[:, :2]).all():
            box = landmark_box(points, scale)
            if box is not None:
                return box, name
    return None, None


class Annotator:
    """The landmark sources of one worker process, built once from a LandmarkConfig."""

    def __init__(self, config: LandmarkConfig, mediapipe=None, fan=None) -> None:
        self.config = config
        self.mediapipe = mediapipe
        self.fan = fan
        if config.landmarks == "detect":
            if self.mediapipe is None:
                from fbench.landmarks.mediapipe_detector import MediaPipeDetector

                self.mediapipe = MediaPipeDetector(config.mediapipe_backend)
            if self.fan is None:
                from fbench.landmarks.fan import FanDetector, resolve_fan_mode

                if resolve_fan_mode(config.fan):
                    self.fan = FanDetector()

    def sources(self) -> dict[str, str | None]:
        """What produced each landmark array (recorded in the manifest)."""
        return {"mp": self.mediapipe.describe() if self.mediapipe else None,
                "fan": self.fan.describe() if self.fan else None}

    def __call__(self, image: np.ndarray, annotations: np.ndarray | None = None) -> FaceLandmarks:
        mp = np.full((MEDIAPIPE_POINTS, 3), np.nan, dtype=np.float32)
        fan = np.full((FAN_POINTS, 2), np.nan, dtype=np.float32)
        if self.mediapipe is not None:
            mp = self.mediapipe.detect(image)
        if self.fan is not None:
            reference = extent(mp) or (extent(annotations) if annotations is not None else None)
            fan = self.fan.detect(image, reference)
        box, box_source = choose_box(mp, fan, annotations, self.config.crop_scale)
        return FaceLandmarks(mp=mp, fan=fan, ann=annotations, box=box, box_source=box_source)

    def close(self) -> None:
        if self.mediapipe is not None:
            self.mediapipe.close()
