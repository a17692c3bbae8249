"""Synthetic miniature MultiFace capture in the real release's layout, with exact ground truth.

Layout (data_cards/multiface.yaml)::

    <root>/m--<YYYYMMDD>--<HHMM>--<id>--GHS/
        KRT                                   camera calibrations (all cameras)
        frame_list.txt                        "<segment> <frame:06d>" per line
        vert_mean.bin, vert_var.txt           tracked-mesh statistics (as the release's metadata)
        images/EXP_ROM07_Facial_Expressions/400030/<frame:06d>.png
        tracked_mesh/EXP_ROM07_Facial_Expressions/<frame:06d>.obj
        tracked_mesh/EXP_ROM07_Facial_Expressions/<frame:06d>.bin
        tracked_mesh/EXP_ROM07_Facial_Expressions/<frame:06d>_transform.txt
    <root>/fbench_ground_truth.h5

One synthetic identity performs a smooth expression trajectory (FLAME expression, jaw,
eyelids, gaze, neck and head rotation) over `n` frames numbered as MultiFace's (6 digits,
every third capture frame, as the official `mini_frame_list.txt`).

Frames and units (what the release's own loader does, facebookresearch/multiface `dataset.py`):

- KRT extrinsics [R|t] map world -> camera (OpenCV: x right, y down, z forward), in mm;
  intrinsics are in pixels of the image written here, (0, 0) at the top-left image corner.
- Tracked-mesh vertices (.obj and .bin, identical float32 values) are in the *head* frame,
  in mm; `<frame>_transform.txt` is the head pose [R_f|t_f] with world = R_f @ v + t_f, so
  a vertex projects with K (R_C (R_f v + t_f) + t_C).
- The tracked mesh is FLAME's head surface without eyeballs, re-meshed in a topology of
  its own (`fbench.synth.remesh`, about 7306/5023 times FLAME's vertex count, as MultiFace's
  7,306-vertex topology against FLAME2020's 5,023): every vertex lies exactly on the GT
  FLAME surface (up to float32 storage), but no vertex or triangle is FLAME's.

FLAME -> world is the similarity world = 1000 R_A x + t_A + d_f (metres to mm, a fixed rig
placement R_A, t_A and a small per-frame head drift d_f); the FLAME frame is oriented so
that its canonical frontal view is camera 400030, hence FLAME's yaw-dependent jaw contour
is the one 400030 sees. The head pose (R_f, t_f) is the head's rigid motion (FLAME's global
rotation about its root joint, plus the drift): the tracked mesh in its file is the head at
rest pose, as MultiFace's pose-normalised tracked meshes.

The image of camera 400030 is `faces.render_photo` of the FLAME mesh itself: the tracked
mesh is a re-meshing of that very surface, so both describe what the picture shows
(FLAME's eyeballs are drawn; the tracked mesh, like MultiFace's, has none). Images are the
release's 1334 x 2048 (portrait) divided by `image_downscale` (default 2: 667 x 1024, the
same aspect ratio exactly), because CPU rendering at full size takes too long; KRT holds
the intrinsics of the size written. Only 400030 has images; the other KRT cameras
(real MultiFace v1 names, synthetic placements) are calibration only.

`--corrupt K` damages K distinct frames, in turn: a truncated .bin, a missing
_transform.txt, a truncated PNG, a .bin with NaN vertices. Their ground-truth rows stay
(column `corrupted` says how), and all other files are byte-identical to `--corrupt 0`.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fbench.flame import FLAME, FlameParams
from fbench.flame.model import axis_angle_to_matrix
from fbench.geometry import (Mesh, read_multiface_transform, write_mesh, write_multiface_bin,
                             write_multiface_transform)
from fbench.synth import SynthResult
from fbench.synth.faces import (N_EXP, Appearance, Camera, PoseRanges, render_photo, sample_params, smooth_trajectory,
                                vertex_albedo)
from fbench.io import atomic_write_bytes, atomic_write_text
from fbench.synth.files import truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.remesh import SurfaceRemesh, remesh

DEFAULT_N = 8
SEGMENT = "EXP_ROM07_Facial_Expressions"  # the V1 test segment of the release's benchmarks
FRONTAL_CAMERA = "400030"
# Real MultiFace v1 camera names (documentation/CAMERA_VIEW.md); their placements here are
# synthetic: (azimuth towards FLAME's +x side, elevation) in degrees about the face centre.
CAMERA_PLACEMENT: dict[str, tuple[float, float]] = {
    "400016": (-35.0, 5.0), "400029": (0.0, -25.0), FRONTAL_CAMERA: (0.0, 0.0), "400048": (35.0, 5.0)}
FULL_IMAGE_SIZE = (1334, 2048)  # (width, height) of the release's raw images (portrait)
DEFAULT_IMAGE_DOWNSCALE = 2  # 667 x 1024: same aspect ratio exactly, rendered in seconds
FRAME_STEP = 3  # frame numbers advance by 3, as in the official mini_frame_list.txt
MM_PER_M = 1000.0
MULTIFACE_MESH_VERTICES = 7306  # documentation/DATASET_ASSET.md
FLAME2020_VERTICES = 5023
HEAD_MOTION = PoseRanges(pitch=10.0, yaw=20.0, roll=5.0)  # a seated subject doing expressions
KEYFRAME_EVERY = 4  # expression keyframes every 4 written frames (12 capture frames, 0.4 s)
FRONTAL_R = np.diag([1.0, -1.0, -1.0])  # FLAME (y up, face towards +z) -> camera in front of the face
ENTITY_DATE, ENTITY_TIME = "20000101", "0000"  # obviously not a real capture session
MESH_FRAMES = ("head", "world")  # what the tracked-mesh files hold (write(mesh_frame=...))
CORRUPTIONS = ("truncated_bin", "missing_transform", "truncated_png", "nan_bin")  # code = index + 1


def entity_name(seed: int) -> str:
    """The capture folder, `m--<date>--<time>--<entity id>--GHS` as the release names them."""
    return f"m--{ENTITY_DATE}--{ENTITY_TIME}--{9_000_000 + seed}--GHS"


@dataclass(frozen=True)
class Layout:
    """Paths relative to the dataset root (POSIX separators, as stored in the ground truth)."""

    entity: str
    segment: str = SEGMENT

    @property
    def krt(self) -> str:
        return f"{self.entity}/KRT"

    @property
    def frame_list(self) -> str:
        return f"{self.entity}/frame_list.txt"

    def image(self, camera: str, frame: int) -> str:
        return f"{self.entity}/images/{self.segment}/{camera}/{frame:06d}.png"

    def mesh(self, frame: int, ext: str) -> str:
        return f"{self.entity}/tracked_mesh/{self.segment}/{frame:06d}.{ext}"

    def transform(self, frame: int) -> str:
        return f"{self.entity}/tracked_mesh/{self.segment}/{frame:06d}_transform.txt"


@dataclass
class KrtCamera:
    """One KRT entry: intrinsics (pixels), 5 distortion coefficients, world->camera [R|t] (mm)."""

    name: str
    K: np.ndarray
    distortion: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def project(self, world_mm: np.ndarray) -> np.ndarray:
        """(..., 3) world points in mm -> (..., 2) pixels (no distortion: the coefficients are zero)."""
        cam = np.asarray(world_mm, dtype=np.float64) @ self.R.T + self.t
        uv = cam @ self.K.T
        return uv[..., :2] / uv[..., 2:3]


def _num(x: float) -> str:
    # Shortest repr that parses back to the same float64: files and ground truth agree exactly.
    return repr(float(x))


def format_krt(cameras: list[KrtCamera]) -> str:
    """KRT text: per camera a name line, 3 intrinsics rows, 1 distortion row, 3 [R|t] rows, a blank line."""
    lines: list[str] = []
    for cam in cameras:
        lines.append(cam.name)
        lines += [" ".join(_num(x) for x in row) for row in cam.K]
        lines.append(" ".join(_num(x) for x in cam.distortion))
        lines += [" ".join(_num(x) for x in row) for row in np.hstack([cam.R, cam.t[:, None]])]
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_krt(text: str) -> dict[str, KrtCamera]:
    """Read KRT text (tolerates a missing final blank line and extra blank lines between entries)."""
    rows = text.splitlines()
    cameras: dict[str, KrtCamera] = {}
    i = 0
    while i < len(rows):
        name = rows[i].strip()
        if not name:
            i += 1
            continue
        block = rows[i + 1:i + 8]
        if len(block) < 7:
            raise ValueError(f"KRT camera {name!r}: expected 7 lines after the name, got {len(block)}")
        try:
            nums = [[float(x) for x in line.split()] for line in block]
        except ValueError:
            raise ValueError(f"KRT camera {name!r}: a non-numeric value in {block}") from None
        if [len(r) for r in nums[:3]] != [3, 3, 3] or [len(r) for r in nums[4:]] != [4, 4, 4]:
            raise ValueError(f"KRT camera {name!r}: intrinsics must be 3x3 and extrinsics 3x4")
        extrinsics = np.array(nums[4:])
        cameras[name] = KrtCamera(name, np.array(nums[:3]), np.array(nums[3]), extrinsics[:, :3], extrinsics[:, 3])
        i += 8
    return cameras


def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@dataclass
class Rig:
    """FLAME -> world placement (world = MM_PER_M * R_flame x + t_flame, before the per-frame drift) and cameras."""

    R_flame: np.ndarray
    t_flame: np.ndarray
    cameras: dict[str, KrtCamera]
    image_size: tuple[int, int]


def _make_rig(rng: np.random.Generator, target_flame: np.ndarray, image_size: tuple[int, int]) -> Rig:
    """A rig with arbitrary world axes (so no code can get away with assuming FLAME's) and
    cameras orbiting the face centre `target_flame` (metres, FLAME frame) at about 1.25 m."""
    R_flame = _rot_y(rng.uniform(0.0, 360.0)) @ _rot_x(rng.uniform(-10.0, 10.0)) @ _rot_z(rng.uniform(-10.0, 10.0))
    t_flame = rng.uniform(-150.0, 150.0, 3)
    target = MM_PER_M * R_flame @ target_flame + t_flame
    sx, sy = image_size[0] / FULL_IMAGE_SIZE[0], image_size[1] / FULL_IMAGE_SIZE[1]
    cameras = {}
    for name in sorted(CAMERA_PLACEMENT):
        azimuth, elevation = CAMERA_PLACEMENT[name]
        orbit = _rot_y(azimuth) @ _rot_x(-elevation)  # takes the frontal direction +z to the camera's
        R = FRONTAL_R @ orbit.T @ R_flame.T
        if name != FRONTAL_CAMERA:  # real cameras are not aimed exactly; 400030 stays FLAME's frontal view
            R = _rot_z(rng.uniform(-1.5, 1.5)) @ _rot_x(rng.uniform(-1.5, 1.5)) @ R
        centre = target + rng.uniform(1200.0, 1300.0) * (R_flame @ orbit @ np.array([0.0, 0.0, 1.0]))
        fx = rng.uniform(7400.0, 7800.0)  # full-resolution focal lengths, as the release's (~7700 px)
        fy = fx * rng.uniform(0.9995, 1.0005)
        cx = FULL_IMAGE_SIZE[0] / 2 + rng.uniform(-40.0, 40.0)
        cy = FULL_IMAGE_SIZE[1] / 2 + rng.uniform(-60.0, 60.0)
        # Pixel coordinates scale with the image (corner-origin convention), so K does too.
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        cameras[name] = KrtCamera(name, K, np.zeros(5), R, -R @ centre)
    # Round-trip through the text format so every number used below is the one in the file.
    cameras = parse_krt(format_krt(list(cameras.values())))
    return Rig(R_flame=R_flame, t_flame=t_flame, cameras=cameras, image_size=image_size)


def _drift(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) smooth head drift in mm: a slow sway of a few millimetres per axis."""
    amplitude = rng.uniform(0.5, 3.0, 3)
    period = rng.uniform(8.0, 16.0, 3)
    phase = rng.uniform(0.0, 2 * math.pi, 3)
    return amplitude * np.sin(2 * math.pi * np.arange(n)[:, None] / period + phase)


def _cylindrical_uv(points: np.ndarray) -> np.ndarray:
    """(N, 2) texture coordinates: angle round the vertical axis (seam at the back of the head), height.

    The release's OBJ files carry UVs (its loader requires `v/vt` face corners); no texture
    is shipped here, so a simple projection is enough.
    """
    c = points.mean(0)
    u = 0.5 + np.arctan2(points[:, 0] - c[0], points[:, 2] - c[2]) / (2 * math.pi)
    y = points[:, 1]
    v = (y - y.min()) / max(float(np.ptp(y)), 1e-12)
    return np.stack([u, v], 1)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _solve_rows(R: np.ndarray, points: np.ndarray) -> np.ndarray:
    """R^-1 p for rows p (the transform as stored, not assumed orthonormal)."""
    return np.linalg.solve(R, points.T).T


def _row(params: FlameParams, i: int) -> FlameParams:
    return FlameParams(**{k: v[i:i + 1] for k, v in params.as_dict().items()})


def _open_permissions(root: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a dataset should be readable as any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, *,
          image_downscale: int = DEFAULT_IMAGE_DOWNSCALE, mesh_frame: str = "head") -> SynthResult:
    """Write one synthetic MultiFace capture of `n` frames of EXP_ROM07_Facial_Expressions under `out`.

    `image_downscale` divides the release's 1334 x 2048 image size (KRT intrinsics follow).
    `mesh_frame` says which frame the tracked-mesh files use: "head" (the release's loader:
    world = R_f v + t_f with the frame's _transform.txt) or "world" (the reading of some public
    sources, e.g. the release's issue 33: vertices already in world coordinates; _transform.txt
    is still written, holding the same head pose). Readers must tell the two apart from the data.
    Deterministic for (`seed`, `n`, `image_downscale`, `mesh_frame`, the FLAME model).
    """
    if mesh_frame not in MESH_FRAMES:
        raise ValueError(f"mesh_frame must be one of {MESH_FRAMES}, got {mesh_frame!r}")
    if n < 1:
        raise ValueError(f"need at least one frame, got n={n}")
    if not 0 <= corrupt <= n:
        raise ValueError(f"--corrupt {corrupt}: each corrupted frame gets one defect, so 0 <= corrupt <= n={n}")
    if image_downscale < 1:
        raise ValueError(f"image_downscale must be >= 1, got {image_downscale}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    layout = Layout(entity_name(seed))
    image_size = (round(FULL_IMAGE_SIZE[0] / image_downscale), round(FULL_IMAGE_SIZE[1] / image_downscale))

    # Identity, expression trajectory and the tracked-mesh topology (built on the neutral head).
    identity = sample_params(rng, 1)
    params = smooth_trajectory(rng, n, identity, keyframe_every=KEYFRAME_EVERY, pose=HEAD_MOTION)
    neutral = FlameParams.zeros(1, identity.shape.shape[1], N_EXP)
    neutral.shape = identity.shape.clone()
    with torch.no_grad():
        rest = flame(neutral)
        # One frame at a time, as a reader evaluates one ground-truth row (float32 results then
        # match bit for bit; a batched product may round differently).
        per_frame = [flame(_row(params, i)) for i in range(n)]
    faces = flame.faces.numpy()
    drop = torch.zeros(flame.num_vertices, dtype=torch.bool)
    for part in ("left_eyeball", "right_eyeball"):  # MultiFace meshes have no eyeballs
        if part in flame.masks:
            drop[flame.masks[part]] = True
    face_mask = ~drop.numpy()[faces].any(1)
    target = round(flame.num_vertices * MULTIFACE_MESH_VERTICES / FLAME2020_VERTICES)
    topology = remesh(rest.vertices[0].double().numpy(), faces, target, face_mask=face_mask, seed=seed)
    if topology.num_vertices == flame.num_vertices:
        raise RuntimeError("the re-meshed topology happens to have FLAME's vertex count; change the seed")
    uv = _cylindrical_uv(topology.points(rest.vertices[0].double().numpy()))

    rig = _make_rig(rng, rest.landmarks[0].double().mean(0).numpy(), image_size)
    drift = _drift(rng, n)
    first_frame = FRAME_STEP * int(rng.integers(1000, 9000))
    frame_ids = [first_frame + FRAME_STEP * i for i in range(n)]
    appearance = Appearance.sample(rng)
    albedo = vertex_albedo(flame, appearance)
    corrupt_rng = np.random.default_rng([seed, 0x6D66])  # separate stream: corruption changes nothing else
    corrupted_frames = sorted(int(i) for i in corrupt_rng.choice(n, size=corrupt, replace=False)) if corrupt else []

    vertices = np.stack([o.vertices[0].double().numpy() for o in per_frame])  # (n, V, 3) metres
    root = np.stack([o.joints[0, 0].double().numpy() for o in per_frame])  # the head turns about it
    G = axis_angle_to_matrix(params.global_pose.double()).numpy()
    S, R_A = MM_PER_M, rig.R_flame
    front = rig.cameras[FRONTAL_CAMERA]

    gt = GroundTruthWriter("multiface", seed, attrs={**_attrs(layout, rig, topology, flame, image_downscale),
                                                     "mesh_frame": mesh_frame})
    out.mkdir(parents=True, exist_ok=True)
    # Everything goes to a hidden staging folder that replaces the entity folder at the end.
    stage = Path(tempfile.mkdtemp(prefix=f".{layout.entity}.", dir=out))

    def at(rel: str) -> Path:
        return stage / Path(rel).relative_to(layout.entity)

    try:
        head_meshes = []
        for i, frame in enumerate(frame_ids):
            t_world = rig.t_flame + drift[i]  # FLAME -> world: S R_A x + t_world
            # Head pose: the head's rigid motion (FLAME's global rotation about the root joint, and
            # the drift), so the mesh file holds the head at rest, as MultiFace's are pose-normalised.
            R_f = R_A @ G[i] @ R_A.T
            centre = S * R_A @ root[i] + rig.t_flame
            t_f = centre - R_f @ centre + drift[i]
            transform = np.hstack([R_f, t_f[:, None]])
            write_multiface_transform(at(layout.transform(frame)), transform)
            transform = read_multiface_transform(at(layout.transform(frame)))  # use exactly what the file says
            R_f, t_f = transform[:, :3], transform[:, 3]

            world = S * topology.points(vertices[i]) @ R_A.T + t_world
            head = (_solve_rows(R_f, world - t_f) if mesh_frame == "head" else world).astype("<f4")
            head_meshes.append(head)
            write_multiface_bin(at(layout.mesh(frame, "bin")), head)
            write_mesh(at(layout.mesh(frame, "obj")),
                       Mesh(head.astype(np.float64), topology.faces, "mm", uv=uv, uv_faces=topology.faces))

            # The picture: FLAME itself, seen by 400030 (camera coordinates divided by S, which
            # leaves the projection unchanged, so the renderer works in FLAME's metres).
            render_cam = Camera(K=front.K, R=front.R @ R_A, t=(front.R @ t_world + front.t) / S,
                                width=image_size[0], height=image_size[1])
            picture = render_photo(flame, _row(params, i), render_cam, appearance, albedo=albedo)
            atomic_write_bytes(at(layout.image(FRONTAL_CAMERA, frame)), _png_bytes(picture.image))

            lmk68_world = S * per_frame[i].landmarks[0].double().numpy() @ R_A.T + t_world
            lmk_mp_world = S * per_frame[i].landmarks_mp[0].double().numpy() @ R_A.T + t_world
            lmk68 = front.project(lmk68_world)
            # Guard: the renderer's landmarks must be these (same contour choice, same camera).
            gap = float(np.abs(lmk68 - picture.landmarks68).max())
            if gap > 0.05:
                raise RuntimeError(f"rendered landmarks differ from the KRT projection by {gap:.3f} px")
            R_mesh = np.linalg.solve(R_f, R_A) if mesh_frame == "head" else R_A
            t_mesh = np.linalg.solve(R_f, t_world - t_f) if mesh_frame == "head" else t_world
            gt.add(f"multiface_{layout.entity.split('--')[3]}_{SEGMENT}_{frame:06d}",
                   layout.image(FRONTAL_CAMERA, frame), _row(params, i), frame=frame,
                   camera_K=front.K, camera_R=front.R, camera_t=front.t, image_size=np.array(image_size),
                   head_pose=transform,
                   flame_to_world_scale=np.float64(S), flame_to_world_R=R_A, flame_to_world_t=t_world,
                   flame_to_mesh_scale=np.float64(S), flame_to_mesh_R=R_mesh,
                   flame_to_mesh_t=t_mesh,
                   landmarks68=lmk68, landmarks_mp=front.project(lmk_mp_world),
                   landmarks68_3d=lmk68_world, landmarks_mp_3d=lmk_mp_world,
                   face_mask=np.packbits(picture.face_mask, axis=1),
                   corrupted=np.int8(1 + corrupted_frames.index(i) % len(CORRUPTIONS) if i in corrupted_frames else 0))

        atomic_write_text(at(layout.krt), format_krt(list(rig.cameras.values())))
        atomic_write_text(at(layout.frame_list), "".join(f"{SEGMENT} {f:06d}\n" for f in frame_ids))
        stack = np.stack(head_meshes).astype(np.float64)
        mean = stack.mean(0)
        atomic_write_bytes(stage / "vert_mean.bin", mean.astype("<f4").tobytes())
        atomic_write_text(stage / "vert_var.txt", _num(((stack - mean) ** 2).mean()) + "\n")

        corrupted = [_corrupt(at, layout, frame_ids[i], CORRUPTIONS[k % len(CORRUPTIONS)], corrupt_rng)
                     for k, i in enumerate(corrupted_frames)]
        _open_permissions(stage)
        final = out / layout.entity
        if final.exists():
            shutil.rmtree(final)  # this seed's own folder from an earlier run
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    gt.write(out)
    return SynthResult(root=out, counts={"frames": n, "images": n, "tracked_meshes": n, "cameras": len(rig.cameras)},
                       corrupted=corrupted)


def _corrupt(at: Callable[[str], Path], layout: Layout, frame: int, kind: str, rng: np.random.Generator) -> str:
    """Damage one frame's file as `kind`; returns its path relative to the dataset root."""
    if kind == "truncated_bin":
        rel = layout.mesh(frame, "bin")
        data = at(rel).read_bytes()
        # Cut mid-vertex (not a multiple of 12 bytes), as an interrupted copy would.
        atomic_write_bytes(at(rel), data[:(len(data) // 2 // 12) * 12 + 7])
    elif kind == "missing_transform":
        rel = layout.transform(frame)
        at(rel).unlink()
    elif kind == "truncated_png":
        rel = layout.image(FRONTAL_CAMERA, frame)
        truncate_file(at(rel), 0.5)
    elif kind == "nan_bin":
        rel = layout.mesh(frame, "bin")
        v = np.fromfile(at(rel), dtype="<f4").reshape(-1, 3)
        v[np.sort(rng.choice(len(v), size=min(16, len(v)), replace=False))] = np.nan  # a tracking failure
        atomic_write_bytes(at(rel), v.tobytes())
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return rel


def _attrs(layout: Layout, rig: Rig, topology: SurfaceRemesh, flame: FLAME, image_downscale: int) -> dict:
    """Ground-truth file attributes: where things are and every convention a reader needs."""
    return {
        "entity": layout.entity,
        "segment": layout.segment,
        "cameras": ",".join(rig.cameras),
        "image_cameras": FRONTAL_CAMERA,
        "image_size": np.array(rig.image_size),
        "full_image_size": np.array(FULL_IMAGE_SIZE),
        "image_downscale": image_downscale,
        "units": "mm (KRT translations, tracked meshes, head poses, *_3d landmarks); FLAME in metres",
        "flame_model": str(flame.source),
        "mesh_num_vertices": topology.num_vertices,
        "mesh_num_faces": len(topology.faces),
        "layout_image": f"{layout.entity}/images/{layout.segment}/<camera>/<frame:06d>.png",
        "layout_mesh": f"{layout.entity}/tracked_mesh/{layout.segment}/<frame:06d>.{{obj,bin}}",
        "layout_transform": f"{layout.entity}/tracked_mesh/{layout.segment}/<frame:06d>_transform.txt",
        "conventions": (
            "camera_K/R/t: KRT of camera 400030, world->camera, pixels/mm, (0,0) = top-left image corner. "
            "head_pose: the frame's _transform.txt, world = R @ mesh + t. "
            "flame_to_world_*: world_mm = scale * R @ flame_vertex_m + t (FLAME output of the row's params). "
            "flame_to_mesh_*: the same into the tracked-mesh file's (head) frame. "
            "landmarks68 / landmarks_mp: pixels in the 400030 image; *_3d: world mm. "
            "face_mask: np.unpackbits(face_mask, axis=1)[:, :width] is the head's silhouette in the image. "
            "corrupted: 0 intact, else 1 + index in corruption_kinds."),
        "corruption_kinds": ",".join(CORRUPTIONS),
        "notes": ("synthetic: the tracked mesh is FLAME's surface without eyeballs, re-meshed "
                  "(fbench.synth.remesh); its vertices lie on the FLAME surface of the row's params."),
    }
