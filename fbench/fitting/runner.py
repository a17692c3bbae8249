"""What the fitting pipelines (``pipelines.famos``, ``pipelines.bp4d``) share besides the
fitting itself: frame selection, residual statistics and the dataset error. Their command
comes from ``fbench.cli.fit.fit_command``."""

from __future__ import annotations

import numpy as np


class DatasetError(ValueError):
    """The dataset root does not look like the dataset (the message says what was expected)."""


def strided(items: list, stride: int) -> list:
    return items[::max(1, stride)]


def residual_stats(distances: np.ndarray) -> tuple[float, float, float]:
    """(mean, median, max) of a set of distances; NaN when empty."""
    if distances.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(distances.mean()), float(np.median(distances)), float(distances.max())
