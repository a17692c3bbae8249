"""SMIRK's masking (methods/smirk/masking.py): triangle weights, the mesh sampler, the mask."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fbench.flame import FLAME, FlameFileError, FlameParams
from methods.smirk import masking as M


@pytest.fixture(scope="module")
def flame(flame_dir: Path) -> FLAME:
    return FLAME(flame_dir, n_exp=50)


@pytest.fixture(scope="module")
def rendered(flame: FLAME):
    """The synthetic head rendered frontal, turned 35 degrees and turned 90 degrees."""
    from fbench.render.smirk import render_flame, smirk_renderer_for

    params = FlameParams.zeros(3, n_exp=50)
    params.global_pose[1, 1] = math.radians(35)
    params.global_pose[2, 1] = math.radians(90)
    with torch.no_grad():
        return render_flame(flame, params, smirk_renderer_for(flame, "face"))


def _flat_mesh(corners: list[list[tuple[float, float, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Separate triangles from image-space corners (x, y, z); returns (1, V, 3) and (F, 3)."""
    verts = torch.tensor([c for tri in corners for c in tri], dtype=torch.float32)[None]
    faces = torch.arange(verts.shape[1]).view(-1, 3)
    return verts, faces


# Image-space triangles (smaller z is nearer): counter-clockwise in FLAME space is clockwise
# here, because the projection flips y and z. A front face has normal z < 0.
def _front(x0: float, y0: float, s: float) -> list[tuple[float, float, float]]:
    return [(x0, y0, 0.0), (x0, y0 + s, 0.0), (x0 + s, y0, 0.0)]


def _back(x0: float, y0: float, s: float) -> list[tuple[float, float, float]]:
    return [(x0, y0, 0.0), (x0 + s, y0, 0.0), (x0, y0 + s, 0.0)]


# ------------------------------------------------------------------ per-triangle weights


def test_area_weights_are_the_official_ones_in_the_official_order() -> None:
    areas = {name: np.zeros(0, np.int64) for name, _ in M.AREA_WEIGHTS}
    areas.update(lips=np.array([0, 1]), eye_region=np.array([1]), nose=np.array([2, 3]), left_ear=np.array([3]),
                 neck=np.array([4, 5]), face_clean=np.array([5]), forehead=np.array([6]), scalp=np.array([7]))
    probs = M.area_probabilities(areas, 9)
    # lips 0.5; lips then eye_region 1; nose 0.5; nose then left_ear 0; neck 0; neck then
    # face_clean 1; forehead 1; scalp (not weighted) 0; untouched 0
    assert probs.tolist() == [0.5, 1.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    del areas["cleaner_lips"]
    with pytest.raises(ValueError, match="cleaner_lips"):
        M.area_probabilities(areas, 9)


def _official_areas(faces: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FLAME_masks_triangles.npy as the official file defines it, written plainly: a vertex-mask
    area is every triangle with a vertex in the mask; face_clean/cleaner_lips as our stand-in."""
    areas = {}
    for name, verts in masks.items():
        inside = {int(v) for v in verts}
        areas[name] = np.array([i for i, tri in enumerate(faces) if any(int(v) in inside for v in tri)], np.int64)
    positive = set()
    for name in ("lips", "nose", "eye_region", "forehead", "left_eye_region", "right_eye_region"):
        positive.update(areas[name].tolist())
    areas["face_clean"] = np.array([t for t in areas["face"] if t not in positive], np.int64)
    areas["cleaner_lips"] = np.zeros(0, np.int64)
    return areas


def test_derived_triangles_match_the_official_definition_on_the_synthetic_model(flame: FLAME, flame_dir: Path,
                                                                                 tmp_path: Path) -> None:
    faces = flame.faces.numpy()
    masks = {k: v.numpy() for k, v in flame.masks.items()}
    official = _official_areas(faces, masks)
    derived = M.derive_mask_triangles(faces, masks)
    assert set(derived) == set(official)
    for name in official:
        np.testing.assert_array_equal(derived[name], official[name], err_msg=name)
    # the official file format, read from the FLAME directory, gives the same weights
    copy = tmp_path / "flame"
    shutil.copytree(flame_dir, copy)
    with open(copy / "FLAME_masks_triangles.npy", "wb") as fh:
        np.save(fh, np.array(official, dtype=object), allow_pickle=True)
    with_file = FLAME(copy, n_exp=50)
    assert with_file.assets_files["mask_triangles"].name == "FLAME_masks_triangles.npy"
    from_file = M.face_probabilities(with_file, official_only=True)
    derived_probs = M.face_probabilities(flame)
    assert torch.equal(from_file, derived_probs)
    assert {0.0, 0.5, 1.0} == set(derived_probs.unique().tolist())
    lips_only = np.setdiff1d(official["lips"], np.concatenate([official["face_clean"], official["eye_region"]]))
    assert (derived_probs[lips_only] == 0.5).all()


def test_missing_triangle_and_mask_files_are_named(flame_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "flame"
    shutil.copytree(flame_dir, copy)
    with pytest.raises(FlameFileError, match=r"FLAME_masks_triangles\.npy"):
        M.face_probabilities(FLAME(copy, n_exp=10), official_only=True)
    (copy / "FLAME_masks.pkl").unlink()
    with pytest.raises(FlameFileError, match=r"FLAME_masks_triangles\.npy.*FLAME_masks\.pkl"):
        M.face_probabilities(FLAME(copy, n_exp=10))
    with open(copy / "FLAME_masks_triangles.npy", "wb") as fh:
        pickle.dump({"lips": np.array([1])}, fh)  # not even an .npy
    with pytest.raises(FlameFileError, match=r"FLAME_masks_triangles\.npy: cannot be read"):
        M.face_probabilities(FLAME(copy, n_exp=10))
    with open(copy / "FLAME_masks_triangles.npy", "wb") as fh:
        np.save(fh, np.array({"lips": np.array([10 ** 6])}, dtype=object), allow_pickle=True)
    with pytest.raises(FlameFileError, match=r"FLAME_masks_triangles\.npy: 'lips' has indices outside"):
        M.face_probabilities(FLAME(copy, n_exp=10))
    with open(copy / "FLAME_masks_triangles.npy", "wb") as fh:
        np.save(fh, np.array({"lips": np.array([1])}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"FLAME_masks_triangles\.npy: missing area\(s\) \['neck'"):
        M.face_probabilities(FLAME(copy, n_exp=10))


# ---------------------------------------------------------------------------------- sampler


def test_sample_count_is_the_official_ratio_of_the_image(rendered, flame: FLAME) -> None:
    probs = M.face_probabilities(flame)
    points, coords = M.sample_mesh_points(rendered["transformed_vertices"], flame.faces, probs,
                                          generator=torch.Generator().manual_seed(0))
    assert M.MASK_RATIO == 0.01
    assert points.shape == (3, int(0.01 * 224 * 224), 2) == (3, 501, 2)
    assert points.dtype == torch.int64 and points.min() >= 0 and points.max() <= 223
    assert coords["barycentric_coords"].shape == (3, 501, 3) and bool(coords["valid"].all())


def test_sampler_weights_by_image_area_and_region_weight() -> None:
    # equal region weights, areas 1 : 4 ; then a half-weighted triangle of the small size
    verts, faces = _flat_mesh([_front(-0.9, -0.9, 0.2), _front(0.0, 0.0, 0.4), _front(-0.9, 0.5, 0.2)])
    probs = torch.tensor([1.0, 1.0, 0.5])
    _, coords = M.sample_mesh_points(verts, faces, probs, mask_ratio=4.0, image_size=100,
                                     generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(coords["sampled_faces_indices"].reshape(-1), minlength=3).double()
    freq = counts / counts.sum()
    want = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64) / 5.5
    assert torch.allclose(freq, want, atol=0.01), freq


def test_sampler_keeps_only_front_facing_weighted_triangles() -> None:
    # a large back face, a zero-weight front face, a small weighted front face
    verts, faces = _flat_mesh([_back(-0.9, -0.9, 0.8), _front(0.1, 0.1, 0.8), _front(-0.5, 0.3, 0.2)])
    weights = M.sampling_weights(verts, faces, torch.tensor([1.0, 0.0, 1.0]))
    assert weights[0, 0] == 0 and weights[0, 1] == 0 and weights[0, 2] > 0
    points, coords = M.sample_mesh_points(verts, faces, torch.tensor([1.0, 0.0, 1.0]), mask_ratio=1.0,
                                          image_size=64, generator=torch.Generator().manual_seed(2))
    assert set(coords["sampled_faces_indices"].unique().tolist()) == {2}
    # every point lies on that triangle: pixel (c, r) covers [c, c+1) / 32 - 1 in image space
    x = (points[0, :, 0].double() + 0.5) / 32 - 1
    y = (points[0, :, 1].double() + 0.5) / 32 - 1
    assert (x >= -0.5 - 1 / 32).all() and (y >= 0.3 - 1 / 32).all() and (x + y <= -0.5 + 0.3 + 0.2 + 2 / 32).all()


def test_sampler_on_the_turned_head_uses_visible_face_triangles_only(rendered, flame: FLAME) -> None:
    from fbench.render.smirk import vertex_normals

    probs = M.face_probabilities(flame)
    tv = rendered["transformed_vertices"]
    _, coords = M.sample_mesh_points(tv, flame.faces, probs, mask_ratio=0.05,
                                     generator=torch.Generator().manual_seed(3))
    normal_z = vertex_normals(tv, flame.faces)[:, flame.faces, 2].mean(-1)
    for b in range(3):
        tri = coords["sampled_faces_indices"][b]
        assert (probs[tri] > 0).all()
        assert (normal_z[b, tri] < M.NORMAL_Z_MAX).all()
    # turned 90 degrees, a large share of the face region is back-facing and never drawn
    hidden = (probs > 0) & (normal_z[2] >= M.NORMAL_Z_MAX)
    assert hidden.sum() > 0.2 * (probs > 0).sum()
    assert not torch.isin(coords["sampled_faces_indices"][2], hidden.nonzero()[:, 0]).any()


def test_kept_pixels_lie_on_the_rendered_face(rendered, flame: FLAME) -> None:
    """Points land on the rendered face, except on the weighted triangles that only touch the
    'face' vertex mask (the official areas take every triangle touching a region) and the
    renderer leaves out (it draws triangles with all three vertices in 'face')."""
    from fbench.render.smirk import faces_in_mask

    probs = M.face_probabilities(flame)
    drawn = faces_in_mask(flame.faces, flame.masks["face"], flame.num_vertices)
    covered = torch.nn.functional.max_pool2d(rendered["mask"], 3, stride=1, padding=1)  # one pixel of slack
    for b in range(2):  # frontal and 35 degrees: no self-occlusion of the face region
        points, coords = M.sample_mesh_points(rendered["transformed_vertices"][b:b + 1], flame.faces, probs,
                                              generator=torch.Generator().manual_seed(4))
        on_face = covered[b, 0, points[0, :, 1], points[0, :, 0]] > 0
        assert on_face.float().mean() > 0.9
        assert not drawn[coords["sampled_faces_indices"][0][~on_face]].any()


def test_random_barycentrics_are_uniform_on_the_triangle() -> None:
    bary = M.random_barycentric(200_000, torch.Generator().manual_seed(5))
    assert bary.shape == (200_000, 3)
    assert (bary >= 0).all() and torch.allclose(bary.sum(1), torch.ones(200_000))
    assert torch.allclose(bary.mean(0), torch.full((3,), 1 / 3), atol=0.005)
    assert torch.allclose((bary[:, 0] < 0.5).float().mean(), torch.tensor(0.75), atol=0.005)  # area below 1/2


def test_transfer_pixels_moves_values_between_points() -> None:
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    src = torch.tensor([[[1, 2], [3, 4]], [[0, 0], [7, 7]]])
    dst = torch.tensor([[[5, 6], [0, 1]], [[2, 2], [4, 4]]])
    out = M.transfer_pixels(img, src, dst)
    assert torch.equal(out[0, :, 6, 5], img[0, :, 2, 1]) and torch.equal(out[1, :, 4, 4], img[1, :, 7, 7])
    assert int((out != 0).any(1).sum()) == 4
    first = M.transfer_pixels(img, src, dst, counts=torch.tensor([1, 0]))
    assert int((first != 0).any(1).sum()) == 1 and torch.equal(first[0, :, 6, 5], img[0, :, 2, 1])


# ---------------------------------------------------------------------------------- the mask


def test_the_hidden_face_grows_by_the_official_radius() -> None:
    assert M.MASK_DILATION_RADIUS == 10
    hull = torch.ones(1, 1, 64, 64)
    hull[0, 0, 30, 40] = 0
    grown = M.dilate_face(hull)
    hidden = (grown[0, 0] == 0).nonzero()
    assert hidden[:, 0].min() == 20 and hidden[:, 0].max() == 40 and hidden[:, 1].min() == 30
    assert hidden[:, 1].max() == 50 and len(hidden) == 21 * 21


def test_square_max_filter_is_the_official_max_pool() -> None:
    x = (torch.rand(2, 1, 40, 50, generator=torch.Generator().manual_seed(12)) > 0.97).float()
    for size in (11, 21):
        assert torch.equal(M.square_max_filter(x, size), torch.nn.functional.max_pool2d(x, size, 1, size // 2))


def test_running_max_is_max_pool_on_any_values_and_sizes() -> None:
    # the doubling running max stands in for F.max_pool2d in the masking: same values, also
    # for real-valued and negative inputs, windows wider than the image, and either axis
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 2, 17, 9, generator=g)
    for size in (1, 3, 5, 7, 11, 21):
        pad = size // 2
        assert torch.equal(M.running_max(x, size, -1),
                           torch.nn.functional.max_pool2d(x, (1, size), 1, (0, pad))), size
        assert torch.equal(M.running_max(x, size, 2), torch.nn.functional.max_pool2d(x, (size, 1), 1, (pad, 0))), size
        assert torch.equal(M.square_max_filter(x, size), torch.nn.functional.max_pool2d(x, size, 1, pad)), size
    with pytest.raises(ValueError, match="odd"):
        M.running_max(x, 4, -1)


def _hole(size: int = 96, margin: int = 20, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.full((n, 3, size, size), 0.5)
    hull = torch.ones(n, 1, size, size)
    hull[..., margin:size - margin, margin:size - margin] = 0
    return img, hull


def test_mask_hides_the_dilated_face_and_pastes_the_extra_points_exactly() -> None:
    img, hull = _hole()
    img = img + torch.rand(img.shape, generator=torch.Generator().manual_seed(6)) * 0.4
    extra = torch.zeros_like(img)
    extra[..., 40, 50] = img[..., 40, 50]
    out = M.mask_image(img, hull, extra, extra_noise=False, block_prob=0)
    hidden = M.dilate_face(hull) == 0
    assert torch.equal(out * ~hidden, img * ~hidden)  # outside: the image
    inside = out.masked_select(hidden.expand_as(out))
    assert int((inside != 0).sum()) == 8 * 3 and torch.equal(out[..., 40, 50], img[..., 40, 50])
    rendered = torch.zeros_like(hull)
    rendered[..., :5, :5] = 1  # the rendered face is hidden too
    assert (M.mask_image(img, hull, extra, rendered=rendered, extra_noise=False, block_prob=0)[..., :5, :5] == 0).all()


def test_noise_is_multiplicative_with_the_official_spread() -> None:
    img, hull = _hole()
    extra = img * (M.dilate_face(hull) == 0)
    out = M.mask_image(img, hull, extra, block_prob=0, generator=torch.Generator().manual_seed(7))
    ratio = out.masked_select(extra > 0) / 0.5
    assert M.NOISE_STD == 0.05
    assert abs(float(ratio.mean()) - 1) < 0.003 and abs(float(ratio.std()) - 0.05) < 0.003


@pytest.mark.parametrize("block_prob", [M.BLOCK_PROB, M.BLOCK_PROB_CYCLE])
def test_block_dropping_keeps_the_official_share(block_prob: float) -> None:
    assert (M.BLOCK_PROB, M.BLOCK_PROB_CYCLE) == (0.01, 0.005)
    img, hull = _hole(size=160, margin=10, n=32)
    extra = img * (M.dilate_face(hull) == 0)
    out = M.mask_image(img, hull, extra, extra_noise=False, block_prob=block_prob,
                       generator=torch.Generator().manual_seed(8))
    interior = (slice(None), 0, slice(30, 130), slice(30, 130))  # >= 5 pixels from the image border
    kept = float((out[interior] > 0).float().mean())
    assert abs(kept - (1 - block_prob) ** 121) < 0.02, kept  # 11 x 11 blocks: 0.99^121 = 0.30, 0.995^121 = 0.55


def test_training_mask_keeps_about_one_percent_of_the_face(rendered, flame: FLAME) -> None:
    probs = M.face_probabilities(flame)
    face = rendered["mask"][:1].expand(16, -1, -1, -1)
    tv = rendered["transformed_vertices"][:1].expand(16, -1, -1)
    render = rendered["rendered_img"][:1].expand(16, -1, -1, -1)
    img = 0.2 + 0.6 * torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    out = M.masked_image(img, 1 - face, render, tv, flame.faces, probs, generator=torch.Generator().manual_seed(10))
    hidden = M.dilate_face(1 - face) == 0
    kept = ((out > 0).any(1, keepdim=True) & hidden).sum((1, 2, 3)).double()
    # 501 points, a few coincide, the 0.01 blocks keep ~30 %: ~0.3 % of the image, ~1 % of the face
    assert 0.0022 < float(kept.mean()) / 224 ** 2 < 0.0037
    assert 0.005 < float((kept / face.sum((1, 2, 3))).mean()) < 0.012
    assert out.shape == img.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() < 1.3


def test_demo_mask_and_generator_input(rendered, flame: FLAME) -> None:
    probs = M.face_probabilities(flame)
    img = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    hull = 1 - rendered["mask"]
    runs = [M.demo_masked_image(img, hull, rendered["rendered_img"], rendered["transformed_vertices"], flame.faces,
                                probs, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    hidden = M.dilate_face(hull) == 0
    kept = torch.stack([((r > 0).any(1, keepdim=True) & hidden).sum((1, 2, 3)) for r in runs]).double()
    n = int(0.05 * 224 * 224)
    assert kept.max() <= n and kept.max() > n / 25 * 0.3  # prefixes from n / 25 to n, then the blocks
    assert kept.std() > 0  # the prefix length is random per image
    assert kept.min() < 0.4 * n / 5 < kept.max()  # short prefixes (<= n / 5 points) and long ones
    x = M.generator_input(rendered["rendered_img"], runs[0])
    assert x.shape == (3, 6, 224, 224) and torch.isfinite(x).all()
    assert torch.equal(x[:, :3], rendered["rendered_img"]) and torch.equal(x[:, 3:] * ~hidden, img * ~hidden)
    again = M.demo_masked_image(img, hull, rendered["rendered_img"], rendered["transformed_vertices"], flame.faces,
                                probs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, runs[0])  # reproducible with a generator


def test_cycle_mask_moves_kept_pixels_with_the_mesh(rendered, flame: FLAME) -> None:
    probs = M.face_probabilities(flame)
    tv = rendered["transformed_vertices"][:1].expand(4, -1, -1)
    shift = 12
    moved = tv.clone()
    moved[..., 0] += 2 * shift / 224  # the augmented face, 12 pixels to the right
    render = torch.roll(rendered["rendered_img"][:1], shift, dims=-1).expand(4, -1, -1, -1)
    img = torch.zeros(4, 3, 224, 224)
    img[:, 0] = torch.arange(224.0)[None, :] / 224 + 0.01  # red encodes the column
    hull = torch.ones(4, 1, 224, 224)
    hull[..., 30:200, 30:200] = 0
    out = M.cycle_masked_image(img, hull, render, tv, moved, flame.faces, probs,
                               generator=torch.Generator().manual_seed(13))
    hidden = M.dilate_face(hull) == 0
    cols = ((out[:, :1] > 0) & hidden)[:, 0].nonzero()[:, 2]
    assert 200 < len(cols) / 4 < 400  # 501 points, 0.005 blocks keep ~55 % (0.01 would keep ~30 %)
    source_col = out[:, 0][(out[:, :1] > 0)[:, 0] & hidden[:, 0]] - 0.01  # noisy by 5 %
    offset = cols - source_col * 224  # the 5 % noise scatters it, its median is the move
    assert abs(float(offset.median()) - shift) < 3
