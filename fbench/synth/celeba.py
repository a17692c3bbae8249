"""Synthetic miniature CelebA (aligned-and-cropped images) in the real release's layout, with ground truth.

Layout (data_cards/celeba.yaml)::

    <root>/Img/img_align_celeba/<NNNNNN>.jpg          178 x 218 JPEG, 1-based six-digit names
    <root>/Anno/list_landmarks_align_celeba.txt      count line, header line, `<file> <10 ints>` rows
    <root>/Anno/identity_CelebA.txt                  `<file> <identity>`
    <root>/Eval/list_eval_partition.txt              `<file> <0|1|2>` (train, val, test)
    <root>/fbench_ground_truth.h5

Several images per identity: the same FLAME shape and the same person's colouring (skin,
lips, hair, eyes, skin texture), photographed again with a new expression, head pose, light
and background. Splits are by identity (no person in two splits) and, as in the release,
contiguous in file order: train files first, then val, then test.

Alignment: CelebA's aligned images put the eyes, nose and mouth at about the same place in
every image. Each image here is the least-squares similarity of a notional frontal photo
taking its five points (below) onto a fixed template (`TEMPLATE`, eyes at y = 111.5, 39 px
apart) moved by a little jitter (+-1.5 px, +-5 % scale, +-3 degrees roll), rendered through
the equivalent camera (`images.similarity_camera`), so the landmarks are exact.

The five landmarks of `list_landmarks_align_celeba.txt` come from the exact 68:
lefteye / righteye = mean of points 36-41 / 42-47 (the eye on the image's left is the
subject's right eye), nose = point 30 (nose tip), leftmouth / rightmouth = points 48 / 54,
each coordinate rounded to the nearest integer (floor(v + 0.5)) in fbench's pixel convention.

`--corrupt K` damages K images' data, alternately a truncated JPEG and a malformed landmark
row (cut after its fifth number); the ground truth still describes the intact data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbench.flame import FLAME
from fbench.synth import SynthResult
from fbench.synth.faces import (N_EXP, Appearance, Camera, PoseRanges, render_photo, sample_params, torch_threads,
                                vertex_albedo)
from fbench.io import atomic_write_text
from fbench.synth.files import choose_corrupted, truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.images import (PHOTO_CONVENTIONS, photo_extras, restyle, similarity_camera,
                                 similarity_fit, write_jpeg)

DEFAULT_N = 24  # images, in 6 identities
WIDTH, HEIGHT = 178, 218
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # small images: anti-alias
REAL_IMAGES = 202599
REAL_IDENTITIES = 10177
IMAGE_DIR = "Img/img_align_celeba"
LANDMARKS_FILE = "Anno/list_landmarks_align_celeba.txt"
IDENTITY_FILE = "Anno/identity_CelebA.txt"
PARTITION_FILE = "Eval/list_eval_partition.txt"
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                   "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
SPLITS = ("train", "val", "test")  # partition codes 0, 1, 2
# --variant: the layouts CelebA copies come in (data_cards/celeba.yaml). default: the release's Img/, Anno/,
# Eval/; torchvision: everything flat in celeba/ (torchvision.datasets.CelebA's base_folder), with
# identity_CelebA.txt in CRLF line endings as SMIRK's copy has it; csv: the CSV mirror (image_id headers,
# comma-separated, images double-nested in img_align_celeba/img_align_celeba/, no identity file).
LAYOUTS = {
    "default": {"images": IMAGE_DIR, "landmarks": LANDMARKS_FILE, "identity": IDENTITY_FILE,
                "partition": PARTITION_FILE},
    "torchvision": {"images": "celeba/img_align_celeba", "landmarks": "celeba/list_landmarks_align_celeba.txt",
                    "identity": "celeba/identity_CelebA.txt", "partition": "celeba/list_eval_partition.txt"},
    "csv": {"images": "img_align_celeba/img_align_celeba", "landmarks": "list_landmarks_align_celeba.csv",
            "identity": None, "partition": "list_eval_partition.csv"},
}
VARIANTS = tuple(LAYOUTS)
STREAM = 0x43454C42  # 'CELB'
CORRUPTIONS = ("truncated", "malformed_landmarks_row")
# Where the aligned image puts the five points (x, y): eyes, nose tip, mouth corners. fbench's choice,
# close to typical rows of the real file (e.g. 000001.jpg: 69 109 106 113 77 142 73 152 108 154).
TEMPLATE = np.array([[69.5, 111.5], [108.5, 111.5], [88.5, 134.5], [73.5, 152.5], [104.5, 152.5]])
POSE = PoseRanges(pitch=15.0, yaw=30.0, roll=15.0)


@dataclass
class Item:
    number: int  # 1-based file number
    identity: int  # CelebA identity number
    split: int  # 0 train, 1 val, 2 test
    person: int  # index into this dataset's identities
    image_dir: str = IMAGE_DIR

    @property
    def name(self) -> str:
        return f"{self.number:06d}.jpg"

    @property
    def path(self) -> str:
        return f"{self.image_dir}/{self.name}"


def plan_items(rng: np.random.Generator, n: int) -> tuple[list[Item], int]:
    """`n` images of min(n, max(3, ceil(n/4))) identities, split by identity; returns (items, n_identities).

    From 3 identities on, at least one identity is val and one test (about 10 % each); every
    identity has at least one image.
    """
    if n < 1:
        raise ValueError(f"CelebA needs at least one image, got n={n}")
    n_ids = min(n, max(3, math.ceil(n / 4)))
    n_val = n_test = 0 if n_ids < 3 else max(1, round(0.1 * n_ids))
    split_of = [0] * (n_ids - n_val - n_test) + [1] * n_val + [2] * n_test
    per_id = 1 + rng.multinomial(n - n_ids, np.full(n_ids, 1.0 / n_ids))
    identities = 1 + rng.choice(REAL_IDENTITIES, size=n_ids, replace=False)
    items: list[tuple[int, int]] = []  # (split, person)
    for split in range(3):
        members = [p for p in range(n_ids) if split_of[p] == split]
        block = [p for p in members for _ in range(per_id[p])]
        items += [(split, block[i]) for i in rng.permutation(len(block))]  # an identity's images are scattered
    return [Item(k + 1, int(identities[p]), s, p) for k, (s, p) in enumerate(items)], n_ids


def jittered_template(rng: np.random.Generator) -> np.ndarray:
    """TEMPLATE moved a little, as a detector-driven alignment would: +-1.5 px, +-5 % scale, +-3 degrees roll."""
    centre = TEMPLATE.mean(0)
    angle = math.radians(rng.uniform(-3.0, 3.0))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (TEMPLATE - centre) @ rot.T * rng.uniform(0.95, 1.05) + centre + rng.uniform(-1.5, 1.5, 2)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(5,2) CelebA points from the 68: left eye, right eye (image sides), nose tip, mouth left, mouth right."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def round_pixels(points: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(points) + 0.5).astype(np.int64)


def landmark_line(name: str, values: np.ndarray) -> str:
    """One whitespace-aligned row: the file name, then ten integers right-aligned in 5 columns."""
    return name + "".join(f"{int(v):>5d}" for v in np.asarray(values).reshape(-1))


def write(out: Path, n: int = DEFAULT_N, seed: int = 0, corrupt: int = 0, flame: FLAME | None = None,
          variant: str = "default") -> SynthResult:
    """Write a miniature aligned CelebA with `n` images under `out` (deterministic for `seed`) in the
    layout `variant` (one of VARIANTS)."""
    if flame is None:
        raise ValueError("celeba.write needs a FLAME model (fbench.flame.load_flame())")
    if variant not in LAYOUTS:
        raise ValueError(f"unknown CelebA variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch_threads(1):
        return _write(Path(out), n, seed, corrupt, flame, variant)


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    rng = np.random.default_rng([seed, STREAM])
    layout = LAYOUTS[variant]
    csv = layout["landmarks"].endswith(".csv")
    items, n_ids = plan_items(rng, n)
    for item in items:
        item.image_dir = layout["images"]
    paths = [item.path for item in items]
    if corrupt > len(paths):
        raise ValueError(f"--corrupt {corrupt}: this CelebA has only {len(paths)} images; use a larger --n")
    to_corrupt = choose_corrupted(np.random.default_rng([seed, STREAM, 1]), paths, corrupt)
    kinds = {path: CORRUPTIONS[i % len(CORRUPTIONS)] for i, path in enumerate(to_corrupt)}
    out.mkdir(parents=True, exist_ok=True)
    n_exp = min(flame.n_exp, N_EXP)

    people = []  # per identity: shape, colouring, albedo
    for p in range(n_ids):
        person_rng = np.random.default_rng([seed, STREAM, 2, p])
        shape = sample_params(person_rng, 1, n_exp=n_exp).shape
        appearance = Appearance.sample(person_rng)
        people.append((shape, appearance, vertex_albedo(flame, appearance)))

    gt = GroundTruthWriter("celeba", seed)
    landmark_rows, corrupted_rows = [], {}
    for item in tqdm(items, desc="celeba images", unit="image", disable=None):  # a bar on a terminal only
        item_rng = np.random.default_rng([seed, STREAM, 3, item.number])
        shape, person_look, albedo = people[item.person]
        params = sample_params(item_rng, 1, n_exp=n_exp, pose=POSE)
        params.shape = shape.clone()
        appearance = restyle(person_look, item_rng)
        # A notional frontal photo, then the similarity that puts the eye centres where CelebA has them.
        photo = Camera.looking_at_face(640, 640, 300.0, (320.0, 320.0), distance=float(item_rng.uniform(0.5, 1.2)))
        with torch.no_grad():
            output = flame(params)
        points = five_points(photo.project(output.landmarks[0].double()).numpy())
        camera = similarity_camera(photo, *similarity_fit(points, jittered_template(item_rng)), WIDTH, HEIGHT)
        rendered = render_photo(flame, params, camera, appearance, albedo=albedo, supersample=SUPERSAMPLE,
                                flame_output=output)
        write_jpeg(out / item.path, rendered.image, JPEG_QUALITY)
        points = round_pixels(five_points(rendered.landmarks68))
        if csv:
            values = [str(int(v)) for v in np.asarray(points).reshape(-1)]
            line = ",".join([item.name, *values])
            if kinds.get(item.path) == "malformed_landmarks_row":
                line = ",".join([item.name, *values[:5]])  # a row cut after its fifth number
        else:
            line = landmark_line(item.name, points)
            if kinds.get(item.path) == "malformed_landmarks_row":
                line = line[:len(item.name) + 5 * 5]  # a row cut after its fifth number
        if kinds.get(item.path) == "malformed_landmarks_row":
            corrupted_rows[item.path] = layout["landmarks"]
        landmark_rows.append(line)
        gt.add(f"celeba_{item.number:06d}", item.path, params, **photo_extras(camera, rendered, (HEIGHT, WIDTH)),
               landmarks5=five_points(rendered.landmarks68), landmarks5_int=points,
               identity=np.int64(item.identity), partition=np.int64(item.split), split=np.bytes_(SPLITS[item.split]),
               corrupted=np.int8(CORRUPTIONS.index(kinds[item.path]) + 1 if item.path in kinds else 0))
        if kinds.get(item.path) == "truncated":
            truncate_file(out / item.path)

    # CelebA's annotation files: plain text, one line per image in file order.
    if csv:  # the CSV mirror: a header row naming the columns, comma-separated, no count line
        atomic_write_text(out / layout["landmarks"], "image_id," + LANDMARK_HEADER.replace(" ", ",") + "\n"
                          + "\n".join(landmark_rows) + "\n")
        atomic_write_text(out / layout["partition"], "image_id,partition\n"
                          + "".join(f"{it.name},{it.split}\n" for it in items))
    else:
        atomic_write_text(out / layout["landmarks"], f"{len(items)}\n{LANDMARK_HEADER}\n" + "\n".join(landmark_rows)
                          + "\n")
        atomic_write_text(out / layout["partition"], "".join(f"{it.name} {it.split}\n" for it in items))
    if layout["identity"] is not None:
        eol = "\r\n" if variant == "torchvision" else "\n"  # SMIRK's copy of identity_CelebA.txt has CRLF
        (out / layout["identity"]).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / layout["identity"], "".join(f"{it.name} {it.identity}{eol}" for it in items))
    # SynthResult.corrupted names damaged files: truncated images, and the landmark file if a row is malformed.
    damaged = sorted({p for p, k in kinds.items() if k == "truncated"} | set(corrupted_rows.values()))
    gt.attrs.update({
        "flame_model": str(flame.source), "image_size": np.array([WIDTH, HEIGHT]), "jpeg_quality": JPEG_QUALITY,
        "real_images": REAL_IMAGES, "real_identities": REAL_IDENTITIES,
        "variant": variant,
        "layout": (f"{layout['images']}/<NNNNNN>.jpg; {layout['landmarks']}; {layout['identity']}; "
                   f"{layout['partition']}"),
        "alignment": ("least-squares similarity of the five points onto alignment_template, jittered by +-1.5 px, "
                      "+-5 % scale, +-3 deg roll"),
        "alignment_template": TEMPLATE,
        "annotation_mapping": ("lefteye = mean(landmarks68[36:42]) (image left = subject's right eye), righteye = "
                               "mean(landmarks68[42:48]), nose = landmarks68[30], leftmouth = landmarks68[48], "
                               "rightmouth = landmarks68[54]; written as floor(v + 0.5) (landmarks5_int); "
                               "landmarks5 are the exact points"),
        "split_mapping": "partition 0 train, 1 val, 2 test; by identity, contiguous in file order",
        "corrupted": json.dumps(damaged), "corruption_kinds": ",".join(CORRUPTIONS),
        "corrupted_items": json.dumps([{"path": p, "kind": k, **({"file": layout["landmarks"]} if p in corrupted_rows
                                                                  else {})} for p, k in sorted(kinds.items())]),
        "conventions": PHOTO_CONVENTIONS + (" identity: CelebA identity number; partition: 0/1/2. corrupted: 0 "
                                            "intact, else 1 + index in corruption_kinds."),
    })
    gt.write(out)
    return SynthResult(root=out, counts={"images": len(items), "identities": n_ids,
                                         **{s: sum(it.split == i for it in items) for i, s in enumerate(SPLITS)}},
                       corrupted=damaged)
