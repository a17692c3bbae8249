"""Reading prepped shards for training and evaluation, on webdataset's pipeline.

Generic: which samples, in what order, split over which readers, mixed how. What a method
makes of one sample (crops, augmentation, tensors) is its own `transform(sample, rng)`,
returning a dict of tensors or None to skip the sample (e.g. `methods/smirk/data.py`).

- A `ShardSet` is one mix entry: shard files, a weight, and an optional label filter
  (e.g. MEAD side views: {"view": ("left_30", ...)}).
- `sample_pipeline`: a `wds.DataPipeline` over one set. Evaluation passes read every shard once,
  split over (DDP rank x DataLoader worker) with `wds.split_by_node` / `wds.split_by_worker`
  (when a set has fewer shards than readers, every reader reads all of them and keeps every
  n-th sample instead); training streams are endless: `wds.ResampledShards` draws shards
  with replacement, seeded per reader, and `wds.shuffle` mixes samples in a buffer.
- `MixedShardDataset`: batches with a fixed number of samples from each set,
  `floor(weight * batch)` for each but the first, which takes the rest (SMIRK's
  datasets/mixed_dataset_sampler.py; webdataset's RandomMix draws sources at random, so the
  fixed composition is this small stage on top). `ShardDataset`: samples of one set.

Use `DataLoader(MixedShardDataset(...), batch_size=None, num_workers=k)`, or
`DataLoader(ShardDataset(...), batch_size=B, num_workers=k)`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import webdataset as wds

from fbench.shards.reader import shard_paths
from fbench.shards.schema import ShardSample, decode_sample

MAX_REFUSED_IN_A_ROW = 2000  # a mix entry whose transform refuses this many samples in a row is an error

# sample -> training dict, or None to skip it; `rng` is the reader's own generator
Transform = Callable[[ShardSample, np.random.Generator], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ShardSet:
    """Shards of one mix entry. `labels` keeps samples whose JSON labels match."""

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


def batch_composition(weights: Sequence[float], batch_size: int) -> list[int]:
    """Samples per set in each batch (SMIRK's MixedDatasetBatchSampler)."""
    ratios = np.asarray(weights, dtype=np.float64)
    ratios = ratios / ratios.sum()
    per = [int(np.floor(r * batch_size)) for r in ratios]
    per[0] = batch_size - sum(per[1:])
    return per


def consumer() -> tuple[int, int]:
    """(index, count) of this reader among DDP ranks x DataLoader workers (webdataset's view:
    $RANK/$WORLD_SIZE or torch.distributed, then the DataLoader worker)."""
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return rank * workers + worker, world * workers


def split_shards(shards: Sequence[str], index: int, count: int) -> tuple[list[str], int, int]:
    """This reader's shards, and (stride, offset) for sample-level splitting when there are
    fewer shards than readers."""
    if len(shards) >= count:
        return list(shards[index::count]), 1, 0
    return list(shards), count, index


def _every(stride: int, offset: int):
    def stage(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for position, sample in enumerate(samples):
            if position % stride == offset:
                yield sample
    return stage


def _labelled(shard_set: ShardSet, guard: bool):
    """Keep samples the set's label filter accepts; with `guard`, fail once every shard has
    been read without one kept sample (an endless stream over nothing would spin forever)."""
    def stage(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        seen, kept = set(), 0
        for sample in samples:
            if shard_set.keeps(json.loads(sample["json"])) if shard_set.labels else True:
                kept += 1
                yield sample
            elif guard and not kept:
                seen.add(sample["__url__"])
                if len(seen) == len(shard_set.shards):
                    raise RuntimeError(f"shard set {shard_set.name!r} gives no samples (label filter "
                                       f"{dict(shard_set.labels)}, {len(shard_set.shards)} shards)")
    return stage


def sample_pipeline(shard_set: ShardSet, train: bool, seed: int = 0, epoch: int = 0,
                    shuffle_buffer: int = 1000) -> wds.DataPipeline:
    """Decoded samples of one set for this reader: one ordered pass (`train=False`) or an
    endless, resampled and shuffled stream (`train=True`), reproducible from seed and epoch."""
    index, count = consumer()
    reader_seed = (seed * 1_000_003 + epoch) * 65_537 + index
    if train:
        stages: list[Any] = [wds.ResampledShards(list(shard_set.shards), seed=reader_seed, deterministic=True,
                                                 worker_seed=lambda: index)]
    elif len(shard_set.shards) >= count:
        stages = [wds.SimpleShardList(list(shard_set.shards)), wds.split_by_node, wds.split_by_worker]
    else:
        stages = [wds.SimpleShardList(list(shard_set.shards))]
    stages.append(wds.tarfile_to_samples())
    if not train and len(shard_set.shards) < count:
        stages.append(_every(count, index))
    stages.append(_labelled(shard_set, guard=train))
    if train:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(reader_seed)))
    stages.append(wds.map(decode_sample))
    return wds.DataPipeline(*stages)


def _reader_rng(seed: int, epoch: int) -> np.random.Generator:
    index, _ = consumer()
    return np.random.default_rng((seed * 1_000_003 + epoch) * 65_537 + index)


class MixedShardDataset(torch.utils.data.IterableDataset):
    """Endless (or `batches_per_epoch`-long) stream of batches from several shard sets, each
    batch with the fixed per-set composition of `batch_composition`. Yields collated dicts of
    the transform's outputs plus `mix` (the set's name) per sample. `batches_per_epoch` counts
    batches per rank and is shared among the DataLoader workers."""

    def __init__(self, sets: Sequence[ShardSet], transform: Transform, batch_size: int = 32,
                 batches_per_epoch: int | None = None, shuffle_buffer: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if not sets:
            raise ValueError("no shard sets to mix")
        self.sets = list(sets)
        self.transform = transform
        self.batch_size = batch_size
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
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        return self.batches_per_epoch // workers + (worker < self.batches_per_epoch % workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = _reader_rng(self.seed, self.epoch)
        streams = [iter(sample_pipeline(s, train=True, seed=self.seed, epoch=self.epoch,
                                        shuffle_buffer=self.shuffle_buffer)) for s in self.sets]
        remaining = self._my_batches()
        while remaining is None or remaining > 0:
            batch = []
            for shard_set, stream, n in zip(self.sets, streams, self.per_batch):
                refused = 0
                while n > 0:
                    sample = next(stream)
                    prepared = self.transform(sample, rng)
                    if prepared is not None:
                        prepared["mix"] = shard_set.name
                        batch.append(prepared)
                        n -= 1
                        refused = 0
                    elif (refused := refused + 1) >= MAX_REFUSED_IN_A_ROW:  # an endless stream of nothing
                        raise RuntimeError(
                            f"shard set {shard_set.name!r}: the method's transform kept none of "
                            f"{MAX_REFUSED_IN_A_ROW} samples in a row (e.g. {sample.key}); the shards lack what it "
                            "needs (SMIRK: MediaPipe landmarks, so prep with --landmarks detect)")
            yield torch.utils.data.default_collate(batch)
            if remaining is not None:
                remaining -= 1


class ShardDataset(torch.utils.data.IterableDataset):
    """Transformed samples of one shard set: one ordered pass (evaluation) or an endless
    shuffled stream (`train=True`). Use with a normal `DataLoader(ds, batch_size=B)`."""

    def __init__(self, shard_set: ShardSet, transform: Transform, train: bool = False, shuffle_buffer: int = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        self.shard_set = shard_set
        self.transform = transform
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = _reader_rng(self.seed, self.epoch)
        for sample in sample_pipeline(self.shard_set, self.train, self.seed, self.epoch, self.shuffle_buffer):
            prepared = self.transform(sample, rng)
            if prepared is not None:
                yield prepared
