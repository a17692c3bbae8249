"""Point-to-surface distance: analytic cases, float32 traps, brute-force agreement."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fbench.geometry import (
    ClosestPointIndex,
    point_mesh_distance,
    point_mesh_distance_batched,
    point_mesh_distance_stacked,
)
from fbench.geometry import distance as distance_module

# ----------------------------------------------------------------- reference (brute force)
# Written independently of fbench.geometry._triangle: for each triangle, enumerate the
# KKT candidates of min |a + s e1 + t e2 - p|^2 over s, t >= 0, s + t <= 1 (interior
# stationary point via a 2x2 solve, the minimiser on each edge, the vertices) and keep
# the best feasible one.


def _ref_point_triangle(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    cands = [a, b, c]
    for s0, s1 in ((a, b), (b, c), (c, a)):
        seg = s1 - s0
        L = float(seg @ seg)
        if L > 0:
            t = min(1.0, max(0.0, float((p - s0) @ seg) / L))
            cands.append(s0 + t * seg)
    e1, e2 = b - a, c - a
    gram = np.array([[e1 @ e1, e1 @ e2], [e1 @ e2, e2 @ e2]])
    if abs(np.linalg.det(gram)) > 1e-14 * max(1.0, float(np.abs(gram).max())) ** 2:
        s, t = np.linalg.solve(gram, np.array([(p - a) @ e1, (p - a) @ e2]))
        if s >= 0 and t >= 0 and s + t <= 1:
            cands.append(a + s * e1 + t * e2)
    cands_arr = np.array(cands)
    dist = np.sqrt(((cands_arr - p) ** 2).sum(axis=1))
    k = int(np.argmin(dist))
    return float(dist[k]), cands_arr[k]


def _ref_point_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) distances and (N, F) per-face distances."""
    per_face = np.array(
        [[_ref_point_triangle(p, *vertices[f])[0] for f in faces] for p in points]
    ).reshape(len(points), len(faces))
    return per_face.min(axis=1), per_face


def _grid_mesh(n: int, size: float, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat n x n quad grid in z = offset_z, two triangles per quad, shared vertices."""
    xs = np.linspace(0.0, size, n + 1)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack((gx.ravel(), gy.ravel(), np.zeros(gx.size)), axis=1) + offset
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate((np.stack((a, b, c), 1), np.stack((a, c, d), 1)))
    return v, f


TRI_V = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
TRI_F = np.array([[0, 1, 2]])


# ------------------------------------------------------------------------ analytic cases


@pytest.mark.parametrize(
    ("point", "closest"),
    [
        ((0.2, 0.3, 2.0), (0.2, 0.3, 0.0)),  # above the interior
        ((0.2, 0.3, -0.7), (0.2, 0.3, 0.0)),  # below (unsigned)
        ((0.5, -0.5, 0.5), (0.5, 0.0, 0.0)),  # beside edge y = 0
        ((1.0, 1.0, 0.0), (0.5, 0.5, 0.0)),  # beside the hypotenuse, in plane
        ((-1.0, -2.0, 2.0), (0.0, 0.0, 0.0)),  # vertex region of (0, 0, 0)
        ((3.0, -0.5, 0.0), (1.0, 0.0, 0.0)),  # vertex region of (1, 0, 0)
        ((0.25, 0.25, 0.0), (0.25, 0.25, 0.0)),  # on the surface
        ((0.0, 0.5, 0.0), (0.0, 0.5, 0.0)),  # on an edge
    ],
)
def test_single_triangle_analytic(point: tuple[float, ...], closest: tuple[float, ...]) -> None:
    p = np.array([point])
    d, q, f = point_mesh_distance(p, TRI_V, TRI_F)
    expected = np.linalg.norm(np.array(point) - np.array(closest))
    assert d.dtype == np.float64 and q.dtype == np.float64 and f.dtype == np.int64
    assert d.shape == (1,) and q.shape == (1, 3) and f.shape == (1,)
    np.testing.assert_allclose(d[0], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(q[0], closest, rtol=0, atol=1e-15)
    assert f[0] == 0


def test_far_from_origin_small_distances_are_exact() -> None:
    # A scan in mm sits hundreds of mm from the origin: float32 there resolves ~6e-5 mm,
    # so every distance below would be wrong by orders of magnitude without the float64
    # refinement.
    offset = np.array([512.3, -301.7, 1204.9])
    v = TRI_V * 80.0 + offset
    heights = np.array([1e-3, 1e-5, 1e-7, 0.0])
    p = np.array([[20.0, 30.0, 0.0]]) + offset + heights[:, None] * np.array([0, 0, 1.0])
    d, q, f = point_mesh_distance(p, v, TRI_F)
    # The true heights are those of the float64 coordinates (Sterbenz: exact difference).
    true_h = p[:, 2] - offset[2]
    np.testing.assert_allclose(d, true_h, rtol=1e-12, atol=0)
    assert d[3] == 0.0
    np.testing.assert_array_equal(q[:, :2], p[:, :2])
    np.testing.assert_array_equal(q[:, 2], offset[2])
    assert np.all(f == 0)
    # The test means something: in float32 the two smallest heights vanish entirely.
    assert np.all(true_h[:3] > 0)
    assert np.all(p[1:3, 2].astype(np.float32) == np.float32(offset[2]))


def test_cube_inside_and_outside() -> None:
    v = np.array(list(itertools.product((0.0, 1.0), repeat=3)))
    # 12 triangles of the unit cube (two per side).
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    p = np.array([
        [0.5, 0.5, 0.5],  # centre: 0.5 to all six sides (a 12-way tie)
        [0.5, 0.5, 1.25],  # above the top
        [2.0, 2.0, 2.0],  # beyond the corner (1, 1, 1)
        [0.5, -1.0, -1.0],  # beyond the edge y = z = 0
        [0.9, 0.5, 0.5],  # inside, near x = 1
    ])
    d, q, fid = point_mesh_distance(p, v, f)
    np.testing.assert_allclose(d, [0.5, 0.25, np.sqrt(3.0), np.sqrt(2.0), 0.1], rtol=1e-12)
    np.testing.assert_allclose(q[2], [1.0, 1.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(q[3], [0.5, 0.0, 0.0], atol=1e-15)
    # Whatever face is reported, the closest point lies on it at the reported distance.
    for i in range(len(p)):
        df, qf = _ref_point_triangle(p[i], *v[f[fid[i]]])
        assert df == pytest.approx(d[i], rel=1e-12)


@pytest.mark.parametrize("offset", [np.zeros(3), np.array([1000.0, -2000.0, 500.0])])
def test_points_just_above_shared_edges_and_vertices(offset: np.ndarray) -> None:
    """The float32 trap: points whose closest point is on or near shared edges/vertices.

    For a point at height h above a flat mesh, the answer is h. If open3d's float32
    search returns the triangle next door, its closest point is on the shared edge up to
    float32 resolution away, i.e. the distance would be ~sqrt(h^2 + (1e-7 * size)^2).
    """
    v, f = _grid_mesh(12, 120.0, offset)
    rng = np.random.default_rng(3)
    n = 3000
    # Points over grid lines, diagonals and vertices, plus jitter far below float32 ulp.
    xy = rng.integers(0, 13, size=(n, 2)) * 10.0
    diag = rng.uniform(0, 120, size=n // 3)
    xy[: n // 3] = np.stack((diag, diag), 1)
    xy[n // 3 : 2 * n // 3, 1] = rng.uniform(0, 120, size=n // 3)
    xy += rng.normal(scale=1e-9, size=xy.shape)
    xy = np.clip(xy, 0.0, 120.0)
    h = 10.0 ** rng.uniform(-9, 1, size=n) * rng.choice([-1, 1], size=n)
    p = np.concatenate((xy, h[:, None]), axis=1) + offset
    d, q, fid = point_mesh_distance(p, v, f)
    # Heights of the float64 coordinates actually queried (exact by Sterbenz).
    true_h = np.abs(p[:, 2] - offset[2])
    np.testing.assert_allclose(d, true_h, rtol=1e-7)
    # Close to the surface the foot point is well conditioned and must be the projection.
    # (At height h, feet up to ~sqrt(2 h ulp(h)) apart have equal float64 distances.)
    low = np.abs(h) < 1e-3
    np.testing.assert_allclose(q[low, :2], p[low, :2], rtol=0, atol=1e-9 * (1 + np.abs(offset).max()))


def test_split_seam_vertices_do_not_hide_neighbours() -> None:
    """Vertices duplicated along a seam (as UV-split exports do): the two sides share no
    vertex, so the triangle across the seam must be found by position."""
    v, f = _grid_mesh(8, 80.0, np.array([300.0, 300.0, 300.0]))
    # Duplicate the vertices of column x == 40 for the triangles right of it.
    col = np.flatnonzero(np.isclose(v[:, 0], 340.0))
    dup = {int(i): len(v) + k for k, i in enumerate(col)}
    v = np.concatenate((v, v[col]))
    centroid_x = v[f].mean(axis=1)[:, 0]
    right = centroid_x > 340.0
    f = f.copy()
    f[right] = np.vectorize(lambda i: dup.get(int(i), int(i)))(f[right])
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.uniform(300, 380, n)
    h = 10.0 ** rng.uniform(-9, -2, n)
    p = np.stack((np.full(n, 340.0) + rng.normal(scale=1e-9, size=n), y, 300.0 + h), 1)
    d, _, _ = point_mesh_distance(p, v, f)
    np.testing.assert_allclose(d, p[:, 2] - 300.0, rtol=1e-7)


def test_t_junction_and_touching_triangles() -> None:
    """Surfaces that touch without sharing vertices (found by hypothesis).

    Vertex (0, 1, 0) of triangle B lies on an edge of triangle A, and the query is 1e-8
    off that spot: float32 cannot tell A from B, and connectivity does not link them.
    """
    v = np.array([[1, 0, 0], [0, 1, 0], [0, 3, 0], [0, 0, 0], [0, 0, 1]], dtype=np.float64)
    f = np.array([[2, 3, 4], [1, 0, 2]])  # A in the plane x = 0, B in z = 0
    p = np.array([[1e-8, 0.99999999, 0.0], [0.0, 1.0, 1.0 / 3.0], [0.0, 0.0, 0.0], [2e-9, 1.0 + 1e-9, 0.0]])
    d, _, _ = point_mesh_distance(p, v, f)
    ref, _ = _ref_point_mesh(p, v, f)
    np.testing.assert_allclose(d, ref, rtol=1e-9, atol=1e-15)
    assert d[0] < 1e-15  # on B's edge, although 1e-8 from A


# ------------------------------------------------------------------- degenerate triangles


def test_degenerate_triangles_do_not_crash_and_count() -> None:
    v = np.array([
        [0, 0, 0], [1, 0, 0], [0, 1, 0],  # a proper triangle
        [5, 5, 0], [6, 5, 0], [7, 5, 0],  # collinear (zero area)
        [5, 5, 5],  # with 3: repeated-index sliver = segment (5,5,0)-(5,5,5)
        [9, 9, 9],  # point "triangle"
    ], dtype=np.float64)
    f = np.array([[0, 1, 2], [3, 4, 5], [3, 3, 6], [7, 7, 7]])
    p = np.array([
        [6.0, 5.5, 0.0],  # 0.5 from the collinear triangle's segment
        [5.0, 5.0, 4.0],  # on the repeated-index segment (open3d alone says 1.0)
        [5.0, 5.0, 5.5],  # 0.5 beyond its end
        [9.0, 9.0, 10.0],  # 1 from the point triangle
        [0.2, 0.2, 1.0],  # above the proper triangle
    ])
    d, q, fid = point_mesh_distance(p, v, f)
    np.testing.assert_allclose(d, [0.5, 0.0, 0.5, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(q[1], [5.0, 5.0, 4.0], atol=1e-12)
    assert list(fid[1:4]) == [2, 2, 3]
    assert fid[4] == 0
    ref, _ = _ref_point_mesh(p, v, f)
    np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-12)


def test_only_degenerate_triangles() -> None:
    v = np.array([[0, 0, 0], [2, 0, 0], [1, 0, 0]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 0, 1]])
    d, q, fid = point_mesh_distance(np.array([[1.0, 3.0, 4.0], [3.0, 0.0, 0.0]]), v, f)
    np.testing.assert_allclose(d, [5.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(q, [[1.0, 0, 0], [2.0, 0, 0]], atol=1e-12)


def test_degenerate_sliver_inside_a_mesh() -> None:
    # A zero-area triangle between two proper ones (as decimation leaves behind): its
    # points are on its neighbours' edges, so results must equal the reference.
    v = np.array([[0, 0, 0], [2, 0, 0], [1, 0, 0], [1, 1, 0], [1, -1, 0]], dtype=np.float64)
    f = np.array([[0, 2, 3], [2, 1, 3], [0, 1, 2], [0, 4, 1]])
    rng = np.random.default_rng(5)
    p = rng.uniform(-1, 3, size=(300, 3))
    d, _, fid = point_mesh_distance(p, v, f)
    ref, per_face = _ref_point_mesh(p, v, f)
    np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(per_face[np.arange(len(p)), fid], d, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------- brute force on random meshes


@st.composite
def random_meshes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coord = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
    nv = draw(st.integers(3, 10))
    v = np.array(draw(st.lists(st.tuples(coord, coord, coord), min_size=nv, max_size=nv)))
    faces = draw(st.lists(st.tuples(*[st.integers(0, nv - 1)] * 3), min_size=1, max_size=14))
    f = np.array(faces, dtype=np.int64)
    # 1e-6 relative accuracy is promised for proper triangles; slivers thinner than
    # 1e-3 of their length get their own (exact, analytic) tests above.
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    area2 = np.linalg.norm(np.cross(e1, e2), axis=1)
    longest = np.max(
        [np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1), np.linalg.norm(e2 - e1, axis=1)],
        axis=0,
    )
    f = f[(area2 > 1e-3 * longest**2) & (longest > 1e-2)]
    assume(len(f) > 0)
    # Queries: free points, points on random triangles, and points just off them.
    free = np.array(draw(st.lists(st.tuples(coord, coord, coord), min_size=1, max_size=12)))
    k = draw(st.integers(0, 8))
    on_face = draw(st.lists(st.integers(0, len(f) - 1), min_size=k, max_size=k))
    w = np.array(draw(st.lists(st.tuples(*[st.floats(0, 1)] * 3), min_size=k, max_size=k))).reshape(k, 3)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    w[w.sum(axis=1) == 0] = 1 / 3
    lift = np.array(draw(st.lists(st.sampled_from([0.0, 1e-8, 1e-4, 0.1]), min_size=k, max_size=k)))
    on = np.einsum("ki,kij->kj", w, v[f[on_face]]) if k else np.zeros((0, 3))
    on[:, 2] += lift
    return v, f, np.concatenate((free, on))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_meshes())
def test_agrees_with_brute_force(mesh: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    v, f, p = mesh
    d, q, fid = point_mesh_distance(p, v, f)
    ref, per_face = _ref_point_mesh(p, v, f)
    scale = 1.0 + np.abs(v).max()
    np.testing.assert_allclose(d, ref, rtol=1e-6, atol=1e-12 * scale)
    # The reported face really attains the distance and the point is at that distance.
    np.testing.assert_allclose(per_face[np.arange(len(p)), fid], d, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(np.linalg.norm(p - q, axis=1), d, rtol=1e-9, atol=1e-12 * scale)


def _ref_distances_vectorised(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Brute force over all faces, vectorised (same KKT enumeration as above)."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    e1, e2 = b - a, c - a
    g11, g12, g22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    det = g11 * g22 - g12**2
    out = np.empty(len(points))
    for s0 in range(0, len(points), 64):
        p = points[s0 : s0 + 64, None, :]  # (P, 1, 3) against (F, 3)
        best = np.min([np.linalg.norm(p - x, axis=2) for x in (a, b, c)], axis=0)
        for u, w in ((a, b), (b, c), (c, a)):
            seg = w - u
            t = np.clip(((p - u) * seg).sum(2) / (seg * seg).sum(1), 0, 1)
            best = np.minimum(best, np.linalg.norm(p - (u + t[..., None] * seg), axis=2))
        r1, r2 = ((p - a) * e1).sum(2), ((p - a) * e2).sum(2)
        sv, tv = (g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det
        inside = (sv >= 0) & (tv >= 0) & (sv + tv <= 1)
        foot = a + sv[..., None] * e1 + tv[..., None] * e2
        best = np.where(inside, np.minimum(best, np.linalg.norm(p - foot, axis=2)), best)
        out[s0 : s0 + 64] = best.min(axis=1)
    return out


def test_realistic_mesh_far_from_origin_matches_brute_force() -> None:
    """A closed bumpy head-sized surface in mm, 700 mm from the origin, 2000 queries.

    Mixes the regimes a scan produces: on the surface, sub-micrometre off it, a few mm
    off, and far away; every distance must match the exhaustive float64 answer.
    """
    rng = np.random.default_rng(13)
    golden = np.pi * (3.0 - np.sqrt(5.0))
    k = np.arange(642)
    z = 1 - 2 * (k + 0.5) / 642
    unit = np.stack((np.sqrt(1 - z**2) * np.cos(golden * k), np.sqrt(1 - z**2) * np.sin(golden * k), z), 1)
    from scipy.spatial import ConvexHull

    f = ConvexHull(unit).simplices
    v = 95.0 * unit * (1 + 0.08 * np.sin(4 * unit[:, :1]) * np.cos(3 * unit[:, 1:2])) + [700.0, -250.0, 120.0]
    tri = v[f[rng.integers(0, len(f), 2000)]]
    w = rng.dirichlet(np.ones(3), size=2000)
    p = np.einsum("ni,nij->nj", w, tri)
    offsets = np.concatenate((np.zeros(500), 10.0 ** rng.uniform(-7, -3, 500), rng.uniform(0.1, 5, 500), rng.uniform(20, 200, 500)))
    p += rng.normal(size=(2000, 3)) / np.sqrt(3) * offsets[:, None]
    d, _, fid = point_mesh_distance(p, v, f)
    ref = _ref_distances_vectorised(p, v, f)
    np.testing.assert_allclose(d, ref, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------ batched / API


def test_batched_and_stacked_match_single_calls() -> None:
    rng = np.random.default_rng(11)
    v0, f = _grid_mesh(6, 1.0, np.zeros(3))
    meshes = [v0 + rng.normal(scale=0.05, size=v0.shape) for _ in range(3)]
    pts = [rng.uniform(-0.2, 1.2, size=(50, 3)) for _ in range(3)]
    singles = [point_mesh_distance(p, v, f) for p, v in zip(pts, meshes)]

    batched = point_mesh_distance_batched([(p, v, f) for p, v in zip(pts, meshes)])
    stacked = point_mesh_distance_stacked(np.stack(pts), np.stack(meshes), f)
    assert stacked.distances.shape == (3, 50)
    assert stacked.closest_points.shape == (3, 50, 3)
    assert stacked.face_ids.shape == (3, 50) and stacked.face_ids.dtype == np.int64
    for b, single in enumerate(singles):
        np.testing.assert_array_equal(batched[b].distances, single.distances)
        np.testing.assert_array_equal(stacked.distances[b], single.distances)
        np.testing.assert_array_equal(stacked.face_ids[b], single.face_ids)
        # Different meshes really give different answers (no accidental sharing).
        if b:
            assert not np.allclose(single.distances, singles[0].distances)

    # Heterogeneous topologies in one batch.
    mixed = point_mesh_distance_batched([(pts[0], meshes[0], f), (pts[1], TRI_V, TRI_F)])
    np.testing.assert_array_equal(mixed[1].distances, point_mesh_distance(pts[1], TRI_V, TRI_F)[0])


def test_index_reuse_and_barycentric() -> None:
    rng = np.random.default_rng(2)
    v, f = _grid_mesh(5, 2.0, np.array([0.0, 0.0, 1.0]))
    v[:, 2] += rng.normal(scale=0.1, size=len(v))
    index = ClosestPointIndex(v, f)
    for _ in range(2):
        p = rng.uniform(-0.5, 2.5, size=(200, 3))
        res = index.query(p)
        np.testing.assert_array_equal(res.distances, point_mesh_distance(p, v, f).distances)
        recon = np.einsum("ni,nij->nj", res.barycentric, v[f[res.face_ids]])
        np.testing.assert_allclose(recon, res.closest_points, atol=1e-12)
        assert (res.barycentric >= -1e-12).all() and np.allclose(res.barycentric.sum(1), 1)


def test_large_queries_are_answered_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    v, f = _grid_mesh(4, 1.0, np.zeros(3))
    v[:, 2] = rng.normal(scale=0.2, size=len(v))
    p = rng.uniform(-0.5, 1.5, size=(5000, 3))
    whole = ClosestPointIndex(v, f).query(p)
    monkeypatch.setattr(distance_module, "_QUERY_BLOCK", 777)
    blocks = ClosestPointIndex(v, f).query(p)
    for name in ("distances", "closest_points", "face_ids", "barycentric"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))


def test_empty_query() -> None:
    d, q, f = point_mesh_distance(np.zeros((0, 3)), TRI_V, TRI_F)
    assert d.shape == (0,) and q.shape == (0, 3) and f.shape == (0,) and f.dtype == np.int64


@pytest.mark.parametrize(
    ("points", "faces", "match"),
    [
        (np.array([[0.0, np.nan, 0.0]]), TRI_F, "NaN"),
        (np.zeros((2, 2)), TRI_F, r"\(N, 3\)"),
        (np.zeros((1, 3)), np.array([[0, 1, 3]]), "range"),
        (np.zeros((1, 3)), np.zeros((0, 3), np.int64), "no faces"),
    ],
)
def test_invalid_input(points: np.ndarray, faces: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        point_mesh_distance(points, TRI_V, faces)


def test_missing_open3d_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distance_module, "_open3d", None)
    monkeypatch.setitem(sys.modules, "open3d", None)  # makes `import open3d` fail
    with pytest.raises(ImportError, match="libusb-1.0-0"):
        point_mesh_distance(np.zeros((1, 3)), TRI_V, TRI_F)
