"""Remesh a surface in a topology of its own, with every new vertex embedded in a source triangle.

Synthetic scans and tracked meshes (MultiFace, BP4D, FaMoS) must describe the FLAME
surface without sharing FLAME's vertices or connectivity, or scan-to-mesh evaluation
would be trivial. :func:`remesh` builds such a mesh once, on a rest shape, and returns a
:class:`SurfaceRemesh`: the new faces plus, for each new vertex, the source triangle it
lies on and its barycentric coordinates there. :meth:`SurfaceRemesh.points` then places
the new vertices on *any* deformation of the source mesh (every FLAME frame of a
sequence), exactly on its surface: a convex combination of a triangle's corners lies on
that triangle.

Method (an approximated centroidal Voronoi remesh, after Valette & Chassery's ACVD):

1. The kept part of the source is refined by midpoint subdivision until its edges are
   about `refine` times shorter than the target spacing; every fine vertex keeps its exact
   source triangle and barycentrics (midpoints of dyadic fractions are exact in binary).
2. `target_vertices` seeds are drawn among the fine vertices (area-weighted, from `seed`)
   and spread by Lloyd iterations of a geodesic Voronoi partition (multi-source Dijkstra
   on the fine edge graph, so regions never leak across lips or the ear's back): each
   seed moves to the fine vertex of its region nearest the region's area centroid. Seeds
   avoid the source's own vertices, so no new vertex is a source vertex.
3. The new mesh is the dual of the final partition: a fine triangle whose corners lie in
   three different regions yields the triangle of those three seeds, oriented as the fine
   triangle. Triangles on non-manifold edges or with conflicting orientation (rare: four
   regions meeting at a point) are dropped, as are seeds left without a triangle.

Vertex count: about `target_vertices` (exact unless cleanup drops seeds). Vertices lie
exactly on the source surface; the new triangles are chords of it, so the source surface
is within a fraction of a millimetre of them at head-scan densities (a few mm spacing).
Boundaries (the neck, holes of dropped parts) come out about half a spacing inside the
source's boundary. Deterministic for the same inputs and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor


@dataclass(frozen=True)
class SurfaceRemesh:
    """A mesh whose vertices are embedded in the triangles of a source mesh.

    Attributes:
        faces: (M, 3) int64 triangles of the new mesh, consistently oriented as the source.
        source_faces: (N, 3) int64 source vertex ids of the triangle each new vertex lies on.
        source_face_ids: (N,) int64 index of that triangle in the source `faces` array.
        barycentric: (N, 3) float64 weights of those three source vertices (>= 0, sum 1).
        stats: what the cleanup did (dropped triangles / seeds) and the fine mesh size.
    """

    faces: np.ndarray
    source_faces: np.ndarray
    source_face_ids: np.ndarray
    barycentric: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.barycentric.shape[0])

    def points(self, vertices: Any) -> Any:
        """New vertex positions on source vertices (..., V, 3) -> (..., N, 3); numpy or torch in, same out."""
        if isinstance(vertices, Tensor):
            corners = vertices[..., torch.as_tensor(self.source_faces, device=vertices.device), :]  # (..., N, 3, 3)
            w = torch.as_tensor(self.barycentric, dtype=vertices.dtype, device=vertices.device)
            return (corners * w[..., None]).sum(-2)
        v = np.asarray(vertices, dtype=np.float64)
        return np.einsum("nk,...nkc->...nc", self.barycentric, v[..., self.source_faces, :])


def _triangle_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def _subdivide(v: np.ndarray, f: np.ndarray, corner_bary: np.ndarray, src: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Midpoint (1-to-4) subdivision carrying each fine corner's barycentrics in its source triangle."""
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    ab, bc, ca = (len(v) + inverse.reshape(3, -1))
    v = np.concatenate([v, 0.5 * (v[unique[:, 0]] + v[unique[:, 1]])])
    a, b, c = f.T
    f = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    ba, bb, bcc = corner_bary[:, 0], corner_bary[:, 1], corner_bary[:, 2]
    mab, mbc, mca = 0.5 * (ba + bb), 0.5 * (bb + bcc), 0.5 * (bcc + ba)
    corner_bary = np.concatenate([np.stack(t, 1) for t in ((ba, mab, mca), (bb, mbc, mab), (bcc, mca, mbc),
                                                              (mab, mbc, mca))])
    return v, f, corner_bary, np.tile(src, 4)


def _regions(graph: Any, seeds: np.ndarray, n_fine: int) -> np.ndarray:
    """Geodesic Voronoi label (index into `seeds`) of every fine vertex; -1 where no seed reaches."""
    _, _, sources = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    position = np.full(n_fine, -1, dtype=np.int64)
    position[seeds] = np.arange(len(seeds))
    labels = np.full(n_fine, -1, dtype=np.int64)
    reached = sources >= 0
    labels[reached] = position[sources[reached]]
    return labels


def remesh(vertices: Any, faces: Any, target_vertices: int, *, face_mask: Any = None, seed: int = 0,
           lloyd_iterations: int = 5, refine: float = 2.5) -> SurfaceRemesh:
    """Remesh the surface of (`vertices`, `faces`) with about `target_vertices` near-uniform vertices.

    Args:
        vertices: (V, 3) rest-shape positions the partition is computed on (any units).
        faces: (F, 3) triangles.
        target_vertices: vertices wanted in the new mesh (at least 4).
        face_mask: optional (F,) bool, the source triangles to remesh (e.g. FLAME without eyeballs).
        seed: seeds the initial sampling; the result is deterministic for a seed.
        lloyd_iterations: relaxation rounds; 5 gives well-shaped triangles (min angle ~15 deg at p1).
        refine: fine-mesh edges are at most 1/`refine` of the target spacing (accuracy vs time).

    Raises:
        ValueError: bad shapes, an empty selection, or a target the fine mesh cannot support.
    """
    v_src = np.asarray(vertices, dtype=np.float64)
    f_src = np.asarray(faces, dtype=np.int64)
    if v_src.ndim != 2 or v_src.shape[1] != 3 or f_src.ndim != 2 or f_src.shape[1] != 3:
        raise ValueError(f"need (V,3) vertices and (F,3) faces, got {v_src.shape} and {f_src.shape}")
    if target_vertices < 4:
        raise ValueError(f"target_vertices must be at least 4, got {target_vertices}")
    keep = np.ones(len(f_src), bool) if face_mask is None else np.asarray(face_mask, dtype=bool)
    if keep.shape != (len(f_src),):
        raise ValueError(f"face_mask must have shape ({len(f_src)},), got {keep.shape}")
    face_ids = np.flatnonzero(keep)
    if face_ids.size == 0:
        raise ValueError("face_mask selects no triangles")

    used, f = np.unique(f_src[face_ids], return_inverse=True)
    f = f.reshape(-1, 3)
    v = v_src[used]
    n_original = len(v)  # subdivision appends midpoints, so fine ids below this are source vertices
    corner_bary = np.broadcast_to(np.eye(3), (len(f), 3, 3)).copy()
    src = face_ids.copy()
    area = _triangle_areas(v, f).sum()
    if not area > 0:
        raise ValueError("the selected surface has zero area")
    spacing = np.sqrt(2.0 * area / (np.sqrt(3.0) * target_vertices))  # edge of an equilateral tiling
    while np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=1).mean() > spacing / refine:
        v, f, corner_bary, src = _subdivide(v, f, corner_bary, src)
    if target_vertices > (len(v) - n_original) // 2:
        raise ValueError(f"target_vertices={target_vertices} is too dense for this surface")

    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    lengths = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(len(v), len(v))).tocsr()
    vertex_area = np.bincount(f.ravel(), np.repeat(_triangle_areas(v, f) / 3.0, 3), minlength=len(v))

    # Seeds are never source vertices (a new mesh sharing vertices with its source would make
    # vertex-based comparisons look better than they are).
    candidate_area = vertex_area.copy()
    candidate_area[:n_original] = 0.0
    rng = np.random.default_rng(seed)
    seeds = np.sort(rng.choice(len(v), size=target_vertices, replace=False, p=candidate_area / candidate_area.sum()))
    for _ in range(lloyd_iterations):
        labels = _regions(graph, seeds, len(v))
        ok = labels >= 0
        weight = np.bincount(labels[ok], vertex_area[ok], minlength=len(seeds))
        centroid = np.stack([np.bincount(labels[ok], vertex_area[ok] * v[ok, k], minlength=len(seeds))
                             for k in range(3)], 1) / np.maximum(weight, 1e-300)[:, None]
        # The member of each region nearest its centroid (ties to the lower index: deterministic).
        members = np.flatnonzero(ok)
        dist = np.linalg.norm(v[members] - centroid[labels[members]], axis=1)
        dist[members < n_original] = np.inf  # a source vertex only when the region has nothing else
        order = members[np.lexsort((members, dist, labels[members]))]
        first = np.ones(len(order), bool)
        first[1:] = labels[order[1:]] != labels[order[:-1]]
        seeds = np.sort(order[first])

    labels = _regions(graph, seeds, len(v))
    tri = labels[f]
    tri = tri[(tri >= 0).all(1) & (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])]
    # Canonical rotation (smallest id first, cyclic order kept) so duplicates collapse.
    start = np.argmin(tri, axis=1)
    tri = np.stack([tri[np.arange(len(tri)), (start + k) % 3] for k in range(3)], 1)
    tri = np.unique(tri, axis=0)
    n_dual = len(tri)
    tri = _drop_non_manifold(tri)

    # Seeds without a triangle are dropped; ids are renumbered in seed order.
    kept_seeds = np.unique(tri)
    renumber = np.full(len(seeds), -1, dtype=np.int64)
    renumber[kept_seeds] = np.arange(len(kept_seeds))
    new_faces = renumber[tri]
    fine_vertices = seeds[kept_seeds]

    # Each fine vertex's embedding: its corner in the first fine triangle using it.
    _, first_use = np.unique(f.ravel(), return_index=True)
    where = first_use[fine_vertices]
    tri_id, corner = where // 3, where % 3
    bary_local = corner_bary[tri_id, corner]  # weights of the *local* corners of the source face
    source_face_ids = src[tri_id]
    stats = {"fine_vertices": int(len(v)), "dual_triangles": n_dual,
             "dropped_triangles": int(n_dual - len(tri)), "dropped_seeds": int(len(seeds) - len(kept_seeds))}
    return SurfaceRemesh(faces=new_faces.astype(np.int64), source_faces=f_src[source_face_ids],
                         source_face_ids=source_face_ids.astype(np.int64), barycentric=bary_local, stats=stats)


def _drop_non_manifold(tri: np.ndarray) -> np.ndarray:
    """Remove triangles on edges used more than twice or twice in the same direction, until none remain."""
    while len(tri):
        directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        undirected = np.sort(directed, axis=1)
        _, und_inv, und_count = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
        _, dir_inv, dir_count = np.unique(directed, axis=0, return_inverse=True, return_counts=True)
        bad_edge = (und_count[und_inv.ravel()] > 2) | (dir_count[dir_inv.ravel()] > 1)
        bad = bad_edge.reshape(3, -1).any(axis=0)
        if not bad.any():
            break
        tri = tri[~bad]
    return tri
