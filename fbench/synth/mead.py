"""Synthetic miniature MEAD in the real release's layout, with ground truth.

Layout (data_cards/mead.yaml)::

    <root>/<actor>/video/<view>/<emotion>/level_<n>/<clip:03d>.mp4
    <root>/fbench_ground_truth.h5

A *take* is one actor saying one sentence with one emotion at one intensity level; MEAD
films every take with seven synchronised cameras, so each take is written once per view
with the same clip number. Here the seven views see the same FLAME trajectory (the same
moment) from cameras moved round the head: front; left_30/left_60 and right_30/right_60
at 30 and 60 degrees of azimuth towards the actor's left (FLAME +x) and right; top and
down 30 degrees above and below. The emotion and level drive the expression: a fixed
per-emotion prototype in expression space (the same for every seed, so "happy" means the
same thing in every synthetic MEAD), scaled by the level, plus speech (the jaw opens per
syllable) and small talking-head motion. Neutral has only level_1, as in MEAD.

Real MEAD videos are 1920x1080 at 30 fps; rendering that on a CPU is slow (about 12 s a
frame here), so the miniature keeps the 16:9 aspect ratio at `WIDTH`x`HEIGHT` and 30 fps
(recorded in the ground-truth attrs and the data card). `--corrupt K` damages K videos,
alternately emptied (0 bytes) and truncated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbench.flame import FLAME, FlameParams
from fbench.synth import SynthResult
from fbench.synth.faces import (FRONTAL_R, Appearance, Camera, PoseRanges, background_image, frame_output,
                                render_photo, sample_params, smooth_trajectory, syllable_jaw, torch_threads,
                                vertex_albedo)
from fbench.synth.files import choose_corrupted
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.video import corrupt_video, write_h264

DEFAULT_N = 6  # takes; each is written in all seven views
WIDTH, HEIGHT = 480, 270  # real MEAD: 1920x1080; same 16:9 aspect ratio
REAL_SIZE = (1920, 1080)
FPS = 30
FRAMES = (12, 14)  # frames per take, inclusive range
CORRUPTIONS = ("empty", "truncated")
# View name -> (azimuth, elevation) in degrees of the camera round the head.
VIEWS: dict[str, tuple[float, float]] = {
    "front": (0.0, 0.0), "down": (0.0, -30.0), "top": (0.0, 30.0),
    "left_30": (30.0, 0.0), "left_60": (60.0, 0.0), "right_30": (-30.0, 0.0), "right_60": (-60.0, 0.0)}
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
LEVELS = (1, 2, 3)
LEVEL_SCALE = {1: 0.5, 2: 1.0, 3: 1.5}
PROTOTYPE_NORM = 3.0  # expression-coefficient norm of a level-2 emotion (unit-normal coefficients)
PROTOTYPE_SEED = 20200823  # fixed: prototypes do not depend on the dataset seed
# Extra jaw opening (rad) and eyelid closure per emotion at level 2: the parts of an
# expression FLAME keeps outside the expression coefficients.
EMOTION_JAW = {"surprised": 0.12, "fear": 0.06, "happy": 0.04, "angry": 0.02}
EMOTION_EYELIDS = {"sad": 0.25, "happy": 0.15, "disgusted": 0.2, "contempt": 0.1, "angry": 0.1}
# Actors in the order takes are given to them: a train, a val and a test id in turn, so small
# datasets hold all three.
# The split lists are in data_cards/mead.yaml (val M013 M023 M042 W018 W028, test M005 M022 M028 W029 W033).
ACTORS = ("M003", "M013", "M005", "W009", "W018", "W029", "M007", "M023", "M022", "W011", "W028", "W033")
# An actor at rest addressing the front camera.
POSE = PoseRanges(pitch=8.0, yaw=12.0, roll=5.0)
TALK_EXPRESSION = 0.3  # scale of the talking-head expression variation around the emotion


@dataclass
class Take:
    actor: str
    emotion: str
    level: int
    clip: str  # three digits, the file stem
    n_frames: int

    layout: str = "default"

    def path(self, view: str) -> str:
        return LAYOUTS[self.layout].format(actor=self.actor, view=view, emotion=self.emotion, level=self.level,
                                           clip=self.clip)


# --variant: the path forms of the release (data_cards/mead.yaml): default <actor>/video/<view>/...; a few
# actors have an extra "1" folder after video/ (video-1), in place of it (1), or after the view (view-1).
LAYOUTS = {
    "default": "{actor}/video/{view}/{emotion}/level_{level}/{clip}.mp4",
    "video-1": "{actor}/video/1/{view}/{emotion}/level_{level}/{clip}.mp4",
    "1": "{actor}/1/{view}/{emotion}/level_{level}/{clip}.mp4",
    "view-1": "{actor}/video/{view}/1/{emotion}/level_{level}/{clip}.mp4",
}
VARIANTS = tuple(LAYOUTS)


def emotion_prototypes(n_exp: int) -> dict[str, np.ndarray]:
    """Expression offset (n_exp,) of each emotion at level 2; neutral is zero."""
    rng = np.random.default_rng(PROTOTYPE_SEED)
    damping = np.where(np.arange(n_exp) < 20, 1.0, 0.3)  # mostly the leading components
    out = {}
    for emotion in EMOTIONS:
        v = rng.normal(0, 1, n_exp) * damping
        out[emotion] = np.zeros(n_exp) if emotion == "neutral" else v * (PROTOTYPE_NORM / np.linalg.norm(v))
    return out


def plan_takes(rng: np.random.Generator, n: int) -> list[Take]:
    """`n` takes over min(n, max(3, 2n/3)) actors (a train, a val and a test id from n=3, two train ids
    from n=5); emotions cycle through all eight in a seeded order."""
    if n < 1:
        raise ValueError(f"MEAD needs at least one take, got n={n}")
    actors = ACTORS[:min(n, len(ACTORS), max(3, math.ceil(2 * n / 3)))]
    order = [EMOTIONS[i] for i in rng.permutation(len(EMOTIONS))]
    takes, next_clip = [], {}
    for i in range(n):
        actor, emotion = actors[i % len(actors)], order[i % len(order)]
        level = 1 if emotion == "neutral" else int(rng.choice(LEVELS))
        key = (actor, emotion, level)
        clip = next_clip.get(key, int(rng.integers(1, 30)))  # real clips run 001-030 or so
        next_clip[key] = clip + 1
        takes.append(Take(actor, emotion, level, f"{clip:03d}", int(rng.integers(FRAMES[0], FRAMES[1] + 1))))
    return takes


def take_params(rng: np.random.Generator, take: Take, identity: FlameParams, prototypes: dict[str, np.ndarray],
                n_exp: int) -> FlameParams:
    """The take's FLAME trajectory: talking head + emotion offset (scaled by level) + speech jaw."""
    params = smooth_trajectory(rng, take.n_frames, identity, n_exp=n_exp, pose=POSE)
    scale = LEVEL_SCALE[take.level]
    emotion = torch.as_tensor(prototypes[take.emotion] * scale, dtype=torch.float32)
    params.expression = TALK_EXPRESSION * params.expression + emotion
    duration = take.n_frames / FPS
    starts = np.cumsum(rng.uniform(0.14, 0.24, int(duration / 0.14) + 2)) - 0.1  # ~5 syllables a second
    syllables = [(float(s), float(s) + float(rng.uniform(0.1, 0.16))) for s in starts if s < duration]
    jaw = syllable_jaw(rng, take.n_frames, FPS, syllables) + EMOTION_JAW.get(take.emotion, 0.0) * scale
    params.jaw[:, 0] = torch.as_tensor(jaw, dtype=torch.float32)
    lids = EMOTION_EYELIDS.get(take.emotion, 0.0) * scale
    params.eyelids = (params.eyelids * 0.5 + lids).clamp(0, 1)  # calmer blinking, emotion's closure
    return params


def view_camera(view: str, face_height_px: float, center_px: tuple[float, float]) -> Camera:
    azimuth, elevation = VIEWS[view]
    return Camera.looking_at_face(WIDTH, HEIGHT, face_height_px, center_px, distance=1.5,
                                  azimuth_deg=azimuth, elevation_deg=elevation)


def write(out: Path, n: int = DEFAULT_N, seed: int = 0, corrupt: int = 0, flame: FLAME | None = None,
          variant: str = "default") -> SynthResult:
    """Write a miniature MEAD with `n` takes (7n videos) under `out` (deterministic for `seed`), paths in
    the form `variant` (LAYOUTS)."""
    if flame is None:
        raise ValueError("mead.write needs a FLAME model (fbench.flame.load_flame())")
    if variant not in LAYOUTS:
        raise ValueError(f"unknown MEAD variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch_threads(1):
        return _write(Path(out), n, seed, corrupt, flame, variant)


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x4D454144])  # 'MEAD': independent of other writers' streams
    takes = plan_takes(rng, n)
    for take in takes:
        take.layout = variant
    all_paths = [take.path(view) for take in takes for view in VIEWS]
    if corrupt > len(all_paths):
        raise ValueError(f"--corrupt {corrupt}: this MEAD has only {len(all_paths)} videos; use a larger --n")
    # A stream of its own: corrupting changes nothing else (other files are as with --corrupt 0).
    to_corrupt = choose_corrupted(np.random.default_rng([seed, 0x4D454144, 1]), sorted(all_paths), corrupt)
    kinds = {path: CORRUPTIONS[i % len(CORRUPTIONS)] for i, path in enumerate(to_corrupt)}

    n_exp = min(flame.n_exp, 50)
    prototypes = emotion_prototypes(n_exp)
    actors = {}
    for actor in dict.fromkeys(t.actor for t in takes):
        actor_rng = np.random.default_rng(rng.integers(2**63))
        appearance = Appearance.sample(actor_rng)
        # Head at the middle of the frame, slightly high (shoulders below), as MEAD frames it.
        framing = (float(actor_rng.uniform(85, 100)),
                   (WIDTH / 2 + float(actor_rng.uniform(-6, 6)), HEIGHT * 0.45 + float(actor_rng.uniform(-5, 5))))
        views = {}
        for view in VIEWS:
            camera = view_camera(view, *framing)
            # One studio light for every camera: the light direction is fixed in the world.
            light = camera.R @ FRONTAL_R.T @ appearance.light_dir
            views[view] = (camera, dataclasses.replace(appearance, light_dir=light))
        actors[actor] = (sample_params(actor_rng, 1, n_exp=n_exp), vertex_albedo(flame, appearance),
                         background_image(appearance, 2 * WIDTH, 2 * HEIGHT), views)

    gt = GroundTruthWriter("mead", seed, attrs={})
    frames_total = 0
    # A progress bar on a terminal only (disable=None), the writer takes tens of seconds.
    for t, take in enumerate(tqdm(takes, desc="mead takes", unit="take", disable=None)):
        take_rng = np.random.default_rng(rng.integers(2**63))
        identity, albedo, background, views = actors[take.actor]
        params = take_params(take_rng, take, identity, prototypes, n_exp)
        with torch.no_grad():
            outputs = flame(params)
        frames = [frame_output(outputs, f) for f in range(take.n_frames)]
        for view, (camera, appearance) in views.items():
            path = take.path(view)
            images = []
            for f in range(take.n_frames):
                r = render_photo(flame, params[f], camera, appearance, albedo=albedo, background=background,
                                 flame_output=frames[f])
                images.append(r.image)
                gt.add(f"mead_{take.actor}_{view}_{take.emotion}_level_{take.level}_{take.clip}_f{f:03d}", path,
                       params[f], frame=f, **camera.as_arrays(), landmarks68=r.landmarks68.astype(np.float64),
                       landmarks_mp=r.landmarks_mp.astype(np.float64), face_visible=np.bool_(r.face_mask.any()),
                       face_mask=np.packbits(r.face_mask, axis=1), actor=np.bytes_(take.actor),
                       view=np.bytes_(view), emotion=np.bytes_(take.emotion), level=np.int64(take.level),
                       clip=np.bytes_(take.clip), take=np.int64(t),
                       corrupted=np.int8(CORRUPTIONS.index(kinds[path]) + 1 if path in kinds else 0))
            write_h264(out / path, images, FPS)
            if path in kinds:
                corrupt_video(out / path, kinds[path])
            frames_total += take.n_frames

    gt.attrs.update({
        "fps": FPS, "image_size": np.array([WIDTH, HEIGHT]), "real_image_size": np.array(REAL_SIZE),
        "flame_model": str(flame.source),
        "note": f"rendered at {WIDTH}x{HEIGHT} (16:9 like the real {REAL_SIZE[0]}x{REAL_SIZE[1]}) to stay fast",
        "codec": "h264 (libx264, yuv420p)",
        "layout": LAYOUTS[variant].replace("{clip}", "{clip:03d}"), "variant": variant,
        "views": json.dumps(VIEWS), "emotions": json.dumps(EMOTIONS),
        "level_scale": json.dumps(LEVEL_SCALE), "prototype_seed": PROTOTYPE_SEED,
        "corrupted": json.dumps(to_corrupt), "corruption_kinds": ",".join(CORRUPTIONS),
        "conventions": (
            "landmarks68 / landmarks_mp: pixels, (0,0) = top-left image corner, pixel centres at +0.5; the 68's "
            "jaw contour is the one the row's camera sees. camera_K/R/t: pinhole, OpenCV axes, world->camera "
            "x_cam = R x + t in metres; the FLAME head is at the world origin; flame/cam and flame/translation "
            "are unused (zero). The seven views of a take (column take) share its FLAME rows and differ in "
            "camera; views: (azimuth, elevation) degrees, azimuth towards the actor's left (FLAME +x). "
            "face_mask: np.unpackbits(face_mask, axis=1)[:, :width] is the head's silhouette. "
            "actor, view, emotion, clip: ASCII bytes. corrupted: 0 intact, else 1 + index in corruption_kinds."),
    })
    gt.write(out)
    return SynthResult(root=out, counts={"takes": len(takes), "videos": len(all_paths), "frames": frames_total,
                                         "actors": len(actors)}, corrupted=list(to_corrupt))
