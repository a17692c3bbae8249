"""Synthetic BP4D-Spontaneous 3D: textured per-frame face scans in mm with 3D landmarks.

Layout (see data_cards/bp4d.yaml; the real per-frame file format is not publicly
documented, so the reader accepts both formats written here)::

    <root>/<subject>/<task>/<frame:04d>.obj + .mtl + .png      (even-numbered subjects: OBJ)
    <root>/<subject>/<task>/<frame:04d>.wrl + .png             (odd-numbered subjects: VRML 2.0)
    <root>/<subject>/<task>/<frame:04d>_lmk3d.txt              68 lines "x y z", mm, iBUG-68 order
    <root>/<subject>/<task>/<frame:04d>.jpg                    the frame's 2D video frame (FRAME_2D_SIZE)
    <root>/2DFeatures/<subject>_<task>.mat                     the task's 2D landmark track (see below)
    <root>/fbench_ground_truth.h5

The 2D frames (the release's 2D video, one JPEG per frame numbered like the 3D scans, beside
them as in the release's ``2D+3D`` tree) are photo-like renders (``fbench.synth.faces.render_photo``,
fbench.render's rasterizer) of the frame's true head: the subject's FLAME head under the frame's
parameters, the surface the scan samples, seen by a fixed frontal camera with a per-subject
appearance. ``2DFeatures/<subject>_<task>.mat`` holds, as the release's 2D feature files do, a
1 x N struct array ``fit`` with fields ``frame`` (the JPEG's frame number + 1: the files index
frames from 1), ``pts_2d`` (49 x 2 pixels, iBUG-68 without the jaw contour and inner mouth
corners, ``IBUG49_IN_68``) and ``headPose`` (3 x 1 Euler pitch, yaw, roll in radians).

``--variant bp4dplus`` writes the landmarks as BP4D+ keeps them instead, in a tree of their own:
``<root>/3DFeatures/FacialLandmarks/<subject>_<task>_<frame:04d>.bndplus``, 83 lines "x,y,z" (mm):
FLAME's 68 landmarks in a fixed shuffled order plus 15 scan vertices, standing for BP4D+'s 83-point
scheme whose correspondence to iBUG-68 is not published.

Subjects F001, M001, F002, M002, ...; tasks T1..T8. Every scan is the subject's FLAME
head under that frame's parameters, remeshed in a topology of its own (``remesh``:
vertices embedded in FLAME triangles, ~4000 of them over the front of the head),
displaced along the surface normal by Gaussian noise (``NOISE_MM``), with 1-3 round holes
per frame, and moved into scanner coordinates by the subject's random similarity
``scan = s R x + t`` (s = 1000: metres to mm; R uniform on SO(3); t up to 300 mm), which
the ground truth stores (``transform``, 4x4). Landmarks are FLAME's 68 fixed 3D
landmarks of the same head, in scanner coordinates, with ``LANDMARK_NOISE_MM`` noise.

This module also holds helpers the FaMoS writer shares: expression templates by name
(for the synthetic model's designed expression components) and scan simulation.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbench.flame import FLAME, FlameParams
from fbench.landmarks.indices import IBUG49_IN_68
from fbench.synth import SynthResult
from fbench.synth.faces import (Appearance, Camera, PoseRanges, background_image, frame_output, render_photo,
                                sample_params, smooth_trajectory, torch_threads, vertex_albedo)
from fbench.synth.images import write_jpeg
from fbench.io import atomic_write_bytes, atomic_write_text
from fbench.synth.files import choose_corrupted, empty_file, truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.remesh import SurfaceRemesh, remesh

DEFAULT_N = 2  # subjects
TASKS = tuple(f"T{i}" for i in range(1, 9))
FRAMES_PER_TASK = 2
N_EXP = 100
NOISE_MM = 0.3  # standard deviation of the scan noise along the surface normal
LANDMARK_NOISE_MM = 0.5  # per coordinate
SCAN_VERTICES = 4000
TEXTURE_SIZE = 64
UNITS_PER_METRE = 1000.0
# 2D frames: the release's are 1040 x 1392 (portrait); the miniature keeps the aspect at 15 % of the size.
FRAME_2D_SIZE = (156, 208)  # width, height
FACE_2D_PX = 120.0  # face height in the 2D frames
JPEG_QUALITY = 92

# What each task elicits (BP4D-Spontaneous protocol: T1 interview/amusement, T2 sadness,
# T3 startle, T4 embarrassment, T5 fear, T6 pain, T7 anger, T8 disgust), in the synthetic
# model's designed expression components; jaw opening in radians.
TASK_EXPRESSIONS: dict[str, tuple[dict[str, float], float]] = {
    "T1": ({"smile_left": 2.0, "smile_right": 2.0, "squint_left": 0.8, "squint_right": 0.8}, 0.10),
    "T2": ({"mouth_corners_down": 1.5, "brow_inner_raise_left": 1.5, "brow_inner_raise_right": 1.5}, 0.0),
    "T3": ({"brow_inner_raise_left": 2.0, "brow_inner_raise_right": 2.0, "brow_outer_raise_left": 2.0,
            "brow_outer_raise_right": 2.0, "mouth_open": 1.0}, 0.25),
    "T4": ({"smile_left": 1.2, "smile_right": 0.6, "mouth_left": 1.0, "lip_pucker": -0.5}, 0.0),
    "T5": ({"brow_inner_raise_left": 1.5, "brow_inner_raise_right": 1.5, "lip_stretch": 1.5}, 0.10),
    "T6": ({"brow_lower": 2.0, "squint_left": 1.5, "squint_right": 1.5, "nose_wrinkle": 1.0,
            "upper_lip_raise": 1.0}, 0.05),
    "T7": ({"brow_lower": 2.0, "lip_pucker": -1.0, "squint_left": 0.5, "squint_right": 0.5}, 0.0),
    "T8": ({"nose_wrinkle": 2.0, "upper_lip_raise": 1.5, "mouth_corners_down": 0.8}, 0.05),
}


# ----------------------------------------------------------------------------- shared helpers


def expression_names(flame: FLAME) -> list[str] | None:
    """Names of the expression components when ``flame`` is fbench's synthetic model, else None."""
    model_file = Path(flame.assets_files.get("model", "")) if getattr(flame, "assets_files", None) else None
    if model_file is None:
        return None
    from fbench.flame.synthetic import SYNTHETIC_MARKER, build_synthetic_flame

    marker = model_file.parent / SYNTHETIC_MARKER
    if not marker.is_file():
        return None
    try:
        seed = int(json.loads(marker.read_text())["seed"])
    except (ValueError, KeyError, TypeError):
        return None
    return list(build_synthetic_flame(seed).expression_names)


def flame_description(flame: FLAME) -> str:
    source = getattr(flame, "flame_source", None)
    if source is not None:
        return source.describe()
    return f"FLAME model at {flame.assets_files.get('model', '?')}"


def expression_template(names: list[str] | None, spec: dict[str, float], label: str, n_exp: int) -> np.ndarray:
    """(n_exp,) expression for a named action: the designed components when the model has names,
    otherwise (real FLAME: unnamed PCA components) a fixed pseudo-random mix of the first ten,
    different for every ``label``."""
    out = np.zeros(n_exp)
    if names is not None and all(k in names for k in spec):
        for key, value in spec.items():
            idx = names.index(key)
            if idx < n_exp:
                out[idx] = value
        return out
    digest = int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little")
    rng = np.random.default_rng(digest)
    k = min(10, n_exp)
    out[:k] = rng.normal(0.0, 1.5, k) if spec else 0.0
    return out


def envelope(n_frames: int) -> np.ndarray:
    """0 at the first frame (the neutral start), rising smoothly to 1, easing back to 0.6."""
    if n_frames == 1:
        return np.zeros(1)
    t = np.arange(n_frames) / (n_frames - 1)
    rise = np.clip(t / 0.4, 0, 1)
    fall = np.clip((t - 0.7) / 0.3, 0, 1)
    smooth = lambda x: x * x * (3 - 2 * x)  # noqa: E731
    return smooth(rise) * (1 - 0.4 * smooth(fall))


def action_trajectory(rng: np.random.Generator, n_frames: int, shape: torch.Tensor, template: np.ndarray,
                      jaw_open: float, pose: PoseRanges, n_exp: int = N_EXP, yaw_sweep: float = 0.0,
                      translation_sd: float = 0.01) -> FlameParams:
    """Frames of one performed action, float64: the first frame has zero expression and jaw.

    Expression = envelope x (template + small smooth variation); head pose, neck and gaze
    from a smooth random trajectory (``smooth_trajectory``), eyelids zero (FLAME2020
    registrations and scans are explained without SMIRK's eyelid blendshapes).
    """
    identity = FlameParams.zeros(1, 300, n_exp)
    identity.shape = shape.reshape(1, -1).float()
    traj = smooth_trajectory(rng, n_frames, identity, keyframe_every=6, n_exp=n_exp, pose=pose)
    env = torch.as_tensor(envelope(n_frames), dtype=torch.float64)[:, None]
    p = traj.to(dtype=torch.float64)
    tmpl = torch.as_tensor(template, dtype=torch.float64)[None]
    p.expression = env * (tmpl + 0.15 * p.expression)
    jaw = torch.zeros(n_frames, 3, dtype=torch.float64)
    jaw[:, 0] = jaw_open
    p.jaw = env * (jaw + 0.2 * p.jaw)
    p.eyelids = torch.zeros_like(p.eyelids)
    if yaw_sweep:
        t = torch.arange(n_frames, dtype=torch.float64) / max(n_frames - 1, 1)
        p.global_pose[:, 1] += yaw_sweep * torch.sin(2 * math.pi * t)
    offset = torch.as_tensor(rng.normal(0.0, translation_sd, 3), dtype=torch.float64)
    p.translation = offset[None] + 0.002 * torch.as_tensor(rng.normal(size=(1, 3))) * env
    p.shape = shape.reshape(1, -1).to(torch.float64).expand(n_frames, -1).clone()
    p.cam = torch.zeros_like(p.cam)
    return p


def front_triangles(flame: FLAME, vertices: np.ndarray) -> np.ndarray:
    """(F,) bool: triangles on the front of the head (z > 0 at rest), above the neck, no eyeballs."""
    faces = flame.faces.cpu().numpy()
    masks = {k: v.cpu().numpy() for k, v in flame.masks.items()}
    skip = np.zeros(len(vertices), bool)
    for name in ("left_eyeball", "right_eyeball", "neck", "boundary"):
        if name in masks:
            skip[masks[name]] = True
    centre = vertices[faces].mean(axis=1)
    return (~skip[faces].any(axis=1)) & (centre[:, 2] > 0.0)


def head_triangles(flame: FLAME, vertices: np.ndarray) -> np.ndarray:
    """(F,) bool: the whole head surface a multi-view rig sees (no eyeballs, no lower neck boundary)."""
    faces = flame.faces.cpu().numpy()
    masks = {k: v.cpu().numpy() for k, v in flame.masks.items()}
    skip = np.zeros(len(vertices), bool)
    for name in ("left_eyeball", "right_eyeball", "boundary"):
        if name in masks:
            skip[masks[name]] = True
    return ~skip[faces].any(axis=1)


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, f[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-20)


def simulate_scan(topology: SurfaceRemesh, flame_vertices: np.ndarray, rng: np.random.Generator,
                  noise_m: float, holes: tuple[int, int] = (1, 3), hole_radius_m: tuple[float, float] = (0.006, 0.014),
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy scan of a FLAME mesh: (vertices in metres, faces, kept vertex ids into the remesh).

    Vertices lie on the FLAME surface (``topology``) and are moved along the scan's own
    normals by N(0, noise_m); vertices within a few random balls are removed (holes).
    """
    clean = topology.points(flame_vertices)
    faces = topology.faces
    normals = _vertex_normals(clean, faces)
    noisy = clean + normals * rng.normal(0.0, noise_m, (len(clean), 1))
    keep = np.ones(len(clean), bool)
    for _ in range(int(rng.integers(holes[0], holes[1] + 1))):
        centre = clean[rng.integers(len(clean))]
        keep &= np.linalg.norm(clean - centre, axis=1) > rng.uniform(*hole_radius_m)
    new_id = np.cumsum(keep) - 1
    face_ok = keep[faces].all(axis=1)
    return noisy[keep], new_id[faces[face_ok]], np.flatnonzero(keep)


def cylindrical_uv(points: np.ndarray) -> np.ndarray:
    """(N, 2) texture coordinates: angle about the vertical axis and height, both in [0, 1]."""
    c = points.mean(0)
    u = 0.5 + np.arctan2(points[:, 0] - c[0], points[:, 2] - c[2]) / (2 * math.pi)
    y = points[:, 1]
    v = (y - y.min()) / max(float(np.ptp(y)), 1e-12)
    return np.stack([u, v], 1)


def texture_png(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> bytes:
    """A small skin-coloured texture with blotches (8-bit RGB PNG)."""
    base = np.array([0.85, 0.66, 0.54]) * rng.uniform(0.7, 1.05)
    y, x = np.mgrid[0:size, 0:size] / size
    blotch = sum(np.sin(2 * math.pi * (a * x + b * y) + c) for a, b, c in rng.uniform(0, 4, (4, 3))) / 4
    image = np.clip(base[None, None] * (1 + 0.06 * blotch[..., None]), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation (unit quaternion from a 4D Gaussian)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def format_obj(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, mtl_name: str | None) -> str:
    """Wavefront OBJ text with per-vertex UVs (f v/vt), optionally referencing a material library."""
    lines = []
    if mtl_name:
        lines += [f"mtllib {mtl_name}", "usemtl skin"]
    lines += [f"v {x:.3f} {y:.3f} {z:.3f}" for x, y, z in vertices]
    lines += [f"vt {u:.4f} {v:.4f}" for u, v in uv]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (faces + 1)]
    return "\n".join(lines) + "\n"


def format_mtl(texture_name: str) -> str:
    return f"newmtl skin\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {texture_name}\n"


def format_wrl(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture_name: str) -> str:
    """VRML 2.0 text: one Shape with an ImageTexture and an IndexedFaceSet (0-based, -1 ends a face)."""
    points = ",\n".join(f"        {x:.3f} {y:.3f} {z:.3f}" for x, y, z in vertices)
    tex = ",\n".join(f"        {u:.4f} {v:.4f}" for u, v in uv)
    index = ",\n".join(f"      {a}, {b}, {c}, -1" for a, b, c in faces)
    return (
        "#VRML V2.0 utf8\n"
        "# fbench synthetic BP4D-Spontaneous scan, units: mm\n"
        "Shape {\n"
        "  appearance Appearance {\n"
        f'    texture ImageTexture {{ url "{texture_name}" }}\n'
        "  }\n"
        "  geometry IndexedFaceSet {\n"
        "    coord Coordinate {\n      point [\n" + points + "\n      ]\n    }\n"
        "    texCoord TextureCoordinate {\n      point [\n" + tex + "\n      ]\n    }\n"
        "    coordIndex [\n" + index + "\n    ]\n"
        "    texCoordIndex [\n" + index + "\n    ]\n"
        "  }\n"
        "}\n"
    )


def format_landmarks(points: np.ndarray) -> str:
    return "".join(f"{x:.4f} {y:.4f} {z:.4f}\n" for x, y, z in points)


def subject_names(n: int) -> list[str]:
    """F001, M001, F002, M002, ... (BP4D's naming: 23 women F001-F023, 18 men M001-M018)."""
    return [f"{'F' if i % 2 == 0 else 'M'}{i // 2 + 1:03d}" for i in range(n)]


def _corrupt_mesh_with_nan(path: Path) -> None:
    """Corrupt: the coordinates of a few vertices become NaN (OBJ 'v' lines or VRML points)."""
    text = path.read_text()
    lines = text.split("\n")
    hit = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_obj_vertex = stripped.startswith("v ")
        is_wrl_point = path.suffix == ".wrl" and stripped.endswith(",") and len(stripped.split()) == 3 \
            and "." in stripped and hit < 3 and i > 10
        if is_obj_vertex:
            lines[i] = "v nan nan nan"
            hit += 1
        elif is_wrl_point:
            lines[i] = "        nan nan nan,"
            hit += 1
        if hit >= 3:
            break
    atomic_write_text(path, "\n".join(lines))


# ----------------------------------------------------------------------------- writer


# --variant: default, a 68-point <stem>_lmk3d.txt beside each scan; bp4dplus, BP4D+'s landmark tree instead:
# 3DFeatures/FacialLandmarks/<subject>_<task>_<frame:04d>.bndplus with 83 "x,y,z" lines (MATLAB dlmwrite).
VARIANTS = ("default", "bp4dplus")
BNDPLUS_POINTS = 83


def bndplus_path(subject: str, task: str, frame: int) -> str:
    return f"3DFeatures/FacialLandmarks/{subject}_{task}_{frame:04d}.bndplus"


def bndplus_points(landmarks68: np.ndarray, scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """83 points standing for BP4D+'s scheme, whose correspondence to iBUG-68 is not published: FLAME's 68
    landmarks in a fixed shuffled order plus 15 scan vertices. A reader cannot use them without a map."""
    order = np.random.default_rng(83).permutation(68)
    extra = scan[rng.choice(len(scan), BNDPLUS_POINTS - 68, replace=False)]
    return np.concatenate([landmarks68[order], extra])


def features_path(subject: str, task: str) -> str:
    """The release's 2D feature track of one task (relative to the root)."""
    return f"2DFeatures/{subject}_{task}.mat"


def euler_pitch_yaw_roll(global_pose: np.ndarray) -> np.ndarray:
    """(3,) Euler angles (about x, y, z; radians) of an axis-angle head rotation, as the 2D tracks' headPose."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(global_pose, dtype=np.float64)).as_euler("xyz")


def write_features(path: Path, frames: list[int], points49: list[np.ndarray], poses: list[np.ndarray]) -> None:
    """A 2D feature track as the release stores it: MATLAB struct array ``fit`` (1 x N) with ``frame`` (the
    1-based index: JPEG frame number + 1), ``pts_2d`` (49, 2) and ``headPose`` (3, 1)."""
    from scipy.io import savemat

    fit = np.empty((1, len(frames)), dtype=[("frame", "O"), ("pts_2d", "O"), ("headPose", "O")])
    for i, (frame, points, pose) in enumerate(zip(frames, points49, poses)):
        fit[0, i] = (np.array([[frame + 1]], dtype=np.float64), np.asarray(points, dtype=np.float64),
                     np.asarray(pose, dtype=np.float64).reshape(3, 1))
    buffer = io.BytesIO()
    savemat(buffer, {"fit": fit})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    """Write ``n`` synthetic BP4D subjects (8 tasks x FRAMES_PER_TASK scans and 2D frames each) under ``out``."""
    with torch_threads(1):
        return _write(out, n, seed, corrupt, flame, variant)


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str) -> SynthResult:
    if n < 1:
        raise ValueError(f"need at least one subject, got n={n}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown BP4D variant {variant!r}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = expression_names(flame)
    device_flame = copy.deepcopy(flame).double()  # float64 ground truth; the caller's model is untouched
    faces_flame = flame.faces.cpu().numpy()
    gt = GroundTruthWriter("bp4d", seed, attrs={
        "units": "mm", "noise_mm": NOISE_MM, "landmark_noise_mm": LANDMARK_NOISE_MM,
        "landmarks": "68 x 3, iBUG-68 order: FLAME's fixed 3D landmark embedding (landmarks_full)",
        "transform": "4x4 similarity [s R | t]: scan (mm) = s R x_flame (m) + t; per subject",
        "frame_2d": "the row's 2D frame, <subject>/<task>/<frame:04d>.jpg; landmarks68_2d: its 68 landmarks in "
                    "pixels ((0, 0) the top-left corner, pixel centres at +0.5); camera_K/R/t: its pinhole camera "
                    "(OpenCV axes, world -> camera x_cam = R x + t, metres, FLAME's own frame)",
        "flame_model": flame_description(flame),
        "note": "synthetic data: never compare with published BP4D numbers"})
    meshes, landmark_files = [], []
    frames_total = 0
    for s_idx, subject in enumerate(subject_names(n)):
        rng = np.random.default_rng([seed, s_idx])
        shape = sample_params(rng, 1, n_exp=N_EXP).shape[0].double()
        rot = random_rotation(rng)
        trans = rng.uniform(-300.0, 300.0, 3)
        transform = np.eye(4)
        transform[:3, :3] = UNITS_PER_METRE * rot
        transform[:3, 3] = trans
        with torch.no_grad():
            rest = device_flame(FlameParams.from_dict({"shape": shape[None]}, n_shape=300, n_exp=N_EXP,
                                                      dtype=torch.float64)).vertices[0].numpy()
        topology = remesh(rest, faces_flame, SCAN_VERTICES, face_mask=front_triangles(flame, rest),
                          seed=int(rng.integers(2**31)))
        uv_all = cylindrical_uv(topology.points(rest))
        fmt = "obj" if s_idx % 2 == 0 else "wrl"
        # The 2D frames: a stream of their own, so the scans are as without them.
        look_rng = np.random.default_rng([seed, s_idx, 0x2D])
        appearance = Appearance.sample(look_rng)
        width, height = FRAME_2D_SIZE
        camera = Camera.looking_at_face(width, height, FACE_2D_PX * float(look_rng.uniform(0.9, 1.1)),
                                        (width / 2 + float(look_rng.uniform(-6, 6)), height * 0.5))
        albedo, background = vertex_albedo(flame, appearance), background_image(appearance, 2 * width, 2 * height)
        for task in TASKS:
            spec, jaw_open = TASK_EXPRESSIONS[task]
            template = expression_template(names, spec, task, N_EXP)
            params = action_trajectory(rng, FRAMES_PER_TASK, shape, template, jaw_open,
                                       PoseRanges(pitch=8.0, yaw=12.0, roll=4.0), translation_sd=0.005)
            first = int(rng.integers(1, 900))
            with torch.no_grad():
                output = device_flame(params)
            track: tuple[list, list, list] = ([], [], [])
            for k in range(FRAMES_PER_TASK):
                frame = first + k
                stem = f"{subject}/{task}/{frame:04d}"
                verts_m = output.vertices[k].numpy()
                scan_m, scan_faces, kept = simulate_scan(topology, verts_m, rng, NOISE_MM / UNITS_PER_METRE)
                scan_mm = scan_m @ (UNITS_PER_METRE * rot).T + trans
                uv = uv_all[kept]
                texture = f"{frame:04d}.png"
                atomic_write_bytes(out / f"{stem}.png", texture_png(rng))
                if fmt == "obj":
                    atomic_write_text(out / f"{stem}.mtl", format_mtl(texture))
                    atomic_write_text(out / f"{stem}.obj", format_obj(scan_mm, scan_faces, uv, f"{frame:04d}.mtl"))
                else:
                    atomic_write_text(out / f"{stem}.wrl", format_wrl(scan_mm, scan_faces, uv, texture))
                lmk_mm = output.landmarks_full[k].numpy() @ (UNITS_PER_METRE * rot).T + trans
                noisy_lmk = lmk_mm + rng.normal(0.0, LANDMARK_NOISE_MM, lmk_mm.shape)
                if variant == "bp4dplus":
                    points = bndplus_points(noisy_lmk, scan_mm, rng)
                    lmk_rel = bndplus_path(subject, task, frame)
                    (out / lmk_rel).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out / lmk_rel, "".join(f"{x:.4f},{y:.4f},{z:.4f}\n" for x, y, z in points))
                else:
                    lmk_rel = f"{stem}_lmk3d.txt"
                    atomic_write_text(out / lmk_rel, format_landmarks(noisy_lmk))
                row = FlameParams(**{key: v[k:k + 1] for key, v in params.as_dict().items()})
                photo = render_photo(flame, row, camera, appearance, albedo=albedo, background=background,
                                     flame_output=frame_output(output, k))
                write_jpeg(out / f"{stem}.jpg", photo.image, JPEG_QUALITY)
                for column, value in zip(track, (frame, photo.landmarks68[list(IBUG49_IN_68)],
                                                 euler_pitch_yaw_roll(params.global_pose[k].numpy()))):
                    column.append(value)
                gt.add(f"{subject}_{task}_{frame:04d}", f"{stem}.{fmt}", row, frame=frame, transform=transform,
                       landmarks=lmk_mm, frame_2d=np.bytes_(f"{stem}.jpg"),
                       landmarks68_2d=photo.landmarks68.astype(np.float64), **camera.as_arrays())
                meshes.append(f"{stem}.{fmt}")
                landmark_files.append(lmk_rel)
                frames_total += 1
            write_features(out / features_path(subject, task), *track)
    corrupted = _corrupt(out, meshes, landmark_files, corrupt, np.random.default_rng([seed, 99]))
    gt.write(out)
    return SynthResult(root=out, counts={"subjects": n, "tasks": n * len(TASKS), "scans": frames_total,
                                         "frames_2d": frames_total},
                       corrupted=corrupted)


# The fifth kind damages a 2D frame (its scan stays intact, so the frame has a fit): --corrupt 5 and more.
CORRUPTIONS = ("truncated", "nan_vertices", "landmarks_short", "empty", "frame_truncated")


def _corrupt(out: Path, meshes: list[str], landmark_files: list[str], k: int,
             rng: np.random.Generator) -> list[str]:
    """Damage ``k`` frames, cycling through CORRUPTIONS; returns the damaged paths."""
    if k == 0:
        return []
    picked = choose_corrupted(rng, meshes, k)
    done = []
    for i, mesh in enumerate(picked):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        if kind == "truncated":
            truncate_file(out / mesh, 0.5)
            done.append(mesh)
        elif kind == "nan_vertices":
            _corrupt_mesh_with_nan(out / mesh)
            done.append(mesh)
        elif kind == "landmarks_short":
            lmk = landmark_files[meshes.index(mesh)]
            lines = (out / lmk).read_text().splitlines()
            atomic_write_text(out / lmk, "\n".join(lines[:40]) + "\n")
            done.append(lmk)
        elif kind == "empty":
            empty_file(out / mesh)
            done.append(mesh)
        else:
            frame_2d = mesh.rsplit(".", 1)[0] + ".jpg"
            truncate_file(out / frame_2d, 0.5)
            done.append(frame_2d)
    return sorted(done)
