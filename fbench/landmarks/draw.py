"""Drawing landmarks on images (for `fbench shards inspect` and debugging)."""

from __future__ import annotations

import numpy as np

COLORS = {"mp": (0, 255, 0), "fan": (255, 64, 0), "ann": (0, 128, 255)}  # RGB


def draw_points(image: np.ndarray, points: np.ndarray | None, color: tuple[int, int, int],
                radius: int = 1) -> np.ndarray:
    """Copy of an RGB image with the finite (x, y) points drawn as filled circles."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    if points is None:
        return out
    for x, y in np.asarray(points, dtype=np.float64)[:, :2]:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(out, (int(round(x)), int(round(y))), radius, color, -1, lineType=cv2.LINE_AA)
    return out
