"""Synthetic faces: FLAME parameter sampling, smooth trajectories, cameras and photo-like rendering.

Every synthetic image dataset draws its pictures here, so ground truth is consistent:
an image is the synthetic (or any) FLAME model under `FlameParams`, seen by a pinhole
`Camera`, shaded with a per-identity `Appearance` (skin, lips, eyes, hair, light,
background). The 68 (dynamic contour) and 105 MediaPipe landmarks are projected with the
same camera, so they are exact ground truth for the picture.

Pixel convention: continuous coordinates with (0, 0) at the top-left image corner and
pixel (row r, column c) centred at (c + 0.5, r + 0.5), as OpenCV/PIL sub-pixel maths and
the landmark files of FFHQ/AffectNet use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F
from torch import Tensor

from fbench.flame import FLAME, FlameOutput, FlameParams
from fbench.flame.model import axis_angle_to_matrix, barycentric_points
from fbench.render.rasterizer import interpolate_face_attributes, rasterize_meshes
from fbench.render.smirk import vertex_normals

N_EXP = 50  # SMIRK's expression width (configs/config_train.yaml arch.num_expression)
FRONTAL_R = np.diag([1.0, -1.0, -1.0])  # world->camera rotation of a camera in front of the face


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch with `n` intra-op threads, restoring the previous setting afterwards.

    Rendering is many small tensor ops: threads gain little and, on shared cores, cost a lot
    (a video writer measured 10x more CPU time with 2 threads than with 1 on a busy 2-core box).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class PoseRanges:
    """Uniform ranges in degrees for head pose sampling (global rotation about x, y, z)."""

    pitch: float = 15.0
    yaw: float = 35.0
    roll: float = 10.0


def sample_params(rng: np.random.Generator, n: int, n_exp: int = N_EXP, pose: PoseRanges | None = None,
                  expression_scale: float = 1.0, jaw_open_max: float = 0.3, shape_scale: float = 1.0) -> FlameParams:
    """Plausible random FLAME parameters (float32): identity, expression, jaw, head pose, gaze, eyelids.

    Design choice (fbench): unit-normal shape and expression coefficients (FLAME's bases are
    scaled so a unit coefficient is one standard deviation), later expression components
    damped; jaw opening up to `jaw_open_max` rad; eyelids mostly open, sometimes blinking.
    """
    pose = pose or PoseRanges()
    p = FlameParams.zeros(n, 300, n_exp)
    p.shape = torch.as_tensor(rng.normal(0, shape_scale, (n, 300)), dtype=torch.float32)
    damping = np.where(np.arange(n_exp) < 20, 1.0, 0.5)
    p.expression = torch.as_tensor(rng.normal(0, expression_scale, (n, n_exp)) * damping, dtype=torch.float32)
    jaw = np.stack([rng.uniform(0, jaw_open_max, n), rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)], 1)
    p.jaw = torch.as_tensor(jaw, dtype=torch.float32)
    angles = np.deg2rad(np.stack([rng.uniform(-r, r, n) for r in (pose.pitch, pose.yaw, pose.roll)], 1))
    p.global_pose = torch.as_tensor(angles, dtype=torch.float32)
    p.neck = torch.as_tensor(rng.normal(0, 0.03, (n, 3)), dtype=torch.float32)
    gaze = rng.normal(0, 0.08, (n, 2))
    p.eyes = torch.as_tensor(np.concatenate([gaze, np.zeros((n, 1)), gaze, np.zeros((n, 1))], 1), dtype=torch.float32)
    blink = rng.random(n) < 0.15
    lids = np.where(blink, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.2, n))
    p.eyelids = torch.as_tensor(np.stack([lids, lids + rng.normal(0, 0.03, n)], 1), dtype=torch.float32)
    return p


def smooth_trajectory(rng: np.random.Generator, n_frames: int, identity: FlameParams, keyframe_every: int = 12,
                      n_exp: int = N_EXP, pose: PoseRanges | None = None) -> FlameParams:
    """A talking-head-like sequence: random keyframes joined by a C1 cubic (Catmull-Rom) spline.

    The identity (shape) of `identity` is kept in every frame.
    """
    n_keys = max(2, math.ceil((n_frames - 1) / keyframe_every) + 1)
    keys = sample_params(rng, n_keys + 2, n_exp=n_exp, pose=pose)
    t = np.arange(n_frames) / keyframe_every
    seg = np.minimum(t.astype(int), n_keys - 2)
    u = torch.as_tensor(t - seg, dtype=torch.float32)[:, None]
    idx = torch.as_tensor(seg + 1)
    fields = {}
    for name, value in keys.as_dict().items():
        p0, p1, p2, p3 = value[idx - 1], value[idx], value[idx + 1], value[idx + 2]
        fields[name] = 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
    out = FlameParams(**fields)
    out.shape = identity.shape[:1].expand(n_frames, -1).clone()
    out.eyelids = out.eyelids.clamp(0, 1)
    out.jaw[:, 0] = out.jaw[:, 0].clamp(min=0)
    return out


@dataclass
class Camera:
    """Pinhole camera, OpenCV convention (x right, y down, z forward), image size in pixels."""

    K: np.ndarray  # (3,3)
    R: np.ndarray  # (3,3) world -> camera
    t: np.ndarray  # (3,)
    width: int
    height: int

    @classmethod
    def looking_at_face(cls, width: int, height: int, face_height_px: float, center_px: tuple[float, float],
                        distance: float = 0.6, face_height_m: float = 0.2, azimuth_deg: float = 0.0,
                        elevation_deg: float = 0.0) -> "Camera":
        """A camera at `distance` metres from the head origin, looking at it (FLAME looks along +z).

        The focal length makes a `face_height_m` tall face `face_height_px` high; the head
        origin projects to `center_px`. By default the camera is frontal; `azimuth_deg` moves
        it round the head towards the subject's left (+x, positive) or right, and
        `elevation_deg` above (positive) or below, as a multi-view rig does (MEAD's views).
        """
        f = face_height_px * distance / face_height_m
        K = np.array([[f, 0, center_px[0]], [0, f, center_px[1]], [0, 0, 1.0]])
        R = FRONTAL_R.copy()  # world y up / z towards camera -> camera y down / z forward
        if azimuth_deg or elevation_deg:
            # Orbit: the rig rotation M takes the frontal camera centre (0,0,d) to its new place;
            # world->camera becomes R0 M^T and, as the orbit is about the origin, t is unchanged.
            a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
            rot_y = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            rot_x = np.array([[1, 0, 0], [0, math.cos(e), math.sin(e)], [0, -math.sin(e), math.cos(e)]])
            R = R @ (rot_y @ rot_x).T
        return cls(K=K, R=R, t=np.array([0.0, 0.0, distance]), width=width, height=height)

    def to_camera(self, points: Tensor) -> Tensor:
        R = torch.as_tensor(self.R, dtype=points.dtype)
        return points @ R.T + torch.as_tensor(self.t, dtype=points.dtype)

    def project(self, points: Tensor) -> Tensor:
        """World points (..., 3) -> pixel coordinates (..., 2)."""
        cam = self.to_camera(points)
        K = torch.as_tensor(self.K, dtype=points.dtype)
        uv = cam[..., :2] / cam[..., 2:3]
        return uv * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])

    def to_ndc(self, points: Tensor) -> Tensor:
        """World points -> the rasterizer's NDC (+X left, +Y up, shorter side spans [-1, 1]; z = depth)."""
        uv = self.project(points)
        m = float(min(self.width, self.height))
        depth = self.to_camera(points)[..., 2:3]
        return torch.cat([(self.width - 2 * uv[..., :1]) / m, (self.height - 2 * uv[..., 1:2]) / m, depth], -1)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"camera_K": self.K, "camera_R": self.R, "camera_t": self.t,
                "image_size": np.array([self.width, self.height])}


SKIN_TONES = np.array([[0.93, 0.76, 0.64], [0.87, 0.67, 0.53], [0.76, 0.57, 0.43], [0.62, 0.45, 0.33],
                       [0.45, 0.31, 0.22], [0.33, 0.22, 0.15]])
HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.5, 0.35, 0.2], [0.75, 0.62, 0.4], [0.55, 0.55, 0.55]])
IRIS = np.array([[0.25, 0.15, 0.07], [0.2, 0.35, 0.55], [0.3, 0.4, 0.2], [0.1, 0.07, 0.05]])


@dataclass
class Appearance:
    """What a person and their surroundings look like; constant over a video."""

    skin: np.ndarray
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    light_dir: np.ndarray  # camera coordinates, pointing from the surface towards the light
    ambient: float
    background: np.ndarray  # (4,3) corner colours of a bilinear gradient
    texture_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Appearance":
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.06, 3)
        light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.2), -1.0])
        return cls(skin=skin.clip(0, 1), lips=(skin * np.array([1.0, 0.62, 0.62]) + [0.12, 0, 0]).clip(0, 1),
                   hair=HAIR[rng.integers(len(HAIR))], iris=IRIS[rng.integers(len(IRIS))],
                   light_dir=light / np.linalg.norm(light), ambient=float(rng.uniform(0.3, 0.5)),
                   background=rng.uniform(0.05, 0.95, (4, 3)), texture_seed=int(rng.integers(2**31)))


def syllable_jaw(rng: np.random.Generator, n_frames: int, fps: float,
                 syllables: list[tuple[float, float]], amplitude: tuple[float, float] = (0.06, 0.16),
                 rest: float = 0.02, min_duration: float = 0.2) -> np.ndarray:
    """(n_frames,) jaw opening in radians that opens once per syllable, as a speaker's jaw does.

    `syllables` are (start, end) times in seconds; each adds a raised-cosine bump (smooth, zero
    slope at both ends) of a random height in `amplitude` on top of a slightly open `rest`,
    peaking mid-syllable and lasting at least `min_duration` (about 5 syllables a second): the
    jaw then moves at most pi * 0.16 / (0.2 s) = 2.5 rad/s, the order of speech jaw speeds.
    """
    t = (np.arange(n_frames) + 0.5) / fps  # frame centres
    jaw = np.full(n_frames, rest)
    for start, end in syllables:
        width = max(end - start, min_duration)
        u = np.clip((t - (start + end - width) / 2) / width, 0.0, 1.0)
        jaw = np.maximum(jaw, rest + rng.uniform(*amplitude) * 0.5 * (1 - np.cos(2 * np.pi * u)))
    return jaw


def vertex_albedo(flame: FLAME, appearance: Appearance) -> Tensor:
    """(V,3) colours: skin with slow variation, lips, hair on the scalp, eyeball whites, irises and pupils."""
    masks = flame.masks
    v = flame.v_template.double()
    rng = np.random.default_rng(appearance.texture_seed)
    colour = torch.as_tensor(appearance.skin, dtype=torch.float64).expand_as(v).clone()
    # Blotchy low-frequency skin variation (a few random plane waves, +-4 %).
    waves = torch.as_tensor(rng.normal(0, 40.0, (4, 3)))
    colour *= 1 + 0.04 * torch.sin(v @ waves.T + torch.as_tensor(rng.uniform(0, 6.3, 4))).mean(1, keepdim=True)
    for name, value in (("lips", appearance.lips), ("scalp", appearance.hair)):
        if name in masks:
            colour[masks[name]] = torch.as_tensor(value, dtype=torch.float64)
    for side, joint in (("left_eyeball", 3), ("right_eyeball", 4)):
        if side not in masks or flame.num_joints <= joint:
            continue
        idx = masks[side]
        centre = flame.joint_template.reshape(-1, 3)[joint].double()
        direction = F.normalize(v[idx] - centre, dim=-1)
        facing = direction[:, 2]  # the rest-pose gaze is +z
        eye = torch.full((len(idx), 3), 0.92, dtype=torch.float64)
        eye[facing > 0.82] = torch.as_tensor(appearance.iris, dtype=torch.float64)
        eye[facing > 0.95] = 0.02
        colour[idx] = eye
    return colour.float()


def frame_output(outputs: FlameOutput, f: int) -> FlameOutput:
    """Frame `f` of a batched FLAME output as a batch of one (for `render_photo(flame_output=...)`)."""
    return FlameOutput(**{k: v[f:f + 1] for k, v in vars(outputs).items()})


def camera_landmarks68(flame: FLAME, params: FlameParams, vertices: Tensor, camera: Camera,
                       landmarks68: Tensor) -> Tensor:
    """The 68 landmarks with the jaw contour chosen for the head yaw *as this camera sees it*.

    FLAME picks the 17 contour points from the head's yaw in world coordinates, which is the
    yaw a frontal camera sees. For a camera moved round the head (a side view) the visible
    jawline is the one of the head turned by the inverse rig rotation, so the bins come from
    that rotation; a frontal camera gets FLAME's own landmarks unchanged.
    """
    view = FRONTAL_R.T @ camera.R  # M^T: identity for a frontal camera
    if np.allclose(view, np.eye(3)):
        return landmarks68
    batch = params.batch_size
    pose = torch.cat([params.global_pose, params.neck], dim=1).reshape(batch, 2, 3).to(vertices.dtype)
    rots = axis_angle_to_matrix(pose)
    rots = torch.cat([torch.as_tensor(view, dtype=rots.dtype) @ rots[:, :1], rots[:, 1:]], dim=1)
    bins = flame.contour_bins(rots)
    contour = barycentric_points(vertices, flame.dynamic_lmk_vertices[bins], flame.dynamic_lmk_bary[bins])
    return torch.cat([contour, landmarks68[:, contour.shape[1]:]], dim=1)


def background_image(appearance: Appearance, width: int, height: int) -> Tensor:
    """(H,W,3) bilinear colour gradient with soft random blobs, in [0,1]."""
    c = torch.as_tensor(appearance.background, dtype=torch.float32)
    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    image = (1 - y) * ((1 - x) * c[0] + x * c[1]) + y * ((1 - x) * c[2] + x * c[3])
    g = torch.Generator().manual_seed(appearance.texture_seed)
    blobs = torch.rand(1, 3, 6, 6, generator=g) - 0.5
    image = image + 0.25 * F.interpolate(blobs, size=(height, width), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    return image.clamp(0, 1)


@dataclass
class Rendered:
    image: np.ndarray  # (H,W,3) uint8 RGB
    landmarks68: np.ndarray  # (68,2) pixels, FAN/iBUG order with the yaw-dependent contour
    landmarks_mp: np.ndarray  # (105,2) pixels, in the FLAME model's MediaPipe embedding order
    face_mask: np.ndarray  # (H,W) bool, pixels covered by the head


@torch.no_grad()
def render_photo(flame: FLAME, params: FlameParams, camera: Camera, appearance: Appearance,
                 albedo: Tensor | None = None, supersample: int = 2, background: Tensor | None = None,
                 flame_output: FlameOutput | None = None) -> Rendered:
    """Render one face (batch of one) as a photo-like RGB image with exact landmarks.

    `albedo` and `background` (the supersampled `background_image`, (H*s, W*s, 3)) may be
    computed once per video and passed in; they default to the appearance's own. So may
    `flame_output` (`flame(params)`, batch of one), when several cameras see the same frame.
    """
    if params.batch_size != 1:
        raise ValueError("render_photo draws one face at a time")
    out = flame(params) if flame_output is None else flame_output
    if out.vertices.shape[0] != 1:
        raise ValueError("flame_output must be the output for this one parameter set")
    albedo = vertex_albedo(flame, appearance) if albedo is None else albedo
    w, h = camera.width * supersample, camera.height * supersample
    big = Camera(K=camera.K * np.array([[supersample], [supersample], [1]]), R=camera.R, t=camera.t, width=w, height=h)
    verts = out.vertices.float()
    if background is None:
        background = background_image(appearance, w, h)
    elif tuple(background.shape) != (h, w, 3):
        raise ValueError(f"background must be ({h}, {w}, 3) at supersample {supersample}, "
                         f"got {tuple(background.shape)}")
    # Rasterize and shade only the window the head covers, aligned to the supersampling blocks:
    # everything else is background, and per-pixel work over the whole frame dominated the
    # cost of a small face in a large frame (MEAD's 16:9 views). The picture is the full render's
    # up to float rounding (a few pixels where two faces tie in depth may pick the other face).
    x0, y0, x1, y1 = _head_window(big, verts[0], supersample)
    image, mask = background.clone(), torch.zeros(camera.height, camera.width, dtype=torch.bool)
    if x1 > x0 and y1 > y0:
        K = big.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        window = Camera(K=K, R=camera.R, t=camera.t, width=x1 - x0, height=y1 - y0)
        shaded, covered = _shade(flame, verts, window, appearance, albedo)
        image[y0:y1, x0:x1] = torch.where(covered[..., None], shaded, background[y0:y1, x0:x1])
        # The window is aligned to whole output pixels, so its coverage pools on its own.
        if supersample > 1:
            covered = F.avg_pool2d(covered[None, None].float(), supersample)[0, 0] > 0.5
        mask[y0 // supersample:y1 // supersample, x0 // supersample:x1 // supersample] = covered
    image = image.clamp(0, 1)
    if supersample > 1:  # box-filter anti-aliasing
        image = F.avg_pool2d(image.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
    return Rendered(image=(image.numpy() * 255 + 0.5).astype(np.uint8),
                    landmarks68=camera.project(camera_landmarks68(flame, params, out.vertices, camera,
                                                                  out.landmarks)[0].float()).numpy(),
                    landmarks_mp=camera.project(out.landmarks_mp[0].float()).numpy(),
                    face_mask=mask.numpy())


def _head_window(camera: Camera, verts: Tensor, block: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) holding the projected head plus a pixel, in multiples of `block`,
    clipped to the image (empty when the head is off-screen); the whole image when a vertex
    is behind the camera (its projection would be meaningless)."""
    if bool((camera.to_camera(verts)[:, 2] <= 0).any()):
        return 0, 0, camera.width, camera.height
    uv = camera.project(verts)
    lo, hi = uv.min(0).values, uv.max(0).values
    x0 = min(max(int(math.floor(lo[0])) - 1, 0), camera.width) // block * block
    y0 = min(max(int(math.floor(lo[1])) - 1, 0), camera.height) // block * block
    x1 = -(-min(max(int(math.ceil(hi[0])) + 1, 0), camera.width) // block) * block
    y1 = -(-min(max(int(math.ceil(hi[1])) + 1, 0), camera.height) // block) * block
    return x0, y0, x1, y1


def _shade(flame: FLAME, verts: Tensor, camera: Camera, appearance: Appearance,
           albedo: Tensor) -> tuple[Tensor, Tensor]:
    """Shaded colour (H,W,3) and coverage (H,W) of the head seen by `camera` (no background)."""
    fragments = rasterize_meshes(camera.to_ndc(verts), flame.faces, (camera.height, camera.width))
    normals = vertex_normals(verts, flame.faces)[0] @ torch.as_tensor(camera.R, dtype=torch.float32).T
    faces = flame.faces
    attrs = torch.cat([albedo, normals], dim=1)[faces]  # (F,3,6)
    pixel = interpolate_face_attributes(fragments, attrs)[0]  # (H,W,6)
    colour, n = pixel[..., :3], F.normalize(pixel[..., 3:], dim=-1)
    light = torch.as_tensor(appearance.light_dir, dtype=torch.float32)  # towards the light, camera coords
    to_camera = torch.tensor([0.0, 0.0, -1.0])
    facing = (n * to_camera).sum(-1, keepdim=True)
    diffuse = (n * light).sum(-1, keepdim=True).clamp(min=0)
    half = F.normalize(light + to_camera, dim=0)
    specular = 0.15 * (n * half).sum(-1, keepdim=True).clamp(min=0) ** 24
    shaded = colour * (appearance.ambient + (1 - appearance.ambient) * diffuse) + specular
    # Inside of the head seen through the open mouth: a dark oral cavity.
    cavity = torch.tensor([0.12, 0.03, 0.03])
    shaded = torch.where(facing < 0, cavity, shaded)
    covered = fragments.mask[0]
    # A ray into the open mouth can leave through FLAME's open neck and show the background
    # inside the face; such enclosed holes are what a closed mouth cavity would show.
    holes = torch.as_tensor(ndimage.binary_fill_holes(covered.numpy())) & ~covered
    if bool(holes.any()):
        shaded = torch.where(holes[..., None], cavity, shaded)
        covered = covered | holes
    return shaded, covered
