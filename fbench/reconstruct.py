"""Reconstruct FLAME parameters from images, folders of images and videos with any method.

`run_reconstruct(reconstructor, inputs, out_dir, options)` is the library behind
`fbench reconstruct`: it takes any `fbench.plugins.Reconstructor` (it never imports a method)
and, per input, finds faces with MediaPipe, cuts them with the method's `CropSpec`
(`fbench.landmarks.crop.crop_for_method`), runs the method in batches and writes

    OUT/<name>/params.npz     FlameParams fields, one row per face found (per frame for videos),
                              plus `affine` (N, 2, 3) source -> crop, `frame` (N,) (-1 for
                              images), `face` (N,) (0 = largest), `landmarks_mp` (N, 478, 3)
                              detected points in source pixels; read back with `load_reconstruction`
    OUT/<name>/mesh.obj|ply   (options.mesh; images: one per face `mesh.obj`, `mesh_face1.obj`;
                              videos: `meshes/<frame>.obj` for the largest face), FLAME in metres
    OUT/<name>/render.png|mp4 (options.render) SMIRK's grey shading over the input
    OUT/<name>/landmarks.png|mp4 (options.landmarks) detected MediaPipe points (green) and,
                              with a FLAME model, the method's 68 FLAME landmarks (red)
    OUT/<name>/generator.png|mp4 (options.generator) the method's image generator's
                              reconstruction of each face crop, pasted back over the input
                              (ours; SMIRK's demo shows the crop, or with --render_orig warps
                              it onto black); methods with `generate`, e.g. SMIRK: see
                              `check_generator`; the random masking is seeded per input
                              (options.generator_seed)
    OUT/failures.jsonl        one line per unreadable input or image/frame without a face

<name> is the input's file stem (inside a folder input: `<folder>/<stem>`), reduced to
[A-Za-z0-9._-]. `params.npz` is written last, so its presence marks a finished input; with
`options.resume` such inputs are skipped.

Work is overlapped: one producer thread decodes inputs in order and hands each image or
frame to a pool of `options.workers` threads (one MediaPipe instance per thread) for
detection and cropping, while the calling thread runs the network on batches of
`options.batch_size` crops gathered across inputs.

Video smoothing (options.smooth, applied to the largest face's parameters over runs of
consecutive frames; faces are not tracked across frames, so other faces are left as is):
- "one-euro": the One Euro filter (Casiez et al., CHI 2012) per parameter, timestamps
  frame / fps; `one_euro_min_cutoff` (Hz, lower = smoother at rest), `one_euro_beta` (speed
  coefficient, higher = less lag in fast motion), `one_euro_d_cutoff` (Hz, derivative filter);
- "savgol": Savitzky-Golay (scipy.signal.savgol_filter) with `savgol_window` frames (odd;
  shortened for shorter runs) and polynomial order `savgol_order`.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fbench.shards.media import (
    IMAGE_SUFFIXES,
    InputError,
    iter_video_frames,
    read_image,
)

log = logging.getLogger(__name__)

RECONSTRUCT_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")
SMOOTHERS = ("one-euro", "savgol")
MESH_FORMATS = ("obj", "ply")
PARAMS_FILE = "params.npz"
FAILURES_FILE = "failures.jsonl"
_PARAM_FIELDS = ("shape", "expression", "jaw", "eyelids", "global_pose", "neck", "eyes", "cam", "translation")
_EXTRA_KEYS = ("affine", "frame", "face", "landmarks_mp")


@dataclass
class ReconstructOptions:
    """How `run_reconstruct` works; every field has the CLI's default."""

    all_faces: bool = False  # every face found (up to max_faces), else the largest only
    max_faces: int = 4  # faces MediaPipe looks for per image (the largest is chosen among them)
    batch_size: int = 16  # crops per network call
    device: str = "cpu"  # torch device for the network (and FLAME/renders)
    workers: int = 2  # decode/detect/crop threads, each with its own MediaPipe instance
    mediapipe_backend: str = "auto"  # see fbench.landmarks.mediapipe_detector
    mesh: str | None = None  # "obj" or "ply": write meshes (needs flame)
    render: bool = False  # SMIRK shading overlays (needs flame)
    landmarks: bool = False  # landmark overlays (FLAME landmarks too when flame is given)
    generator: bool = False  # the method generator's reconstruction per input (needs flame; see check_generator)
    generator_seed: int = 0  # seeds the generator input's random masking, per input (ours: reproducible)
    flame: Any = None  # a fbench.flame.FLAME module, for meshes, renders and FLAME landmarks
    smooth: str | None = None  # videos: "one-euro" or "savgol" (see the module doc)
    one_euro_min_cutoff: float = 1.0
    one_euro_beta: float = 1.0
    one_euro_d_cutoff: float = 1.0
    savgol_window: int = 9
    savgol_order: int = 2
    resume: bool = True  # skip inputs whose outputs exist
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.mesh is not None and self.mesh not in MESH_FORMATS:
            raise ValueError(f"mesh format must be one of {MESH_FORMATS}, got {self.mesh!r}")
        if self.smooth is not None and self.smooth not in SMOOTHERS:
            raise ValueError(f"smoothing must be one of {SMOOTHERS}, got {self.smooth!r}")
        if (self.mesh or self.render or self.generator) and self.flame is None:
            raise ValueError("meshes, renders and generator outputs need a FLAME model (options.flame)")
        for name in ("max_faces", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.savgol_window < 3 or self.savgol_window % 2 == 0 or not 0 <= self.savgol_order < self.savgol_window:
            raise ValueError(f"savgol_window must be odd >= 3 and savgol_order in [0, window), "
                             f"got {self.savgol_window}, {self.savgol_order}")
        if not (self.one_euro_min_cutoff > 0 and self.one_euro_d_cutoff > 0 and self.one_euro_beta >= 0):
            raise ValueError("one-euro cut-offs must be > 0 and beta >= 0")


@dataclass
class ReconstructSummary:
    inputs: int = 0  # inputs found
    skipped: int = 0  # already done (resume)
    done: int = 0  # processed in this run
    faces: int = 0  # face crops reconstructed
    failures: int = 0  # lines added to failures.jsonl
    outputs: list[Path] = field(default_factory=list)  # each processed input's output folder


@dataclass
class _Job:
    path: Path
    kind: str  # "image" or "video"
    out: Path
    fps: float = 25.0
    rows: list = field(default_factory=list)  # (frame, face, affine, landmarks, params-row dict)
    pending: int = 0  # crops handed to the network, not yet back
    ended: bool = False  # the producer has sent every unit
    image: np.ndarray | None = None  # the source image (images only, for overlays)


# ------------------------------------------------------------------------------- inputs


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "input"


def collect_inputs(inputs: Sequence[str | Path], out_dir: Path) -> list[_Job]:
    """Expand images, folders (their images and videos, sorted, not recursive) and videos into
    jobs with unique, sanitised output folders. A missing path or an unsupported file given
    explicitly is an error naming it."""
    jobs: list[_Job] = []
    taken: set[str] = set()

    def add(path: Path, name: str) -> None:
        suffix = path.suffix.lower()
        kind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in RECONSTRUCT_VIDEO_SUFFIXES else None
        if kind is None:
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or video "
                             f"({', '.join(RECONSTRUCT_VIDEO_SUFFIXES)})")
        unique, n = name, 2
        while unique.lower() in taken:
            unique, n = f"{name}-{n}", n + 1
        taken.add(unique.lower())
        jobs.append(_Job(path, kind, out_dir / unique))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            members = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                             and p.suffix.lower() in IMAGE_SUFFIXES + RECONSTRUCT_VIDEO_SUFFIXES)
            for member in members:
                add(member, f"{_safe(path.resolve().name)}/{_safe(member.stem)}")
        elif path.is_file():
            add(path, _safe(path.stem))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return jobs


def _job_done(job: _Job, options: ReconstructOptions) -> bool:
    if not (job.out / PARAMS_FILE).is_file():
        return False
    ext = "png" if job.kind == "image" else "mp4"
    wanted = [job.out / f"render.{ext}"] if options.render else []
    wanted += [job.out / f"landmarks.{ext}"] if options.landmarks else []
    wanted += [job.out / f"generator.{ext}"] if options.generator else []
    if options.mesh and job.kind == "video":
        wanted.append(job.out / "meshes")
    elif options.mesh:
        wanted.append(job.out / f"mesh.{options.mesh}")
    return all(p.exists() for p in wanted)


# ----------------------------------------------------------------------- detection + crop


@dataclass
class _Unit:
    """One image or frame after detection: crops of the chosen faces (largest first)."""

    job: int
    frame: int  # -1 for images
    crops: list[np.ndarray]
    affines: list[np.ndarray]
    landmarks: list[np.ndarray]
    error: str | None = None  # why nothing could be reconstructed (unreadable, no face)
    image: np.ndarray | None = None


def _face_area(points: np.ndarray) -> float:
    xy = points[:, :2]
    return float(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1]))


class _Detect:
    """Detection and cropping in worker threads, one MediaPipe instance per thread."""

    def __init__(self, spec: Any, options: ReconstructOptions) -> None:
        self.spec, self.options = spec, options
        self.local = threading.local()
        self.detectors: list[Any] = []
        self.lock = threading.Lock()

    def detector(self) -> Any:
        det = getattr(self.local, "detector", None)
        if det is None:
            from fbench.landmarks.mediapipe_detector import MediaPipeDetector

            det = MediaPipeDetector(self.options.mediapipe_backend, max_faces=self.options.max_faces)
            self.local.detector = det
            with self.lock:
                self.detectors.append(det)
        return det

    def __call__(self, job: int, frame: int, image: np.ndarray | None, path: Path | None, keep: bool) -> _Unit:
        if image is None:  # images are read here, in the worker
            try:
                image = read_image(path)
            except InputError as exc:
                return _Unit(job, frame, [], [], [], error=str(exc))
        try:
            return self.faces(job, frame, image, keep)
        except Exception as exc:
            log.debug("detection failed", exc_info=True)
            return _Unit(job, frame, [], [], [], error=f"detection failed ({type(exc).__name__}: {exc})")

    def faces(self, job: int, frame: int, image: np.ndarray, keep: bool) -> _Unit:
        from fbench.landmarks.crop import crop_for_method

        faces = [f for f in self.detector().detect_faces(image) if np.isfinite(f[:, :2]).all()]
        faces.sort(key=_face_area, reverse=True)
        if not self.options.all_faces:
            faces = faces[:1]
        unit = _Unit(job, frame, [], [], [], image=image if keep else None)
        for points in faces:
            try:
                crop, affine = crop_for_method(image, points, self.spec)
            except ValueError as exc:
                log.debug("face skipped: %s", exc)
                continue
            unit.crops.append(crop)
            unit.affines.append(affine)
            unit.landmarks.append(points)
        if not unit.crops:
            unit.error = "no face found"
        return unit

    def close(self) -> None:
        for det in self.detectors:
            det.close()


_END = object()


def _produce(jobs: list[_Job], todo: list[int], detect: _Detect, pool: ThreadPoolExecutor, out: queue.Queue,
             stop: threading.Event, keep_images: bool) -> None:
    """Decode inputs in order and queue (job, Future[_Unit]) items, then (job, None) per job end."""
    try:
        for j in todo:
            if stop.is_set():
                break
            job = jobs[j]
            if job.kind == "image":
                out.put((j, pool.submit(detect, j, -1, None, job.path, keep_images)))
            else:
                job.fps = _video_fps(job.path)
                try:
                    for index, frame in iter_video_frames(job.path, threads=1):
                        if stop.is_set():
                            break
                        out.put((j, pool.submit(detect, j, index, frame, None, False)))
                except InputError as exc:
                    failed: Future = Future()
                    failed.set_result(_Unit(j, -1 if exc.frame is None else exc.frame, [], [], [], error=str(exc)))
                    out.put((j, failed))
            out.put((j, None))
    except BaseException as exc:  # noqa: BLE001 - surface producer crashes in the consumer
        out.put((-1, exc))
    finally:
        out.put((-1, _END))


def _video_fps(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
            return float(rate) if rate else 25.0
    except Exception:  # noqa: BLE001 - the decoder reports the real error
        return 25.0


# ------------------------------------------------------------------------------ smoothing


def one_euro(values: np.ndarray, times: np.ndarray, min_cutoff: float, beta: float, d_cutoff: float) -> np.ndarray:
    """One Euro filter (Casiez, Roussel, Vogel, CHI 2012) along axis 0 of (T, D) values."""
    def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    out = np.array(values, dtype=np.float64, copy=True)
    dx = np.zeros_like(out[0])
    for t in range(1, len(out)):
        dt = float(times[t] - times[t - 1])
        if dt <= 0:
            raise ValueError("one-euro needs increasing timestamps")
        a_d = alpha(d_cutoff, dt)
        dx = a_d * (values[t] - out[t - 1]) / dt + (1 - a_d) * dx
        a = alpha(min_cutoff + beta * np.abs(dx), dt)
        out[t] = a * values[t] + (1 - a) * out[t - 1]
    return out


def savgol(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay along axis 0; the window shrinks (odd, > order) for short runs."""
    from scipy.signal import savgol_filter

    n = len(values)
    w = min(window, n if n % 2 else n - 1)
    if w <= order or w < 3:
        return np.asarray(values, dtype=np.float64)
    return savgol_filter(values, w, order, axis=0, mode="interp")


def _runs(frames: np.ndarray) -> list[np.ndarray]:
    """Index arrays of runs of consecutive frame numbers."""
    if len(frames) == 0:
        return []
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    return np.split(np.arange(len(frames)), breaks)


def smooth_params(arrays: dict[str, np.ndarray], frames: np.ndarray, faces: np.ndarray, fps: float,
                  options: ReconstructOptions) -> dict[str, np.ndarray]:
    """The parameter arrays with the largest face's rows smoothed over time (see the module doc)."""
    track = np.flatnonzero(faces == 0)
    out = {k: v.copy() for k, v in arrays.items()}
    for run in _runs(frames[track]):
        rows = track[run]
        if len(rows) < 2:
            continue
        for name in _PARAM_FIELDS:
            v = arrays[name][rows].astype(np.float64)
            if options.smooth == "one-euro":
                s = one_euro(v, frames[rows] / fps, options.one_euro_min_cutoff, options.one_euro_beta,
                             options.one_euro_d_cutoff)
            else:
                s = savgol(v, options.savgol_window, options.savgol_order)
            out[name][rows] = s.astype(arrays[name].dtype)
    return out


# -------------------------------------------------------------------------------- outputs


def load_reconstruction(path: str | Path) -> tuple[Any, dict[str, np.ndarray]]:
    """(FlameParams, extras) from a params.npz written here; extras: affine, frame, face, landmarks_mp."""
    from fbench.flame.params import FlameParams

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            values = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable reconstruction file ({exc})") from None
    extras = {k: values.pop(k) for k in list(values) if k in _EXTRA_KEYS or k == "fps"}
    n = values["shape"].shape[0] if "shape" in values else 0
    if n == 0:
        return None, extras
    params = FlameParams.from_dict(values, n_shape=values["shape"].shape[1], n_exp=values["expression"].shape[1])
    return params, extras


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from fbench.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _to_params(arrays: dict[str, np.ndarray], rows: np.ndarray, device: str) -> Any:
    import torch

    from fbench.flame.params import FlameParams

    return FlameParams(**{k: torch.as_tensor(arrays[k][rows], device=device) for k in _PARAM_FIELDS})


class _Renderer:
    """FLAME + SMIRK renderer for overlays, meshes and FLAME landmarks (built on first use)."""

    def __init__(self, flame: Any, size: int, device: str) -> None:
        self.flame, self.size, self.device = flame, size, device
        self._renderer = None

    def run(self, params: Any, need_image: bool) -> dict[str, Any]:
        import torch

        from fbench.render.smirk import render_flame, smirk_renderer_for

        with torch.inference_mode():
            if not need_image:
                return {"flame": self.flame(params)}
            if self._renderer is None:
                self._renderer = smirk_renderer_for(self.flame, "face" if "face" in self.flame.masks else None,
                                                    image_size=self.size)
            return render_flame(self.flame, params, self._renderer)


def _overlay(image: np.ndarray, render: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Paste a crop-space render (size, size, 3) float [0, 1] and its mask back onto the source."""
    import cv2

    h, w = image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = cv2.warpAffine(render.astype(np.float32), affine, (w, h), flags=flags)
    alpha = cv2.warpAffine(mask.astype(np.float32), affine, (w, h), flags=flags)[..., None]
    out = image.astype(np.float32) * (1 - alpha) + back * 255.0 * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _draw_landmarks(image: np.ndarray, detected: Sequence[np.ndarray], predicted: Sequence[np.ndarray]) -> np.ndarray:
    from fbench.landmarks.draw import COLORS, draw_points

    radius = max(1, round(min(image.shape[:2]) / 300))
    out = image
    for points in detected:
        out = draw_points(out, points, COLORS["mp"], radius)
    for points in predicted:
        out = draw_points(out, points, (255, 0, 0), radius + 1)
    return out


def _flame_landmarks_source(fan_ndc: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Renderer landmarks in [-1, 1] image coordinates -> source pixels via the crop affine."""
    from fbench.landmarks.crop import invert_affine, transform_points

    crop_px = (fan_ndc + 1) * size / 2 - 0.5  # align_corners=False pixel centres
    return transform_points(invert_affine(affine), crop_px)


class _Writer:
    """Per-input outputs once all of its crops are reconstructed."""

    def __init__(self, options: ReconstructOptions, spec: Any, n_exp: int, method: Any = None) -> None:
        self.options, self.spec, self.n_exp, self.method = options, spec, n_exp, method
        self.flame = _Renderer(options.flame, spec.size, options.device) if options.flame is not None else None

    def arrays(self, job: _Job) -> dict[str, np.ndarray]:
        """The job's rows as arrays (zero rows when no face was found)."""
        from fbench.flame.params import FIXED_WIDTHS

        rows = job.rows
        widths = dict(FIXED_WIDTHS, shape=300, expression=self.n_exp)
        out = {name: np.stack([r[4][name] for r in rows]) if rows else np.zeros((0, widths[name]), np.float32)
               for name in _PARAM_FIELDS}
        out["affine"] = np.stack([r[2] for r in rows]) if rows else np.zeros((0, 2, 3))
        out["frame"] = np.array([r[0] for r in rows], dtype=np.int64)
        out["face"] = np.array([r[1] for r in rows], dtype=np.int64)
        out["landmarks_mp"] = (np.stack([r[3] for r in rows]).astype(np.float32) if rows
                               else np.zeros((0, 478, 3), np.float32))
        return out

    def finish(self, job: _Job) -> None:
        job.rows.sort(key=lambda r: (r[0], r[1]))
        arrays = self.arrays(job)
        if job.kind == "video":
            arrays["fps"] = np.float64(job.fps)
            if self.options.smooth and len(job.rows) > 1:
                arrays = smooth_params(arrays, arrays["frame"], arrays["face"], job.fps, self.options)
        job.out.mkdir(parents=True, exist_ok=True)
        if job.rows and (self.options.mesh or self.options.render or self.options.landmarks or self.options.generator):
            if job.kind == "image":
                self._image_outputs(job, arrays)
            else:
                self._video_outputs(job, arrays)
        _write_npz(job.out / PARAMS_FILE, arrays)  # last: marks the input as done

    def _geometry(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, Any] | None:
        if self.flame is None:
            return None
        params = _to_params(arrays, rows, self.options.device)
        result = self.flame.run(params, need_image=self.options.render or self.options.landmarks)
        flame_out = result["flame"]
        geo = {"vertices": flame_out.vertices.float().cpu().numpy()}
        if "rendered_img" in result:
            geo["render"] = result["rendered_img"].permute(0, 2, 3, 1).float().cpu().numpy()
            geo["mask"] = result["mask"][:, 0].float().cpu().numpy()
            geo["fan"] = result["landmarks_fan"].float().cpu().numpy()
        return geo

    def _write_mesh(self, path: Path, vertices: np.ndarray) -> None:
        from fbench.geometry.mesh import Mesh, write_mesh

        path.parent.mkdir(parents=True, exist_ok=True)
        write_mesh(path, Mesh(vertices.astype(np.float64), self.options.flame.faces.cpu().numpy(), units="m"))

    def _decorate(self, image: np.ndarray, arrays: dict[str, np.ndarray], rows: np.ndarray,
                  geo: dict[str, Any] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        rendered = marked = None
        if self.options.render and geo is not None:
            rendered = image
            for i, r in enumerate(rows):
                rendered = _overlay(rendered, geo["render"][i], geo["mask"][i], arrays["affine"][r])
        if self.options.landmarks:
            predicted = [] if geo is None or "fan" not in geo else [
                _flame_landmarks_source(geo["fan"][i], arrays["affine"][r], self.spec.size) for i, r in enumerate(rows)]
            marked = _draw_landmarks(image, [arrays["landmarks_mp"][r] for r in rows], predicted)
        return rendered, marked

    def _generated(self, image: np.ndarray, arrays: dict[str, np.ndarray], rows: np.ndarray,
                   rng: Any) -> np.ndarray:
        """The input with each face's crop replaced by the method generator's reconstruction of it
        (the crop cut again from the source, as the network saw it)."""
        import torch

        from fbench.landmarks.crop import crop_for_method, transform_points

        crops, points = [], []
        for r in rows:
            crop, _ = crop_for_method(image, arrays["landmarks_mp"][r], self.spec)
            crops.append(crop)
            points.append(transform_points(arrays["affine"][r], arrays["landmarks_mp"][r][:, :2]))
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self.options.device)
        params = _to_params(arrays, rows, self.options.device)
        out = self.method.generate(images, params, torch.from_numpy(np.stack(points)), self.options.flame, rng)
        out = out.permute(0, 2, 3, 1).float().cpu().numpy()
        ones = np.ones(out.shape[1:3], np.float32)
        for i, r in enumerate(rows):
            image = _overlay(image, out[i], ones, arrays["affine"][r])
        return image

    def _generator_rng(self) -> Any:
        import torch

        return torch.Generator().manual_seed(self.options.generator_seed)

    def _image_outputs(self, job: _Job, arrays: dict[str, np.ndarray]) -> None:
        from fbench.io import atomic_path

        rows = np.arange(len(job.rows))
        geo = self._geometry(arrays, rows) if self.options.mesh or self.options.render or self.options.landmarks \
            else None
        if self.options.mesh and geo is not None:
            for i in rows:
                suffix = "" if i == 0 else f"_face{i}"
                self._write_mesh(job.out / f"mesh{suffix}.{self.options.mesh}", geo["vertices"][i])
        rendered, marked = self._decorate(job.image, arrays, rows, geo)
        generated = self._generated(job.image, arrays, rows, self._generator_rng()) if self.options.generator else None
        for name, picture in (("render", rendered), ("landmarks", marked), ("generator", generated)):
            if picture is not None:
                import cv2

                with atomic_path(job.out / f"{name}.png") as tmp:
                    if not cv2.imwrite(str(tmp), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
                        raise OSError(f"{tmp}: cannot write PNG")

    def _video_outputs(self, job: _Job, arrays: dict[str, np.ndarray]) -> None:
        from fbench.synth.video import write_h264

        frames = arrays["frame"]
        if self.options.mesh:
            track = np.flatnonzero(arrays["face"] == 0)
            for start in range(0, len(track), 64):
                rows = track[start:start + 64]
                geo = self._geometry(arrays, rows)
                for i, r in enumerate(rows):
                    self._write_mesh(job.out / "meshes" / f"{frames[r]:06d}.{self.options.mesh}", geo["vertices"][i])
        if not (self.options.render or self.options.landmarks or self.options.generator):
            return
        by_frame: dict[int, list[int]] = {}
        for r, f in enumerate(frames):
            by_frame.setdefault(int(f), []).append(r)
        rendered_frames: list[np.ndarray] = []
        marked_frames: list[np.ndarray] = []
        generated_frames: list[np.ndarray] = []
        rng = self._generator_rng()
        decorate = self.options.render or self.options.landmarks
        # Re-decode instead of holding every frame in memory (ours).
        for index, frame in iter_video_frames(job.path, threads=1):
            rows = np.array(by_frame.get(index, []), dtype=np.int64)
            even = (slice(0, frame.shape[0] // 2 * 2), slice(0, frame.shape[1] // 2 * 2))  # yuv420p needs even sizes
            if self.options.generator:  # crops cut from the whole frame, as the network saw them
                generated_frames.append((self._generated(frame, arrays, rows, rng) if len(rows) else frame)[even])
            frame = frame[even]
            if len(rows) and decorate:
                rendered, marked = self._decorate(frame, arrays, rows, self._geometry(arrays, rows))
            else:
                rendered, marked = frame, frame
            if self.options.render:
                rendered_frames.append(rendered if rendered is not None else frame)
            if self.options.landmarks:
                marked_frames.append(marked if marked is not None else frame)
        fps = max(1, round(job.fps))
        if self.options.render:
            write_h264(job.out / "render.mp4", rendered_frames, fps)
        if self.options.landmarks:
            write_h264(job.out / "landmarks.mp4", marked_frames, fps)
        if self.options.generator:
            write_h264(job.out / "generator.mp4", generated_frames, fps)


def check_generator(reconstructor: Any) -> None:
    """Raise a one-line ValueError unless the method can make generator outputs: it needs a
    `generate(images, params, landmarks, flame, generator=None)` method (crops (B, 3, S, S) in
    [0, 1], their FlameParams, MediaPipe points in crop pixels, a FLAME model, a torch.Generator
    -> (B, 3, S, S) in [0, 1]) and a `generator` that is not None."""
    name = type(reconstructor).__name__
    if not callable(getattr(reconstructor, "generate", None)):
        raise ValueError(  # noqa: TRY004 - a user error, shown as one line by the CLI
            f"--generator: the method's model ({name}) has no image generator (SMIRK models have one)")
    if getattr(reconstructor, "generator", None) is None:
        raise ValueError(f"--generator: this {name} has no generator (its checkpoint holds only the encoder)")


# ---------------------------------------------------------------------------------- run


def _log_failure(handle: Any, job: _Job, frame: int, reason: str) -> None:
    line = {"input": str(job.path), "frame": None if frame < 0 else int(frame), "reason": reason}
    handle.write(json.dumps(line) + "\n")
    handle.flush()


def run_reconstruct(reconstructor: Any, inputs: Sequence[str | Path], out_dir: str | Path,
                    options: ReconstructOptions | None = None) -> ReconstructSummary:
    """Reconstruct every input (image, folder of images/videos, video) into `out_dir`.

    `reconstructor` is any `fbench.plugins.Reconstructor` (its `crop` and `reconstruct`);
    a torch module is moved to `options.device` (on the CPU also to channels-last memory). Returns counts; failures are logged in
    `out_dir/failures.jsonl`, never raised (only bad arguments raise).
    """
    import torch
    from tqdm import tqdm

    options = options or ReconstructOptions()
    if options.generator:
        check_generator(reconstructor)
    out_dir = Path(out_dir)
    jobs = collect_inputs(inputs, out_dir)
    summary = ReconstructSummary(inputs=len(jobs))
    todo = [i for i, job in enumerate(jobs) if not (options.resume and _job_done(job, options))]
    summary.skipped = len(jobs) - len(todo)
    if not todo:
        return summary
    cpu = torch.device(options.device).type == "cpu"
    if isinstance(reconstructor, torch.nn.Module):
        reconstructor.to(options.device)
        if cpu:  # ours: MobileNet-style convolutions run faster channels-last on CPU (same results)
            reconstructor.to(memory_format=torch.channels_last)
    if options.flame is not None:
        options.flame.to(options.device)
    spec = reconstructor.crop
    writer = _Writer(options, spec, int(reconstructor.n_exp), reconstructor)
    detect = _Detect(spec, options)
    keep_images = bool(options.render or options.landmarks or options.generator)
    out_dir.mkdir(parents=True, exist_ok=True)
    lookahead = max(2 * options.batch_size, 4 * options.workers)
    items: queue.Queue = queue.Queue(maxsize=lookahead)
    stop = threading.Event()
    batch: list[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]] = []  # job, frame, face, crop, affine, pts
    ended: list[int] = []

    def flush() -> None:
        if not batch:
            return
        images = torch.from_numpy(np.stack([b[3] for b in batch])).permute(0, 3, 1, 2)  # NHWC memory
        if not cpu:
            images = images.contiguous()
        params = reconstructor.reconstruct(images.to(options.device))
        values = {k: getattr(params, k).detach().float().cpu().numpy() for k in _PARAM_FIELDS}
        for i, (j, frame, face, _, affine, points) in enumerate(batch):
            job = jobs[j]
            job.rows.append((frame, face, affine, points, {k: v[i] for k, v in values.items()}))
            job.pending -= 1
        summary.faces += len(batch)
        batch.clear()
        finish_ready()

    def finish_ready() -> None:
        for j in [j for j in ended if jobs[j].pending == 0]:
            ended.remove(j)
            jobs[j].ended = True
            writer.finish(jobs[j])
            jobs[j].rows, jobs[j].image = [], None
            summary.done += 1
            summary.outputs.append(jobs[j].out)
            bar.update(1)

    with open(out_dir / FAILURES_FILE, "a", encoding="utf-8") as failures, \
            ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="fbench-detect") as pool, \
            tqdm(total=len(todo), unit="input", desc="reconstruct", disable=not options.progress) as bar:
        producer = threading.Thread(target=_produce, args=(jobs, todo, detect, pool, items, stop, keep_images),
                                    name="fbench-decode", daemon=True)
        producer.start()
        try:
            while True:
                j, item = items.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item is None:  # every unit of job j is queued
                    ended.append(j)
                    finish_ready()
                    continue
                unit: _Unit = item.result()
                job = jobs[j]
                if unit.error:
                    _log_failure(failures, job, unit.frame, unit.error)
                    summary.failures += 1
                if unit.image is not None:
                    job.image = unit.image
                for face, (crop, affine, points) in enumerate(zip(unit.crops, unit.affines, unit.landmarks)):
                    job.pending += 1
                    batch.append((j, unit.frame, face, crop, affine, points))
                    if len(batch) >= options.batch_size:
                        flush()
            flush()
            finish_ready()
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    items.get_nowait()
                except queue.Empty:
                    producer.join(0.05)
            detect.close()
    return summary


__all__ = ["ReconstructOptions", "ReconstructSummary", "check_generator", "collect_inputs", "load_reconstruction", "one_euro",
           "run_reconstruct", "savgol", "smooth_params"]
