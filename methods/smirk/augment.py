"""SMIRK's training augmentations, re-implemented with OpenCV/numpy (albumentations is not a dependency).

SMIRK (datasets/base_dataset.py, `BaseDataset.__init__`) composes, in this order, with
albumentations 1.3.0 (its requirements.txt):

    A.RandomBrightnessContrast(p=0.5)
    A.RandomGamma(p=0.5)
    A.ColorJitter(brightness=0.05, contrast=0.05, saturation=0.05, hue=0.05, p=0.25)
    A.CLAHE(p=0.255)
    A.RGBShift(p=0.25)
    A.Blur(p=0.1)
    A.GaussNoise(p=0.5)
    A.ShiftScaleRotate(shift_limit=0.05, scale_limit=0.1, rotate_limit=10, border_mode=0, p=0.9)

with keypoints (FAN 68 and the 105 MediaPipe points, remove_invisible=False) and the face-hull
mask following the geometric transform. Parameters left at albumentations 1.3.0 defaults are
written out below: brightness/contrast limits 0.2 (brightness relative to 255), gamma
80..120 %, CLAHE clip limit 1..4 with 8x8 tiles on the LAB lightness, RGB shifts +-20,
blur kernel 3..7, Gaussian noise variance 10..50 per channel, ColorJitter in random order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """out = in * alpha + beta * 255 (albumentations' brightness_by_max=True), clipped."""
    table = np.arange(256, dtype=np.float32) * alpha + beta * 255
    return _lut(image, table)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    table = np.power(np.arange(256, dtype=np.float64) / 255, g) * 255
    return _lut(image, table)


def jitter_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _lut(image, np.arange(256, dtype=np.float32) * factor)


def jitter_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    mean = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean()
    return _lut(image, np.arange(256, dtype=np.float32) * factor + mean * (1 - factor))


def jitter_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, factor, gray, 1 - factor, 0)


def jitter_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by `shift` turns (OpenCV's 8-bit hue runs 0..179)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    table = np.mod(np.arange(256, dtype=np.int32) + int(round(shift * 180)), 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def clahe(image: np.ndarray, clip_limit: float, tiles: tuple[int, int] = (8, 8)) -> np.ndarray:
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tiles).apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def rgb_shift(image: np.ndarray, shifts: Sequence[float]) -> np.ndarray:
    out = image.astype(np.int16) + np.asarray(shifts, dtype=np.float32).round().astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def box_blur(image: np.ndarray, ksize: int) -> np.ndarray:
    import cv2

    return cv2.blur(image, (ksize, ksize))


def gauss_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def shift_scale_rotate_matrix(width: int, height: int, angle: float, scale: float, dx: float,
                              dy: float) -> np.ndarray:
    """albumentations' ShiftScaleRotate matrix: rotate/scale about the image centre, then shift
    by (dx * width, dy * height)."""
    import cv2

    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[0, 2] += dx * width
    matrix[1, 2] += dy * height
    return matrix


@dataclass(frozen=True)
class SmirkAugment:
    """The composition listed in the module doc; call with an RGB uint8 crop, its face mask (1 =
    face, as SMIRK passes `1 - hull_mask`) and keypoint arrays in crop pixels."""

    p_brightness_contrast: float = 0.5
    p_gamma: float = 0.5
    p_color_jitter: float = 0.25
    p_clahe: float = 0.255
    p_rgb_shift: float = 0.25
    p_blur: float = 0.1
    p_noise: float = 0.5
    p_shift_scale_rotate: float = 0.9

    def __call__(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                 keypoints: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        import cv2

        if rng.random() < self.p_brightness_contrast:
            image = brightness_contrast(image, 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2))
        if rng.random() < self.p_gamma:
            image = gamma(image, rng.uniform(80, 120) / 100)
        if rng.random() < self.p_color_jitter:
            ops = [(jitter_brightness, rng.uniform(0.95, 1.05)), (jitter_contrast, rng.uniform(0.95, 1.05)),
                   (jitter_saturation, rng.uniform(0.95, 1.05)), (jitter_hue, rng.uniform(-0.05, 0.05))]
            for k in rng.permutation(len(ops)):
                fn, value = ops[k]
                image = fn(image, value)
        if rng.random() < self.p_clahe:
            image = clahe(image, rng.uniform(1, 4))
        if rng.random() < self.p_rgb_shift:
            image = rgb_shift(image, rng.uniform(-20, 20, size=3))
        if rng.random() < self.p_blur:
            image = box_blur(image, int(rng.choice([3, 5, 7])))
        if rng.random() < self.p_noise:
            image = gauss_noise(image, float(np.sqrt(rng.uniform(10, 50))), rng)
        keypoints = [np.asarray(k, dtype=np.float32) for k in keypoints]
        if rng.random() < self.p_shift_scale_rotate:
            h, w = image.shape[:2]
            m = shift_scale_rotate_matrix(w, h, rng.uniform(-10, 10), rng.uniform(0.9, 1.1),
                                          rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
            image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
            keypoints = [(k[:, :2] @ m[:, :2].T + m[:, 2]).astype(np.float32) for k in keypoints]
        return image, mask, keypoints
