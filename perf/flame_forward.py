"""FLAME forward speed: fbench against smplx.FLAME on the same model, in one run.

Batch 64, float32, 300 shape + 100 expression components, with the 68 landmarks (dynamic
contour) on both sides; timed without and with gradients (forward + backward of the
vertex sum). Model: the synthetic FLAME-format model (or --flame DIR).
Correctness first: vertices and the 51 static landmarks must agree with smplx to float32
precision (1e-5 m), else the script exits 1 without a ratio. Repeats are interleaved
(fbench, smplx, smplx, fbench, ...) so load drift cannot favour one side; medians reported.
Last line: ratio=<fbench time / smplx time> (sum over both modes).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def smplx_layout(assets, directory: Path) -> Path:
    """Write the model as smplx.FLAME reads it (FLAME_NEUTRAL.npz + landmark embeddings)."""
    np.savez(directory / "FLAME_NEUTRAL.npz", v_template=assets.v_template, f=assets.faces, shapedirs=assets.shapedirs,
             posedirs=assets.posedirs, J_regressor=assets.j_regressor, weights=assets.weights,
             kintree_table=np.stack([np.r_[4294967295, assets.parents[1:]], np.arange(len(assets.parents))]))
    with open(directory / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": assets.static_lmk_faces, "lmk_b_coords": assets.static_lmk_bary}, f)
    np.save(directory / "flame_dynamic_embedding.npy",
            np.array({"lmk_face_idx": assets.dynamic_lmk_faces, "lmk_b_coords": assets.dynamic_lmk_bary}, dtype=object))
    return directory


def interleaved_medians(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median times of a and b, run alternately (a b, b a, a b, ...) after one warm-up each."""
    fn_a(), fn_b()
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (fn_a if which == 0 else fn_b)()
            times[which].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def main() -> int:
    import smplx

    from fbench.flame import FLAME, FlameParams, load_flame_assets
    from fbench.flame.synthetic import write_synthetic_flame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flame", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="perf-flame-"))
    flame_dir = args.flame or write_synthetic_flame(tmp / "flame", seed=0)
    assets = load_flame_assets(flame_dir)
    batch = args.batch
    ours = FLAME(assets, n_shape=300, n_exp=100)
    ref = smplx.FLAME(model_path=str(smplx_layout(assets, tmp)), ext="npz", num_betas=300, num_expression_coeffs=100,
                      batch_size=batch, use_face_contour=True)

    g = torch.Generator().manual_seed(0)
    p = FlameParams.zeros(batch, 300, 100)
    p.shape, p.expression = torch.randn(batch, 300, generator=g), torch.randn(batch, 100, generator=g)
    p.jaw, p.global_pose, p.neck = (0.2 * torch.randn(batch, 3, generator=g) for _ in range(3))
    p.eyes = 0.2 * torch.randn(batch, 6, generator=g)

    def run_ours(grad: bool):
        q = FlameParams(**{k: v.clone().requires_grad_(grad) for k, v in p.as_dict().items()})
        with torch.set_grad_enabled(grad):
            out = ours(q)
            if grad:
                (out.vertices.sum() + out.landmarks.sum()).backward()

    def run_ref(grad: bool):
        kw = dict(betas=p.shape, expression=p.expression, global_orient=p.global_pose, neck_pose=p.neck,
                  jaw_pose=p.jaw, leye_pose=p.eyes[:, :3], reye_pose=p.eyes[:, 3:])
        kw = {k: v.clone().requires_grad_(grad) for k, v in kw.items()}
        with torch.set_grad_enabled(grad):
            out = ref(**kw)
            if grad:
                (out.vertices.sum() + out.joints.sum()).backward()

    with torch.no_grad():  # same vertices on both sides before timing anything
        kw = dict(betas=p.shape, expression=p.expression, global_orient=p.global_pose, neck_pose=p.neck,
                  jaw_pose=p.jaw, leye_pose=p.eyes[:, :3], reye_pose=p.eyes[:, 3:])
        o, r = ours(p), ref(**kw)
        diff = (o.vertices - r.vertices).abs().max().item()
        num_j = assets.j_regressor.shape[0]
        lmk_diff = (o.landmarks[:, 17:] - r.joints[:, num_j:num_j + 51]).abs().max().item()
    print(f"model: {flame_dir} ({assets.num_vertices} vertices), batch {batch}, float32, "
          f"torch threads {torch.get_num_threads()}; max vertex difference {diff:.2e} m, "
          f"static landmarks {lmk_diff:.2e} m")
    if not (diff <= 1e-5 and lmk_diff <= 1e-5):
        print("ERROR: fbench and smplx disagree; no ratio is printed", file=sys.stderr)
        return 1
    total_ours = total_ref = 0.0
    for grad in (False, True):
        t_ours, t_ref = interleaved_medians(lambda: run_ours(grad), lambda: run_ref(grad), args.repeats)
        total_ours, total_ref = total_ours + t_ours, total_ref + t_ref
        mode = "forward+backward" if grad else "forward (no grad)"
        print(f"{mode:<18} fbench {t_ours * 1e3:8.2f} ms   smplx {t_ref * 1e3:8.2f} ms   ratio {t_ours / t_ref:.3f}")
    print(f"(medians of {args.repeats} interleaved repeats each)")
    print(f"ratio={total_ours / total_ref:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
