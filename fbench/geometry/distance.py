"""Unsigned point-to-surface distance: open3d candidate search, float64 refinement.

``point_mesh_distance(points, vertices, faces)`` returns, for every query point, the
distance to the closest point of a triangle mesh, that closest point and the id of the
triangle it lies on.

How it stays accurate although open3d works in float32:

1. Coordinates are shifted to the mesh's bounding-box centre and scaled by a power of
   two (exact in float64) before the float32 cast, so float32 resolution is relative to
   the mesh size, not to where the mesh sits (scans in mm are often far from 0).
2. open3d's ``RaycastingScene.compute_closest_points`` proposes a triangle ``c``.
3. The closest point on ``c`` is recomputed exactly in float64.
4. float32 can only choose a wrong triangle ``t`` when ``d_t`` and ``d_c`` are within
   open3d's rounding error ``delta`` (a per-point bound, 1e-6 x mesh size x (1 +
   distance of the query from the mesh centre in mesh sizes)). On a
   locally smooth surface the competing closest point is then within
   ``rho = 4 sqrt(delta (d + delta))`` of ours, so when our closest point is within
   ``rho`` of an edge (or vertex) of ``c``, the triangles across that edge (around that
   vertex) are evaluated exactly too, repeating while the answer moves.
5. Where connectivity cannot vouch for the neighbourhood, a grid over the triangles
   finds candidates by position: near boundary / non-manifold edges (split UV seams,
   T-junctions, touching parts) and for points within ``64 delta`` of the surface,
   where the whole ball of radius ``d`` is searched, so on-surface points are exact
   whatever the mesh.
6. Degenerate triangles (zero area, repeated vertex) are left out of the open3d scene
   (its float32 closest-point routine mishandles them) and, unless their edges are
   edges of valid triangles (then those triangles already cover them), evaluated
   exactly against every point.

What is not guarded: two parts of the mesh that do not touch near the answer and are
at distances within ``delta`` of each other, i.e. a point within ``delta`` of the
medial axis (or of the bisector of two intersecting triangles) and farther than
``64 delta`` from the surface. The distance returned there is still the exact
distance to a real triangle, above the minimum by at most twice open3d's actual
float32 error (measured ~1e-7 of the mesh size; ``delta`` bounds it with a 15x margin).

open3d is imported lazily, so ``import fbench.geometry`` works without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from fbench.geometry._grid import FaceGrid
from fbench.geometry._triangle import TrianglePack

# Bound on open3d's float32 distance error in the normalised frame (mesh inside the unit
# cube), per unit of |query| + 1. Measured errors stay below 7e-8 (about one float32
# ulp) on well-shaped meshes; the 15x margin covers thinner triangles.
_O3D_REL_ERROR = 1e-6
# Stop re-checking neighbours after this many rounds; each round only revisits points
# whose answer just moved, and on real meshes the loop ends after one or two.
_MAX_ROUNDS = 8
# Points closer to the surface than this many delta get an exhaustive search of the
# ball around them: there float32 could pick any triangle through the same spot
# (intersections, T-junctions), and the relative error of a wrong pick is unbounded.
_ON_SURFACE_DELTAS = 64.0
# Pairs evaluated at once when brute-forcing exposed degenerate triangles (memory cap).
_CHUNK_PAIRS = 1 << 21

# Queries answered per open3d call.
_QUERY_BLOCK = 1 << 20
# Below this many queries sorting them costs more than it saves.
_SORT_MIN_POINTS = 4096
# Cells per axis of the grid whose cell index orders the queries (12-bit key: numpy's
# stable argsort is a radix sort for 16-bit keys).
_SORT_CELLS = 16

_open3d: ModuleType | None = None


def _coherent_order(local: np.ndarray) -> np.ndarray:
    """Permutation grouping points by coarse grid cell (cheap spatial coherence).

    ``local`` is in the normalised frame where the mesh spans [-1, 1]^3; points outside
    fall into the border cells, which only costs coherence, not correctness.
    """
    half = _SORT_CELLS / 2
    cell = np.clip((local * half + half).astype(np.int16), 0, _SORT_CELLS - 1).astype(np.uint16)
    key = (cell[:, 0] * _SORT_CELLS + cell[:, 1]) * _SORT_CELLS + cell[:, 2]
    return np.argsort(key, kind="stable")


def _import_open3d() -> ModuleType:
    """Import open3d on first use, with an actionable message when it cannot load."""
    global _open3d
    if _open3d is None:
        try:
            import open3d  # noqa: PLC0415 - deliberately lazy (heavy, needs libusb)
        except (ImportError, OSError) as exc:
            raise ImportError(
                "fbench.geometry.point_mesh_distance needs open3d (`pip install open3d`). "
                "If open3d is installed but fails to load with a libusb error, install the "
                "system library: `apt-get install libusb-1.0-0` (Debian/Ubuntu). "
                f"Original error: {exc}"
            ) from exc
        _open3d = open3d
    return _open3d


class PointMeshDistance(NamedTuple):
    """Result of :func:`point_mesh_distance`; unpacks as ``(distances, closest_points, face_ids)``."""

    distances: np.ndarray  # (N,) float64, unsigned
    closest_points: np.ndarray  # (N, 3) float64, on the surface
    face_ids: np.ndarray  # (N,) int64, triangle containing each closest point


@dataclass(frozen=True)
class SurfaceQuery:
    """Full answer of :meth:`ClosestPointIndex.query`, with barycentric coordinates.

    ``closest_points[i] == barycentric[i] @ vertices[faces[face_ids[i]]]`` up to
    rounding, which lets fitting code express closest points as a differentiable
    function of the mesh vertices.
    """

    distances: np.ndarray  # (N,) float64
    closest_points: np.ndarray  # (N, 3) float64
    face_ids: np.ndarray  # (N,) int64
    barycentric: np.ndarray  # (N, 3) float64, weights of the face's 3 vertices

    def as_tuple(self) -> PointMeshDistance:
        return PointMeshDistance(self.distances, self.closest_points, self.face_ids)


def _as_points(points: Any, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return p


def _as_faces(faces: Any, num_vertices: int) -> np.ndarray:
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
    if f.shape[0] == 0:
        raise ValueError("the mesh has no faces: there is no surface to measure against")
    if not np.issubdtype(f.dtype, np.integer):
        if not np.array_equal(f, np.round(f)):
            raise ValueError("faces must hold integer vertex indices")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= num_vertices:
        raise ValueError(
            f"face indices out of range: must lie in [0, {num_vertices}), got [{f.min()}, {f.max()}]"
        )
    return f


class MeshTopology:
    """Face connectivity used to find the neighbours of a triangle.

    Depends only on ``faces``, so meshes that share a topology (FLAME fits of many
    frames, MultiFace tracked meshes) can share one instance.
    """

    def __init__(self, faces: Any, num_vertices: int) -> None:
        f = _as_faces(faces, num_vertices)
        self.faces = f
        self.num_vertices = int(num_vertices)
        nf = f.shape[0]
        # Vertex -> incident faces, as CSR.
        flat = f.ravel()
        order = np.argsort(flat)
        self.ring_faces: np.ndarray = order // 3
        counts = np.bincount(flat, minlength=num_vertices)
        self.ring_ptr: np.ndarray = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

        # Face across each local edge j = (j, j+1): >= 0 that face, -1 boundary,
        # -2 non-manifold (more than two faces; neighbours then come from vertex rings).
        lo = np.minimum(f, np.roll(f, -1, axis=1)).ravel()
        hi = np.maximum(f, np.roll(f, -1, axis=1)).ravel()
        key = lo * np.int64(num_vertices) + hi
        order = np.argsort(key)
        sk = key[order]
        start = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
        size = np.diff(np.concatenate((start, [sk.size])))
        adj = np.full(3 * nf, -1, dtype=np.int64)
        pairs = start[size == 2]
        first, second = order[pairs], order[pairs + 1]
        adj[first] = second // 3
        adj[second] = first // 3
        many = np.repeat(size > 2, size)
        adj[order[many]] = -2
        self.edge_adjacency: np.ndarray = adj.reshape(nf, 3)
        # Vertices on a boundary or non-manifold edge: their face ring is not a closed fan,
        # so the ring may miss surface that touches them without sharing vertices.
        open_f, open_j = np.nonzero(self.edge_adjacency < 0)
        self.boundary_vertex: np.ndarray = np.zeros(num_vertices, dtype=bool)
        self.boundary_vertex[f[open_f, open_j]] = True
        self.boundary_vertex[f[open_f, (open_j + 1) % 3]] = True

    def matches(self, faces: Any) -> bool:
        f = np.asarray(faces)
        return f.shape == self.faces.shape and np.array_equal(f, self.faces)


def _expand_rings(
    topo: MeshTopology, point_idx: np.ndarray, vertex_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(point, face) pairs for every face around each (point, vertex) pair."""
    starts = topo.ring_ptr[vertex_idx]
    lens = topo.ring_ptr[vertex_idx + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    offsets = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    faces = topo.ring_faces[np.repeat(starts, lens) + offsets]
    return np.repeat(point_idx, lens), faces


class ClosestPointIndex:
    """A triangle mesh prepared for repeated closest-point queries.

    Builds the open3d scene once; use it when querying the same mesh many times (ICP,
    per-frame evaluation against one scan).
    """

    def __init__(
        self, vertices: Any, faces: Any, *, topology: MeshTopology | None = None
    ) -> None:
        v = _as_points(vertices, "vertices")
        if topology is not None and not topology.matches(faces):
            raise ValueError("topology was built for different faces")
        topo = topology if topology is not None else MeshTopology(faces, len(v))
        if topo.num_vertices != len(v):
            raise ValueError(
                f"topology has {topo.num_vertices} vertices, vertices has {len(v)}"
            )
        self.vertices = v
        self.faces = topo.faces
        self.topology = topo
        self._pack = TrianglePack(v, self.faces)

        referenced = np.zeros(len(v), dtype=bool)
        referenced[self.faces.ravel()] = True
        used = v[referenced]
        lo, hi = used.min(axis=0), used.max(axis=0)
        self._center = (lo + hi) / 2.0
        half = float((hi - lo).max()) / 2.0
        # Power of two so that the scaling itself is exact in float64.
        self._scale = 2.0 ** math.ceil(math.log2(half)) if half > 0 else 1.0

        degenerate = self._pack.degenerate
        self._scene_faces = np.flatnonzero(~degenerate)
        self._exposed_degenerate = self._uncovered_degenerate(degenerate)
        self._grid: FaceGrid | None = None
        self._scene: Any = None
        if self._scene_faces.size:
            o3d = _import_open3d()
            scene = o3d.t.geometry.RaycastingScene()
            local = ((v - self._center) / self._scale).astype(np.float32)
            tris = self.faces[self._scene_faces].astype(np.uint32)
            scene.add_triangles(o3d.core.Tensor(local), o3d.core.Tensor(tris))
            self._scene = scene

    def _uncovered_degenerate(self, degenerate: np.ndarray) -> np.ndarray:
        """Degenerate faces whose points are not all on edges of valid faces."""
        deg = np.flatnonzero(degenerate)
        if deg.size == 0:
            return deg
        faces = self.faces
        good = faces[~degenerate]
        nv = np.int64(self.topology.num_vertices)
        good_edges = np.unique(
            np.concatenate(
                [np.minimum(good[:, i], good[:, j]) * nv + np.maximum(good[:, i], good[:, j])
                 for i, j in ((0, 1), (1, 2), (2, 0))]
            )
        )
        good_vertices = np.unique(good)
        covered = np.ones(deg.size, dtype=bool)
        f = faces[deg]
        for i, j in ((0, 1), (1, 2), (2, 0)):
            a, b = f[:, i], f[:, j]
            key = np.minimum(a, b) * nv + np.maximum(a, b)
            # A zero-length edge (repeated index) only needs its vertex to be covered.
            edge_ok = np.where(a == b, np.isin(a, good_vertices), np.isin(key, good_edges))
            covered &= edge_ok
        return deg[~covered]

    def query(self, points: Any) -> SurfaceQuery:
        """Closest surface points of ``points`` (N, 3)."""
        p = _as_points(points)
        if p.shape[0] <= _QUERY_BLOCK:
            return self._query(p)
        # Blocks bound open3d's per-query outputs (~40 bytes a point) for huge scans.
        parts = [self._query(p[s : s + _QUERY_BLOCK]) for s in range(0, p.shape[0], _QUERY_BLOCK)]
        return SurfaceQuery(*(np.concatenate([getattr(r, k) for r in parts]) for k in
                              ("distances", "closest_points", "face_ids", "barycentric")))

    def _query(self, p: np.ndarray) -> SurfaceQuery:
        n = p.shape[0]
        d = np.full(n, np.inf)
        q = np.zeros((n, 3))
        fid = np.full(n, -1, dtype=np.int64)
        bary = np.zeros((n, 3))
        if n == 0:
            return SurfaceQuery(d, q, fid, bary)

        if self._scene is not None:
            o3d = _import_open3d()
            local = (p - self._center) / self._scale
            local32 = local.astype(np.float32)
            # Spatially coherent query order makes open3d's BVH traversal ~20% faster.
            order = _coherent_order(local32) if n >= _SORT_MIN_POINTS else None
            if order is not None:
                local32 = local32[order]
            ans = self._scene.compute_closest_points(o3d.core.Tensor(local32))
            prim = ans["primitive_ids"].numpy().astype(np.int64)
            if order is not None:
                unsorted = np.empty_like(prim)
                unsorted[order] = prim
                prim = unsorted
            fid = self._scene_faces[prim]
            q, d, bary, edge_dist = self._pack.closest(p, fid)
            # open3d's rounding error for each point, in world units.
            norm = np.sqrt(np.einsum("ij,ij->i", local, local))
            delta = _O3D_REL_ERROR * self._scale * (1.0 + norm)
            self._refine(p, q, d, fid, bary, edge_dist, delta)

        if self._exposed_degenerate.size:
            self._brute_force(p, q, d, fid, bary, self._exposed_degenerate)
        return SurfaceQuery(d, q, fid, bary)

    def _refine(
        self,
        p: np.ndarray,
        q: np.ndarray,
        d: np.ndarray,
        fid: np.ndarray,
        bary: np.ndarray,
        edge_dist: np.ndarray,
        delta: np.ndarray,
    ) -> None:
        """Evaluate the triangles float32 could have confused with the chosen one (in place)."""
        # 2x safety on the radius: curvature towards the point widens the near-tie cap.
        rho = 4.0 * np.sqrt(delta * (d + delta))
        near = edge_dist <= rho[:, None]
        flagged = near[:, 0] | near[:, 1] | near[:, 2] | (d <= _ON_SURFACE_DELTAS * delta)
        active = np.flatnonzero(flagged)
        for _ in range(_MAX_ROUNDS):
            if active.size == 0:
                return
            pt_t, cf_t = self._topology_candidates(active, near[active], fid[active])
            pt_g, cf_g = self._geometric_candidates(active, p, q, d, fid, near, rho, delta)
            pt = np.concatenate((pt_t, pt_g))
            cf = np.concatenate((cf_t, cf_g))
            if pt.size == 0:
                return
            cq, cd, cb, ce = self._pack.closest(p[pt], cf)
            # Best candidate per point: sort by (point, distance), keep the first.
            order = np.lexsort((cd, pt))
            first = order[np.concatenate(([True], pt[order][1:] != pt[order][:-1]))]
            better = first[cd[first] < d[pt[first]]]
            moved = pt[better]
            d[moved] = cd[better]
            q[moved] = cq[better]
            fid[moved] = cf[better]
            bary[moved] = cb[better]
            # The answer moved to a new face: its own edges may now be near.
            rho[moved] = 4.0 * np.sqrt(delta[moved] * (d[moved] + delta[moved]))
            near[moved] = ce[better] <= rho[moved][:, None]
            again = near[moved].any(axis=1) | (d[moved] <= _ON_SURFACE_DELTAS * delta[moved])
            active = moved[again]

    def _topology_candidates(
        self, active: np.ndarray, near: np.ndarray, faces: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Faces across near edges and around near vertices of each active point's face."""
        topo = self.topology
        pts: list[np.ndarray] = []
        cands: list[np.ndarray] = []
        for j in range(3):
            sel = np.flatnonzero(near[:, j])
            across = topo.edge_adjacency[faces[sel], j]
            ok = across >= 0
            pts.append(active[sel[ok]])
            cands.append(across[ok])
            # Non-manifold edge: every face around both of its vertices.
            nm = sel[across == -2]
            for k in (j, (j + 1) % 3):
                rp, rf = _expand_rings(topo, active[nm], topo.faces[faces[nm], k])
                pts.append(rp)
                cands.append(rf)
        # Near a vertex (both of its edges near): every face around it.
        for k in range(3):
            sel = np.flatnonzero(near[:, k] & near[:, (k + 2) % 3])
            rp, rf = _expand_rings(topo, active[sel], topo.faces[faces[sel], k])
            pts.append(rp)
            cands.append(rf)
        return np.concatenate(pts), np.concatenate(cands)

    def _geometric_candidates(
        self,
        active: np.ndarray,
        p: np.ndarray,
        q: np.ndarray,
        d: np.ndarray,
        fid: np.ndarray,
        near: np.ndarray,
        rho: np.ndarray,
        delta: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Faces near points the topology cannot vouch for, found by position."""
        topo = self.topology
        nr = near[active]
        f = fid[active]
        # Near an open (boundary / non-manifold) edge, or near a vertex on one: other
        # surface may touch there without sharing vertices (T-junctions, seams).
        open_edge = (nr & (topo.edge_adjacency[f] < 0)).any(axis=1)
        near_vertex = nr & np.roll(nr, 1, axis=1)  # vertex k: edges k and k-1 near
        open_vertex = (near_vertex & topo.boundary_vertex[topo.faces[f]]).any(axis=1)
        # On the surface: search the whole ball of radius d around the point (complete).
        on_surface = d[active] <= _ON_SURFACE_DELTAS * delta[active]
        by_point = active[on_surface]
        by_foot = active[~on_surface & (open_edge | open_vertex)]
        if by_point.size + by_foot.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if self._grid is None:
            self._grid = FaceGrid(self.vertices, self.faces)
        owner = np.concatenate((by_point, by_foot))
        centers = np.concatenate((p[by_point], q[by_foot]))
        radii = np.concatenate((d[by_point], rho[by_foot]))
        ball, faces = self._grid.candidates(centers, radii)
        return owner[ball], faces

    def _brute_force(
        self,
        p: np.ndarray,
        q: np.ndarray,
        d: np.ndarray,
        fid: np.ndarray,
        bary: np.ndarray,
        faces: np.ndarray,
    ) -> None:
        """Exact check of every point against ``faces`` (in place)."""
        n = p.shape[0]
        step = max(1, _CHUNK_PAIRS // max(1, faces.size))
        for s in range(0, n, step):
            idx = np.arange(s, min(n, s + step))
            pt = np.repeat(idx, faces.size)
            cf = np.tile(faces, idx.size)
            cq, cd, cb, _ = self._pack.closest(p[pt], cf)
            cd2 = cd.reshape(idx.size, faces.size)
            best = np.argmin(cd2, axis=1)
            flat = np.arange(idx.size) * faces.size + best
            better = cd[flat] < d[idx]
            rows, src = idx[better], flat[better]
            d[rows] = cd[src]
            q[rows] = cq[src]
            fid[rows] = cf[src]
            bary[rows] = cb[src]


def point_mesh_distance(points: Any, vertices: Any, faces: Any) -> PointMeshDistance:
    """Unsigned distance from each point to a triangle mesh.

    Args:
        points: (N, 3) query points.
        vertices: (V, 3) mesh vertices, same units as ``points``.
        faces: (F, 3) vertex indices.

    Returns:
        ``(distances (N,) float64, closest_points (N, 3) float64, face_ids (N,) int64)``.
        Distances are float64-exact distances to the returned triangle (see the module
        docstring for when float32 candidate selection is double-checked).
    """
    return ClosestPointIndex(vertices, faces).query(points).as_tuple()


def point_mesh_distance_batched(
    items: Sequence[tuple[Any, Any, Any]],
) -> list[PointMeshDistance]:
    """:func:`point_mesh_distance` over a list of ``(points, vertices, faces)``.

    Consecutive items with identical ``faces`` share one topology.
    """
    out: list[PointMeshDistance] = []
    topo: MeshTopology | None = None
    for points, vertices, faces in items:
        v = np.asarray(vertices)
        if topo is None or topo.num_vertices != len(v) or not topo.matches(faces):
            topo = MeshTopology(faces, len(v))
        out.append(ClosestPointIndex(v, faces, topology=topo).query(points).as_tuple())
    return out


def point_mesh_distance_stacked(
    points: Any, vertices: Any, faces: Any
) -> PointMeshDistance:
    """Batched distance for meshes sharing one topology.

    Args:
        points: (B, N, 3) query points, one set per mesh.
        vertices: (B, V, 3) vertices of B meshes with the same ``faces`` (F, 3).

    Returns:
        ``PointMeshDistance`` with arrays of shape (B, N), (B, N, 3) and (B, N).
    """
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"points must have shape (B, N, 3), got {p.shape}")
    if v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {v.shape}")
    if p.shape[0] != v.shape[0]:
        raise ValueError(f"batch sizes differ: {p.shape[0]} point sets, {v.shape[0]} meshes")
    topo = MeshTopology(faces, v.shape[1])
    results = [ClosestPointIndex(v[b], faces, topology=topo).query(p[b]) for b in range(v.shape[0])]
    b, n = p.shape[:2]
    return PointMeshDistance(
        np.stack([r.distances for r in results]) if results else np.zeros((0, n)),
        np.stack([r.closest_points for r in results]) if results else np.zeros((0, n, 3)),
        np.stack([r.face_ids for r in results]) if results else np.zeros((0, n), np.int64),
    )
