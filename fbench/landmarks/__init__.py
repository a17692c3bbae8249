"""Face landmarks (MediaPipe 478, FAN 68, dataset annotations) and face crops."""

from fbench.landmarks.annotate import Annotator, FaceLandmarks, LandmarkConfig, choose_box
from fbench.landmarks.crop import (Crop, CropBox, CropPlan, crop_square, cut, invert_affine, landmark_box, plan_crop,
                                   transform_points)
from fbench.landmarks.fan import FanDetector, FanUnavailable, missing_fan_files, resolve_fan_mode, select_face
from fbench.landmarks.indices import FAN_POINTS, MEDIAPIPE_POINTS, SMIRK_MEDIAPIPE_INDICES
from fbench.landmarks.mediapipe_detector import MediaPipeDetector

__all__ = ["Annotator", "FaceLandmarks", "LandmarkConfig", "choose_box", "Crop", "CropBox", "CropPlan", "crop_square", "cut", "plan_crop",
           "invert_affine", "landmark_box", "transform_points", "FanDetector", "FanUnavailable",
           "missing_fan_files", "resolve_fan_mode", "select_face", "FAN_POINTS", "MEDIAPIPE_POINTS",
           "SMIRK_MEDIAPIPE_INDICES", "MediaPipeDetector"]
