"""File helpers shared by the synthetic dataset writers: atomic writes and deliberate corruption.

Every writer puts files in place atomically (temporary name in the same directory, then
`os.replace`), so an interrupted run never leaves a half-written file that looks valid. The
corruption helpers damage files *on purpose* (`fbench synth ... --corrupt K`) so the readers'
robustness paths have material; they are deterministic for a given input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the suffix (`.x.mp4.tmp.mp4`) so libraries that pick a format
    from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    # newline="" so the bytes on disk are exactly `text` on every platform.
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return Path(path)


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
