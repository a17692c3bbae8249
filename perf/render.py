"""SMIRK render of FLAME at 224x224, batch 8, forward + backward: fbench vs a reference.

The reference is pytorch3d's rasterizer when pytorch3d is importable. Otherwise it is
the dense reference rasterizer defined below: every pixel is tested against every
face ((pixels x faces) edge-function matrices, chunked over pixels), the nearest
face is an argmin over faces, and its barycentrics are recomputed with autograd.
Both sides run the same SMIRK shading, so the difference is the rasterizer.

Timed: renderer forward (projection, rasterization, normals, shading) and backward of
a weighted image sum to the vertices; the FLAME forward is excluded. Each side is
warmed up, then the median over repeats is reported (the dense reference: one warm-up,
at most two repeats, on min(batch, 2) items, since it takes seconds per image and its
per-image cost does not depend on the batch). Both renderers' images are compared
first: at most 0.1 % of pixels may differ by more than 1e-3 (pixel centres on shared
edges), otherwise the script exits 1 without printing a ratio. The last line is
`ratio=<fbench ms per image / reference ms per image>` (below 1: fbench is faster).

Without pytorch3d the ratio is against the in-script dense rasterizer, a correctness
reference that is slow by construction: it is NOT a peer comparison and says nothing
about fbench against pytorch3d or any production rasterizer; the script says so.

    python perf/render.py [--batch 8] [--size 224] [--repeats 5] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import Tensor

from fbench.flame import FlameParams, load_flame
from fbench.render import Fragments, SmirkRenderer, default_cam, pixel_centers_ndc, pytorch3d_available, smirk_renderer_for

K_EPSILON = 1e-8  # pytorch3d's epsilon on the signed area


def dense_rasterize(verts: Tensor, faces: Tensor, size: int, pixel_chunk: int = 2048) -> Fragments:
    """Reference: all pixels against all faces, nearest face by argmin (first index on ties)."""
    b, f = verts.shape[0], faces.shape[0]
    fv = verts[:, faces]  # (B, F, 3, 3)
    with torch.no_grad():
        x, y, z = fv[..., 0], fv[..., 1], fv[..., 2]
        area = (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0]) - (y[..., 2] - y[..., 0]) * (x[..., 1] - x[..., 0])
        drawable = (area.abs() > K_EPSILON) & (z.amin(-1) >= K_EPSILON)
        denom = area + K_EPSILON
        # Barycentric i is affine in the pixel: w_i = a_i px + b_i py + c_i (edge opposite vertex i).
        j, k = [1, 2, 0], [2, 0, 1]
        a = (y[..., k] - y[..., j]) / denom[..., None]
        bb = -(x[..., k] - x[..., j]) / denom[..., None]
        c = (-x[..., j] * (y[..., k] - y[..., j]) + y[..., j] * (x[..., k] - x[..., j])) / denom[..., None]
        xs, ys = pixel_centers_ndc(size, dtype=verts.dtype, device=verts.device)
        px = xs.repeat(size)
        py = ys.repeat_interleave(size)
        winner = torch.full((b, size * size), -1, dtype=torch.int64, device=verts.device)
        for n in range(b):
            for start in range(0, size * size, pixel_chunk):
                qx, qy = px[start:start + pixel_chunk, None], py[start:start + pixel_chunk, None]
                w = [qx * a[n, :, i] + qy * bb[n, :, i] + c[n, :, i] for i in range(3)]  # 3 x (P, F)
                inside = (w[0] > 0) & (w[1] > 0) & (w[2] > 0) & drawable[n]
                depth = w[0] * z[n, :, 0] + w[1] * z[n, :, 1] + w[2] * z[n, :, 2]
                zmin, idx = depth.masked_fill_(~inside, float("inf")).min(-1)
                winner[n, start:start + pixel_chunk] = torch.where(torch.isfinite(zmin), idx, -1)
    # Differentiable barycentrics, depth and distance for the winners.
    covered = torch.nonzero(winner.reshape(-1) >= 0).squeeze(1)
    face = winner.reshape(-1)[covered]
    batch = covered // (size * size)
    pix = covered % (size * size)
    tri = fv[batch, face]
    qx, qy = px[pix], py[pix]
    e = lambda ax, ay, bx, by: (qx - ax) * (by - ay) - (qy - ay) * (bx - ax)  # noqa: E731
    area = ((tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1])
            - (tri[:, 2, 1] - tri[:, 0, 1]) * (tri[:, 1, 0] - tri[:, 0, 0])) + K_EPSILON
    bary = torch.stack([e(tri[:, 1, 0], tri[:, 1, 1], tri[:, 2, 0], tri[:, 2, 1]),
                        e(tri[:, 2, 0], tri[:, 2, 1], tri[:, 0, 0], tri[:, 0, 1]),
                        e(tri[:, 0, 0], tri[:, 0, 1], tri[:, 1, 0], tri[:, 1, 1])], -1) / area[:, None]
    n_pix = b * size * size
    p2f = torch.full((n_pix,), -1, dtype=torch.int64, device=verts.device)
    p2f[covered] = batch * f + face
    full = lambda *shape: torch.full((n_pix, *shape), -1.0, dtype=verts.dtype, device=verts.device)  # noqa: E731
    return Fragments(
        pix_to_face=p2f.view(b, size, size, 1),
        zbuf=full().index_put((covered,), (bary * tri[..., 2]).sum(-1)).view(b, size, size, 1),
        bary_coords=full(3).index_put((covered,), bary).view(b, size, size, 1, 3),
        dists=full().view(b, size, size, 1),  # not used by the shading
    )


class DenseSmirkRenderer(SmirkRenderer):
    """SMIRK renderer whose rasterizer is the dense reference."""

    def rasterize(self, transformed: Tensor) -> Fragments:
        ndc = torch.cat([-transformed[..., :2], transformed[..., 2:3] + 10.0], dim=-1)
        return dense_rasterize(ndc, self.faces, self.image_size)


def time_renderer(renderer: SmirkRenderer, vertices: Tensor, cam: Tensor, weight: Tensor,
                  repeats: int, warmup: int) -> tuple[float, Tensor]:
    """Median seconds of forward + backward; also the rendered images of the last run."""
    times = []
    for i in range(warmup + repeats):
        v = vertices.detach().clone().requires_grad_(True)
        if v.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        img = renderer(v, cam)["rendered_img"]
        (img * weight).sum().backward()
        if v.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), img.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ref-batch", type=int, default=None,
                        help="batch for the dense reference (default: min(--batch, 2): it takes seconds per "
                             "image and its cost per image does not depend on the batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--flame", default=None, help="FLAME directory (default: configured or synthetic)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 avoids OpenMP oversubscription on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    flame = load_flame(args.flame).to(args.device)
    params = FlameParams.zeros(args.batch, flame.n_shape, flame.n_exp, device=args.device)
    params.shape = 0.5 * torch.randn_like(params.shape)
    params.expression = 0.5 * torch.randn_like(params.expression)
    params.jaw[:, 0] = 0.1
    params.global_pose[:, 1] = torch.linspace(-0.3, 0.3, args.batch, device=args.device)
    with torch.no_grad():
        vertices = flame(params).vertices
    cam = default_cam(vertices, flame.masks["face"])
    renderer = smirk_renderer_for(flame, "face", image_size=args.size, backend="torch")
    weight = torch.rand(args.size, args.size, device=args.device)
    print(f"FLAME: {flame.flame_source.describe()}; {renderer.faces.shape[0]} face-region triangles")
    print(f"device={args.device} batch={args.batch} size={args.size} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.2f} (timings on a busy machine are inflated)")

    t_ours, img_ours = time_renderer(renderer, vertices, cam, weight, args.repeats, args.warmup)
    ms_ours = 1000 * t_ours / args.batch
    print(f"fbench torch rasterizer: {ms_ours:.2f} ms/image (forward+backward)")

    if pytorch3d_available():
        name = "pytorch3d rasterize_meshes"
        ref = smirk_renderer_for(flame, "face", image_size=args.size, backend="pytorch3d")
        ref_batch, repeats, warmup = args.batch, args.repeats, args.warmup
    else:
        name = "dense all-pairs reference (pytorch3d not installed)"
        ref = DenseSmirkRenderer(renderer.faces, image_size=args.size).to(args.device)
        ref_batch = args.ref_batch or min(args.batch, 2)
        repeats, warmup = max(1, min(args.repeats, 2)), 1  # each run takes seconds
    t_ref, img_ref = time_renderer(ref, vertices[:ref_batch], cam[:ref_batch], weight, repeats, warmup)
    ms_ref = 1000 * t_ref / ref_batch
    print(f"{name}: {ms_ref:.2f} ms/image (forward+backward, batch {ref_batch})")
    diff = (img_ours[:ref_batch] - img_ref).abs()
    differing = (diff.amax(1) > 1e-3).float().mean().item()
    print(f"agreement: max |image diff| {diff.max().item():.2e}, "
          f"pixels differing by >1e-3: {differing * 100:.3f}%")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"reference={name}")
    if not differing <= 1e-3:
        print("ERROR: fbench's images disagree with the reference's; no ratio is printed", file=sys.stderr)
        return 1
    if not pytorch3d_available():
        print("NOTE: pytorch3d is not installed, so the ratio below is against the in-script dense "
              "all-pairs rasterizer (a slow correctness reference), NOT a peer comparison")
    print(f"ratio={ms_ours / ms_ref:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
