"""Uniform grid over triangle bounding boxes, for small ball queries.

Private helper of :mod:`fbench.geometry.distance`. Face adjacency finds the neighbours
of a triangle only when they share vertices; this grid finds every triangle near a
point whatever the connectivity (T-junctions, touching or intersecting sheets). It is
only asked about balls much smaller than a triangle, so each query touches 1-8 cells.
"""

from __future__ import annotations

import numpy as np

# Triangles spanning more cells than this are not binned but returned by every query
# (a few huge triangles would otherwise fill thousands of cells).
_MAX_CELLS_PER_FACE = 64
# Cell edge in units of the median triangle bounding-box size.
_CELL_PER_TRIANGLE = 2.0
# Cells per axis at most (keys stay well inside int64, memory stays bounded).
_MAX_DIM = 1024


def _expand_boxes(lo: np.ndarray, hi: np.ndarray, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For integer boxes [lo, hi] (inclusive, (M, 3)): (box index, flat cell key) pairs."""
    n = hi - lo + 1
    box = np.arange(lo.shape[0])
    key = np.zeros(lo.shape[0], dtype=np.int64)
    # One axis at a time with repeat + offsets: no integer division (slow in numpy).
    for ax in range(3):
        cnt = n[box, ax]
        if (cnt == 1).all():
            key = key * dims[ax] + lo[box, ax]
            continue
        off = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        box = np.repeat(box, cnt)
        key = np.repeat(key, cnt) * dims[ax] + lo[box, ax] + off
    return box, key


class FaceGrid:
    """Bins triangles by their bounding boxes; ``candidates`` lists triangles near balls."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        a, b, c = (vertices[faces[:, k]] for k in range(3))
        # Elementwise min/max: numpy reductions over a length-3 axis are ~10x slower.
        lo = np.minimum(np.minimum(a, b), c)
        hi = np.maximum(np.maximum(a, b), c)
        ext = hi - lo
        size = np.maximum(np.maximum(ext[:, 0], ext[:, 1]), ext[:, 2])
        self.origin = lo.min(axis=0)
        extent = float((hi.max(axis=0) - self.origin).max())
        cell = _CELL_PER_TRIANGLE * float(np.median(size)) if size.size else 0.0
        # Cells of a couple of typical triangles: most triangles land in 1-2 cells (cheap
        # to build), a query box meets a few cells of ~10 triangles, and the exact box
        # test below discards most of those.
        cell = max(cell, extent / _MAX_DIM, 1e-300)
        self.cell = cell
        self.dims = np.minimum(
            np.floor((hi.max(axis=0) - self.origin) / cell).astype(np.int64) + 1, _MAX_DIM
        )
        ilo, ihi = self._cells(lo), self._cells(hi)
        span = ihi - ilo + 1
        big = span[:, 0] * span[:, 1] * span[:, 2] > _MAX_CELLS_PER_FACE
        self.always = np.flatnonzero(big)
        small = np.flatnonzero(~big)
        box, key = _expand_boxes(ilo[small], ihi[small], self.dims)
        order = np.argsort(key, kind="stable")
        key, face = key[order], small[box[order]]
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        self.keys = key[starts]
        self.ptr = np.concatenate((starts, [key.size]))
        self.faces = face
        self.box = np.concatenate((lo, hi), axis=1)  # (F, 6) for exact box pruning

    def _cells(self, x: np.ndarray) -> np.ndarray:
        idx = np.floor((x - self.origin) / self.cell).astype(np.int64)
        return np.clip(idx, 0, self.dims - 1)

    def candidates(self, centers: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ball index, face) pairs: every face whose bounding box meets the ball."""
        r = radii[:, None]
        box, key = _expand_boxes(self._cells(centers - r), self._cells(centers + r), self.dims)
        pos = np.searchsorted(self.keys, key)
        hit = pos < self.keys.size
        hit[hit] = self.keys[pos[hit]] == key[hit]
        box, pos = box[hit], pos[hit]
        start = self.ptr[pos]
        count = self.ptr[pos + 1] - start
        total = int(count.sum())
        off = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        balls = np.repeat(box, count)
        faces = self.faces[np.repeat(start, count) + off]
        if self.always.size:
            n = centers.shape[0]
            balls = np.concatenate((balls, np.repeat(np.arange(n), self.always.size)))
            faces = np.concatenate((faces, np.tile(self.always, n)))
        # Keep only faces whose bounding box meets the ball: a cell holds ~10 faces, the
        # tiny balls asked about meet 1-3 of them.
        b = self.box[faces]
        c = centers[balls]
        gap = np.maximum(np.maximum(b[:, :3] - c, c - b[:, 3:]), 0.0)
        gap *= gap
        keep = gap[:, 0] + gap[:, 1] + gap[:, 2] <= radii[balls] ** 2
        return balls[keep], faces[keep]
