"""What the fitting pipelines (``pipelines.famos``, ``pipelines.bp4d``) share besides the
fitting itself: frame and subject selection, residual statistics and the dataset error. Their command
comes from ``fbench.cli.fit.fit_command``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("fbench.fitting")


class DatasetError(ValueError):
    """The dataset root does not look like the dataset (the message says what was expected)."""


def strided(items: list, stride: int) -> list:
    return items[::max(1, stride)]


def residual_stats(distances: np.ndarray) -> tuple[float, float, float]:
    """(mean, median, max) of a set of distances; NaN when empty."""
    if distances.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(distances.mean()), float(np.median(distances)), float(distances.max())


def named_folders(folder: Path, what: str) -> list[str]:
    """Sorted names of the non-hidden folders in `folder` that can name outputs and HDF5 groups
    (`fbench.fitting.store.check_name`); any other is skipped with a warning. DatasetError when
    `folder` is not a directory. `what` names them in messages ("subject", "sequence")."""
    from fbench.fitting.store import UnsafeNameError, check_name

    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_name(d.name, what)
        except UnsafeNameError as exc:
            log.warning("skipping %s: %s", d, exc)
            continue
        out.append(d.name)
    return out


def select_existing(requested: list[str] | None, available: list[str], what: str, where: Path | str) -> list[str]:
    """`available` when nothing is requested, else the requested names that exist (a warning for
    each that does not); DatasetError listing what exists when none of them does."""
    if not requested:
        return list(available)
    chosen = [name for name in requested if name in available]
    if not chosen:
        raise DatasetError(f"{where}: no {what} {', '.join(requested)}; found {len(available)}: "
                           f"{', '.join(available) if available else '(none)'}")
    for name in requested:
        if name not in available:
            log.warning("%s %s not found under %s", what, name, where)
    return chosen
