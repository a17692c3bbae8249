"""Synthetic miniature FFHQ (Flickr-Faces-HQ) in the real release's layout, with ground truth.

Layout (data_cards/ffhq.yaml)::

    <root>/ffhq-dataset-v2.json
    <root>/images1024x1024/<index // 1000 * 1000:05d>/<index:05d>.png
    <root>/thumbnails128x128/<index // 1000 * 1000:05d>/<index:05d>.png
    <root>/fbench_ground_truth.h5

Each image is a FLAME head (random identity, expression, pose, skin, light, background)
photographed by a notional in-the-wild camera, then aligned and cropped by FFHQ's rule
(download_ffhq.py `recreate_aligned_images`, re-implemented from its documented geometry):
from the eye centres (means of the 6 eye-contour points) and the mouth corners,

    eye_to_eye = eye_right - eye_left;  eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth), scaled to max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x);  centre = eye_avg + 0.1 eye_to_mouth;  quad side = 2 |x|  ->  1024 x 1024

The crop is a similarity of the wild photo, so it is rendered directly through the
equivalent camera (`images.similarity_camera`): eyes level, face centred and large, and the
landmarks exact. The in-the-wild photos themselves are not written (real FFHQ: 955 GB);
their sizes, landmarks, face rectangle and quad are in the JSON, their checksums are null.

Index numbers are drawn from the real range: about one in seven from 60000-69999
(category "validation", as in the release), the rest from 0-59999 ("training").
`--corrupt K` damages K of the 1024x1024 PNGs, alternately truncated and emptied; the JSON
and the ground truth still describe the intact file (its size and MD5 no longer match).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fbench.flame import FLAME
from fbench.synth import SynthResult
from fbench.synth.faces import N_EXP, Appearance, Camera, PoseRanges, render_photo, sample_params, torch_threads
from fbench.io import atomic_write_text
from fbench.synth.files import choose_corrupted, empty_file, truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.images import PHOTO_CONVENTIONS, photo_extras, similarity_camera, write_png

DEFAULT_N = 12
SIZE = 1024
THUMB_SIZE = 128
REAL_COUNT = 70000
TRAINING_COUNT = 60000  # indices 0-59999 are "training", 60000-69999 "validation" (FFHQ README)
JSON_NAME = "ffhq-dataset-v2.json"
STREAM = 0x46464851  # 'FFHQ': this writer's random streams are independent of other writers'
CORRUPTIONS = ("truncated", "empty")
# Head pose of a Flickr portrait; the roll is undone by the alignment (eyes level).
POSE = PoseRanges(pitch=15.0, yaw=35.0, roll=20.0)
# Sizes of the notional in-the-wild photos (camera-like aspect ratios).
WILD_SIZES = ((2048, 1536), (1536, 2048), (3000, 2000), (2000, 3000), (1600, 1200), (2016, 1512), (1024, 1365))
# Licence names/URLs of the five licence kinds the FFHQ README lists (names as Flickr shows them).
LICENSES = (
    ("Attribution License", "https://creativecommons.org/licenses/by/2.0/"),
    ("Attribution-NonCommercial License", "https://creativecommons.org/licenses/by-nc/2.0/"),
    ("Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
    ("Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
)
COUNTRIES = ("", "", "", "United States", "United Kingdom", "Germany", "France", "Brazil", "India", "Japan")
DATE_CRAWLED = "2018-10-10"
# --variant: default, the release (images1024x1024/, thumbnails128x128/, the JSON); flat256: SMIRK's copy,
# a flat folder of 256 px images named <index:05d>.png and no JSON (landmarks then come from detectors).
VARIANTS = ("default", "flat256")
FLAT_SIZE = 256


def folder(index: int) -> str:
    return f"{index // 1000 * 1000:05d}"


def image_path(index: int) -> str:
    return f"images1024x1024/{folder(index)}/{index:05d}.png"


def thumbnail_path(index: int) -> str:
    return f"thumbnails128x128/{folder(index)}/{index:05d}.png"


def wild_path(index: int) -> str:
    return f"in-the-wild-images/{folder(index)}/{index:05d}.png"


def category(index: int) -> str:
    return "training" if index < TRAINING_COUNT else "validation"


def plan_indices(rng: np.random.Generator, n: int) -> list[int]:
    """`n` distinct image indices, sorted: about n/7 validation ones (at least one from n=2)."""
    if n < 1:
        raise ValueError(f"FFHQ needs at least one image, got n={n}")
    if n > REAL_COUNT:
        raise ValueError(f"FFHQ has {REAL_COUNT} images; asked for {n}")
    n_val = 0 if n < 2 else min(REAL_COUNT - TRAINING_COUNT, max(1, round(n / 7)))
    train = rng.choice(TRAINING_COUNT, size=n - n_val, replace=False)
    val = TRAINING_COUNT + rng.choice(REAL_COUNT - TRAINING_COUNT, size=n_val, replace=False)
    return sorted(int(i) for i in np.concatenate([train, val]))


def alignment_quad(landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFHQ's oriented crop rectangle from 68 landmarks: centre c and half-axes x (right), y (down)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)  # image left / right
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    rot90 = lambda v: np.array([-v[1], v[0]])  # noqa: E731  (x right, y down: a quarter turn clockwise)
    x = eye_to_eye - rot90(eye_to_mouth)
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_avg + eye_to_mouth * 0.1, x, rot90(x)


def quad_corners(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(4,2) corners in FFHQ's order: top-left, bottom-left, bottom-right, top-right."""
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def alignment_similarity(c: np.ndarray, x: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) mapping wild-photo pixels onto the aligned size x size image: the quad fills it."""
    scale = size / (2 * np.hypot(*x))
    x_hat = x / np.hypot(*x)
    A = scale * np.array([[x_hat[0], x_hat[1]], [-x_hat[1], x_hat[0]]])  # rows: x_hat, y_hat
    return A, np.full(2, size / 2.0) - A @ c


def _drive_url(kind: str, index: int) -> str:
    # Shaped like the release's Google Drive links, but clearly synthetic (they lead nowhere).
    return f"https://drive.google.com/uc?id=fbench-synthetic-ffhq-{kind}-{index:05d}"


def _metadata(rng: np.random.Generator, index: int) -> dict:
    license_name, license_url = LICENSES[int(rng.integers(len(LICENSES)))]
    uploaded = datetime.date(2005, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 4990)))  # to 2018-08
    author = int(rng.integers(1, 5000))
    return {"photo_url": f"https://www.flickr.com/photos/fbench-synthetic-{author}/{int(rng.integers(10**9, 10**10))}/",
            "photo_title": f"IMG_{int(rng.integers(1, 10000)):04d}.JPG",
            "author": f"Synthetic Author {author}",
            "country": COUNTRIES[int(rng.integers(len(COUNTRIES)))],
            "license": license_name, "license_url": license_url,
            "date_uploaded": uploaded.isoformat(), "date_crawled": DATE_CRAWLED}


def _file_entry(kind: str, index: int, path: str, data: bytes, pixels: np.ndarray) -> dict:
    return {"file_url": _drive_url(kind, index), "file_path": path, "file_size": len(data),
            "file_md5": hashlib.md5(data).hexdigest(), "pixel_size": [int(pixels.shape[1]), int(pixels.shape[0])],
            "pixel_md5": hashlib.md5(np.ascontiguousarray(pixels)).hexdigest()}


def _points(points: np.ndarray, integer: bool = False) -> list[list[float]]:
    if integer:  # dlib reports whole pixels
        return [[int(np.floor(x + 0.5)), int(np.floor(y + 0.5))] for x, y in points]
    return [[float(x), float(y)] for x, y in points]


def write(out: Path, n: int = DEFAULT_N, seed: int = 0, corrupt: int = 0, flame: FLAME | None = None,
          variant: str = "default") -> SynthResult:
    """Write a miniature FFHQ with `n` images under `out` (deterministic for `seed`) in layout `variant`."""
    if flame is None:
        raise ValueError("ffhq.write needs a FLAME model (fbench.flame.load_flame())")
    if variant not in VARIANTS:
        raise ValueError(f"unknown FFHQ variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch_threads(1):
        return _write(Path(out), n, seed, corrupt, flame, variant)


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    rng = np.random.default_rng([seed, STREAM])
    indices = plan_indices(rng, n)
    flat = variant == "flat256"
    paths = [f"{i:05d}.png" if flat else image_path(i) for i in indices]
    if corrupt > len(paths):
        raise ValueError(f"--corrupt {corrupt}: this FFHQ has only {len(paths)} images; use a larger --n")
    # A stream of its own: corrupting changes no other file (they are as with --corrupt 0).
    to_corrupt = choose_corrupted(np.random.default_rng([seed, STREAM, 1]), paths, corrupt)
    kinds = {path: CORRUPTIONS[i % len(CORRUPTIONS)] for i, path in enumerate(to_corrupt)}
    out.mkdir(parents=True, exist_ok=True)
    n_exp = min(flame.n_exp, N_EXP)

    gt = GroundTruthWriter("ffhq", seed)
    entries: dict[str, dict] = {}
    for index, path in tqdm(list(zip(indices, paths)), desc="ffhq images", unit="image",
                            disable=None):  # a bar on a terminal only
        item_rng = np.random.default_rng([seed, STREAM, 2, index])  # per image: independent of n
        params = sample_params(item_rng, 1, n_exp=n_exp, pose=POSE)
        appearance = Appearance.sample(item_rng)
        width, height = WILD_SIZES[int(item_rng.integers(len(WILD_SIZES)))]
        wild = Camera.looking_at_face(
            width, height, face_height_px=float(item_rng.uniform(0.2, 0.45)) * min(width, height),
            center_px=(float(item_rng.uniform(0.35, 0.65)) * width, float(item_rng.uniform(0.35, 0.6)) * height),
            distance=float(item_rng.uniform(0.45, 1.5)))
        with torch.no_grad():
            output = flame(params)
        wild_landmarks = wild.project(output.landmarks[0].double()).numpy()  # frontal camera: FLAME's contour
        c, x, y = alignment_quad(wild_landmarks)
        camera = similarity_camera(wild, *alignment_similarity(c, x), SIZE, SIZE)
        if flat:  # SMIRK's copy: the aligned image at 256 px (the same view, rendered at that size), no JSON
            K = camera.K.copy()
            K[:2] *= FLAT_SIZE / SIZE
            camera = dataclasses.replace(camera, K=K, width=FLAT_SIZE, height=FLAT_SIZE)
            rendered = render_photo(flame, params, camera, appearance, supersample=2, flame_output=output)
            write_png(out / path, rendered.image)
            gt.add(f"ffhq_{index:05d}", path, params, **photo_extras(camera, rendered, (FLAT_SIZE, FLAT_SIZE)),
                   index=np.int64(index), split=np.bytes_("train" if category(index) == "training" else "val"),
                   category=np.bytes_(category(index)),
                   corrupted=np.int8(CORRUPTIONS.index(kinds[path]) + 1 if path in kinds else 0))
            if path in kinds:
                (truncate_file if kinds[path] == "truncated" else empty_file)(out / path)
            continue
        rendered = render_photo(flame, params, camera, appearance, supersample=1, flame_output=output)

        data = write_png(out / path, rendered.image)
        thumb = np.asarray(Image.fromarray(rendered.image).resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS))
        thumb_data = write_png(out / thumbnail_path(index), thumb)
        lo, hi = np.floor(wild_landmarks.min(0)), np.ceil(wild_landmarks.max(0))
        entries[str(index)] = {
            "category": category(index),
            "metadata": _metadata(item_rng, index),
            "image": {**_file_entry("image", index, path, data, rendered.image),
                      "face_landmarks": _points(rendered.landmarks68)},
            "thumbnail": _file_entry("thumbnail", index, thumbnail_path(index), thumb_data, thumb),
            "in_the_wild": {"file_url": _drive_url("wild", index), "file_path": wild_path(index),
                            "file_size": None, "file_md5": None, "pixel_size": [width, height], "pixel_md5": None,
                            "face_rect": [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])],
                            "face_landmarks": _points(wild_landmarks, integer=True),
                            "face_quad": _points(quad_corners(c, x, y))},
        }
        gt.add(f"ffhq_{index:05d}", path, params, **photo_extras(camera, rendered, (SIZE, SIZE)),
               wild_camera_K=wild.K, wild_camera_R=wild.R, wild_camera_t=wild.t,
               wild_image_size=np.array([width, height]), wild_landmarks68=wild_landmarks,
               index=np.int64(index), split=np.bytes_("train" if category(index) == "training" else "val"),
               category=np.bytes_(category(index)),
               corrupted=np.int8(CORRUPTIONS.index(kinds[path]) + 1 if path in kinds else 0))
        if path in kinds:
            (truncate_file if kinds[path] == "truncated" else empty_file)(out / path)

    if not flat:
        atomic_write_text(out / JSON_NAME, json.dumps(entries))
    gt.attrs.update({
        "flame_model": str(flame.source), "image_size": np.array([FLAT_SIZE if flat else SIZE] * 2),
        "real_count": REAL_COUNT, "variant": variant,
        "layout": "{index:05d}.png (256 px, flat, no JSON)" if flat else
                  "images1024x1024/{index//1000*1000:05d}/{index:05d}.png; thumbnails128x128/...; " + JSON_NAME,
        "alignment": "FFHQ recreate_aligned_images rule on the exact wild landmarks (see fbench.synth.ffhq)",
        "annotation_mapping": ("JSON image.face_landmarks = landmarks68 exactly (floats); in_the_wild.face_landmarks "
                               "= wild_landmarks68 rounded to whole pixels; face_quad from the exact wild landmarks"),
        "split_mapping": "category training -> split train, validation -> val",
        "corrupted": json.dumps(to_corrupt), "corruption_kinds": ",".join(CORRUPTIONS),
        "corrupted_items": json.dumps([{"path": p, "kind": k} for p, k in sorted(kinds.items())]),
        "conventions": PHOTO_CONVENTIONS + (
            " wild_*: the notional in-the-wild photo's camera and FLAME-contour landmarks (not written). "
            "corrupted: 0 intact, else 1 + index in corruption_kinds."),
    })
    gt.write(out)
    return SynthResult(root=out, counts={"images": len(indices), "thumbnails": 0 if flat else len(indices),
                                         "validation": sum(i >= TRAINING_COUNT for i in indices)},
                       corrupted=list(to_corrupt))
