"""Rasterizer: pytorch3d conventions, exact coverage, visibility, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.render.rasterizer import (
    interpolate_face_attributes,
    pixel_centers_ndc,
    pytorch3d_available,
    rasterize_meshes,
)


def _quad(z: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), half: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    # Square [-half, half]^2 split along the anti-diagonal (+half, -half) -> (-half, +half).
    verts = torch.tensor([[half, -half, z[0]], [half, half, z[1]], [-half, half, z[2]], [-half, -half, z[3]]],
                         dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return verts[None], faces


def test_pixel_centres_follow_pytorch3d() -> None:
    # Row 0 is the top (+Y), column 0 the left (+X); centres sit half a pixel in.
    xs, ys = pixel_centers_ndc(4, dtype=torch.float64)
    assert torch.equal(xs, torch.tensor([0.75, 0.25, -0.25, -0.75], dtype=torch.float64))
    assert torch.equal(ys, xs)
    # Non-square: the shorter side spans [-1, 1], the longer one is stretched.
    xs, ys = pixel_centers_ndc((2, 4), dtype=torch.float64)
    assert torch.allclose(xs, torch.tensor([1.5, 0.5, -0.5, -1.5], dtype=torch.float64))
    assert torch.allclose(ys, torch.tensor([0.5, -0.5], dtype=torch.float64))


def test_quad_coverage_ids_depth_exact() -> None:
    # Depth plane z = 2 + 0.25 x + 0.5 y over the square.
    def plane(x: float, y: float) -> float:
        return 2 + 0.25 * x + 0.5 * y

    corners = [(0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5)]
    verts, faces = _quad(tuple(plane(x, y) for x, y in corners))
    frag = rasterize_meshes(verts, faces, 8)
    assert frag.pix_to_face.shape == (1, 8, 8, 1)
    assert frag.bary_coords.shape == (1, 8, 8, 1, 3)

    for r in range(8):
        for c in range(8):
            x, y = 1 - (2 * c + 1) / 8, 1 - (2 * r + 1) / 8
            face = int(frag.pix_to_face[0, r, c, 0])
            if abs(x) >= 0.5 or abs(y) >= 0.5 or x + y == 0:
                # Outside, or the centre lies exactly on the shared diagonal: pytorch3d's
                # strictly-positive barycentric rule leaves it empty.
                assert face == -1, (r, c)
                assert float(frag.zbuf[0, r, c, 0]) == -1.0
                assert torch.all(frag.bary_coords[0, r, c, 0] == -1)
                continue
            assert face == (0 if x + y > 0 else 1), (r, c)
            # Not exact to 1e-12: pytorch3d divides by (signed area + 1e-8).
            assert float(frag.zbuf[0, r, c, 0]) == pytest.approx(plane(x, y), abs=1e-7)
            bary = frag.bary_coords[0, r, c, 0]
            tri = verts[0, faces[face]]
            assert torch.all(bary > 0)
            assert float(bary.sum()) == pytest.approx(1.0, abs=1e-7)
            assert torch.allclose(bary @ tri[:, :2], torch.tensor([x, y], dtype=torch.float64), atol=1e-7)
    # 16 centres inside the square, 4 of them on the diagonal.
    assert int(frag.mask.sum()) == 12


def test_explicit_barycentrics_and_dist() -> None:
    # Right triangle; pixel (row 1, col 1) of a 4x4 image has centre (0.25, 0.25).
    verts = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 3.0]]], dtype=torch.float64)
    frag = rasterize_meshes(verts, torch.tensor([[0, 1, 2]]), 4)
    assert torch.allclose(frag.bary_coords[0, 1, 1, 0], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert float(frag.zbuf[0, 1, 1, 0]) == pytest.approx(0.5 * 1 + 0.25 * 2 + 0.25 * 3)
    # Signed squared distance to the nearest edge (x = 0 or y = 0 at 0.25), negative inside.
    assert float(frag.dists[0, 1, 1, 0]) == pytest.approx(-0.0625)
    # +X/+Y triangle lands in the top-left quadrant only.
    rows, cols = torch.nonzero(frag.mask[0], as_tuple=True)
    assert rows.max() < 2 and cols.max() < 2


def test_nearest_face_wins_and_ties_go_to_lower_index() -> None:
    tri = [[0.9, -0.9], [-0.9, -0.9], [0.0, 0.9]]
    def mesh(z_a: float, z_b: float) -> torch.Tensor:
        return torch.tensor([[[x, y, z_a] for x, y in tri] + [[x, y, z_b] for x, y in tri]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    covered = rasterize_meshes(mesh(1.0, 1.0), faces, 16).mask
    assert covered.sum() > 50
    for z_a, z_b, winner in [(1.0, 2.0, 0), (2.0, 1.0, 1), (1.5, 1.5, 0)]:
        frag = rasterize_meshes(mesh(z_a, z_b), faces, 16)
        assert torch.all(frag.pix_to_face[covered] == winner)
        assert torch.allclose(frag.zbuf[covered], torch.tensor(min(z_a, z_b)))


def test_dropped_faces_behind_degenerate_backfacing() -> None:
    verts, faces = _quad()
    base = rasterize_meshes(verts, faces, 8)
    # A face with any vertex z < 1e-8 is behind the image plane: not drawn at all.
    behind = verts.clone()
    behind[0, 3, 2] = -0.1
    frag = rasterize_meshes(behind, faces, 8)
    assert torch.all(frag.pix_to_face[base.pix_to_face == 1] == -1)
    assert torch.equal(frag.pix_to_face[base.pix_to_face == 0], base.pix_to_face[base.pix_to_face == 0])
    # Zero-area face.
    flat = torch.tensor([[[0.5, 0.5, 1.0], [-0.5, -0.5, 1.0], [0.0, 0.0, 1.0]]])
    assert not rasterize_meshes(flat, torch.tensor([[0, 1, 2]]), 8).mask.any()
    # Culling drops negative signed-area faces (pytorch3d's back faces) only when asked.
    tri = torch.tensor([[[0.5, -0.5, 1.0], [-0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]])
    front, back = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    assert rasterize_meshes(tri, back, 8).mask.any()
    signs = []
    for f in (front, back):
        signs.append(bool(rasterize_meshes(tri, f, 8, cull_backfaces=True).mask.any()))
    assert sorted(signs) == [False, True]


def test_offscreen_and_huge_triangles() -> None:
    huge = torch.tensor([[[100.0, -100.0, 1.0], [-100.0, -100.0, 1.0], [0.0, 100.0, 1.0]]])
    assert rasterize_meshes(huge, torch.tensor([[0, 1, 2]]), 16).mask.all()
    off = torch.tensor([[[3.0, 3.0, 1.0], [4.0, 3.0, 1.0], [3.0, 4.0, 1.0]]])
    assert not rasterize_meshes(off, torch.tensor([[0, 1, 2]]), 16).mask.any()


def test_batch_uses_packed_face_ids_and_matches_single() -> None:
    verts, faces = _quad()
    other = verts.clone()
    other[..., :2] *= 1.7
    frag = rasterize_meshes(torch.cat([verts, other]), faces, 12)
    single = rasterize_meshes(other, faces, 12)
    p2f = frag.pix_to_face[1]
    assert torch.equal(p2f[p2f >= 0] - faces.shape[0], single.pix_to_face[0][p2f >= 0])
    assert torch.equal(p2f < 0, single.pix_to_face[0] < 0)
    assert torch.allclose(frag.bary_coords[1], single.bary_coords[0])


def _reference(verts: np.ndarray, faces: np.ndarray, h: int, w: int, cull: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Pixel-by-pixel, face-by-face loop over pytorch3d's CPU rules (K = 1, no blur).

    Returns the minimum depth, its barycentrics and, per pixel, the set of faces
    within 1e-9 of it (any of which is a correct winner).
    """
    xs, ys = (t.numpy() for t in pixel_centers_ndc((h, w), dtype=torch.float64))
    eps = 1e-8
    zbuf = -np.ones((h, w))
    bary = -np.ones((h, w, 3))
    ok: list[list[set[int]]] = [[set() for _ in range(w)] for _ in range(h)]

    def edge(p, a, b):
        return (p[0] - a[0]) * (b[1] - a[1]) - (p[1] - a[1]) * (b[0] - a[0])

    for r in range(h):
        for c in range(w):
            p = (xs[c], ys[r])
            hits = []
            for f, (i, j, k) in enumerate(faces):
                v0, v1, v2 = verts[i], verts[j], verts[k]
                area = edge(v2, v0, v1)
                if abs(area) <= eps or (cull and area < 0) or min(v0[2], v1[2], v2[2]) < eps:
                    continue
                ws = [edge(p, v1, v2) / (area + eps), edge(p, v2, v0) / (area + eps), edge(p, v0, v1) / (area + eps)]
                if min(ws) <= 0:
                    continue
                hits.append((ws[0] * v0[2] + ws[1] * v1[2] + ws[2] * v2[2], f, ws))
            if hits:
                zmin = min(hh[0] for hh in hits)
                best = min(hits, key=lambda hh: (hh[0], hh[1]))
                zbuf[r, c], bary[r, c] = best[0], best[2]
                ok[r][c] = {hh[1] for hh in hits if hh[0] - zmin <= 1e-9}
    return zbuf, bary, ok


grid = st.integers(-12, 12).map(lambda k: k / 8)


@settings(max_examples=40, deadline=None)
@given(
    tris=st.lists(st.tuples(*[st.tuples(grid, grid, st.integers(1, 16).map(lambda k: k / 8))] * 3),
                  min_size=1, max_size=6),
    h=st.integers(1, 11), w=st.integers(1, 11), cull=st.booleans(), max_pairs=st.sampled_from([1, 5, 1 << 20]),
)
def test_matches_loop_reference(tris, h, w, cull, max_pairs) -> None:
    # Grid-aligned vertices put many pixel centres exactly on edges and create exact
    # depth ties, so the strict-inside rule and tie-breaking are exercised.
    verts = np.array([v for tri in tris for v in tri], dtype=np.float64)
    faces = np.arange(len(verts)).reshape(-1, 3)
    frag = rasterize_meshes(torch.from_numpy(verts)[None], torch.from_numpy(faces), (h, w),
                            cull_backfaces=cull, max_pairs=max_pairs)
    zbuf, bary, ok = _reference(verts, faces, h, w, cull)
    p2f = frag.pix_to_face[0, ..., 0].numpy()
    for r in range(h):
        for c in range(w):
            if ok[r][c]:
                assert p2f[r, c] in ok[r][c], (r, c, p2f[r, c], ok[r][c])
            else:
                assert p2f[r, c] == -1, (r, c)
    assert np.allclose(frag.zbuf[0, ..., 0].numpy(), zbuf, atol=1e-9)
    covered = p2f >= 0
    # Barycentrics are those of the face actually chosen (ties may pick a twin face).
    chosen = frag.bary_coords[0, :, :, 0].numpy()[covered]
    assert np.all(chosen > 0) and np.allclose(chosen.sum(-1), 1, atol=1e-6)
    unique = np.array([[len(ok[r][c]) == 1 for c in range(w)] for r in range(h)]) & covered
    assert np.allclose(frag.bary_coords[0, :, :, 0].numpy()[unique], bary[unique], atol=1e-12)


def _icosphere(subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    return torch.tensor(mesh.vertices, dtype=torch.float64), torch.tensor(mesh.faces, dtype=torch.int64)


def test_barycentric_gradients_match_finite_differences() -> None:
    # Loss on barycentric-interpolated vertex attributes over pixels whose face does
    # not change under the perturbation, so the finite difference sees no coverage jump.
    sphere, faces = _icosphere(2)
    base = (sphere * 0.8 + torch.tensor([0.05, -0.03, 2.0], dtype=torch.float64))[None]
    colors = torch.rand(sphere.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction = torch.randn(base.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-6

    def frag_at(t: float):
        return rasterize_meshes(base + t * direction, faces, 32)

    stable = (frag_at(-h).pix_to_face == frag_at(h).pix_to_face) & (frag_at(0).pix_to_face >= 0)
    assert stable.sum() > 300

    def loss(verts: torch.Tensor) -> torch.Tensor:
        frag = rasterize_meshes(verts, faces, 32)
        img = interpolate_face_attributes(frag, colors[faces])
        zterm = (frag.zbuf * stable).sum()
        return (img * stable[..., 0, None]).pow(2).sum() + zterm

    verts = base.clone().requires_grad_(True)
    loss(verts).backward()
    analytic = float((verts.grad * direction).sum())
    numeric = (float(loss(base + h * direction)) - float(loss(base - h * direction))) / (2 * h)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx(numeric, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    sphere, faces = _icosphere(3)
    verts = (sphere.float() * 0.9 + torch.tensor([0.0, 0.0, 2.0]))[None].repeat(2, 1, 1)
    verts[1, :, 0] += 0.1
    cpu = rasterize_meshes(verts, faces, 64, backend="torch")
    gpu = rasterize_meshes(verts.cuda(), faces.cuda(), 64, backend="torch")
    assert torch.equal(cpu.pix_to_face, gpu.pix_to_face.cpu())
    assert torch.allclose(cpu.bary_coords, gpu.bary_coords.cpu(), atol=1e-5)


@pytest.mark.skipif(not pytorch3d_available(), reason="pytorch3d is not installed")
def test_parity_with_pytorch3d() -> None:
    sphere, faces = _icosphere(3)
    gen = torch.Generator().manual_seed(3)
    verts = (sphere.float()[None] * torch.tensor([0.9, 0.7, 0.8]) + torch.tensor([0.1, -0.05, 2.0])).repeat(2, 1, 1)
    verts = verts + 0.01 * torch.randn(verts.shape, generator=gen)
    mine = rasterize_meshes(verts.requires_grad_(True), faces, (40, 56), backend="torch")
    theirs = rasterize_meshes(verts, faces, (40, 56), backend="pytorch3d")
    same = mine.pix_to_face == theirs.pix_to_face
    # Only pixel centres within float rounding of an edge may differ.
    assert same.float().mean() > 0.999
    assert torch.allclose(mine.zbuf[same], theirs.zbuf[same], atol=1e-5)
    assert torch.allclose(mine.bary_coords[same[..., None].expand_as(mine.bary_coords)],
                          theirs.bary_coords[same[..., None].expand_as(theirs.bary_coords)], atol=1e-5)
    assert torch.allclose(mine.dists[same], theirs.dists[same], atol=1e-6)
    weights = torch.rand(mine.bary_coords.shape, generator=gen) * same[..., None]
    g_mine, = torch.autograd.grad((mine.bary_coords * weights).sum(), verts)
    g_theirs, = torch.autograd.grad((theirs.bary_coords * weights).sum(), verts)
    assert torch.allclose(g_mine, g_theirs, rtol=1e-3, atol=1e-4 * g_theirs.abs().max().item())


def test_rejects_bad_shapes_and_backend() -> None:
    verts, faces = _quad()
    with pytest.raises(ValueError, match=r"verts must be \(B, V, 3\)"):
        rasterize_meshes(verts[0], faces, 8)
    with pytest.raises(ValueError, match=r"faces must be \(F, 3\), got \(2, 2\)"):
        rasterize_meshes(verts, faces[:, :2], 8)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'opengl'"):
        rasterize_meshes(verts, faces, 8, backend="opengl")  # type: ignore[arg-type]
    if not pytorch3d_available():
        with pytest.raises(ImportError, match="needs pytorch3d"):
            rasterize_meshes(verts, faces, 8, backend="pytorch3d")
