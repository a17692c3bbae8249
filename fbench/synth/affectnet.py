"""Synthetic miniature AffectNet (manually annotated part) in the real release's layout, with ground truth.

Layout (data_cards/affectnet.yaml)::

    <root>/Manually_Annotated_Images/<dir>/<sha224-hex>.jpg     varied sizes (about 200-800 px a side)
    <root>/Manually_Annotated_file_lists/training.csv
    <root>/Manually_Annotated_file_lists/validation.csv
    <root>/fbench_ground_truth.h5

CSV columns: subDirectory_filePath, face_x, face_y, face_width, face_height (ints, image
pixels), facial_landmarks (68 points `x;y;...`, 2 decimals), expression (0-10), valence,
arousal (in [-1, 1], 6 decimals; -2 where not annotated).

Label model (fbench's choice; parameters in the ground-truth attrs):

- Each row gets a generating class from a balanced schedule: 9 rows in 10 cycle through
  the eight emotions 0-7, every tenth row is invalid, cycling 10 No-Face, 8 None,
  9 Uncertain; the schedule is shuffled.
- An emotion c (0-7) sets the expression to `PROTOTYPES[c] * intensity + RESIDUAL * e`,
  intensity ~ U(0.5, 1.5), e the generic `faces.sample_params` expression. The prototypes are
  MEAD's (`mead.emotion_prototypes`, fixed for every seed; Neutral is zero), so an emotion
  means the same face in both synthetic datasets. The jaw opens by U(0, 0.12) rad plus the
  emotion's `mead.EMOTION_JAW` x intensity; eyelids close by `mead.EMOTION_EYELIDS` x intensity.
- Valence/arousal = `VA_CENTRES[c] * intensity + N(0, VA_NOISE)`, clipped to [-1, 1]
  (circumplex-style centres, fbench's choice).
- Label noise: with probability `FLIP_PROB` the written class of an emotion row is another
  emotion, uniformly (annotators disagree); valence/arousal keep the true emotion.
- None (8): a blend of two distinct emotions (half intensity each), valence/arousal the blend's.
  Uncertain (9): the same kind of blend, valence/arousal -2. No-Face (10): the head turned
  away from the camera (yaw 180 +- 30 degrees), valence/arousal -2.

So the class is a learnable function of (expression, jaw): a linear classifier on them beats
the 1/8 chance level by far (about 0.75 held-out accuracy against the noisy labels from 500 rows).
`annotations(seed, n, n_exp)` draws the labels and parameters alone (no rendering), as `write` does.

Images are in-the-wild pictures (no alignment): random size and aspect ratio, the face
anywhere with a random size, pose and roll (its box kept inside the picture).
face_x/y/width/height is a square box around the 68 landmarks (1.2 x their larger extent,
clipped to the image). `--corrupt K` damages K items, alternately a truncated JPEG and a
malformed CSV row (cut inside facial_landmarks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbench.flame import FLAME, FlameParams
from fbench.synth import SynthResult
from fbench.synth.faces import N_EXP, Appearance, Camera, PoseRanges, render_photo, sample_params, torch_threads
from fbench.io import atomic_write, atomic_write_text
from fbench.synth.files import choose_corrupted, truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.images import PHOTO_CONVENTIONS, mask_columns, photo_extras, write_jpeg
from fbench.synth.mead import EMOTION_EYELIDS, EMOTION_JAW, PROTOTYPE_SEED, emotion_prototypes

DEFAULT_N = 60
CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
           "None", "Uncertain", "No-Face")
N_EMOTIONS = 8  # classes 0-7 are emotions; 8-10 are invalid for emotion recognition
NONE, UNCERTAIN, NO_FACE = 8, 9, 10
INVALID_CYCLE = (NO_FACE, NONE, UNCERTAIN)
INVALID_EVERY = 10  # one row in ten is invalid
MEAD_EMOTION = ("neutral", "happy", "sad", "surprised", "fear", "disgusted", "angry", "contempt")  # class -> MEAD
# Valence, arousal of each emotion at intensity 1 (circumplex-style placement; fbench's choice).
VA_CENTRES = np.array([[0.0, 0.0], [0.75, 0.35], [-0.65, -0.35], [0.2, 0.75], [-0.6, 0.7], [-0.65, 0.3],
                       [-0.6, 0.65], [-0.45, 0.15]])
INTENSITY = (0.5, 1.5)
RESIDUAL = 0.6  # scale of the generic expression around the emotion
JAW_OPEN = 0.12  # rad, the emotion-independent part of the jaw opening
VA_NOISE = 0.08
FLIP_PROB = 0.1
INVALID_VA = -2.0
VALIDATION_EVERY = 5  # every fifth row (in schedule order) goes to validation.csv
CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
IMAGE_DIR = "Manually_Annotated_Images"
LIST_DIR = "Manually_Annotated_file_lists"  # where the release puts the two CSVs
SPLIT_FILES = {"train": f"{LIST_DIR}/training.csv", "val": f"{LIST_DIR}/validation.csv"}
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # anti-aliasing of small pictures; larger ones (longer side > SUPERSAMPLE_MAX) render at 1x
SUPERSAMPLE_MAX = 400  # (4x the pixels would double the writer's time for little visible gain)
SIZE_RANGE = (200, 800)  # longer image side, pixels
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)
BOX_SCALE = 1.2
STREAM = 0x41464E54  # 'AFNT'
CORRUPTIONS = ("truncated", "malformed_csv_row")
POSE = PoseRanges(pitch=20.0, yaw=40.0, roll=15.0)
REAL_COUNTS = {"training": 414799, "validation": 5500}


@dataclass(frozen=True)
class Layout:
    """Where a copy keeps the images and the two lists (data_cards/affectnet.yaml, variants)."""

    image_dir: str
    lists: dict[str, str]  # split -> CSV path
    val_header: bool = True


# --variant: the layouts copies of AffectNet come in. default: the release's two archives extracted
# to Manually_Annotated_Images/ and Manually_Annotated_file_lists/; compressed: the image archive
# extracted as Manually_Annotated_compressed/Manually_Annotated_Images/; emoca: EMOCA/inferno's
# Manually_Annotated/ with the CSVs beside the image folder; root-lists: the CSVs at the root;
# headerless: validation.csv without its header line; npy: the second distribution (train_set/,
# val_set/ with images/<n>.jpg 224 px crops and annotations/<n>_{exp,val,aro,lnd}.npy).
LAYOUTS = {
    "default": Layout(IMAGE_DIR, dict(SPLIT_FILES)),
    "compressed": Layout(f"Manually_Annotated_compressed/{IMAGE_DIR}", dict(SPLIT_FILES)),
    "emoca": Layout(f"Manually_Annotated/{IMAGE_DIR}", {"train": "Manually_Annotated/training.csv",
                                                       "val": "Manually_Annotated/validation.csv"}),
    "root-lists": Layout(IMAGE_DIR, {"train": "training.csv", "val": "validation.csv"}),
    "headerless": Layout(IMAGE_DIR, dict(SPLIT_FILES), val_header=False),
}
NPY_DIRS = {"train": "train_set", "val": "val_set"}
NPY_SIZE = 224  # the npy distribution's crops
VARIANTS = (*LAYOUTS, "npy")


@dataclass
class Annotations:
    """Labels and FLAME parameters of `n` rows (before rendering)."""

    params: FlameParams
    emotion: np.ndarray  # (n,) generating class 0-10 (for 8/9 the blend is in `blend`)
    expression: np.ndarray  # (n,) the class written to the CSV (emotion, or a flipped one)
    intensity: np.ndarray  # (n,)
    blend: np.ndarray  # (n,2) the two emotions of a None/Uncertain blend, -1 otherwise
    valence_clean: np.ndarray  # (n,) before noise; -2 where not annotated
    arousal_clean: np.ndarray
    valence: np.ndarray  # (n,) as written (6 decimals); -2 where not annotated
    arousal: np.ndarray
    flipped: np.ndarray  # (n,) bool: written class differs from the generating emotion

    def __len__(self) -> int:
        return len(self.emotion)


def prototypes(n_exp: int) -> np.ndarray:
    """(8, n_exp) expression offset of each emotion class at intensity 1 (MEAD's prototypes)."""
    table = emotion_prototypes(n_exp)
    return np.stack([table[name] for name in MEAD_EMOTION])


def class_schedule(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) generating classes: emotions cycled, every tenth row invalid (10, 8, 9 in turn), then shuffled."""
    classes, n_invalid = [], 0
    for i in range(n):
        if i % INVALID_EVERY == INVALID_EVERY - 1:
            classes.append(INVALID_CYCLE[n_invalid % len(INVALID_CYCLE)])
            n_invalid += 1
        else:
            classes.append((i - n_invalid) % N_EMOTIONS)
    return np.array(classes, dtype=np.int64)[rng.permutation(n)]


def annotations(seed: int, n: int, n_exp: int = N_EXP) -> Annotations:
    """The labels and FLAME parameters of a synthetic AffectNet of `n` rows for `seed` (what `write` uses)."""
    if n < 1:
        raise ValueError(f"AffectNet needs at least one image, got n={n}")
    rng = np.random.default_rng([seed, STREAM, 2])
    emotion = class_schedule(rng, n)
    params = sample_params(rng, n, n_exp=n_exp, pose=POSE)
    protos = prototypes(n_exp)
    intensity = rng.uniform(*INTENSITY, n)
    blend = np.full((n, 2), -1, dtype=np.int64)
    for i in np.nonzero((emotion == NONE) | (emotion == UNCERTAIN))[0]:
        blend[i] = 1 + rng.choice(N_EMOTIONS - 1, size=2, replace=False)  # two distinct non-neutral emotions

    offset = np.zeros((n, n_exp))
    va = np.full((n, 2), INVALID_VA)
    jaw_extra, lids = np.zeros(n), np.zeros(n)
    jaw_of = np.array([EMOTION_JAW.get(name, 0.0) for name in MEAD_EMOTION])
    lids_of = np.array([EMOTION_EYELIDS.get(name, 0.0) for name in MEAD_EMOTION])
    valid = emotion < N_EMOTIONS
    offset[valid] = protos[emotion[valid]] * intensity[valid, None]
    jaw_extra[valid] = jaw_of[emotion[valid]] * intensity[valid]
    lids[valid] = lids_of[emotion[valid]] * intensity[valid]
    va[valid] = VA_CENTRES[emotion[valid]] * intensity[valid, None]
    mixed = blend[:, 0] >= 0
    if mixed.any():
        half = 0.5 * intensity[mixed, None]
        offset[mixed] = (protos[blend[mixed, 0]] + protos[blend[mixed, 1]]) * half
        jaw_extra[mixed] = (jaw_of[blend[mixed, 0]] + jaw_of[blend[mixed, 1]]) * half[:, 0]
        lids[mixed] = (lids_of[blend[mixed, 0]] + lids_of[blend[mixed, 1]]) * half[:, 0]
        none = emotion == NONE
        va[none] = (VA_CENTRES[blend[none, 0]] + VA_CENTRES[blend[none, 1]]) * 0.5 * intensity[none, None]

    residual = params.expression.double().numpy() * RESIDUAL
    params.expression = torch.as_tensor(residual + offset, dtype=torch.float32)
    params.jaw[:, 0] = torch.as_tensor(rng.uniform(0, JAW_OPEN, n) + jaw_extra, dtype=torch.float32)
    params.eyelids = (params.eyelids * 0.5 + torch.as_tensor(lids, dtype=torch.float32)[:, None]).clamp(0, 1)
    away = emotion == NO_FACE
    if away.any():  # the back of the head: no face to see
        params.global_pose[away, 1] = torch.as_tensor(math.pi + rng.uniform(-0.5, 0.5, int(away.sum())),
                                                      dtype=torch.float32)

    noise = rng.normal(0, VA_NOISE, (n, 2))
    annotated = va[:, 0] != INVALID_VA
    written = np.where(annotated[:, None], np.round(np.clip(va + noise, -1, 1), 6), INVALID_VA)
    flip = valid & (rng.random(n) < FLIP_PROB)
    other = (emotion + 1 + rng.integers(0, N_EMOTIONS - 1, n)) % N_EMOTIONS  # uniform over the other emotions
    expression = np.where(flip, other, emotion)
    return Annotations(params=params, emotion=emotion, expression=expression, intensity=intensity, blend=blend,
                       valence_clean=va[:, 0], arousal_clean=va[:, 1], valence=written[:, 0],
                       arousal=written[:, 1], flipped=flip)


@dataclass
class Item:
    row: int
    path: str  # relative to the root
    split: str  # train or val
    width: int
    height: int


def plan_items(rng: np.random.Generator, n: int, seed: int, variant: str = "default") -> list[Item]:
    items = []
    counters = {"train": 0, "val": 0}
    for row in range(n):
        longer = math.exp(rng.uniform(math.log(SIZE_RANGE[0]), math.log(SIZE_RANGE[1])))
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]  # width / height
        width, height = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
        folder = int(rng.integers(1, 1000))
        name = hashlib.sha224(f"fbench-synthetic-affectnet-{seed}-{row}".encode()).hexdigest()
        split = "val" if row % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"
        if variant == "npy":  # square crops numbered per split folder
            items.append(Item(row, f"{NPY_DIRS[split]}/images/{counters[split]}.jpg", split, NPY_SIZE, NPY_SIZE))
            counters[split] += 1
        else:
            items.append(Item(row, f"{LAYOUTS[variant].image_dir}/{folder}/{name}.jpg", split, int(round(width)),
                              int(round(height))))
    return items


def face_box(landmarks68: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) ints: a square BOX_SCALE x the landmarks' larger extent around their centre, clipped."""
    lo, hi = landmarks68.min(0), landmarks68.max(0)
    centre, side = (lo + hi) / 2, BOX_SCALE * float((hi - lo).max())
    x0, y0 = max(0, int(math.floor(centre[0] - side / 2))), max(0, int(math.floor(centre[1] - side / 2)))
    x1 = min(width, int(math.ceil(centre[0] + side / 2)))
    y1 = min(height, int(math.ceil(centre[1] + side / 2)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def keep_face_in_frame(camera: Camera, landmarks68: np.ndarray) -> Camera:
    """The camera shifted (principal point only) so the face box lies inside the image, as in AffectNet's
    annotated pictures; centred where the box is larger than the image."""
    lo, hi = landmarks68.min(0), landmarks68.max(0)
    centre, half = (lo + hi) / 2, BOX_SCALE * float((hi - lo).max()) / 2 + 1.0
    size = np.array([camera.width, camera.height], dtype=np.float64)
    target = np.where(2 * half >= size, size / 2, np.clip(centre, half, size - half))
    K = camera.K.copy()
    K[:2, 2] += target - centre
    return dataclasses.replace(camera, K=K)


def format_landmarks(landmarks68: np.ndarray) -> str:
    return ";".join(f"{v:.2f}" for v in np.asarray(landmarks68, dtype=np.float64).reshape(-1))


def format_label(value: float) -> str:
    return "-2" if value == INVALID_VA else f"{value:.6f}"


def write(out: Path, n: int = DEFAULT_N, seed: int = 0, corrupt: int = 0, flame: FLAME | None = None,
          variant: str = "default") -> SynthResult:
    """Write a miniature AffectNet with `n` annotated images under `out` (deterministic for `seed`)
    in the layout `variant` (one of VARIANTS)."""
    if flame is None:
        raise ValueError("affectnet.write needs a FLAME model (fbench.flame.load_flame())")
    if variant not in VARIANTS:
        raise ValueError(f"unknown AffectNet variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch_threads(1):
        return _write(Path(out), n, seed, corrupt, flame, variant)


def write_npy_annotations(folder: Path, stem: str, expression: int, valence: float, arousal: float,
                          landmarks68: np.ndarray, malformed: bool = False) -> list[str]:
    """The npy distribution's four arrays of one image: exp, val, aro as 0-d numeric strings, lnd as 136
    interleaved x, y floats (134 with `malformed`: one point short). Returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    lnd = np.asarray(landmarks68, dtype=np.float64).reshape(-1)
    arrays = {"exp": np.array(str(expression)), "val": np.array(format_label(valence)),
              "aro": np.array(format_label(arousal)), "lnd": lnd[:-2] if malformed else lnd}
    names = []
    for field, array in arrays.items():
        path = folder / f"{stem}_{field}.npy"
        atomic_write(path, lambda f, a=array: np.save(f, a, allow_pickle=False))
        names.append(path.name)
    return names


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    n_exp = min(flame.n_exp, N_EXP)
    labels = annotations(seed, n, n_exp)
    items = plan_items(np.random.default_rng([seed, STREAM]), n, seed, variant)
    npy = variant == "npy"
    layout = LAYOUTS.get(variant, LAYOUTS["default"])
    split_files = {split: f"{NPY_DIRS[split]}/annotations" for split in NPY_DIRS} if npy else layout.lists
    if corrupt > n:
        raise ValueError(f"--corrupt {corrupt}: this AffectNet has only {n} images; use a larger --n")
    to_corrupt = choose_corrupted(np.random.default_rng([seed, STREAM, 1]), sorted(it.path for it in items), corrupt)
    kinds = {path: CORRUPTIONS[i % len(CORRUPTIONS)] for i, path in enumerate(to_corrupt)}
    out.mkdir(parents=True, exist_ok=True)
    mask_shape = (max(it.height for it in items), mask_columns(max(it.width for it in items)) * 8)

    gt = GroundTruthWriter("affectnet", seed)
    lines: dict[str, list[str]] = {split: [",".join(CSV_COLUMNS)] for split in SPLIT_FILES}
    if not layout.val_header:
        lines["val"] = []
    malformed: dict[str, dict] = {}
    for item in tqdm(items, desc="affectnet images", unit="image", disable=None):  # a bar on a terminal only
        item_rng = np.random.default_rng([seed, STREAM, 3, item.row])
        params = labels.params[item.row]
        appearance = Appearance.sample(item_rng)
        short = min(item.width, item.height)
        face = float(item_rng.uniform(0.3, 0.6)) * short
        centre = (float(item_rng.uniform(0.4, 0.6)) * item.width, float(item_rng.uniform(0.4, 0.6)) * item.height)
        camera = Camera.looking_at_face(item.width, item.height, face, centre,
                                        distance=float(item_rng.uniform(0.5, 2.0)))
        with torch.no_grad():
            output = flame(params)
        camera = keep_face_in_frame(camera, camera.project(output.landmarks[0].double()).numpy())
        supersample = SUPERSAMPLE if max(item.width, item.height) <= SUPERSAMPLE_MAX else 1
        rendered = render_photo(flame, params, camera, appearance, supersample=supersample, flame_output=output)
        write_jpeg(out / item.path, rendered.image, JPEG_QUALITY)

        box = face_box(rendered.landmarks68, item.width, item.height)
        expression, valence, arousal = (int(labels.expression[item.row]), float(labels.valence[item.row]),
                                        float(labels.arousal[item.row]))
        if npy:
            # The npy distribution: four arrays beside the image's folder; the malformed kind cuts a point.
            stem = Path(item.path).stem
            bad = kinds.get(item.path) == "malformed_csv_row"
            write_npy_annotations(out / split_files[item.split], stem, expression, valence, arousal,
                                  np.round(rendered.landmarks68.astype(np.float64), 2), malformed=bad)
            if bad:
                malformed[item.path] = {"file": f"{split_files[item.split]}/{stem}_lnd.npy"}
            key = f"affectnet_{NPY_DIRS[item.split]}_{stem}"
        else:
            relative = item.path.removeprefix(layout.image_dir + "/")
            fields = [relative, *map(str, box), format_landmarks(rendered.landmarks68),
                      str(expression), format_label(valence), format_label(arousal)]
            line = ",".join(fields)
            if kinds.get(item.path) == "malformed_csv_row":
                # A partial write: the row stops inside facial_landmarks (67 of 136 numbers, no labels).
                line = ",".join(fields[:5]) + "," + ";".join(fields[5].split(";")[:67])
                malformed[item.path] = {"file": split_files[item.split], "line": len(lines[item.split]) + 1}
            lines[item.split].append(line)
            key = f"affectnet_{relative.split('/')[0]}_{relative.split('/')[1][:-4]}"
        gt.add(key, item.path, params,
               **photo_extras(camera, rendered, mask_shape), face_box=np.array(box, dtype=np.int64),
               expression=np.int64(expression), emotion=np.int64(labels.emotion[item.row]),
               intensity=np.float64(labels.intensity[item.row]), blend=labels.blend[item.row],
               valence=np.float64(valence), arousal=np.float64(arousal),
               valence_clean=np.float64(labels.valence_clean[item.row]),
               arousal_clean=np.float64(labels.arousal_clean[item.row]),
               flipped=np.bool_(labels.flipped[item.row]), split=np.bytes_(item.split), row=np.int64(item.row),
               corrupted=np.int8(CORRUPTIONS.index(kinds[item.path]) + 1 if item.path in kinds else 0))
        if kinds.get(item.path) == "truncated":
            truncate_file(out / item.path)

    if not npy:
        for split, name in split_files.items():
            atomic_write_text(out / name, "\n".join(lines[split]) + "\n")
    damaged = sorted({p for p, k in kinds.items() if k == "truncated"} | {m["file"] for m in malformed.values()})
    gt.attrs.update({
        "flame_model": str(flame.source), "jpeg_quality": JPEG_QUALITY, "real_counts": json.dumps(REAL_COUNTS),
        "variant": variant,
        "layout": (f"{NPY_DIRS['train']}|{NPY_DIRS['val']}/images/<n>.jpg ({NPY_SIZE} px); "
                   f"<split dir>/annotations/<n>_exp|val|aro|lnd.npy" if npy else
                   f"{layout.image_dir}/<dir>/<sha224>.jpg; {split_files['train']}; {split_files['val']}"
                   + ("" if layout.val_header else " (validation.csv without its header line)")),
        "classes": json.dumps(CLASSES),
        "label_model": (
            "class-first: emotion c in 0-7 -> expression = prototypes[c] * intensity + residual_scale * generic "
            "expression, jaw[0] = U(0, jaw_open) + emotion_jaw[c] * intensity, eyelids + emotion_eyelids[c] * "
            "intensity; valence/arousal = va_centres[c] * intensity + N(0, va_noise) clipped to [-1, 1]; the "
            "written class is flipped to another emotion with probability flip_prob. 8 None / 9 Uncertain: blend "
            "of two emotions (column blend) at half intensity, None keeps the blend's valence/arousal, Uncertain "
            "-2; 10 No-Face: head turned away (yaw pi +- 0.5), -2. Schedule: every tenth row invalid (10, 8, 9)."),
        "prototypes": prototypes(n_exp), "prototype_source": f"fbench.synth.mead.emotion_prototypes (seed "
                                                             f"{PROTOTYPE_SEED}), classes 0-7 = {MEAD_EMOTION}",
        "va_centres": VA_CENTRES, "intensity_range": np.array(INTENSITY), "residual_scale": RESIDUAL,
        "jaw_open": JAW_OPEN, "emotion_jaw": np.array([EMOTION_JAW.get(m, 0.0) for m in MEAD_EMOTION]),
        "emotion_eyelids": np.array([EMOTION_EYELIDS.get(m, 0.0) for m in MEAD_EMOTION]),
        "va_noise": VA_NOISE, "flip_prob": FLIP_PROB, "invalid_every": INVALID_EVERY,
        "annotation_mapping": ("facial_landmarks = landmarks68 with 2 decimals; face box = square of 1.2 x the "
                               "landmarks' larger extent around their centre, floor/ceil to ints, clipped"),
        "split_mapping": "training.csv -> train, validation.csv -> val (every fifth row of the schedule)",
        "corrupted": json.dumps(damaged), "corruption_kinds": ",".join(CORRUPTIONS),
        "corrupted_items": json.dumps([{"path": p, "kind": k, **malformed.get(p, {})}
                                       for p, k in sorted(kinds.items())]),
        "conventions": PHOTO_CONVENTIONS + (
            " expression/valence/arousal: as written in the CSV; emotion: the generating class; valence_clean/"
            "arousal_clean: before noise; flipped: label noise; blend: (-1, -1) unless None/Uncertain. "
            "corrupted: 0 intact, else 1 + index in corruption_kinds."),
    })
    gt.write(out)
    counts = {"images": n, **{Path(SPLIT_FILES[s]).stem: sum(it.split == s for it in items) for s in SPLIT_FILES},
              "invalid": int((labels.emotion >= N_EMOTIONS).sum())}
    return SynthResult(root=out, counts=counts, corrupted=damaged)
