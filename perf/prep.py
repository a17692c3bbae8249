"""Prep throughput: the full shard pipeline against bare MediaPipe FaceMesh inference, in one run.

Input: N variants of a real photo (skimage's astronaut) under random scales (0.5-1x), crops
that keep the face, and horizontal flips, written as JPEG (quality 95) into a temporary
dataset folder.

- bare: FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1).process on
  the already decoded images held in memory (detectors warmed up): inference only, in one
  thread, and in T threads (one FaceMesh per thread, T = the machine's cores).
- pipeline: `run_prep` from the JPEG files to finished shards (read + decode, MediaPipe, crop
  448 px, JPEG encode, tar write with sha256, manifest), MediaPipe only (--fan off): 1 worker
  single-threaded, 1 worker with its helper threads (reading and encoding overlap MediaPipe),
  and 2 worker processes (their start-up included).

Same threads on both sides: the headline pairs the single-threaded pipeline with the
single-threaded bare loop; the threaded pipeline is paired with the T-thread bare loop and
printed too. Correctness first: every shard's MediaPipe landmarks, mapped back through its
stored affine, must equal the bare detection on the same decoded file (<= 0.01 px), and the
sample count the bare face count; otherwise the script exits 1 without printing a ratio.

The pipeline's extra CPU per image (decode + crop + encode + write, ~2 ms) bounds what a
2-core machine can show: ratio x speed-up <= 2 x bare CPU / pipeline CPU per image.

Prints the throughputs, `speedup_2_workers=` and last
`ratio=<pipeline 1 worker single-threaded / bare single-threaded>`.

    python perf/prep.py [--n 2000] [--repeats 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def bare_inference(images: list[np.ndarray], threads: int = 1) -> tuple[float, float, int, list[np.ndarray | None]]:
    """Wall and CPU seconds of FaceMesh.process over the images in `threads` threads (one
    FaceMesh each, contiguous slices), how many had a face, and the (478, 2) pixel landmarks."""
    import mediapipe as mp

    def make():  # type: ignore[no-untyped-def]
        mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1)
        mesh.process(images[0])  # warm-up, untimed
        return mesh

    meshes = [make() for _ in range(threads)]
    bounds = np.linspace(0, len(images), threads + 1).astype(int)

    def work(k: int) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for image in images[bounds[k]:bounds[k + 1]]:
            faces = meshes[k].process(image).multi_face_landmarks
            h, w = image.shape[:2]
            out.append(None if faces is None else
                       np.array([(p.x * w, p.y * h) for p in faces[0].landmark], dtype=np.float64))
        return out

    try:
        wall, cpu = time.perf_counter(), time.process_time()
        if threads == 1:
            parts = [work(0)]
        else:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(work, range(threads)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        for mesh in meshes:
            mesh.close()
    landmarks = [lm for part in parts for lm in part]
    return wall, cpu, sum(lm is not None for lm in landmarks), landmarks


def check_against_bare(out: Path, files: list[Path], bare: list[np.ndarray | None]) -> float:
    """Worst distance (px) between each sample's landmarks mapped back to its file and the bare detection."""
    from fbench.landmarks import invert_affine, transform_points
    from fbench.shards.reader import iter_samples, shard_paths

    index = {f.stem: i for i, f in enumerate(files)}
    worst, seen = 0.0, 0
    for sample in iter_samples(shard_paths(out / "perf"), decode_image=False):
        ref = bare[index[Path(sample.meta["source_path"]).stem]]
        if ref is None:
            return float("inf")
        back = transform_points(invert_affine(sample.affine), sample.mp)[:, :2]
        worst = max(worst, float(np.abs(back - ref).max()))
        seen += 1
    return worst if seen == sum(lm is not None for lm in bare) else float("inf")


def pipeline(root: Path, out: Path, workers: int, overlap: bool | None = None) -> tuple[float, float, int]:
    """Wall and (this process's) CPU seconds of a full prep run, and its sample count."""
    shutil.rmtree(out, ignore_errors=True)
    config = PrepConfig(root=root, out=out, landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh"),
                        workers=workers, maxcount=100, progress=False, overlap=overlap)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_prep(VariantSource(), config)
    return time.perf_counter() - wall, time.process_time() - cpu, result.counts["samples"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of image variants")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many interleaved timings per configuration")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset and shards here and keep them")
    args = parser.parse_args()

    import mediapipe  # noqa: F401  (a one-off process cost, paid before any timing)

    from fbench.shards.worker import available_cores

    work = args.keep or Path(tempfile.mkdtemp(prefix="fbench-perf-prep-"))
    cores = available_cores()
    try:
        images = write_variants(work / "data", args.n)
        files = sorted((work / "data").glob("*.jpg"))
        print(f"{args.n} variants of skimage.data.astronaut(), mean side "
              f"{np.mean([im.shape[0] for im in images]):.0f} px, JPEG q95 -> shards of 448 px crops; "
              f"{cores} cores")
        runs = {"bare": lambda: bare_inference(images, 1),
                "bare-threads": lambda: bare_inference(images, cores),
                "w1-serial": lambda: pipeline(work / "data", work / "out-w1s", 1, overlap=False),
                "w1": lambda: pipeline(work / "data", work / "out-w1", 1, overlap=True),
                "w2": lambda: pipeline(work / "data", work / "out-w2", 2)}
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        counts: dict[str, int] = {}
        bare_landmarks: list[np.ndarray | None] = []
        for _ in range(args.repeats):  # the configurations interleave across repeats
            for name, run in runs.items():
                result = run()
                seconds, cpu_seconds, counts[name] = result[:3]
                if name == "bare":
                    bare_landmarks = result[3]
                if seconds < wall.get(name, np.inf):
                    wall[name], cpu[name] = seconds, cpu_seconds
        found = counts["bare"]
        bad = {k: c for k, c in counts.items() if c != found}
        worst = max(check_against_bare(work / d, files, bare_landmarks) for d in ("out-w1s", "out-w1", "out-w2"))
        print(f"agreement: sample counts {counts}; max landmark distance to the bare detection {worst:.2e} px")
        if bad or not worst <= 1e-2:
            print("ERROR: the pipeline's samples disagree with bare inference; no ratio is printed", file=sys.stderr)
            return 1
        rate = {k: args.n / v for k, v in wall.items()}
        print(f"bare FaceMesh inference, 1 thread   : {rate['bare']:7.1f} images/s ({found}/{args.n} with a face), "
              f"{cpu['bare'] / args.n * 1e3:.2f} ms CPU per image")
        print(f"bare FaceMesh inference, {cores} threads  : {rate['bare-threads']:7.1f} images/s")
        print(f"pipeline, 1 worker, single thread   : {rate['w1-serial']:7.1f} images/s, "
              f"{cpu['w1-serial'] / args.n * 1e3:.2f} ms CPU per image")
        print(f"pipeline, 1 worker + helper threads : {rate['w1']:7.1f} images/s "
              f"(vs bare in {cores} threads: {rate['w1'] / rate['bare-threads']:.3f})")
        print(f"pipeline, 2 workers (start-up in)   : {rate['w2']:7.1f} images/s "
              f"(vs bare in {cores} threads: {rate['w2'] / rate['bare-threads']:.3f})")
        efficiency = cpu["bare"] / cpu["w1-serial"]
        print(f"CPU per image: bare {cpu['bare'] / args.n * 1e3:.2f} ms, pipeline {cpu['w1-serial'] / args.n * 1e3:.2f} ms "
              f"(efficiency {efficiency:.3f}; with 2 idle cores, 2 workers can reach {2 * efficiency:.2f}x bare)")
        print(f"threaded pair (pipeline 1 worker + helpers / bare {cores} threads): {rate['w1'] / rate['bare-threads']:.3f}")
        print(f"speedup_2_workers={rate['w2'] / rate['w1-serial']:.3f}")
        print(f"ratio={rate['w1-serial'] / rate['bare']:.3f}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
