"""SMIRK renderer on hand-made meshes: camera, landmarks, normals, shading, masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from torch import Tensor, nn

from fbench.flame.params import FlameParams
from fbench.render import (
    SmirkRenderer,
    default_cam,
    directional_shading,
    faces_in_mask,
    interpolate_face_attributes,
    orthographic_project,
    render_flame,
    render_params_file,
    vertex_normals,
)

# SMIRK src/renderer/renderer.py:63 `colors = torch.tensor([180, 180, 180]) ... /255.` (spelled here,
# not imported, so a wrong constant in fbench cannot agree with itself).
ALBEDO = 180.0 / 255.0
# renderer.py:127-136: light positions used as directions (normalised in add_directionlight,
# renderer.py:247), each with intensity 1.7; the shading is the mean over the five lights (:250).
LIGHTS = np.array([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1]], dtype=np.float64)
INTENSITY = 1.7
FRONT = ALBEDO * 1.7 * (4 / math.sqrt(3) + 1) / 5  # normal (0, 0, 1) under SMIRK's five lights


def _plane(normal_tilt_x: float = 0.0, half: float = 0.5, center=(0.0, 0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """Square facing +z (counter-clockwise seen from +z), optionally rotated about y."""
    pts = torch.tensor([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]],
                       dtype=torch.float64)
    c, s = math.cos(normal_tilt_x), math.sin(normal_tilt_x)
    rot_y = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    verts = pts @ rot_y.T + torch.tensor(center, dtype=torch.float64)
    return verts, torch.tensor([[0, 1, 2], [0, 2, 3]])


def _sphere(subdivisions: int = 3) -> tuple[Tensor, Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.1)
    return torch.tensor(mesh.vertices, dtype=torch.float64), torch.tensor(mesh.faces, dtype=torch.int64)


def test_orthographic_projection_is_smirks() -> None:
    pts = torch.tensor([[[0.1, 0.2, 0.3], [-0.2, 0.0, -0.1]]])
    cam = torch.tensor([[5.0, 0.1, -0.2]])
    got = orthographic_project(pts, cam)
    # x' = s (x + tx), y' = -s (y + ty), z' = -s z
    want = torch.tensor([[[1.0, 0.0, -1.5], [-0.5, 1.0, 0.5]]])
    assert torch.allclose(got, want, atol=1e-6)


def test_vertex_normals_point_outward() -> None:
    verts, faces = _sphere(2)
    normals = vertex_normals(verts[None], faces)[0]
    assert torch.allclose(normals.norm(dim=-1), torch.ones(len(verts), dtype=torch.float64))
    cos = (normals * verts / verts.norm(dim=-1, keepdim=True)).sum(-1)
    assert cos.min() > 0.99


def test_flat_plane_shading_values_and_black_background() -> None:
    for tilt, expected in [
        (0.0, FRONT),
        # normal (1, 0, 1)/sqrt2: two lights at 2/sqrt6, the frontal one at 1/sqrt2, two clamp to 0
        (math.pi / 4, ALBEDO * 1.7 * (2 * 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 5),
    ]:
        verts, faces = _plane(tilt)
        renderer = SmirkRenderer(faces, image_size=32)
        out = renderer(verts[None], torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
        img = out["rendered_img"][0]
        assert img.shape == (3, 32, 32)
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
        assert float(img[0, 16, 16]) == pytest.approx(expected, rel=1e-6)
        assert torch.all(img[:, :4, :] == 0) and torch.all(img[:, :, :4] == 0)
        assert torch.equal(out["mask"][0, 0] > 0, img[0] > 0)


def test_image_orientation_and_landmarks_agree() -> None:
    # A small quad at world (+0.3, +0.2): right of and above the centre in the image,
    # exactly where its projected "landmark" says, in pixel-centre coordinates.
    size = 64
    target = torch.tensor([0.3, 0.2, 0.0], dtype=torch.float64)
    verts, faces = _plane(half=0.05, center=tuple(target.tolist()))
    cam = torch.tensor([[1.5, -0.1, 0.05]], dtype=torch.float64)
    out = SmirkRenderer(faces, image_size=size)(verts[None], cam, landmarks_fan=target[None, None])
    lmk = out["landmarks_fan"][0, 0]
    assert out["landmarks_fan"].shape == (1, 1, 2)
    rows, cols = torch.nonzero(out["mask"][0, 0], as_tuple=True)
    centroid_col, centroid_row = cols.double().mean(), rows.double().mean()
    # [-1, 1] image coordinates -> pixel index (align_corners=False).
    assert float(centroid_col) == pytest.approx(float((lmk[0] + 1) * size / 2 - 0.5), abs=0.51)
    assert float(centroid_row) == pytest.approx(float((lmk[1] + 1) * size / 2 - 0.5), abs=0.51)
    assert centroid_col > size / 2 and centroid_row < size / 2


def test_mask_keeps_only_faces_inside() -> None:
    left, f = _plane(half=0.2, center=(-0.5, 0.0, 0.0))
    right, _ = _plane(half=0.2, center=(0.5, 0.0, 0.0))
    verts = torch.cat([left, right])[None]
    faces = torch.cat([f, f + 4])
    cam = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    # Both triangles of the right quad, (4, 5, 6) and (4, 6, 7), use vertex 6: leaving it
    # out of the vertex mask drops the whole right quad.
    by_vertex = SmirkRenderer(faces, vertex_mask=torch.tensor([0, 1, 2, 3, 4, 5, 7]), image_size=32)
    assert by_vertex.faces.shape[0] == 2
    img = by_vertex(verts, cam)["rendered_img"][0, 0]
    assert img[:, :16].sum() > 0 and img[:, 16:].sum() == 0
    by_face = SmirkRenderer(faces, face_mask=torch.tensor([False, False, True, True]), image_size=32)
    img = by_face(verts, cam)["rendered_img"][0, 0]
    assert img[:, :16].sum() == 0 and img[:, 16:].sum() > 0
    bool_vertices = torch.zeros(8, dtype=torch.bool)
    bool_vertices[[4, 5, 6]] = True
    assert faces_in_mask(faces, bool_vertices).tolist() == [False, False, True, False]
    with pytest.raises(ValueError):
        SmirkRenderer(faces, vertex_mask=torch.tensor([0]), image_size=32)


def test_shaded_image_gradient_matches_finite_differences() -> None:
    # Smooth loss over pixels whose face is the same at theta +- h: no coverage jump,
    # so the analytic gradient (through barycentrics and normals) must equal the FD.
    verts, faces = _sphere(2)
    renderer = SmirkRenderer(faces, image_size=48)
    cam = torch.tensor([[6.0, 0.01, -0.02]], dtype=torch.float64)
    direction = torch.randn(verts.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48, dtype=torch.float64),
                            torch.linspace(-1, 1, 48, dtype=torch.float64), indexing="ij")
    weight = torch.cos(2 * xx) * torch.exp(yy)
    h = 1e-6

    def p2f(t: float) -> Tensor:
        v = (verts + t * direction)[None]
        return renderer.rasterize(orthographic_project(v, cam)).pix_to_face[0, ..., 0]

    stable = (p2f(h) == p2f(-h)) & (p2f(0) >= 0)
    assert stable.sum() > 500

    def loss(v: Tensor) -> Tensor:
        return (renderer(v[None], cam)["rendered_img"][0] * weight * stable).sum()

    v = verts.clone().requires_grad_(True)
    loss(v).backward()
    analytic = float((v.grad * direction).sum())
    numeric = (float(loss(verts + h * direction)) - float(loss(verts - h * direction))) / (2 * h)
    assert abs(analytic) > 1e-2
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_default_cam_frames_region() -> None:
    verts, _ = _sphere(1)
    verts = verts * torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64) + torch.tensor([0.3, -0.1, 0.0], dtype=torch.float64)
    cam = default_cam(verts[None])
    proj = orthographic_project(verts[None], cam)[0, :, :2]
    lo, hi = proj.amin(0), proj.amax(0)
    assert torch.allclose((lo + hi) / 2, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # Mean side times 1.4 spans the full [-1, 1] image.
    assert float((hi - lo).mean()) * 1.4 == pytest.approx(2.0)


@dataclass
class _Out:
    vertices: Tensor
    landmarks: Tensor
    landmarks_mp: Tensor


class _SphereFlame(nn.Module):
    """Just enough of the FLAME interface: faces, masks, sizes, forward(FlameParams)."""

    def __init__(self) -> None:
        super().__init__()
        verts, faces = _sphere(2)
        self.register_buffer("template", verts.float())
        self.register_buffer("faces", faces)
        self.n_shape, self.n_exp = 4, 3
        front = torch.nonzero(verts[:, 2] > -0.02).squeeze(1)
        self.masks = {"face": front}

    def forward(self, params: FlameParams) -> _Out:
        v = self.template[None] * (1 + params.expression[:, :1, None]) + params.translation[:, None]
        return _Out(vertices=v, landmarks=v[:, :68], landmarks_mp=v[:, :105])


def test_render_params_file_single_batch_and_default_cam(tmp_path: Path) -> None:
    flame = _SphereFlame()
    single = tmp_path / "one.npz"
    np.savez(single, expression=np.array([0.2, 0.0, 0.0], dtype=np.float32))
    written = render_params_file(single, tmp_path / "one.png", flame=flame, size=64)
    assert written == [tmp_path / "one.png"]
    img = np.asarray(Image.open(written[0]))
    assert img.shape == (64, 64, 3)
    # Default framing: face region centred and filling most of the image.
    assert img[32, 32].min() > 100 and img[0, 0].max() == 0
    lit = np.nonzero(img[..., 0])
    assert lit[0].min() < 16 and lit[0].max() > 48

    batch = tmp_path / "batch.npz"
    cam = np.array([[0.0, 0.0, 0.0], [4.0, 0.1, 0.0]], dtype=np.float32)
    np.savez(batch, cam=cam, translation=np.zeros((2, 3), dtype=np.float32))
    written = render_params_file(batch, tmp_path / "out" / "b.png", flame=flame, size=48)
    assert [p.name for p in written] == ["b_000.png", "b_001.png"]
    explicit = np.asarray(Image.open(written[1]))
    # cam (4, 0.1, 0): radius 0.1 -> 0.4 image half-widths, shifted right by 0.4.
    cols = np.nonzero(explicit[24, :, 0])[0]
    assert (cols.min() + cols.max()) / 2 == pytest.approx((0.4 + 1) * 24 - 0.5, abs=1.5)

    bad = tmp_path / "bad.npz"
    np.savez(bad, expresion=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz.*unknown FLAME parameter"):
        render_params_file(bad, tmp_path / "bad.png", flame=flame)


def test_render_flame_uses_given_cam_and_keys() -> None:
    flame = _SphereFlame()
    params = FlameParams.zeros(2, 4, 3)
    params.cam = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    out = render_flame(flame, params)
    assert {"rendered_img", "transformed_vertices", "landmarks_fan", "landmarks_mp", "mask"} <= set(out)
    assert out["rendered_img"].shape == (2, 3, 224, 224)
    assert out["landmarks_fan"].shape == (2, 68, 2) and out["landmarks_mp"].shape == (2, 105, 2)
    assert float(out["cam"][1, 0]) == 5.0 and float(out["cam"][0, 0]) > 0


def _numpy_smirk_image(verts: np.ndarray, faces: np.ndarray, cam: np.ndarray, size: int,
                       renormalise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SMIRK's grey shaded image recomputed in plain numpy, and where it is defined unambiguously.

    Projection (SMIRK src/renderer/util.py batch_orth_proj, renderer.py forward): x' = s (x + tx),
    y' = -s (y + ty), z' = -s z, nearest = smallest z'; pixel (row j, column i) has its centre at
    ((2 i + 1) / size - 1, (2 j + 1) / size - 1) (renderer.py rasterize negates x, y into pytorch3d's
    +X-left/+Y-up NDC). Vertex normals: per face corner the cross product of its two edges, summed,
    then normalised (util.py:30-60). Per pixel the three vertex normals are interpolated with the
    screen barycentrics and NOT renormalised (renderer.py:147-160 interpolates `face_normals` as a
    rasterizer attribute and feeds it straight to add_directionlight).
    """
    s, t = cam[0], cam[1:]
    xy = np.stack([s * (verts[:, 0] + t[0]), -s * (verts[:, 1] + t[1])], 1)
    z = -s * verts[:, 2]
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    face_n = np.cross(v1 - v0, v2 - v0)
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    centres = (2 * np.arange(size) + 1) / size - 1
    px, py = np.meshgrid(centres, centres)  # px varies along columns, py along rows
    p = np.stack([px.ravel(), py.ravel()], 1)[:, None, :]  # (P, 1, 2)
    a, b, c = (xy[faces[:, k]][None] for k in range(3))  # (1, F, 2)

    def edge(u, v, q):
        return (v[..., 0] - u[..., 0]) * (q[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (q[..., 0] - u[..., 0])

    area = edge(a, b, c)
    with np.errstate(divide="ignore", invalid="ignore"):  # edge-on triangles: NaN weights, never inside
        w = np.stack([edge(b, c, p), edge(c, a, p), edge(a, b, p)], -1) / area[..., None]  # (P, F, 3)
    inside = (w >= 0).all(-1)
    depth = np.where(inside, (w * z[faces][None]).sum(-1), np.inf)
    face = depth.argmin(1)
    covered = np.isfinite(depth.min(1))
    wf = w[np.arange(len(p)), face]  # (P, 3)
    n = (wf[..., None] * normals[faces[face]]).sum(1)  # interpolated, unnormalised
    if renormalise:  # what SMIRK does NOT do; only to show the test can tell
        n /= np.linalg.norm(n, axis=1, keepdims=True)
    dirs = LIGHTS / np.linalg.norm(LIGHTS, axis=1, keepdims=True)
    shade = np.clip(n @ dirs.T, 0.0, 1.0).mean(1) * INTENSITY
    image = np.where(covered, ALBEDO * shade, 0.0).reshape(size, size)
    # Unambiguous: well inside one triangle, and no other triangle within 1e-6 of the front depth.
    sorted_depth = np.sort(depth, 1)
    with np.errstate(invalid="ignore"):
        gap = np.where(np.isfinite(sorted_depth[:, 1]), sorted_depth[:, 1] - sorted_depth[:, 0], np.inf)
    clear = covered & (wf.min(1) > 1e-4) & (gap > 1e-6)
    return image, clear.reshape(size, size)


def test_curved_surface_shading_matches_an_independent_recomputation() -> None:
    # A coarse sphere: interpolated normals are visibly shorter than 1 inside each triangle, so
    # renormalising them (which SMIRK does not do) brightens the image by up to ~10 %.
    verts, faces = _sphere(1)
    verts = verts * torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64)  # an ellipsoid: no symmetry to hide behind
    cam = np.array([7.0, 0.01, -0.015])
    size = 40
    out = SmirkRenderer(faces, image_size=size)(verts[None], torch.tensor(cam)[None])
    img = out["rendered_img"][0].numpy()
    expected, clear = _numpy_smirk_image(verts.numpy(), faces.numpy(), cam, size)
    assert clear.sum() > 500
    # float32 image (SMIRK's dtype): agreement to float32 rounding.
    np.testing.assert_allclose(img[0][clear], expected[clear], rtol=0, atol=1e-6)
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[1], img[2])
    assert ((img[0] > 0) != (expected > 0)).sum() <= 2 * size  # coverage may differ only along silhouette edges
    # The check is sensitive: renormalised normals differ by far more than its tolerance.
    renormalised, _ = _numpy_smirk_image(verts.numpy(), faces.numpy(), cam, size, renormalise=True)
    assert np.abs(renormalised[clear] - expected[clear]).max() > 1e-3


def test_shading_only_covered_pixels_equals_shading_the_whole_image_exactly() -> None:
    # The renderer shades the covered pixels only (perf/train_step.py); shading every pixel of
    # the interpolated normal image and multiplying by the coverage mask gives the same bits,
    # in the image and in the gradient to the vertices.
    verts, faces = _sphere(2)
    verts = (verts * torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64)).float()
    renderer = SmirkRenderer(faces, image_size=56)
    cam = torch.tensor([[6.0, 0.01, -0.02], [4.0, -0.03, 0.02]])
    v = verts[None].repeat(2, 1, 1)
    v[1] = v[1] @ torch.tensor([[0.8, 0.0, 0.6], [0.0, 1.0, 0.0], [-0.6, 0.0, 0.8]])
    weight = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))

    def whole_image(vertices: Tensor) -> Tensor:
        fragments = renderer.rasterize(orthographic_project(vertices, cam))
        face_normals = vertex_normals(vertices, renderer.faces)[:, renderer.faces].reshape(-1, 3, 3)
        mask = fragments.mask[..., None].float()
        shaded = ALBEDO * mask * directional_shading(interpolate_face_attributes(fragments, face_normals))
        return shaded.expand(-1, -1, -1, 3).permute(0, 3, 1, 2)

    grads = []
    for render in (lambda x: renderer(x, cam)["rendered_img"], whole_image):
        x = v.clone().requires_grad_(True)
        img = render(x)
        (img * weight).sum().backward()
        grads.append((img.detach(), x.grad))
    (mine, mine_grad), (full, full_grad) = grads
    assert (mine > 0).float().mean() > 0.1 and (mine == 0).any()
    assert torch.equal(mine, full) and torch.equal(mine_grad, full_grad)
