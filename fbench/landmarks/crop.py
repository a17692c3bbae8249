"""Square face crops from landmarks, and the affine that maps source pixels into the crop.

Box geometry follows SMIRK's `crop_face` (datasets/base_dataset.py): the centre of the
landmarks' extent, side = mean of the extent's width and height x scale.

The crop is an axis-aligned square, so it is cut as an integer pixel region and resized
(much cheaper than a general warp). The returned 2x3 affine is exact for the pixels written,
in OpenCV's convention (pixel i has its centre at coordinate i):

    u = (x - x0 + 0.5) * size / side - 0.5,   v = (y - y0 + 0.5) * size / side - 0.5

Parts of the box outside the image are black (zero), as in SMIRK's skimage `warp`.
Downscaling by 2x or more first averages whole pixel blocks (INTER_AREA with an integer
factor), then resizes linearly, so large sources are not aliased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_CANVAS_FACTOR = 8  # a box this many times the image is nonsense landmarks; warp instead of padding
MIN_INSIDE_FRACTION = 0.5  # a face square less than this much inside the image is not a face of that image


@dataclass(frozen=True)
class CropBox:
    """A square in source pixel coordinates: centre and side."""

    cx: float
    cy: float
    side: float

    def xyxy(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


def valid_points(points: np.ndarray | None) -> np.ndarray | None:
    """The (N, 2) x, y rows without NaN, or None when fewer than two remain."""
    if points is None:
        return None
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    return xy if len(xy) >= 2 else None


def extent(points: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) extent of the finite points, None when there are fewer than two."""
    xy = valid_points(points)
    if xy is None:
        return None
    return (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))


def landmark_box(points: np.ndarray, scale: float) -> CropBox | None:
    """SMIRK's crop box around landmarks (see module doc); None without enough finite points."""
    ext = extent(points)
    if ext is None:
        return None
    x0, y0, x1, y1 = ext
    side = ((x1 - x0) + (y1 - y0)) / 2 * scale
    if not side > 0:
        return None
    return CropBox((x0 + x1) / 2, (y0 + y1) / 2, side)


def inside_fraction(box: CropBox, height: int, width: int, scale: float = 1.0) -> float:
    """The fraction of the face square (`box` without its crop margin: side / `scale`) that lies
    inside a width x height image; 0 for a square that misses the image."""
    half = box.side / scale / 2
    if not half > 0:
        return 0.0
    w = min(box.cx + half, width) - max(box.cx - half, 0.0)
    h = min(box.cy + half, height) - max(box.cy - half, 0.0)
    return max(w, 0.0) * max(h, 0.0) / (2 * half) ** 2


def frame_box(height: int, width: int) -> CropBox:
    """The centred square of the whole frame: the crop for a video frame with no face and no earlier box."""
    side = float(min(height, width))
    return CropBox((width - 1) / 2, (height - 1) / 2, side)


@dataclass(frozen=True)
class CropPlan:
    """Where a crop comes from: the integer source square (x0, y0, side), the pre-reduction
    factor, and the affine source -> crop. Cheap to compute; `cut` does the pixel work."""

    x0: int
    y0: int
    side: int
    factor: int
    size: int
    affine: np.ndarray  # (2, 3) float64

    @property
    def region(self) -> tuple[int, int, int]:
        return (self.x0, self.y0, self.side)


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # (size, size, C) uint8
    affine: np.ndarray  # (2, 3) float64, source pixels -> crop pixels
    region: tuple[int, int, int]  # x0, y0, side: the integer source square that was resized


def crop_affine(x0: int, y0: int, side: int, size: int) -> np.ndarray:
    s = size / side
    return np.array([[s, 0.0, (0.5 - x0) * s - 0.5], [0.0, s, (0.5 - y0) * s - 0.5]], dtype=np.float64)


def plan_crop(box: CropBox, size: int) -> CropPlan:
    """The integer source square for `box` and its affine onto a size x size crop."""
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    factor = max(1, int(box.side // size)) if box.side >= 2 * size else 1
    side = max(factor, int(round(box.side / factor)) * factor)
    x0 = int(math.floor(box.cx - side / 2 + 0.5))
    y0 = int(math.floor(box.cy - side / 2 + 0.5))
    return CropPlan(x0, y0, side, factor, size, crop_affine(x0, y0, side, size))


def cut(image: np.ndarray, plan: CropPlan) -> np.ndarray:
    """The pixels of a planned crop (zero padded outside the image)."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, side, size = plan.x0, plan.y0, plan.side, plan.size
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        region = image[y0:y0 + side, x0:x0 + side]
    elif side > MAX_CANVAS_FACTOR * max(h, w):
        return cv2.warpAffine(image, plan.affine, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
    else:
        region = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if ix1 > ix0 and iy1 > iy0:
            region[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
    if plan.factor > 1:
        region = cv2.resize(region, (side // plan.factor, side // plan.factor), interpolation=cv2.INTER_AREA)
    if region.shape[0] != size:
        region = cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(region)


def crop_square(image: np.ndarray, box: CropBox, size: int) -> Crop:
    """Cut `box` out of `image` (zero padded) and resize it to size x size."""
    plan = plan_crop(box, size)
    return Crop(cut(image, plan), plan.affine, plan.region)


def transform_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 similarity to (N, 2|3) points; a z column is multiplied by the scale so it
    stays in the units of x. NaN rows stay NaN. Returns float32."""
    pts = np.asarray(points, dtype=np.float64)
    out = pts.copy()
    out[:, :2] = pts[:, :2] @ affine[:, :2].T + affine[:, 2]
    if pts.shape[1] > 2:
        out[:, 2:] = pts[:, 2:] * math.sqrt(abs(np.linalg.det(affine[:, :2])))
    return out.astype(np.float32)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The 2x3 inverse of a 2x3 affine."""
    a = np.asarray(affine, dtype=np.float64)
    inv = np.linalg.inv(a[:, :2])
    return np.concatenate([inv, -inv @ a[:, 2:]], axis=1)


def method_crop_affine(points: np.ndarray, scale: float, size: int) -> np.ndarray:
    """SMIRK's demo crop as a 2x3 similarity, source pixels -> crop pixels.

    demo.py:16-34 (georgeretsi/smirk): side = int(mean(extent width, height) x scale) (the
    int() truncation is the demo's), a square of that side around the extent's centre whose
    corners map onto pixel centres 0 and size - 1 (DST_PTS). Raises ValueError without two
    finite points or with a degenerate box.
    """
    ext = extent(points)
    if ext is None:
        raise ValueError("crop needs at least two finite landmarks")
    x0, y0, x1, y1 = ext
    side = int(((x1 - x0) + (y1 - y0)) / 2 * scale)
    if side < 1:
        raise ValueError(f"landmark box too small to crop ({x1 - x0:.1f} x {y1 - y0:.1f} px)")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = (size - 1) / side
    return np.array([[s, 0.0, -s * (cx - side / 2)], [0.0, s, -s * (cy - side / 2)]], dtype=np.float64)


def crop_for_method(image: np.ndarray, points: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """A method's input crop: (spec.size, spec.size, 3) float32 RGB in [0, 1] and the 2x3 affine
    source -> crop.

    `spec` is a `fbench.plugins.CropSpec`; `points` the (N, 2|3) landmarks of the detector it
    names (NaN rows ignored). Geometry as `method_crop_affine`; pixels are sampled bilinearly
    with zero outside the image, then quantised to 8 bits as the demo does (skimage `warp`,
    `.astype(np.uint8)`, `/ 255`; demo.py:93 and 104). OpenCV rounds where the demo truncates:
    crops differ from the demo's by at most one grey level (ours, for speed).
    """
    import cv2

    affine = method_crop_affine(points, spec.scale, spec.size)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"crop_for_method needs an RGB(A) uint8 (H, W, 3|4) image, got {image.dtype} {image.shape}")
    image = image[..., :3]  # an alpha channel is not part of the picture
    crop = cv2.warpAffine(image, affine, (spec.size, spec.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop.astype(np.float32) * np.float32(1 / 255), affine
