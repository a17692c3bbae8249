"""Exact float64 closest point on triangles, vectorised over (point, triangle) pairs.

Private helper of :mod:`fbench.geometry.distance`: open3d picks candidate triangles in
float32 and :class:`TrianglePack` recomputes the answer in float64 on those candidates.

The closest point on a triangle is the orthogonal projection onto its plane when that
projection falls inside the triangle, and otherwise the closest point on one of its
three edges (the triangle is convex). This is the same partition as Ericson's
closest-point-on-triangle (Real-Time Collision Detection, §5.1.5) but evaluated as
"project, test, fall back to segments", which vectorises with far fewer temporaries
once the per-triangle data (dual basis, unit normal) is precomputed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# A triangle whose doubled area is below this fraction of its longest edge squared is
# treated as its three edges: the barycentric dual basis divides by the squared area,
# which is meaningless there, and such a sliver lies within this relative width of its
# edges anyway.
DEGENERATE_REL_AREA = 1e-8

# Rows of the packed per-face table (each block is 3 rows: x, y, z).
_A, _B, _C, _G1, _G2, _N = (slice(3 * i, 3 * i + 3) for i in range(6))
_H = slice(18, 21)  # altitudes from vertex 0, 1, 2 onto the opposite edge
_ROWS = 21
# Rows per block in TrianglePack.closest (fits the temporaries in L2 cache).
_BLOCK = 16384


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor | None:
    """Shared worker threads for block evaluation; None on a single core."""
    global _POOL
    workers = min(4, os.cpu_count() or 1)
    if workers < 2:
        return None
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fbench-geometry")
    return _POOL


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack(
        (x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0])
    )


class TrianglePack:
    """Per-face float64 data for fast closest-point queries against chosen faces.

    ``closest(points, face_ids)`` returns, for each row, the closest point on face
    ``face_ids[i]`` to ``points[i]``, its barycentric weights, and the distance from
    that point to each of the face's edges (used to decide when a neighbouring face
    could be as close).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        a, b, c = (np.ascontiguousarray(v[f[:, k]].T) for k in range(3))
        e1, e2, e3 = b - a, c - a, c - b
        n = _cross(e1, e2)
        nn = _dot(n, n)
        g11, g12, g22 = _dot(e1, e1), _dot(e1, e2), _dot(e2, e2)
        longest2 = np.maximum(np.maximum(g11, g22), _dot(e3, e3))
        area2 = np.sqrt(nn)  # doubled area
        self.degenerate: np.ndarray = area2 <= DEGENERATE_REL_AREA * longest2
        ok = ~self.degenerate
        safe_nn = np.where(ok, nn, 1.0)
        # Dual basis of (e1, e2) in the plane: v = (p - a)·g1, w = (p - a)·g2. Dividing
        # by |e1 x e2|^2 rather than the Gram determinant avoids its cancellation.
        g1 = np.where(ok, (g22 * e1 - g12 * e2) / safe_nn, 0.0)
        g2 = np.where(ok, (g11 * e2 - g12 * e1) / safe_nn, 0.0)
        unit_n = np.where(ok, n / np.where(ok, area2, 1.0), 0.0)
        edge_len = np.sqrt(np.stack((_dot(e3, e3), g22, g11)))  # opposite a, b, c
        heights = np.where(ok & (edge_len > 0), area2 / np.where(edge_len > 0, edge_len, 1.0), 0.0)
        self.packed: np.ndarray = np.concatenate((a, b, c, g1, g2, unit_n, heights))
        assert self.packed.shape[0] == _ROWS

    @property
    def num_faces(self) -> int:
        return int(self.packed.shape[1])

    def closest(
        self, points: np.ndarray, face_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Closest points of ``points[i]`` on faces ``face_ids[i]``.

        Returns ``(q (M,3), d (M,), bary (M,3), edge_dist (M,3))`` where edge j joins
        local vertices j and (j+1) % 3.
        """
        p = np.asarray(points, dtype=np.float64)
        ids = np.asarray(face_ids, dtype=np.int64)
        m = ids.shape[0]
        q = np.empty((3, m))
        d = np.empty(m)
        bary = np.empty((3, m))
        edge_dist = np.empty((3, m))
        # Blocks keep the ~30 temporaries cache-sized (one pass over 100k rows is ~3x
        # slower than the same work in blocks), and numpy releases the GIL inside each
        # array operation, so blocks run concurrently on the available cores.
        jobs = [
            (p[s:e], ids[s:e], q[:, s:e], d[s:e], bary[:, s:e], edge_dist[:, s:e])
            for s, e in ((s, min(m, s + _BLOCK)) for s in range(0, m, _BLOCK))
        ]
        pool = _pool() if len(jobs) > 1 else None
        if pool is None:
            for job in jobs:
                self._closest_block(*job)
        else:
            for fut in [pool.submit(self._closest_block, *job) for job in jobs]:
                fut.result()
        return q.T, d, bary.T, edge_dist.T

    def _closest_block(
        self,
        points: np.ndarray,
        face_ids: np.ndarray,
        q_out: np.ndarray,
        d_out: np.ndarray,
        bary_out: np.ndarray,
        edge_out: np.ndarray,
    ) -> None:
        P = np.ascontiguousarray(points.T)
        T = np.take(self.packed, face_ids, axis=1)
        ap = P - T[_A]
        v = _dot(ap, T[_G1])
        w = _dot(ap, T[_G2])
        u = 1.0 - v - w
        inside = (u >= 0) & (v >= 0) & (w >= 0) & ~self.degenerate[face_ids]
        # Inside: orthogonal projection onto the plane.
        Nrm = T[_N]
        q = P - _dot(ap, Nrm) * Nrm
        bary = np.stack((u, v, w))
        out = np.flatnonzero(~inside)
        if out.size:
            q_o, bary_o = _closest_on_edges(P[:, out], T[_A][:, out], T[_B][:, out], T[_C][:, out])
            q[:, out] = q_o
            bary[:, out] = bary_o
        diff = P - q
        d_out[:] = np.sqrt(_dot(diff, diff))
        q_out[:] = q
        bary_out[:] = bary
        H = T[_H]
        # Distance from q to edge j (opposite vertex (j+2) % 3) is that vertex's weight
        # times its altitude; exactly 0 on the boundary.
        edge_out[0] = bary[2] * H[2]
        edge_out[1] = bary[0] * H[0]
        edge_out[2] = bary[1] * H[1]


def _closest_on_edges(
    P: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest point over the three edges; (3, M) inputs, returns q (3, M), bary (3, M)."""
    m = P.shape[1]
    best_d2 = np.full(m, np.inf)
    best_q = np.empty((3, m))
    best_t = np.zeros(m)
    best_edge = np.zeros(m, dtype=np.int64)
    for k, (S, E) in enumerate(((A, B), (B, C), (C, A))):
        se = E - S
        len2 = _dot(se, se)
        t = np.divide(_dot(P - S, se), len2, out=np.zeros(m), where=len2 > 0)
        np.clip(t, 0.0, 1.0, out=t)
        q = S + t * se
        diff = P - q
        d2 = _dot(diff, diff)
        better = d2 < best_d2
        best_d2 = np.where(better, d2, best_d2)
        best_q = np.where(better, q, best_q)
        best_t = np.where(better, t, best_t)
        best_edge = np.where(better, k, best_edge)
    bary = np.zeros((3, m))
    cols = np.arange(m)
    bary[best_edge, cols] = 1.0 - best_t
    bary[(best_edge + 1) % 3, cols] = best_t
    return best_q, bary
