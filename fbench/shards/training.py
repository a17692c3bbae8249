"""Training tensors from shards, the way SMIRK prepares them, and SMIRK's dataset mix.

Per sample (SMIRK datasets/base_dataset.py, `BaseDataset.prepare_data` and `crop_face`):
- crop box from the MediaPipe landmarks: centre of their extent, side
  `int((width + height) / 2 * scale)`, scale uniform in [1.2, 1.8] for training and 1.6 for
  testing (configs/config_train.yaml train_scale_min/max, test_scale), mapped by a similarity
  onto [0, 223] (image_size 224); bilinear warp, black outside the image;
- the face-hull mask from all 478 cropped MediaPipe points: 1 outside the convex hull, 0
  inside (SMIRK's `create_mask`; the trainer dilates it and masks the face out);
- the 105 MediaPipe points with FLAME embeddings (`mediapipe_indices`), FAN's 68 points and
  the flag saying whether FAN landmarks exist (zeros when not);
- training only: SMIRK's augmentations (`fbench.shards.augment`);
- image scaled to [0, 1] as (3, 224, 224); landmarks to `p / 224 * 2 - 1` (SMIRK divides by
  image_size, not image_size - 1);
- optional `img_mica` (3, 112, 112): the ArcFace alignment from FAN points SMIRK feeds MICA.

Samples come from the shards' 448 px crops (crop_scale 2.2 around the same landmark box),
which contain every SMIRK crop up to scale 1.8 (2.2 / 1.8 leaves room for the box's rounding).

Mixing (datasets/mixed_dataset_sampler.py, datasets/data_utils.py): every batch holds a fixed
number of samples per dataset, `floor(weight * batch)` for each but the first, which takes
the rest; SMIRK's weights are LRS3 0.2, MEAD 0.1, FFHQ 0.3, CelebA 0.3, MEAD side views 0.1
(configs/config_train.yaml), LRS3 first. SMIRK draws indices with replacement from map-style
datasets; here each dataset is an endless shuffled stream over its shards.

Distribution: shards are split over (DDP rank x DataLoader worker); when a dataset has fewer
shards than that, every consumer reads all of them and keeps every n-th sample instead.
Use with `torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=k)` for the
batch-producing `MixedShardDataset`.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from fbench.landmarks.indices import SMIRK_MEDIAPIPE_INDICES
from fbench.shards.augment import SmirkAugment
from fbench.shards.reader import ShardReadError, iter_raw, shard_paths
from fbench.shards.schema import ShardSample, decode_sample

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
    """SMIRK's crop_face similarity (2x3) from landmark points (N, >=2)."""
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    left, right = xy[:, 0].min(), xy[:, 0].max()
    top, bottom = xy[:, 1].min(), xy[:, 1].max()
    old_size = (right - left + bottom - top) / 2
    cx, cy = right - (right - left) / 2.0, bottom - (bottom - top) / 2.0
    size = max(1, int(old_size * scale))
    s = (image_size - 1) / size
    return np.array([[s, 0.0, -(cx - size / 2) * s], [0.0, s, -(cy - size / 2) * s]], dtype=np.float64)


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, dtype=np.float64)[:, :2] @ m[:, :2].T + m[:, 2]).astype(np.float32)


def hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    """SMIRK's create_mask: uint8 (size, size), 0 inside the convex hull of the points, 1 outside."""
    import cv2

    pts = np.asarray(points)[:, :2].astype(np.int32)
    mask = np.ones((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(pts), 0)
    return mask


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping src onto dst, 2x3; what skimage's
    SimilarityTransform.estimate computes for SMIRK's `estimate_norm`."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / s0.var(0).sum()
    t = mu_d - scale * r @ mu_s
    return np.concatenate([scale * r, t[:, None]], axis=1)


def mica_image(image: np.ndarray, fan: np.ndarray) -> np.ndarray:
    """(3, 112, 112) float32 ArcFace-aligned image from FAN points (SMIRK's img_mica)."""
    import cv2

    five = fan[[36, 45, 32, 48, 54]].astype(np.float64).copy()
    five[0] = (fan[36] + fan[39]) / 2
    five[1] = (fan[42] + fan[45]) / 2
    m = similarity_lstsq(five, ARCFACE_DST)
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


# ------------------------------------------------------------------------------- shard sets, mixing


@dataclass(frozen=True)
class ShardSet:
    """Shards of one mix entry. `labels` keeps samples whose JSON labels match, e.g. MEAD side
    views: {"view": ("left_30", "left_60", "right_30", "right_60")}."""

    name: str
    shards: tuple[str, ...]
    weight: float = 1.0
    labels: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def keeps(self, meta: Mapping[str, Any]) -> bool:
        labels = meta.get("labels") or {}
        return all(labels.get(k) in allowed for k, allowed in self.labels.items())


def shard_set(name: str, location: Path | str, weight: float = 1.0, splits: Sequence[str] | None = ("train",),
              labels: Mapping[str, Sequence[Any]] | None = None) -> ShardSet:
    paths = shard_paths(location, splits)
    if not paths:
        raise FileNotFoundError(f"{location}: no shards for splits {splits}")
    return ShardSet(name, tuple(str(p) for p in paths), weight, {k: tuple(v) for k, v in (labels or {}).items()})


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


def batch_composition(weights: Sequence[float], batch_size: int) -> list[int]:
    """Samples per dataset in each batch (SMIRK's MixedDatasetBatchSampler)."""
    ratios = np.asarray(weights, dtype=np.float64)
    ratios = ratios / ratios.sum()
    per = [int(np.floor(r * batch_size)) for r in ratios]
    per[0] = batch_size - sum(per[1:])
    return per


def consumer() -> tuple[int, int]:
    """(index, count) of this reader among DDP ranks x DataLoader workers."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = torch.utils.data.get_worker_info()
    wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + wid, world * workers


def split_shards(shards: Sequence[str], index: int, count: int) -> tuple[list[str], int, int]:
    """This consumer's shards, and (stride, offset) for sample-level splitting when there are
    fewer shards than consumers."""
    if len(shards) >= count:
        return list(shards[index::count]), 1, 0
    return list(shards), count, index


def _stream(shard_set: ShardSet, index: int, count: int, rng: random.Random, shuffle: bool,
            buffer: int, endless: bool) -> Iterator[ShardSample]:
    """Decoded samples of one shard set for one consumer; shuffled shard order + shuffle buffer."""
    import json

    shards, stride, offset = split_shards(shard_set.shards, index, count)
    pool: list[dict[str, Any]] = []
    while True:
        order = list(shards)
        if shuffle:
            rng.shuffle(order)
        position = kept = 0
        for path in order:
            for raw in iter_raw(Path(path)):
                position += 1
                if (position - 1) % stride != offset:
                    continue
                if shard_set.labels and not shard_set.keeps(json.loads(raw["json"])):
                    continue
                kept += 1
                if not shuffle:
                    yield decode_sample(raw)
                    continue
                pool.append(raw)
                if len(pool) >= buffer:
                    yield decode_sample(pool.pop(rng.randrange(len(pool))))
        if not endless:
            break
        if kept == 0:  # an endless stream over nothing would spin forever
            raise RuntimeError(f"shard set {shard_set.name!r} gives reader {index} of {count} no samples "
                               f"(label filter {dict(shard_set.labels)}, {len(shards)} shards)")
    while pool:
        yield decode_sample(pool.pop(rng.randrange(len(pool))))


class _Seeded:
    """Per-consumer random state: different for every worker and rank, reproducible from `seed` and epoch."""

    def __init__(self, seed: int, epoch: int, index: int) -> None:
        base = (seed * 1_000_003 + epoch) * 65_537 + index
        self.py = random.Random(base)
        self.np = np.random.default_rng(base)


class MixedShardDataset(torch.utils.data.IterableDataset):
    """Endless (or `batches_per_epoch`-long) stream of SMIRK training batches from several shard sets.

    Yields collated dicts (see `prepare_sample`); use `DataLoader(ds, batch_size=None, num_workers=k)`.
    `batches_per_epoch` counts batches per rank (SMIRK: samples_per_epoch // batch_size) and is
    shared among the DataLoader workers."""

    def __init__(self, sets: Sequence[ShardSet], batch_size: int = 32, config: SmirkDataConfig = SmirkDataConfig(),
                 train: bool = True, batches_per_epoch: int | None = None, shuffle_buffer: int = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        if not sets:
            raise ValueError("no shard sets to mix")
        self.sets = list(sets)
        self.batch_size = batch_size
        self.config = config
        self.train = train
        self.batches_per_epoch = batches_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.per_batch = batch_composition([s.weight for s in self.sets], batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_batches(self) -> int | None:
        if self.batches_per_epoch is None:
            return None
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.batches_per_epoch // workers + (wid < self.batches_per_epoch % workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, count = consumer()
        rnd = _Seeded(self.seed, self.epoch, index)
        augment = SmirkAugment() if self.train and self.config.augment else None
        streams = [_stream(s, index, count, rnd.py, shuffle=self.train, buffer=self.shuffle_buffer, endless=True)
                   for s in self.sets]
        remaining = self._my_batches()
        while remaining is None or remaining > 0:
            batch = []
            for shard_set, stream, n in zip(self.sets, streams, self.per_batch):
                while n > 0:
                    prepared = prepare_sample(next(stream), rnd.np, self.config, self.train, augment)
                    if prepared is not None:
                        prepared["mix"] = shard_set.name
                        batch.append(prepared)
                        n -= 1
            yield torch.utils.data.default_collate(batch)
            if remaining is not None:
                remaining -= 1


class ShardDataset(torch.utils.data.IterableDataset):
    """Prepared samples of one shard set: one ordered pass (evaluation, test scale) or an endless
    shuffled stream (`train=True`). Use with a normal `DataLoader(ds, batch_size=B)`."""

    def __init__(self, shard_set: ShardSet, config: SmirkDataConfig = SmirkDataConfig(), train: bool = False,
                 shuffle_buffer: int = 1000, seed: int = 0) -> None:
        super().__init__()
        self.shard_set = shard_set
        self.config = config
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, count = consumer()
        rnd = _Seeded(self.seed, self.epoch, index)
        augment = SmirkAugment() if self.train and self.config.augment else None
        for sample in _stream(self.shard_set, index, count, rnd.py, shuffle=self.train, buffer=self.shuffle_buffer,
                              endless=self.train):
            prepared = prepare_sample(sample, rnd.np, self.config, self.train, augment)
            if prepared is not None:
                yield prepared


def smirk_train_loader(root: Path | str, batch_size: int = 32, num_workers: int = 8, samples_per_epoch: int = 50000,
                       skip_missing: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """SMIRK's training loader over `<root>/<dataset>` shards (configs/config_train.yaml defaults:
    batch 32, 8 workers, 50000 samples per epoch)."""
    dataset = MixedShardDataset(smirk_mix(root, skip_missing=skip_missing), batch_size=batch_size,
                                batches_per_epoch=samples_per_epoch // batch_size, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
