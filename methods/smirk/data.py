"""SMIRK's data recipe: training tensors from fbench shards the way SMIRK prepares them, and its dataset mix.

Per sample (SMIRK datasets/base_dataset.py, `BaseDataset.prepare_data` and `crop_face`):
- crop box from the MediaPipe landmarks: centre of their extent, side
  `int((width + height) / 2 * scale)`, scale uniform in [1.2, 1.8] for training and 1.6 for
  testing (configs/config_train.yaml train_scale_min/max, test_scale), mapped by a similarity
  onto [0, 223] (image_size 224); bilinear warp, black outside the image;
- the face-hull mask from all 478 cropped MediaPipe points: 1 outside the convex hull, 0
  inside (SMIRK's `create_mask`; the trainer dilates it and masks the face out);
- the 105 MediaPipe points with FLAME embeddings (`mediapipe_indices`), FAN's 68 points and
  the flag saying whether FAN landmarks exist (zeros when not);
- training only: SMIRK's augmentations (`methods.smirk.augment`);
- image scaled to [0, 1] as (3, 224, 224); landmarks to `p / 224 * 2 - 1` (SMIRK divides by
  image_size, not image_size - 1);
- optional `img_mica` (3, 112, 112): the ArcFace alignment from FAN points SMIRK feeds MICA.

Samples come from the shards' 448 px crops (crop_scale 2.2 around the same landmark box),
which contain every SMIRK crop up to scale 1.8 (2.2 / 1.8 leaves room for the box's rounding).

Mix (configs/config_train.yaml): SMIRK's weights are LRS3 0.2, MEAD 0.1, FFHQ 0.3, CelebA 0.3,
MEAD side views 0.1, LRS3 first (the first set takes the remainder of each batch); the
paper's supplementary states another mix (REFERENCE.md), fbench follows the code. SMIRK
draws indices with replacement from map-style datasets; here each dataset is an endless
resampled, shuffled stream over its shards (`fbench.shards.stream`), batched with the same
fixed per-dataset composition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fbench.geometry.alignment import umeyama
from fbench.landmarks.crop import landmark_box
from fbench.landmarks.indices import SMIRK_MEDIAPIPE_INDICES
from fbench.shards.reader import ShardReadError
from fbench.shards.schema import ShardSample
from fbench.shards.stream import MixedShardDataset, ShardSet, shard_set
from methods.smirk.augment import SmirkAugment

log = logging.getLogger(__name__)

# (name, weight) in SMIRK's order: the first takes the remainder of each batch.
SMIRK_MIX: tuple[tuple[str, float], ...] = (("lrs3", 0.2), ("mead", 0.1), ("ffhq", 0.3), ("celeba", 0.3),
                                             ("mead_sides", 0.1))
MEAD_FRONT_VIEWS = ("front",)
MEAD_SIDE_VIEWS = ("left_30", "left_60", "right_30", "right_60")  # SMIRK's videos_left_30 ... right_60
# ArcFace's 112 x 112 template (SMIRK's BaseDataset.arcface_dst), for the MICA input.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float64)
_MP_INDEX = np.asarray(SMIRK_MEDIAPIPE_INDICES)


@dataclass(frozen=True)
class SmirkDataConfig:
    image_size: int = 224
    train_scale: tuple[float, float] = (1.2, 1.8)
    test_scale: float = 1.6
    augment: bool = True  # training only
    mica: bool = False  # also return img_mica (SMIRK's MICA loss is off by default)
    require_mediapipe: bool = True  # skip samples without MediaPipe landmarks (SMIRK lists only those)


# ------------------------------------------------------------------------------------- per sample


def crop_transform(points: np.ndarray, scale: float, image_size: int) -> np.ndarray:
    """SMIRK's crop_face similarity (2x3) from landmark points (N, >=2): the box of
    `fbench.landmarks.crop.landmark_box` with SMIRK's integer side, mapped onto [0, size - 1]."""
    box = landmark_box(points, 1.0)
    size = max(1, int(box.side * scale))  # SMIRK: int(old_size * scale)
    s = (image_size - 1) / size
    return np.array([[s, 0.0, -(box.cx - size / 2) * s], [0.0, s, -(box.cy - size / 2) * s]], dtype=np.float64)


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, dtype=np.float64)[:, :2] @ m[:, :2].T + m[:, 2]).astype(np.float32)


def hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    """SMIRK's create_mask: uint8 (size, size), 0 inside the convex hull of the points, 1 outside."""
    import cv2

    pts = np.asarray(points)[:, :2].astype(np.int32)
    mask = np.ones((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(pts), 0)
    return mask


def mica_image(image: np.ndarray, fan: np.ndarray) -> np.ndarray:
    """(3, 112, 112) float32 ArcFace-aligned image from FAN points (SMIRK's img_mica)."""
    import cv2

    five = fan[[36, 45, 32, 48, 54]].astype(np.float64).copy()
    five[0] = (fan[36] + fan[39]) / 2
    five[1] = (fan[42] + fan[45]) / 2
    m = umeyama(five, ARCFACE_DST).affine()  # what skimage's SimilarityTransform.estimate gives SMIRK
    out = cv2.warpAffine(image.astype(np.float32) / 255.0, m, (112, 112), borderValue=0.0)
    return out.transpose(2, 0, 1)


def prepare_sample(sample: ShardSample, rng: np.random.Generator, config: SmirkDataConfig, train: bool,
                   augment: SmirkAugment | None = None) -> dict[str, Any] | None:
    """SMIRK's training dict for one shard sample; None when it has no MediaPipe landmarks and
    `config.require_mediapipe`."""
    import cv2

    size = config.image_size
    image = sample.image
    mp_ok = bool(np.isfinite(sample.mp[:, :2]).all())
    fan_ok = bool(np.isfinite(sample.fan).all())
    if not mp_ok and config.require_mediapipe:
        return None
    scale = rng.uniform(*config.train_scale) if train else config.test_scale
    if mp_ok:
        box_points = sample.mp
    elif fan_ok:
        box_points = sample.fan
    elif sample.ann is not None and np.isfinite(sample.ann).all():
        box_points = sample.ann
    else:  # no landmarks at all: the landmark box the shard crop was cut around (its centre, side / crop_scale)
        c, half = (image.shape[0] - 1) / 2, image.shape[0] / float(sample.meta.get("crop_scale", 2.2)) / 2
        box_points = np.array([[c - half, c - half], [c + half, c + half]])
    m = crop_transform(box_points, scale, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    fan = apply(m, sample.fan) if fan_ok else np.zeros((68, 2), np.float32)
    if mp_ok:
        mp_all = apply(m, sample.mp)
        mask = hull_mask(mp_all, size)
        mp = mp_all[_MP_INDEX]
    else:
        mask = np.ones((size, size), np.uint8)
        mp = np.zeros((len(_MP_INDEX), 2), np.float32)
    if train and augment is not None:
        crop, face, (fan, mp) = augment(rng, crop, 1 - mask, [fan, mp])
        mask = 1 - face
        if not fan_ok:
            fan = np.zeros((68, 2), np.float32)
    out = {
        "img": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / 255.0),
        "landmarks_fan": torch.from_numpy(fan / size * 2 - 1 if fan_ok else fan),
        "flag_landmarks_fan": fan_ok,
        "landmarks_mp": torch.from_numpy(mp / size * 2 - 1 if mp_ok else mp),
        "flag_landmarks_mp": mp_ok,
        "mask": torch.from_numpy(mask[None].astype(np.float32)),
        "dataset": sample.meta.get("dataset", ""),
        "key": sample.key,
    }
    if config.mica:
        out["img_mica"] = torch.from_numpy(mica_image(image, sample.fan) if fan_ok else np.zeros((3, 112, 112), np.float32))
    return out


# ------------------------------------------------------------------------------- per reader


class SmirkTransform:
    """`prepare_sample` as the per-sample transform of `fbench.shards.stream` (one per reader:
    it owns the augmentation pipeline)."""

    def __init__(self, config: SmirkDataConfig = SmirkDataConfig(), train: bool = True) -> None:
        self.config, self.train = config, train
        self.augment = SmirkAugment() if train and config.augment else None

    def __call__(self, sample: ShardSample, rng: np.random.Generator) -> dict[str, Any] | None:
        return prepare_sample(sample, rng, self.config, self.train, self.augment)


# ------------------------------------------------------------------------------------ the mix


# SMIRK's own selection (georgeretsi/smirk datasets/data_utils.py): the train lists of LRS3 and MEAD, but
# every FFHQ image (ffhq_dataset.py lists the whole folder) and every CelebA image (celeba_dataset.py reads
# all of identity_CelebA.txt, all three partitions). None: all splits.
SMIRK_SPLITS: dict[str, tuple[str, ...] | None] = {"lrs3": ("train",), "mead": ("train",), "mead_sides": ("train",),
                                                   "ffhq": None, "celeba": None}


def smirk_mix(root: Path | str, splits: Sequence[str] | None | str = "smirk", skip_missing: bool = False,
              weights: Mapping[str, float] | None = None) -> list[ShardSet]:
    """SMIRK's training mix from `<root>/<dataset>` shard folders (lrs3, mead, ffhq, celeba; the
    MEAD front and side views are two entries over `<root>/mead`, told apart by `labels.view`).
    `splits`: "smirk" (default) takes SMIRK_SPLITS per dataset; a sequence or None (all) applies to all.
    With `skip_missing`, absent datasets are left out and the weights of the rest renormalised."""
    root = Path(root)
    weights = dict(SMIRK_MIX, **(weights or {}))
    folders = {"lrs3": "lrs3", "mead": "mead", "ffhq": "ffhq", "celeba": "celeba", "mead_sides": "mead"}
    views = {"mead": MEAD_FRONT_VIEWS, "mead_sides": MEAD_SIDE_VIEWS}
    sets, missing = [], []
    for name, _ in SMIRK_MIX:
        try:
            sets.append(shard_set(name, root / folders[name], weights[name],
                                  SMIRK_SPLITS[name] if splits == "smirk" else splits,
                                  {"view": views[name]} if name in views else None))
        except (ShardReadError, OSError, ValueError) as exc:
            missing.append(f"{name} ({exc})")
    if missing and not skip_missing:
        raise FileNotFoundError("SMIRK mix needs shards for: " + "; ".join(missing))
    if not sets:
        raise FileNotFoundError(f"no SMIRK datasets under {root}")
    return sets


def smirk_train_loader(root: Path | str, batch_size: int = 32, num_workers: int = 8, samples_per_epoch: int = 50000,
                       skip_missing: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """SMIRK's training loader over `<root>/<dataset>` shards (configs/config_train.yaml defaults:
    batch 32, 8 workers, 50000 samples per epoch)."""
    dataset = MixedShardDataset(smirk_mix(root, skip_missing=skip_missing), SmirkTransform(train=True),
                                batch_size=batch_size, batches_per_epoch=samples_per_epoch // batch_size, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
