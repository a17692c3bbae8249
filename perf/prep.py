"""Prep throughput: the full shard pipeline against bare MediaPipe FaceMesh inference, in one run.

Input: N variants of a real photo (skimage's astronaut) under random scales (0.5-1x), crops
that keep the face, and horizontal flips, written as JPEG (quality 95) into a temporary
dataset folder.

- bare: FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1).process on
  the already decoded images held in memory (one detector, warmed up): inference only.
- pipeline: `run_prep` from the JPEG files to finished shards (read + decode, MediaPipe, crop
  448 px, JPEG encode, tar write with sha256, manifest), MediaPipe only (--fan off): 1 worker
  in process with its default (reading and encoding in helper threads while a core is idle),
  the same single-threaded, and 2 worker processes (their start-up included).

The pipeline's extra CPU per image (decode + crop + encode + write, ~2 ms) bounds what a
2-core machine can show: ratio x speed-up <= 2 x bare CPU / pipeline CPU per image.

Prints the throughputs, `speedup_2_workers=` and last `ratio=<pipeline 1 worker / bare>`.

    python perf/prep.py [--n 2000] [--repeats 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fbench.landmarks.annotate import LandmarkConfig
from fbench.shards import MediaSource, SourceItem, walk_files
from fbench.shards.prep import PrepConfig, run_prep

FACE_BOX = (170, 60, 290, 190)  # x0, y0, x1, y1 of the astronaut's head in the 512 px photo


class VariantSource(MediaSource):
    name = "perf"
    splits = ("train",)

    def items(self, root: Path, options) -> list[SourceItem]:
        return [SourceItem(id=rel[:-4], split="train", path=rel) for rel in walk_files(root, (".jpg",))]


def write_variants(root: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """N JPEG variants of the astronaut photo; returns their decoded RGB arrays (as the files hold them)."""
    import cv2
    from skimage import data

    photo = data.astronaut()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    decoded = []
    for i in range(n):
        s = rng.uniform(0.5, 1.0)
        image = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
        fx0, fy0, fx1, fy1 = (int(v * s) for v in FACE_BOX)
        side = int(rng.uniform(0.6, 1.0) * min(h, w))
        side = max(side, fx1 - fx0 + 20, fy1 - fy0 + 20)
        x0 = int(rng.integers(max(0, fx1 - side), min(fx0, w - side) + 1))
        y0 = int(rng.integers(max(0, fy1 - side), min(fy0, h - side) + 1))
        image = image[y0:y0 + side, x0:x0 + side]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        path = root / f"{i:06d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        decoded.append(cv2.imread(str(path), cv2.IMREAD_COLOR_RGB))
    return decoded


def bare_inference(images: list[np.ndarray]) -> tuple[float, float, int]:
    """Wall and CPU seconds of FaceMesh.process over the images, and how many had a face."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        mesh.process(images[0])
        found = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for image in images:
            found += mesh.process(image).multi_face_landmarks is not None
        return time.perf_counter() - wall, time.process_time() - cpu, found


def pipeline(root: Path, out: Path, workers: int, overlap: bool | None = None) -> tuple[float, float, int]:
    """Wall and (this process's) CPU seconds of a full prep run, and its sample count."""
    shutil.rmtree(out, ignore_errors=True)
    config = PrepConfig(root=root, out=out, landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh"),
                        workers=workers, maxcount=100, progress=False, overlap=overlap)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_prep(VariantSource(), config)
    return time.perf_counter() - wall, time.process_time() - cpu, result.counts["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of image variants")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings per configuration")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset and shards here and keep them")
    args = parser.parse_args()

    import mediapipe  # noqa: F401  (a one-off process cost, paid before any timing)

    from fbench.shards.worker import available_cores

    work = args.keep or Path(tempfile.mkdtemp(prefix="fbench-perf-prep-"))
    try:
        images = write_variants(work / "data", args.n)
        print(f"{args.n} variants of skimage.data.astronaut(), mean side "
              f"{np.mean([im.shape[0] for im in images]):.0f} px, JPEG q95 -> shards of 448 px crops; "
              f"{available_cores()} cores")
        runs = {"bare": lambda: bare_inference(images),
                "w1": lambda: pipeline(work / "data", work / "out-w1", 1),
                "w1-serial": lambda: pipeline(work / "data", work / "out-w1s", 1, overlap=False),
                "w2": lambda: pipeline(work / "data", work / "out-w2", 2)}
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds, cpu_seconds, count = run()
                if name == "bare":
                    found = count
                assert count == found, f"{name}: {count} samples, bare inference found {found} faces"
                if seconds < wall.get(name, np.inf):
                    wall[name], cpu[name] = seconds, cpu_seconds
        rate = {k: args.n / v for k, v in wall.items()}
        print(f"bare FaceMesh inference            : {rate['bare']:7.1f} images/s ({found}/{args.n} with a face), "
              f"{cpu['bare'] / args.n * 1e3:.2f} ms CPU per image")
        print(f"pipeline, 1 worker                 : {rate['w1']:7.1f} images/s "
              f"(reading and encoding overlap MediaPipe in helper threads: a core is idle)")
        print(f"pipeline, 1 worker, single thread  : {rate['w1-serial']:7.1f} images/s, "
              f"{cpu['w1-serial'] / args.n * 1e3:.2f} ms CPU per image "
              f"(ratio {rate['w1-serial'] / rate['bare']:.3f})")
        print(f"pipeline, 2 workers (start-up in)  : {rate['w2']:7.1f} images/s "
              f"(speed-up {rate['w2'] / rate['w1-serial']:.3f} over the single-thread worker)")
        efficiency = cpu["bare"] / cpu["w1-serial"]
        print(f"CPU per image: bare {cpu['bare'] / args.n * 1e3:.2f} ms, pipeline {cpu['w1-serial'] / args.n * 1e3:.2f} ms "
              f"(efficiency {efficiency:.3f}; with 2 idle cores, 2 workers can reach {2 * efficiency:.2f}x bare)")
        print(f"speedup_2_workers={rate['w2'] / rate['w1']:.3f}")
        print(f"ratio={rate['w1'] / rate['bare']:.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
