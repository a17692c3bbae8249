"""BP4D-Spontaneous's folder layout, shared by its two stages (`pipelines.bp4d`: FLAME fits of the
3D scans; `pipelines.bp4d_frames`: the 2D frames joined to those fits), kept free of torch so the
prep stage stays light.

The release keeps a subject's data per task, ``<root>/<subject>/<task>/`` (the ``2D+3D`` tree:
the 3D scans and the 2D video frames of a task side by side, files numbered by frame); see
data_cards/bp4d.yaml for what is verified and what is assumed.
"""

from __future__ import annotations

from pathlib import Path

from fbench.fitting.runner import named_folders

TASKS = tuple(f"T{i}" for i in range(1, 9))


def find_subjects(root: Path) -> list[str]:
    """Subject folders under the root, sorted; names unusable as paths or HDF5 groups are skipped with a warning."""
    return named_folders(root, "subject")
