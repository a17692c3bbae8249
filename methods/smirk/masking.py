"""SMIRK's masked generator input: the face hidden, ~1 % of its pixels kept at points sampled on the mesh.

Official code: github.com/georgeretsi/smirk at c7de404, `src/utils/masking.py` (cited as
masking.py:LINE), its callers `src/smirk_trainer.py` (smirk_trainer.py:LINE) and `demo.py`
(demo.py:LINE), and `configs/config_train.yaml` (config_train.yaml:LINE). Own code; the
behaviour is the official one, the differences are listed at the end of this docstring.

The recipe (smirk_trainer.py:76-94, the first path of training):
1. the face-hull mask (1 outside the convex hull of the 478 MediaPipe points, 0 inside;
   `methods.smirk.data.hull_mask`) is eroded with a (2r+1)^2 min-filter, which grows the
   hidden face by r = 10 pixels (masking.py:78, config_train.yaml:19), and the rendered face
   is hidden too (masking.py:81-82, rendered mask from smirk_trainer.py:79);
2. points are drawn on the predicted mesh (`sample_mesh_points`): triangles chosen with
   probability (area weight of their face region) x (facing the camera: mean vertex-normal z
   below 0.05 in image space) x (their area in the image plane), with replacement, then a
   uniform point inside each (masking.py:132-175); int(0.01 x 224 x 224) = 501 points
   (masking.py:140, config_train.yaml:18);
3. the image's pixels at those points are kept, each multiplied by N(1, 0.05^2) noise
   (masking.py:86-89), and dropped again inside 11 x 11 blocks centred on Bernoulli(0.01)
   pixels (masking.py:92-97; 0.005 in the cycle path, smirk_trainer.py:293);
4. the generator gets cat(rendered shading, masked image): 6 channels (smirk_trainer.py:94).

The cycle path (`cycle_masked_image`) moves the kept pixels to where their surface points go
on the augmented mesh and drops blocks around 0.005 of the pixels.

The demo's inference mode (`demo_masked_image`, demo.py:138-165) draws 5 x 0.01 of the image
in points and keeps a random prefix of them per image, between 1/25 and all of them.

What this gives: the official ratio counts image pixels, not face pixels (masking.py:140), and
the blocks keep only 0.99^121 ~= 30 % of the points (more near the border), so ~150 of the
501 points survive: ~0.3 % of the image, and on the synthetic head framed as the demo frames
it (rendered face ~40 % of the crop) 0.5-1 % of the face's pixels
(tests/test_smirk_masking.py), in line with the paper's "about 1 % of face pixels".

Our choices (differences from the official code):
- randomness comes from an optional `torch.Generator` (reproducible runs); the official code
  uses the global generator;
- an image whose mesh has no sampleable triangle (all weights zero, e.g. the back of the
  head) keeps no point; the official `torch.multinomial` raises;
- points are returned as (B, N, 2) pixel columns/rows; the official code also carries a
  truncated z that nothing reads;
- the number of triangles comes from the model (the official code hard-codes FLAME's 9976,
  masking.py:33), so the synthetic model works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

# config_train.yaml:18 `mask_ratio: 0.01`; demo.py:139 `mask_ratio = 0.01`.
MASK_RATIO = 0.01
# config_train.yaml:19 `mask_dilation_radius: 10`; demo.py:140. (masking.py:71 defaults wr=15,
# but every official caller passes 10.)
MASK_DILATION_RADIUS = 10
# masking.py:88: `torch.randn(...) * 0.05 + 1` (its comment says std 0.1; the code uses 0.05).
NOISE_STD = 0.05
# masking.py:71 `random_mask=0.01` (first path and demo); smirk_trainer.py:293 `random_mask=0.005` (cycle path).
BLOCK_PROB = 0.01
BLOCK_PROB_CYCLE = 0.005
# masking.py:95: `F.max_pool2d(random_mask, 11, stride=1, padding=5)`.
BLOCK_SIZE = 11
# masking.py:152: triangles whose mean vertex-normal z (image space) is below 0.05 may be sampled.
NORMAL_Z_MAX = 0.05
# demo.py:138 `mask_ratio_mul = 5`: the demo samples 5 x 0.01 of the image and keeps a random prefix.
DEMO_MASK_RATIO_MUL = 5
# masking.py:18-31, applied in this order (a later area overwrites an earlier one, masking.py:35-36).
AREA_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("neck", 0.0), ("right_eyeball", 0.0), ("right_ear", 0.0), ("lips", 0.5), ("nose", 0.5), ("left_ear", 0.0),
    ("eye_region", 1.0), ("forehead", 1.0), ("left_eye_region", 1.0), ("right_eye_region", 1.0),
    ("face_clean", 1.0), ("cleaner_lips", 1.0),
)
# The two areas of FLAME_masks_triangles.npy that have no vertex mask in FLAME_masks.pkl.
HAND_DRAWN_AREAS = ("face_clean", "cleaner_lips")


# ------------------------------------------------------------------ per-triangle probabilities


def area_probabilities(areas: Mapping[str, Any], num_faces: int, source: str = "mask triangles") -> Tensor:
    """(F,) per-triangle weights from area -> triangle indices, as masking.py:11-38."""
    missing = [name for name, _ in AREA_WEIGHTS if name not in areas]
    if missing:
        raise ValueError(f"{source}: missing area(s) {missing} that SMIRK's sampler weights")
    probabilities = torch.zeros(num_faces)
    for name, weight in AREA_WEIGHTS:
        probabilities[torch.as_tensor(np.asarray(areas[name], dtype=np.int64))] = weight
    return probabilities


def triangles_touching(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Sorted indices of the triangles with at least one vertex in `vertices`."""
    faces = np.asarray(faces)
    keep = np.zeros(int(faces.max()) + 1, dtype=bool)
    vertices = np.asarray(vertices, dtype=np.int64)
    keep[vertices[vertices <= faces.max()]] = True
    return np.flatnonzero(keep[faces].any(axis=1))


def derive_mask_triangles(faces: np.ndarray, vertex_masks: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """FLAME_masks_triangles.npy's areas from FLAME_masks.pkl's vertex masks.

    Each vertex-mask area is the set of triangles touching it: on FLAME2020's topology (SMIRK's
    assets/head_template.obj) this reproduces all 14 such areas of the official file exactly
    (checked when this was written). Ours: the two hand-drawn areas have no vertex mask;
    `face_clean` is stood in for by every triangle touching 'face' that no positively weighted
    area (lips, nose, eye regions, forehead) covers, and `cleaner_lips` is left empty (lips keep
    0.5). Measured on FLAME2020's template (weights x 3D triangle areas), the resulting
    distribution is 0.02 in total variation from the official file's (its support plus 12
    triangles); without the face_clean stand-in it would be 0.54.
    """
    faces = np.asarray(faces, dtype=np.int64)
    areas = {name: triangles_touching(faces, vertices) for name, vertices in vertex_masks.items()}
    weighted = [areas[name] for name, weight in AREA_WEIGHTS if weight > 0 and name not in HAND_DRAWN_AREAS]
    covered = np.unique(np.concatenate(weighted)) if weighted else np.zeros(0, np.int64)
    areas["face_clean"] = np.setdiff1d(areas["face"], covered)
    areas["cleaner_lips"] = np.zeros(0, np.int64)
    return areas


def face_probabilities(flame: Any, official_only: bool = False) -> Tensor:
    """(F,) SMIRK's per-triangle sampling weights for a fbench FLAME model.

    From the model directory's FLAME_masks_triangles.npy when present (SMIRK's asset), else
    derived from FLAME_masks.pkl (`derive_mask_triangles`); `official_only` refuses the
    derivation. A model with neither file stops with an error naming them.
    """
    from fbench.flame.io import load_mask_triangles

    num_faces = int(flame.faces.shape[0])
    path = flame.assets_files.get("mask_triangles")
    if path is not None:
        return area_probabilities(load_mask_triangles(path, num_faces), num_faces, str(path))
    if official_only or "masks" in flame.missing:
        flame.require("mask_triangles", *(() if official_only else ("masks",)))  # names the absent file(s)
    masks = {name: m.cpu().numpy() for name, m in flame.masks.items()}
    return area_probabilities(derive_mask_triangles(flame.faces.cpu().numpy(), masks), num_faces,
                              "triangles derived from FLAME_masks.pkl")


# -------------------------------------------------------------------------------- sampler


def triangle_xy_area(corners: Tensor) -> Tensor:
    """Area of triangles (..., 3, >=2) in the xy plane (masking.py:41-50, the shoelace formula)."""
    x, y = corners[..., 0], corners[..., 1]
    return 0.5 * (x[..., 0] * y[..., 1] + x[..., 1] * y[..., 2] + x[..., 2] * y[..., 0]
                  - x[..., 1] * y[..., 0] - x[..., 2] * y[..., 1] - x[..., 0] * y[..., 2]).abs()


def random_barycentric(n: int, generator: torch.Generator | None = None, device: Any = None) -> Tensor:
    """(n, 3) barycentrics uniform over a triangle: (u, v) folded back when u + v > 1 (masking.py:54-68)."""
    uv = torch.rand((2, n), generator=generator, device=generator.device if generator is not None else None)
    outside = uv.sum(0) > 1
    uv[:, outside] = 1 - uv[:, outside]
    u, v = uv
    return torch.stack([1 - u - v, u, v], dim=1).to(device if device is not None else uv.device)


def sampling_weights(transformed_vertices: Tensor, faces: Tensor, probabilities: Tensor) -> Tensor:
    """(B, F) unnormalised triangle weights: area weight x facing the camera x xy area (masking.py:144-159).

    Vertex normals are those of the image-space mesh (`fbench.render.smirk.vertex_normals`, as
    the official util.py), averaged over each triangle's corners; a triangle is sampleable when
    that mean z is below 0.05 (smaller z is nearer the camera, so front faces have negative z).
    """
    from fbench.render.smirk import vertex_normals

    faces = faces.to(transformed_vertices.device).long()
    normals = vertex_normals(transformed_vertices, faces)  # (B, V, 3)
    facing = normals[:, faces, 2].mean(-1) < NORMAL_Z_MAX  # (B, F)
    area = triangle_xy_area(transformed_vertices[:, faces])
    probabilities = probabilities.to(transformed_vertices)
    return torch.where(facing, probabilities, torch.zeros_like(area)) * area


def sample_mesh_points(transformed_vertices: Tensor, faces: Tensor, probabilities: Tensor,
                       mask_ratio: float = MASK_RATIO, image_size: int = 224,
                       coords: Mapping[str, Tensor] | None = None,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixels at points sampled on the mesh (masking.py:132-181).

    transformed_vertices: (B, V, 3) image-space vertices (`SmirkRenderer` 'transformed_vertices',
    x, y in [-1, 1]); faces: (F, 3); probabilities: (F,) from `face_probabilities`.
    Returns (B, N, 2) int64 pixel (column, row), N = int(mask_ratio * image_size^2), and the
    coordinates drawn ('sampled_faces_indices' (B, N), 'barycentric_coords' (B, N, 3), 'valid'
    (B,): False where no triangle could be sampled). Passing `coords` back re-places the same
    surface points on another mesh of the same topology (the cycle path, smirk_trainer.py:275-283).
    """
    batch, device = transformed_vertices.shape[0], transformed_vertices.device
    faces = faces.to(device).long()
    n = int(mask_ratio * image_size * image_size)  # masking.py:140
    if coords is None:
        weights = sampling_weights(transformed_vertices, faces, probabilities)
        valid = weights.sum(1) > 0
        weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # ours: see module doc
        gen_device = generator.device if generator is not None else device
        index = torch.multinomial(weights.to(gen_device), n, replacement=True, generator=generator).to(device)
        bary = random_barycentric(batch * n, generator, device).view(batch, n, 3).to(transformed_vertices)
        coords = {"sampled_faces_indices": index, "barycentric_coords": bary, "valid": valid}
    else:
        coords = dict(coords)
        coords.setdefault("valid", torch.ones(batch, dtype=torch.bool, device=device))
    index, bary = coords["sampled_faces_indices"], coords["barycentric_coords"]
    corners = transformed_vertices[torch.arange(batch, device=device)[:, None, None], faces[index]]  # (B, N, 3, 3)
    points = (corners * bary[..., None]).sum(-2)[..., :2]  # vertices2landmarks (masking.py:170)
    pixels = (0.5 * (1 + points) * image_size).long().clamp(0, image_size - 1)  # masking.py:172-175
    return pixels, coords


def transfer_pixels(image: Tensor, points_from: Tensor, points_to: Tensor, counts: Tensor | None = None) -> Tensor:
    """Image of zeros with image[points_from] written at points_to, per item (masking.py:116-129);
    `counts` (B,) uses only each item's first counts[b] points."""
    batch = image.shape[0]
    out = torch.zeros_like(image)
    rows = torch.arange(batch, device=image.device)[:, None]
    if counts is None:
        out[rows, :, points_to[..., 1], points_to[..., 0]] = image[rows, :, points_from[..., 1], points_from[..., 0]]
        return out
    for b in range(batch):
        k = int(counts[b])
        out[b, :, points_to[b, :k, 1], points_to[b, :k, 0]] = image[b, :, points_from[b, :k, 1], points_from[b, :k, 0]]
    return out


# ------------------------------------------------------------------------------ the mask


def running_max(x: Tensor, size: int, dim: int) -> Tensor:
    """Max over the centred window of odd `size` along `dim`, outside values counting as -inf:
    F.max_pool1d's values with stride 1 and padding size // 2. Windows of 1, 2, 4, ... values
    are built by doubling and the last one from two overlapping halves, so a pixel costs
    ~log2(size) elementwise maxima (F.max_pool2d's CPU kernel costs ~size comparisons and was
    most of the masking time in perf/train_step.py); max is exact, so the values are identical."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"running_max: the window must be odd and positive, got {size}")
    pad = size // 2
    n = x.shape[dim]
    if pad:
        edge = list(x.shape)
        edge[dim] = pad
        inf = x.new_full(edge, float("-inf"))
        x = torch.cat([inf, x, inf], dim)  # max_pool's implicit -inf padding
    width = 1  # x[i] holds the max of the `width` padded values from i on
    while 2 * width <= size:
        length = x.shape[dim] - width
        x = torch.maximum(x.narrow(dim, 0, length), x.narrow(dim, width, length))
        width *= 2
    if width < size:  # two windows of `width` overlapping to cover `size`
        shift = size - width
        length = x.shape[dim] - shift
        x = torch.maximum(x.narrow(dim, 0, length), x.narrow(dim, shift, length))
    return x.narrow(dim, 0, n)


def square_max_filter(x: Tensor, size: int) -> Tensor:
    """F.max_pool2d(x, size, stride=1, padding=size // 2) on (..., H, W) for odd `size`, as a
    row pass and a column pass of `running_max` (the same values; ours)."""
    return running_max(running_max(x, size, -1), size, -2)


def rendered_mask(rendered_img: Tensor) -> Tensor:
    """(B, 1, H, W): 1 where the shading is not black in every channel (smirk_trainer.py:79, demo.py:146)."""
    return 1 - (rendered_img == 0).all(dim=1, keepdim=True).to(rendered_img.dtype)


def dilate_face(hull_mask: Tensor, radius: int = MASK_DILATION_RADIUS) -> Tensor:
    """Grow the hidden face (zeros of `hull_mask`, (B, 1, H, W)) by `radius` pixels in the
    max-norm: a (2 radius + 1)^2 min-filter (masking.py:78)."""
    return 1 - square_max_filter(1 - hull_mask, 2 * radius + 1)


def mask_image(image: Tensor, hull_mask: Tensor, extra_points: Tensor, radius: int = MASK_DILATION_RADIUS,
               rendered: Tensor | None = None, extra_noise: bool = True, block_prob: float = BLOCK_PROB,
               generator: torch.Generator | None = None) -> Tensor:
    """SMIRK's `masking` (masking.py:71-102): the image outside the dilated hull (and outside
    `rendered`, a (B, 1, H, W) render mask), with the non-zero values of `extra_points`
    (B, C, H, W) pasted in after multiplicative N(1, 0.05^2) noise and 11 x 11 block dropping
    around Bernoulli(block_prob) centres. Detached, like the official code."""
    gen_device = generator.device if generator is not None else None
    mask = dilate_face(hull_mask.to(image), radius)
    if rendered is not None:
        mask = mask * (1 - rendered.to(image))
    masked = image * mask
    if extra_noise:
        noise = torch.randn(extra_points.shape, generator=generator, device=gen_device)
        extra_points = extra_points * (noise.to(image) * NOISE_STD + 1)
    if block_prob > 0:
        b, _, h, w = image.shape
        centres = torch.bernoulli(torch.full((b, 1, h, w), float(block_prob), device=gen_device), generator=generator)
        keep = 1 - square_max_filter(centres.to(image), BLOCK_SIZE)
        extra_points = extra_points * keep
    return torch.where(extra_points > 0, extra_points, masked).detach()


def generator_input(rendered_img: Tensor, masked_img: Tensor) -> Tensor:
    """(B, 6, H, W): the rendered shading then the masked image (smirk_trainer.py:94, demo.py:167)."""
    return torch.cat([rendered_img, masked_img], dim=1)


def masked_image(image: Tensor, hull_mask: Tensor, rendered_img: Tensor, transformed_vertices: Tensor,
                 faces: Tensor, probabilities: Tensor, mask_ratio: float = MASK_RATIO,
                 radius: int = MASK_DILATION_RADIUS, generator: torch.Generator | None = None) -> Tensor:
    """The training (first path) masked image, smirk_trainer.py:76-92: points sampled at
    `mask_ratio`, the image's own pixels kept there, noise and 0.01 blocks."""
    points, coords = sample_mesh_points(transformed_vertices, faces, probabilities, mask_ratio, image.shape[-1],
                                        generator=generator)
    extra = transfer_pixels(image, points, points) * coords["valid"].to(image)[:, None, None, None]
    return mask_image(image, hull_mask, extra, radius, rendered=rendered_mask(rendered_img), generator=generator)


def cycle_masked_image(image: Tensor, hull_mask: Tensor, rendered_img: Tensor, transformed_vertices: Tensor,
                       new_transformed_vertices: Tensor, faces: Tensor, probabilities: Tensor,
                       mask_ratio: float = MASK_RATIO, radius: int = MASK_DILATION_RADIUS,
                       generator: torch.Generator | None = None) -> Tensor:
    """The cycle path's masked image (smirk_trainer.py:262-293): points drawn on the predicted
    mesh (`transformed_vertices`) carry the image's pixels to the same surface points on the
    augmented mesh (`new_transformed_vertices`, same topology and batch; its render is
    `rendered_img`), I_aug(x_i + d_i) = I(x_i); the augmented render is hidden (mask where all
    channels are > 0, smirk_trainer.py:290), noise as the first path, 0.005 blocks (:293)."""
    points, coords = sample_mesh_points(transformed_vertices, faces, probabilities, mask_ratio, image.shape[-1],
                                        generator=generator)
    moved, _ = sample_mesh_points(new_transformed_vertices, faces, probabilities, mask_ratio, image.shape[-1],
                                  coords=coords)
    extra = transfer_pixels(image, points, moved) * coords["valid"].to(image)[:, None, None, None]
    rendered = (rendered_img > 0).all(dim=1, keepdim=True).to(image)
    return mask_image(image, hull_mask, extra, radius, rendered=rendered, block_prob=BLOCK_PROB_CYCLE,
                      generator=generator)


def demo_masked_image(image: Tensor, hull_mask: Tensor, rendered_img: Tensor, transformed_vertices: Tensor,
                      faces: Tensor, probabilities: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The demo's masked image for inference (demo.py:138-165): 5 x 0.01 of the image sampled on
    the mesh, a random prefix of length N / 5 * s^(+-1) (s uniform in [1, 5)) kept per image,
    then `mask_image` with its defaults (radius 10, noise, 0.01 blocks)."""
    b = image.shape[0]
    gen_device = generator.device if generator is not None else None
    points, coords = sample_mesh_points(transformed_vertices, faces, probabilities, MASK_RATIO * DEMO_MASK_RATIO_MUL,
                                        image.shape[-1], generator=generator)
    sign = torch.randint(0, 2, (b,), generator=generator, device=gen_device) * 2 - 1  # demo.py:155
    scale = torch.rand((b,), generator=generator, device=gen_device) * (DEMO_MASK_RATIO_MUL - 1) + 1  # demo.py:156
    counts = (points.shape[1] * (1 / DEMO_MASK_RATIO_MUL) * scale ** sign).long()  # demo.py:157
    counts = torch.where(coords["valid"].cpu(), counts.cpu(), torch.zeros_like(counts.cpu()))
    keep = transfer_pixels(torch.ones_like(image[:, :1]), points, points, counts)  # demo.py:154-160 pmask
    return mask_image(image, hull_mask, image * keep, MASK_DILATION_RADIUS, rendered=rendered_mask(rendered_img),
                      generator=generator)


def hull_masks(landmarks: Any, size: int) -> Tensor:
    """(B, 1, size, size) float face-hull masks (1 outside the hull) from (B, N, >=2) crop-pixel
    landmarks (`methods.smirk.data.hull_mask`, SMIRK's create_mask, base_dataset.py:9-15)."""
    from methods.smirk.data import hull_mask

    points = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, Tensor) else landmarks)
    return torch.from_numpy(np.stack([hull_mask(p, size) for p in points])[:, None].astype(np.float32))


__all__ = [
    "AREA_WEIGHTS", "BLOCK_PROB", "BLOCK_PROB_CYCLE", "BLOCK_SIZE", "DEMO_MASK_RATIO_MUL", "MASK_DILATION_RADIUS",
    "MASK_RATIO", "NOISE_STD", "NORMAL_Z_MAX", "area_probabilities", "cycle_masked_image", "demo_masked_image", "derive_mask_triangles",
    "dilate_face", "face_probabilities", "generator_input", "hull_masks", "mask_image", "masked_image",
    "random_barycentric", "rendered_mask", "running_max", "sample_mesh_points", "sampling_weights", "square_max_filter", "transfer_pixels",
    "triangle_xy_area", "triangles_touching",
]
