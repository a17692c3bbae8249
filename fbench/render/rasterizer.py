"""Differentiable mesh rasterizer with pytorch3d's `rasterize_meshes` semantics.

Scope: `faces_per_pixel=1`, `blur_radius=0`, no perspective correction, no z
clipping -- what SMIRK's orthographic renderer needs. Conventions follow
pytorch3d (facts read from `pytorch3d/csrc/rasterize_meshes/rasterize_meshes_cpu.cpp`,
`csrc/utils/geometry_utils.h` and `csrc/rasterize_points/rasterization_utils.h`):

- Input vertices are in NDC: +X points left, +Y points up, and output row 0 is the
  top of the image, column 0 the left. For an H x W image the shorter side spans
  [-1, 1]; the longer side spans [-W/H, W/H] (or [-H/W, H/W]).
- A pixel is sampled at its centre: the pixel in row r, column c sits at
  x = R_x/2 - R_x (c + 1/2) / W, y = R_y/2 - R_y (r + 1/2) / H, with R the NDC range.
- Barycentrics are edge functions over the signed area plus 1e-8; a pixel is
  covered when all three are strictly positive (pixel centres exactly on an edge
  are not covered). Faces with |area| <= 1e-8 and faces with any vertex z < 1e-8
  (behind the image plane) are never drawn.
- Depth is the barycentric interpolation of z; smaller is closer. Ties go to the
  lower face index.
- `pix_to_face` holds *packed* face indices (batch item b, face f -> b * F + f), -1
  for background; background zbuf, barycentrics and dists are -1.
- `dists` is the signed squared distance from the pixel centre to the face in the
  xy plane (negative inside), as pytorch3d's `pix_dists`.

The torch backend never loops over pixels or triangles: it enumerates candidate
(pixel, face) pairs from each face's pixel bounding box, tests them with edge
functions, resolves visibility with one `scatter_reduce(amin)` over a packed
(depth, face) key, and then recomputes barycentrics, depth and distance of the
winning face at each covered pixel with ordinary autograd-tracked tensor ops, so
gradients reach the vertex positions exactly as pytorch3d's backward does (the
gradient of the discrete coverage itself is zero in both).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Backend = Literal["auto", "torch", "pytorch3d"]

# pytorch3d's kEpsilon (geometry_utils.h, rasterize_meshes.py); shared so the torch
# backend draws and rejects exactly the same faces.
K_EPSILON = 1e-8
# Default cap on candidate (pixel, face) pairs held in memory at once; each pair costs
# roughly 100 bytes of temporaries, so this keeps a chunk to a few hundred MB.
DEFAULT_MAX_PAIRS = 1 << 22
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Rasterizer output, shapes as pytorch3d's with K = faces_per_pixel = 1."""

    pix_to_face: Tensor  # (B, H, W, 1) int64 packed face index, -1 background
    zbuf: Tensor  # (B, H, W, 1) NDC depth, -1 background
    bary_coords: Tensor  # (B, H, W, 1, 3), -1 background; differentiable
    dists: Tensor  # (B, H, W, 1) signed squared distance, -1 background

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool: pixel covered by some face."""
        return self.pix_to_face[..., 0] >= 0


def pytorch3d_available() -> bool:
    return importlib.util.find_spec("pytorch3d") is not None


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _ndc_range(s1: int, s2: int) -> float:
    # pytorch3d NonSquareNdcRange: the shorter side spans 2, the longer is scaled.
    return 2.0 * s1 / s2 if s1 > s2 else 2.0


def pixel_centers_ndc(image_size: int | tuple[int, int], dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """NDC x of every output column (W,) and NDC y of every output row (H,).

    Evaluated with pytorch3d's PixToNonSquareNdc arithmetic on the flipped index
    (the output image has +X to the left and +Y up).
    """
    h, w = _image_hw(image_size)
    rx, ry = _ndc_range(w, h), _ndc_range(h, w)
    xidx = (w - 1 - torch.arange(w, device=device)).to(dtype)
    yidx = (h - 1 - torch.arange(h, device=device)).to(dtype)
    xs = -rx / 2 + (rx * xidx + rx / 2) / w
    ys = -ry / 2 + (ry * yidx + ry / 2) / h
    return xs, ys


def _edge(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    # pytorch3d EdgeFunctionForward(p, a, b).
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def _barycentric(px: Tensor, py: Tensor, fv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Barycentrics of points (px, py) in faces fv (..., 3, 3) as pytorch3d computes them."""
    x0, y0 = fv[..., 0, 0], fv[..., 0, 1]
    x1, y1 = fv[..., 1, 0], fv[..., 1, 1]
    x2, y2 = fv[..., 2, 0], fv[..., 2, 1]
    area = _edge(x2, y2, x0, y0, x1, y1) + K_EPSILON
    w0 = _edge(px, py, x1, y1, x2, y2) / area
    w1 = _edge(px, py, x2, y2, x0, y0) / area
    w2 = _edge(px, py, x0, y0, x1, y1) / area
    return w0, w1, w2


def _segment_dist2(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    # Squared distance from p to the segment a-b; degenerate segments measure to b
    # (pytorch3d PointLineDistanceForward).
    dx, dy = bx - ax, by - ay
    l2 = dx * dx + dy * dy
    degenerate = l2 <= K_EPSILON
    t = ((px - ax) * dx + (py - ay) * dy) / torch.where(degenerate, torch.ones_like(l2), l2)
    t = t.clamp(0.0, 1.0)
    qx = torch.where(degenerate, bx, ax + t * dx)
    qy = torch.where(degenerate, by, ay + t * dy)
    return (px - qx) ** 2 + (py - qy) ** 2


def _triangle_dist2(px: Tensor, py: Tensor, fv: Tensor) -> Tensor:
    x0, y0 = fv[..., 0, 0], fv[..., 0, 1]
    x1, y1 = fv[..., 1, 0], fv[..., 1, 1]
    x2, y2 = fv[..., 2, 0], fv[..., 2, 1]
    d01 = _segment_dist2(px, py, x0, y0, x1, y1)
    d12 = _segment_dist2(px, py, x1, y1, x2, y2)
    d20 = _segment_dist2(px, py, x2, y2, x0, y0)
    return torch.minimum(torch.minimum(d01, d12), d20)


def _depth_face_key(z: Tensor, face: Tensor) -> Tensor:
    """Pack (depth, face index) into one int64 that orders by depth, then face.

    Drawn depths are >= 1e-8 > 0, and the bit patterns of positive float32 values
    are ordered like the values, so one scatter_reduce(amin) finds the nearest face
    and breaks exact ties by the lower index (pytorch3d sorts (z, face) tuples).
    Depth is compared at float32 precision even for float64 input.
    """
    zbits = z.to(torch.float32).view(torch.int32).to(torch.int64)
    return (zbits << 32) | face


def _visible_faces_torch(face_verts: Tensor, height: int, width: int, cull_backfaces: bool,
                         max_pairs: int) -> Tensor:
    """Per-pixel winning face key, (B*H*W,) int64; _INT64_MAX where nothing is drawn.

    face_verts: (B, F, 3, 3) detached NDC coordinates.
    """
    b, f = face_verts.shape[:2]
    device = face_verts.device
    fv = face_verts.reshape(b * f, 3, 3)
    xs, ys = pixel_centers_ndc((height, width), dtype=fv.dtype, device=device)
    rx, ry = _ndc_range(width, height), _ndc_range(height, width)

    x_min, x_max = fv[..., 0].amin(-1), fv[..., 0].amax(-1)
    y_min, y_max = fv[..., 1].amin(-1), fv[..., 1].amax(-1)
    # pytorch3d evaluates the face area as E(v0, v1, v2) for the zero-area and back-face
    # tests, but as E(v2, v0, v1) in the barycentric denominator; keep both roundings.
    area = _edge(fv[:, 0, 0], fv[:, 0, 1], fv[:, 1, 0], fv[:, 1, 1], fv[:, 2, 0], fv[:, 2, 1])
    denom = _edge(fv[:, 2, 0], fv[:, 2, 1], fv[:, 0, 0], fv[:, 0, 1], fv[:, 1, 0], fv[:, 1, 1]) + K_EPSILON
    drawable = (area.abs() > K_EPSILON) & (fv[..., 2].amin(-1) >= K_EPSILON)
    if cull_backfaces:
        drawable &= area >= 0  # pytorch3d: back_face = area < 0

    # Pixel bounding box of each face. NDC x decreases with the column index, so the
    # column range comes from the flipped index; widen by a hair so rounding never
    # drops a pixel the exact inside test would accept (extra candidates are rejected).
    slack = 1e-3

    def index_range(lo_ndc: Tensor, hi_ndc: Tensor, rng: float, size: int) -> tuple[Tensor, Tensor]:
        # flipped index i' = size - 1 - i has NDC  -rng/2 + rng (i' + 1/2) / size.
        lo_f = ((lo_ndc + rng / 2) * size / rng - 0.5 - slack).ceil()
        hi_f = ((hi_ndc + rng / 2) * size / rng - 0.5 + slack).floor()
        first = (size - 1 - hi_f).clamp(0, size - 1)
        last = (size - 1 - lo_f).clamp(-1, size - 1)
        # Faces entirely off-screen get an empty range.
        empty = (hi_f < 0) | (lo_f > size - 1)
        last = torch.where(empty, first - 1, last)
        return first.long(), last.long()

    c0, c1 = index_range(x_min, x_max, rx, width)
    r0, r1 = index_range(y_min, y_max, ry, height)
    nx = (c1 - c0 + 1).clamp(min=0)
    ny = (r1 - r0 + 1).clamp(min=0)
    counts = torch.where(drawable, nx * ny, torch.zeros_like(nx))

    keys = torch.full((b * height * width,), _INT64_MAX, dtype=torch.int64, device=device)
    coef = torch.cat([fv.reshape(b * f, 9), denom[:, None]], dim=1).T.contiguous()
    ends = counts.cumsum(0)
    total = int(ends[-1]) if ends.numel() else 0
    if total == 0:
        return keys

    # Chunk consecutive faces so that one chunk holds at most max_pairs candidates
    # (a single face larger than that forms a chunk by itself).
    ends_cpu = ends.cpu()
    start_face = 0
    n_faces = b * f
    while start_face < n_faces:
        base = int(ends_cpu[start_face - 1]) if start_face > 0 else 0
        stop_face = int(torch.searchsorted(ends_cpu, base + max_pairs, right=True))
        stop_face = min(max(stop_face, start_face + 1), n_faces)
        _scatter_chunk(keys, coef, xs, ys, counts, c0, r0, nx, start_face, stop_face, f, height, width)
        start_face = stop_face
    return keys


def _scatter_chunk(keys: Tensor, coef: Tensor, xs: Tensor, ys: Tensor, counts: Tensor, c0: Tensor,
                   r0: Tensor, nx: Tensor, start: int, stop: int, n_faces: int, height: int,
                   width: int) -> None:
    """Test all candidate pairs of faces [start, stop) and fold them into `keys`.

    coef: (10, B*F) rows x0 y0 z0 x1 y1 z1 x2 y2 z2 and the signed area + 1e-8.
    """
    device = coef.device
    cnt = counts[start:stop]
    n_pairs = int(cnt.sum())
    if n_pairs == 0:
        return
    packed = torch.repeat_interleave(torch.arange(start, stop, device=device), cnt, output_size=n_pairs)
    first_pair = (cnt.cumsum(0) - cnt).index_select(0, packed - start)
    local = torch.arange(n_pairs, device=device) - first_pair
    width_f = nx.index_select(0, packed)
    row_off = torch.div(local, width_f, rounding_mode="floor")
    col = c0.index_select(0, packed) + (local - row_off * width_f)
    row = r0.index_select(0, packed) + row_off

    # One 1-D gather per needed row: much faster than a 2-D gather on CPU.
    x0, y0, x1, y1, x2, y2, denom = (coef[i].index_select(0, packed) for i in (0, 1, 3, 4, 6, 7, 9))
    px, py = xs.index_select(0, col), ys.index_select(0, row)
    # Inside test = all barycentrics E_i / denom strictly positive; decided on the
    # signs first so the divisions only run on the pairs that survive.
    e0 = _edge(px, py, x1, y1, x2, y2)
    e1 = _edge(px, py, x2, y2, x0, y0)
    e2 = _edge(px, py, x0, y0, x1, y1)
    positive = denom > 0
    inside = torch.where(positive, (e0 > 0) & (e1 > 0) & (e2 > 0), (e0 < 0) & (e1 < 0) & (e2 < 0))
    hit = torch.nonzero(inside).squeeze(1)
    if hit.numel() == 0:
        return
    packed, row, col = packed[hit], row[hit], col[hit]
    z0, z1, z2 = (coef[i].index_select(0, packed) for i in (2, 5, 8))
    d = denom[hit]
    # pytorch3d's depth: sum of (E_i / denom) z_i.
    z = (e0[hit] / d) * z0 + (e1[hit] / d) * z1 + (e2[hit] / d) * z2
    front = z >= 0  # pytorch3d skips points behind the image plane
    if not bool(front.all()):
        packed, row, col, z = packed[front], row[front], col[front], z[front]
    batch = torch.div(packed, n_faces, rounding_mode="floor")
    pixel = (batch * height + row) * width + col
    keys.scatter_reduce_(0, pixel, _depth_face_key(z, packed - batch * n_faces), reduce="amin")


def _fragments_from_keys(keys: Tensor, face_verts: Tensor, height: int, width: int) -> Fragments:
    """Differentiable barycentrics, depth and distance of the winning face per pixel."""
    b, f = face_verts.shape[:2]
    dtype, device = face_verts.dtype, face_verts.device
    n_pix = b * height * width
    covered = torch.nonzero(keys != _INT64_MAX).squeeze(1)
    face = keys[covered] & 0xFFFFFFFF
    batch = covered // (height * width)
    row = (covered // width) % height
    col = covered % width
    xs, ys = pixel_centers_ndc((height, width), dtype=dtype, device=device)
    px, py = xs[col], ys[row]
    tri = face_verts[batch, face]  # (P, 3, 3), carries the graph back to the vertices
    w0, w1, w2 = _barycentric(px, py, tri)
    bary = torch.stack([w0, w1, w2], dim=-1)
    z = (bary * tri[..., 2]).sum(-1)
    dist = -_triangle_dist2(px, py, tri)  # every drawn pixel is inside its face

    pix_to_face = torch.full((n_pix,), -1, dtype=torch.int64, device=device)
    pix_to_face[covered] = batch * f + face
    zbuf = torch.full((n_pix,), -1.0, dtype=dtype, device=device).index_put((covered,), z)
    bary_out = torch.full((n_pix, 3), -1.0, dtype=dtype, device=device).index_put((covered,), bary)
    dists = torch.full((n_pix,), -1.0, dtype=dtype, device=device).index_put((covered,), dist)
    return Fragments(
        pix_to_face=pix_to_face.view(b, height, width, 1),
        zbuf=zbuf.view(b, height, width, 1),
        bary_coords=bary_out.view(b, height, width, 1, 3),
        dists=dists.view(b, height, width, 1),
    )


def _rasterize_pytorch3d(verts: Tensor, faces: Tensor, height: int, width: int,
                         cull_backfaces: bool) -> Fragments:
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes as p3d_rasterize_meshes
    from pytorch3d.structures import Meshes

    meshes = Meshes(verts=verts.float(), faces=faces[None].expand(verts.shape[0], -1, -1))
    pix_to_face, zbuf, bary, dists = p3d_rasterize_meshes(
        meshes, image_size=(height, width), blur_radius=0.0, faces_per_pixel=1, bin_size=None,
        perspective_correct=False, cull_backfaces=cull_backfaces)
    return Fragments(pix_to_face=pix_to_face, zbuf=zbuf, bary_coords=bary, dists=dists)


def resolve_backend(backend: Backend, verts: Tensor) -> Literal["torch", "pytorch3d"]:
    """'auto' uses pytorch3d for float32 CUDA input when it is importable.

    On CPU pytorch3d only has its naive per-pixel loop, which is slower than the
    torch backend, and it only takes float32.
    """
    if backend == "torch":
        return "torch"
    if backend == "pytorch3d":
        if not pytorch3d_available():
            raise ImportError("backend='pytorch3d' needs pytorch3d, which is not installed")
        return "pytorch3d"
    if backend != "auto":
        raise ValueError(f"unknown rasterizer backend {backend!r}; use 'auto', 'torch' or 'pytorch3d'")
    if verts.is_cuda and verts.dtype == torch.float32 and pytorch3d_available():
        return "pytorch3d"
    return "torch"


def rasterize_meshes(verts: Tensor, faces: Tensor, image_size: int | tuple[int, int] = 224, *,
                     cull_backfaces: bool = False, backend: Backend = "auto",
                     max_pairs: int = DEFAULT_MAX_PAIRS) -> Fragments:
    """Rasterize B meshes of one topology, nearest face per pixel.

    Args:
        verts: (B, V, 3) vertices in pytorch3d NDC (+X left, +Y up, z >= 0 in front,
            smaller z closer). Any float dtype, any device.
        faces: (F, 3) int vertex indices shared by all meshes.
        image_size: H = W, or (H, W).
        cull_backfaces: drop faces with negative signed area (pytorch3d's rule).
        backend: 'torch', 'pytorch3d' or 'auto' (see `resolve_backend`).
        max_pairs: memory cap of the torch backend (candidate pixel-face pairs per chunk).

    Returns:
        Fragments; barycentrics, zbuf and dists are differentiable w.r.t. verts.
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    height, width = _image_hw(image_size)
    faces = faces.to(device=verts.device, dtype=torch.int64)
    if resolve_backend(backend, verts) == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, height, width, cull_backfaces)
    face_verts = verts[:, faces]  # (B, F, 3, 3)
    keys = _visible_faces_torch(face_verts.detach(), height, width, cull_backfaces, max_pairs)
    return _fragments_from_keys(keys, face_verts, height, width)


def interpolate_covered(fragments: Fragments, face_attributes: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """Barycentric interpolation at the covered pixels only.

    face_attributes: (B * F, 3, D) indexed by packed face ids (pytorch3d layout).
    Returns the covered pixels' (batch, row, column) indices and their (P, D) values, for
    work that need not touch the background (`interpolate_face_attributes` scatters them).
    """
    p2f = fragments.pix_to_face[..., 0]
    mask = p2f >= 0
    idx = p2f[mask]
    bary = fragments.bary_coords[..., 0, :][mask]  # (P, 3)
    vals = (bary[..., None] * face_attributes[idx]).sum(-2)
    return torch.nonzero(mask, as_tuple=True), vals


def interpolate_face_attributes(fragments: Fragments, face_attributes: Tensor) -> Tensor:
    """Barycentric interpolation of per-face-corner attributes.

    face_attributes: (B * F, 3, D) indexed by packed face ids (pytorch3d layout).
    Returns (B, H, W, D) with zeros on background pixels.
    """
    where, vals = interpolate_covered(fragments, face_attributes)
    out = face_attributes.new_zeros(*fragments.pix_to_face.shape[:-1], face_attributes.shape[-1])
    return out.index_put(where, vals)
