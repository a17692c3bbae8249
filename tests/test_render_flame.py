"""SMIRK rendering of the (synthetic default) FLAME model: image, landmarks, gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fbench.flame import FlameParams, load_flame
from fbench.render import orthographic_project, render_flame, render_params_file, smirk_renderer_for


@pytest.fixture(scope="module")
def flame64():
    return load_flame(None, dtype=torch.float64)


def test_neutral_face_image_is_face_like(flame64) -> None:
    params = FlameParams.zeros(1, flame64.n_shape, flame64.n_exp, dtype=torch.float64)
    out = render_flame(flame64, params)
    img = out["rendered_img"][0]
    assert img.shape == (3, 224, 224)
    mask = out["mask"][0, 0] > 0
    # Lit face in the middle, black background in every corner.
    assert float(img[:, 100:124, 100:124].min()) > 0.2
    for corner in (img[:, :12, :12], img[:, :12, -12:], img[:, -12:, :12], img[:, -12:, -12:]):
        assert float(corner.abs().max()) == 0.0
    assert 0.2 < float(mask.double().mean()) < 0.8
    # The neutral head is left-right symmetric about its centre, which the default camera centres.
    mirrored = mask.flip(-1)
    assert float((mask & mirrored).sum() / (mask | mirrored).sum()) > 0.9
    # Upright: brows above the mouth, nose on the vertical midline.
    lmk = out["landmarks_fan"][0]
    assert float(lmk[17:27, 1].max()) < float(lmk[48:60, 1].min())
    assert abs(float(lmk[30, 0])) < 0.02


def test_landmarks_land_on_the_rendered_face(flame64) -> None:
    params = FlameParams.zeros(2, flame64.n_shape, flame64.n_exp, dtype=torch.float64)
    params.expression[1, :5] = torch.tensor([1.0, -0.5, 0.5, 0.3, -0.2], dtype=torch.float64)
    out = render_flame(flame64, params)
    fan, mp = out["landmarks_fan"], out["landmarks_mp"]
    assert fan.shape == (2, 68, 2) and mp.shape[:2] == (2, flame64(params).landmarks_mp.shape[1])
    assert float(fan.abs().max()) < 1 and float(mp.abs().max()) < 1
    # Brow, nose and mouth landmarks sit on the drawn face region, at the pixel their
    # [-1, 1] coordinates name. (Eyelid and inner-lip landmarks border the eye holes and
    # the open mouth -- eyeballs are not in the 'face' mask, as in SMIRK -- and the
    # contour may leave the mask.)
    size = out["mask"].shape[-1]
    cols = ((fan[..., 0] + 1) * size / 2 - 0.5).round().long()
    rows = ((fan[..., 1] + 1) * size / 2 - 0.5).round().long()
    inner = torch.cat([torch.arange(17, 36), torch.arange(48, 60)])
    for b in range(2):
        assert torch.all(out["mask"][b, 0, rows[b, inner], cols[b, inner]] > 0)
    # Same projection as the vertices (SMIRK's batch_orth_proj with y, z flipped).
    lmk3d = flame64(params).landmarks
    assert torch.allclose(fan, orthographic_project(lmk3d, out["cam"])[..., :2])


def test_expression_gradient_matches_finite_differences(flame64) -> None:
    # Image loss weighted by a smooth image, over the pixels whose triangle is the same
    # at theta +- h (so no coverage change enters the finite difference).
    renderer = smirk_renderer_for(flame64, "face", image_size=96)
    gen = torch.Generator().manual_seed(0)
    params = FlameParams.zeros(1, flame64.n_shape, flame64.n_exp, dtype=torch.float64)
    params.expression[:, :10] = 0.5 * torch.randn(1, 10, generator=gen, dtype=torch.float64)
    params.jaw[:, 0] = 0.1
    with torch.no_grad():
        vertices = flame64(params).vertices
    from fbench.render import default_cam

    params.cam = default_cam(vertices, flame64.masks["face"])
    direction = torch.zeros_like(params.expression)
    direction[:, :10] = torch.randn(1, 10, generator=gen, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96, dtype=torch.float64),
                            torch.linspace(-1, 1, 96, dtype=torch.float64), indexing="ij")
    weight = torch.sin(3 * xx + 1) * torch.cos(2 * yy) + 1.5
    h = 1e-6

    def with_expression(expr: torch.Tensor) -> FlameParams:
        p = params.detach()
        p.expression = expr
        return p

    def p2f(t: float) -> torch.Tensor:
        verts = flame64(with_expression(params.expression + t * direction)).vertices
        return renderer.rasterize(orthographic_project(verts, params.cam)).pix_to_face

    stable = ((p2f(h) == p2f(-h)) & (p2f(0.0) >= 0))[..., 0]
    assert stable.sum() > 1000

    def loss(expr: torch.Tensor) -> torch.Tensor:
        img = render_flame(flame64, with_expression(expr), renderer)["rendered_img"]
        return (img * weight * stable[:, None]).sum()

    expr = params.expression.clone().requires_grad_(True)
    loss(expr).backward()
    assert torch.count_nonzero(expr.grad[0, :10]) == 10
    analytic = float((expr.grad * direction).sum())
    numeric = (float(loss(params.expression + h * direction)) - float(loss(params.expression - h * direction))) / (2 * h)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_render_params_file_with_flame(tmp_path: Path, flame64) -> None:
    path = tmp_path / "params.npz"
    np.savez(path, expression=np.full((2, 3), 0.5, dtype=np.float32), jaw=np.array([[0.2, 0, 0], [0, 0, 0]]))
    written = render_params_file(path, tmp_path / "face.png", flame=flame64)
    assert [p.name for p in written] == ["face_000.png", "face_001.png"]
    images = [np.asarray(Image.open(p)) for p in written]
    for img in images:
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8
        assert img[112, 112].min() > 50 and img[:8, :8].max() == 0
    assert not np.array_equal(images[0], images[1])  # the open jaw shows
