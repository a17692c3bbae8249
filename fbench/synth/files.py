"""Deliberate corruption for the synthetic dataset writers.

The helpers damage files *on purpose* (`fbench synth ... --corrupt K`) so the readers'
robustness paths have material; they are deterministic for a given input. Writers put every
file in place atomically through `fbench.io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fbench.io import atomic_write_bytes


def empty_file(path: str | Path) -> Path:
    """Corrupt: leave a 0-byte file in place (an interrupted download or copy)."""
    return atomic_write_bytes(path, b"")


def truncate_file(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Corrupt: keep only the first `keep_fraction` of the bytes (at least 1, at most all but 1)."""
    if not 0.0 < keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
    data = Path(path).read_bytes()
    if len(data) < 2:
        raise ValueError(f"{path}: {len(data)} byte(s), too small to truncate")
    keep = min(max(1, int(len(data) * keep_fraction)), len(data) - 1)
    return atomic_write_bytes(path, data[:keep])


def choose_corrupted(rng: np.random.Generator, candidates: Sequence[str], k: int) -> list[str]:
    """Pick `k` distinct candidates (sorted order in, sorted order out) deterministically for a seed."""
    if k < 0:
        raise ValueError(f"corrupt count must be >= 0, got {k}")
    if k > len(candidates):
        raise ValueError(f"asked to corrupt {k} files but only {len(candidates)} can be corrupted")
    picked = rng.choice(len(candidates), size=k, replace=False) if k else []
    return sorted(candidates[int(i)] for i in picked)
