"""Point-to-surface distance: fbench (open3d + float64 refinement) vs trimesh.

Setup (deterministic): a head-sized closed surface in millimetres, a bumpy sphere of
radius 100 mm with 10,000 triangles (convex hull of a Fibonacci sphere, then radial
bumps), and 100,000 query points sampled on it (area-weighted) plus isotropic
Gaussian noise of 1 mm, the scale of scan-to-mesh distances in face benchmarks.

fbench's time includes building the open3d scene (every call builds its own), not
importing open3d; trimesh's includes building its triangle R-tree. Both run on the
same points; the script checks that they agree and prints the timings side by side.
The last line is ``ratio=<fbench time / trimesh time>``.

Run: ``python perf/distance.py`` (trimesh's closest_point needs the ``rtree`` package).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy.spatial import ConvexHull

from fbench.geometry import point_mesh_distance


def bumpy_sphere(n_vertices: int = 5002, radius: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """A closed, non-convex surface with 2 * n_vertices - 4 triangles."""
    i = np.arange(n_vertices) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n_vertices)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    unit = np.stack(
        (np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)), axis=1
    )
    faces = ConvexHull(unit).simplices.astype(np.int64)
    bumps = 1.0 + 0.05 * np.sin(5.0 * unit[:, 0]) * np.cos(3.0 * unit[:, 1]) + 0.03 * np.sin(7.0 * unit[:, 2])
    return radius * unit * bumps[:, None], faces


def query_points(vertices: np.ndarray, faces: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    w = rng.dirichlet(np.ones(3), size=n)
    return np.einsum("ni,nij->nj", w, tri[face]) + rng.normal(scale=noise, size=(n, 3))


def best_of(repeats: int, fn):  # type: ignore[no-untyped-def]
    """Best wall time, best process CPU time (all threads), and the result."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), min(cpu), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--noise-mm", type=float, default=1.0)
    ap.add_argument("--trimesh-points", type=int, default=None,
                    help="time trimesh on this many of the points and scale linearly (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="fbench runs (best is reported)")
    ap.add_argument("--trimesh-repeats", type=int, default=2)
    args = ap.parse_args()

    try:
        import rtree  # noqa: F401  - trimesh.proximity needs it
        import trimesh
    except ImportError as exc:
        print(f"trimesh.proximity.closest_point needs trimesh and rtree: {exc}", file=sys.stderr)
        return 2

    vertices, faces = bumpy_sphere()
    points = query_points(vertices, faces, args.points, args.noise_mm, seed=0)
    n_tm = args.points if args.trimesh_points is None else min(args.trimesh_points, args.points)
    print(f"mesh: {len(vertices)} vertices, {len(faces)} triangles, radius ~100 mm")
    print(f"queries: {len(points)} points, surface samples + N(0, {args.noise_mm} mm) noise")

    # Warm-up outside the timings: module imports and first-call initialisation only.
    point_mesh_distance(points[:10], vertices, faces)
    trimesh.proximity.closest_point(trimesh.Trimesh(vertices[:3], [[0, 1, 2]], process=False), points[:2])

    t_fb, c_fb, (d_fb, q_fb, f_fb) = best_of(args.repeats, lambda: point_mesh_distance(points, vertices, faces))

    def run_trimesh():  # type: ignore[no-untyped-def]
        mesh = trimesh.Trimesh(vertices, faces, process=False)  # fresh: R-tree build timed
        return trimesh.proximity.closest_point(mesh, points[:n_tm])

    t_tm_sub, c_tm_sub, (q_tm, d_tm, f_tm) = best_of(args.trimesh_repeats, run_trimesh)
    t_tm = t_tm_sub * len(points) / n_tm
    c_tm = c_tm_sub * len(points) / n_tm

    # Agreement on the points both computed. trimesh is float64 too, but breaks near-ties
    # with an absolute tolerance on *squared* distances (trimesh.tol.merge), so it may
    # report a triangle slightly farther than the closest; fbench must never be farther.
    farther = d_fb[:n_tm] - d_tm  # > 0: fbench farther than trimesh
    scale = np.maximum(d_tm, 1.0)
    agree = bool(np.all(farther <= 1e-12 * scale) and np.all(-farther <= 1e-9 * scale))
    n_tm_farther = int(np.sum(-farther > 1e-12 * scale))
    same_face = float(np.mean(f_fb[:n_tm] == f_tm))
    print(f"agreement on {n_tm} points: max |d_fbench - d_trimesh| = {np.abs(farther).max():.3g} mm; "
          f"fbench farther by at most {max(farther.max(), 0.0):.3g} mm; trimesh farther on "
          f"{n_tm_farther} points (its tie tolerance) -> {'OK' if agree else 'MISMATCH'}")
    print(f"same triangle on {100 * same_face:.2f}% of points (the rest: equidistant triangles "
          "at shared edges/vertices)")
    print(f"mean distance: fbench {d_fb.mean():.6f} mm, trimesh {d_tm.mean():.6f} mm (on its points)")
    print()
    scaled = "" if n_tm == len(points) else f" (timed on {n_tm} points, scaled x{len(points) / n_tm:.1f})"
    print(f"{'':28s}{'fbench':>12s}{'trimesh':>12s}")
    print(f"{'time for ' + str(len(points)) + ' points [s]':28s}{t_fb:12.4f}{t_tm:12.4f}{scaled}")
    print(f"{'per point [us]':28s}{1e6 * t_fb / len(points):12.3f}{1e6 * t_tm / len(points):12.3f}")
    print(f"{'CPU time, all threads [s]':28s}{c_fb:12.4f}{c_tm:12.4f}   cpu ratio {c_fb / c_tm:.4f}")
    print(f"(best of {args.repeats} fbench runs, {args.trimesh_repeats} trimesh runs; "
          "fbench includes the open3d scene build; wall times inflate when other processes "
          "compete for the cores, CPU times much less; load average now "
          f"{os.getloadavg()[0]:.2f})")
    if not agree:
        print("ERROR: results disagree", file=sys.stderr)
    print(f"ratio={t_fb / t_tm:.4f}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
