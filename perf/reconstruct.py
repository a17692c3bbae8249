"""Reconstruction of 64 images: the official demo's way, one image at a time, vs `run_reconstruct`.

The plain side does what SMIRK's demo.py does per image, written out here: read the file
with OpenCV (BGR), MediaPipe landmarks on the RGB image (utils/mediapipe_utils.py), the
demo's crop (demo.py crop_face: skimage `estimate_transform('similarity')` + `warp`, scale
1.4, 224 px), the encoder on a batch of one, then FLAME (demo.py:107-110). The fbench side is
`fbench.reconstruct.run_reconstruct` with default options on the same folder (it writes
params.npz per image; FLAME is not run by default since no mesh or render is asked for).

Images: 32 variants of skimage's astronaut (shifts, scales, flips, brightness) and 32 of
synthetic FLAME faces (the synthetic FFHQ writer). The model is SMIRK built from its config
with a fixed seed (random weights: both sides run the same network, nothing is claimed about
accuracy). Both sides must find the same faces and give the same parameters (within the
one-grey-level difference of the two crop samplers) before any time is reported; otherwise
the script exits non-zero without a ratio. The last line is
`ratio=<fbench seconds / plain seconds>` (below 1: fbench is faster).

Both sides run with the same torch intra-op thread count (`--threads`, default 1). On a
shared 2-core machine OpenMP's busy-waiting made 2 threads pathological (a batch-1 encoder
forward took 2.6 s with 2 threads against 0.12 s with 1), which would flatter fbench's
batching; one thread keeps the comparison about the pipeline.

    python perf/reconstruct.py [--device cpu] [--threads 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

TOLERANCE = 0.02  # max |difference| / (1 + max |value|) per field; crops differ by <= 3/255


def make_images(folder: Path) -> list[Path]:
    from skimage.data import astronaut

    from fbench.flame import load_flame
    from fbench.shards.media import read_image
    from fbench.synth import writer

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    variants: list[np.ndarray] = []
    base = astronaut()
    for i in range(32):
        img = base[:, ::-1] if i % 2 else base
        scale = 0.6 + 0.8 * rng.random()
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        img = np.roll(img, tuple(rng.integers(-20, 21, 2)), axis=(0, 1))
        variants.append(np.clip(img.astype(np.float32) * (0.8 + 0.4 * rng.random()), 0, 255).astype(np.uint8))
    synth = Path(tempfile.mkdtemp(prefix="synth-ffhq-"))
    try:
        writer("ffhq").write(synth, n=8, seed=0, corrupt=0, flame=load_flame())
        faces = [read_image(p) for p in sorted(synth.rglob("*.png")) if "images1024x1024" in str(p)]
    finally:
        shutil.rmtree(synth, ignore_errors=True)
    for i in range(32):
        img = faces[i % len(faces)]
        img = img[:, ::-1] if (i // len(faces)) % 2 else img
        side = int(img.shape[0] * (0.5 + 0.5 * rng.random()))
        img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        variants.append(np.clip(img.astype(np.float32) * (0.8 + 0.4 * rng.random()), 0, 255).astype(np.uint8))
    paths = []
    for i, img in enumerate(variants):
        path = folder / f"img{i:02d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def crop_face(landmarks: np.ndarray, scale: float = 1.4, image_size: int = 224):
    """The demo's crop transform (demo.py:16-34), written out."""
    from skimage.transform import estimate_transform

    left, right = np.min(landmarks[:, 0]), np.max(landmarks[:, 0])
    top, bottom = np.min(landmarks[:, 1]), np.max(landmarks[:, 1])
    old_size = (right - left + bottom - top) / 2
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    size = int(old_size * scale)
    src = np.array([[center[0] - size / 2, center[1] - size / 2], [center[0] - size / 2, center[1] + size / 2],
                    [center[0] + size / 2, center[1] - size / 2]])
    dst = np.array([[0, 0], [0, image_size - 1], [image_size - 1, 0]])
    return estimate_transform("similarity", src, dst)


def plain(model, flame, detector, paths: list[Path], device: str) -> dict[str, dict[str, np.ndarray]]:
    from skimage.transform import warp

    from methods.smirk.model import flame_params

    results = {}
    encoder = model.encoder
    for path in paths:
        image = cv2.imread(str(path))
        kpt = detector.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if not np.isfinite(kpt).all():
            continue
        tform = crop_face(kpt[:, :2])
        cropped = warp(image, tform.inverse, output_shape=(224, 224), preserve_range=True).astype(np.uint8)
        cropped = cv2.resize(cv2.cvtColor(cropped, cv2.COLOR_BGR2RGB), (224, 224))
        tensor = (torch.tensor(cropped).permute(2, 0, 1).unsqueeze(0).float() / 255.0).to(device)
        with torch.no_grad():
            outputs = encoder(tensor)
            params = flame_params(outputs)
            flame(params)
        results[path.stem] = {k: v.cpu().numpy()[0] for k, v in params.as_dict().items()}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    parser.add_argument("--keep", type=Path, default=None, help="keep the images and outputs in this folder")
    args = parser.parse_args()

    from fbench.flame import load_flame
    from fbench.landmarks.mediapipe_detector import MediaPipeDetector
    from fbench.reconstruct import load_reconstruction, run_reconstruct
    from methods.smirk.plugin import SmirkConfig, build

    torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="perf-reconstruct-"))
    try:
        images = work / "images"
        paths = sorted(images.glob("img*.png")) if len(list(images.glob("img*.png"))) == 64 else make_images(images)
        torch.manual_seed(0)
        model = build(SmirkConfig(generator=False)).to(args.device)
        with torch.no_grad():
            model.encoder.shape_encoder.shape_layers[0].weight.normal_(0, 0.01)
        flame = load_flame().to(args.device)
        detector = MediaPipeDetector()  # the demo builds its detector at import time
        model.reconstruct(torch.rand(1, 3, 224, 224))  # warm-up, both sides

        start = time.perf_counter()
        ref = plain(model, flame, detector, paths, args.device)
        plain_s = time.perf_counter() - start
        detector.close()

        out = work / "fbench"
        shutil.rmtree(out, ignore_errors=True)
        from fbench.reconstruct import ReconstructOptions

        start = time.perf_counter()
        run_reconstruct(model, [work / "images"], out, ReconstructOptions(device=args.device, progress=False))
        fbench_s = time.perf_counter() - start

        worst, problems = 0.0, []
        for path in paths:
            params, _ = load_reconstruction(out / "images" / path.stem / "params.npz")
            if (params is None) != (path.stem not in ref):
                problems.append(f"{path.name}: face found by {'plain' if params is None else 'fbench'} only")
                continue
            if params is None:
                continue
            for name, value in ref[path.stem].items():
                got = getattr(params, name).numpy()[0]
                err = float(np.abs(got - value).max()) / (1 + float(np.abs(value).max()))
                worst = max(worst, err)
                if err > TOLERANCE:
                    problems.append(f"{path.name}: {name} differs by {err:.4f} (relative)")
        print(f"images={len(paths)} faces plain={len(ref)} worst relative difference={worst:.5f}")
        if problems:
            print("plain and fbench disagree:\n  " + "\n  ".join(problems[:10]), file=sys.stderr)
            return 1
        print(f"plain: {plain_s:.2f} s ({plain_s / len(paths) * 1000:.1f} ms/image), "
              f"fbench: {fbench_s:.2f} s ({fbench_s / len(paths) * 1000:.1f} ms/image), torch threads "
              f"{torch.get_num_threads()}")
        print(f"ratio={fbench_s / plain_s:.3f}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
