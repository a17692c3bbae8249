"""Cutting a dataset's items into units of work: one unit = one output shard.

The items of each split (in the source's order) are cut into units before anything runs:
consecutive items whose expected sample count (1 per image, frames/stride per video) fits in
`maxcount`. A video longer than `maxcount` samples is split by frame range over several
units. The plan depends only on the item list, the video frame counts, the stride and
`maxcount`, never on timing or the number of workers; its fingerprint guards resumes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from fbench.io import atomic_write_json, dumps_json, read_json
from fbench.shards.keys import resolve_in_root, safe_key
from fbench.shards.media import InputError, probe_video_frames
from fbench.shards.source import SourceItem


class PlanError(ValueError):
    """The items cannot be planned (e.g. two items give the same sample key)."""



@dataclass(frozen=True)
class Segment:
    """An item of a unit; for a video, the frame range [start, stop) (stop None: to the end)."""

    item: int  # index into the split's item list
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class Unit:
    split: str
    index: int  # shard number within the split
    segments: tuple[Segment, ...]
    expected: int  # planned samples (inputs)

    def shard_name(self, dataset: str) -> str:
        return f"{dataset}-{self.split}-{self.index:06d}.tar"

    def shard_relpath(self, dataset: str) -> str:
        return f"{self.split}/{self.shard_name(dataset)}"

    def record_name(self) -> str:
        return f"{self.split}-{self.index:06d}.json"


@dataclass
class Plan:
    dataset: str
    items: dict[str, list[SourceItem]]  # split -> items, in order
    units: list[Unit]  # all units, splits in order

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split, items in self.items.items():
            for item in items:
                digest.update(_item_digest(split, item))
        for unit in self.units:
            digest.update(repr((unit.split, unit.index, unit.segments)).encode())
        return digest.hexdigest()


def _item_digest(split: str, item: SourceItem) -> bytes:
    h = hashlib.sha256(dumps_json([split, item.id, item.path, item.kind, item.subject, dict(item.labels),
                                   item.annotation_format]).encode())
    if item.annotations is not None:
        h.update(np.ascontiguousarray(item.annotations).tobytes())
    return h.digest()


def plan_units(dataset: str, items: dict[str, list[SourceItem]], video_frames: dict[str, int],
               stride: int, maxcount: int) -> Plan:
    """Cut each split's items into units (see module doc). `video_frames`: relpath -> frame count."""
    units: list[Unit] = []
    for split, split_items in items.items():
        index = 0
        current: list[Segment] = []
        filled = 0

        def flush() -> None:
            nonlocal index, current, filled
            if current:
                units.append(Unit(split, index, tuple(current), filled))
                index += 1
                current, filled = [], 0

        for i, item in enumerate(split_items):
            if item.kind == "image":
                expected = 1
            else:
                expected = max(1, math.ceil(video_frames.get(item.path, 1) / stride))
            if item.kind == "video" and expected > maxcount:
                flush()
                pieces = math.ceil(expected / maxcount)
                span = maxcount * stride  # frames per piece, a multiple of the stride
                for k in range(pieces):
                    stop = (k + 1) * span if k < pieces - 1 else None
                    n = maxcount if k < pieces - 1 else expected - maxcount * (pieces - 1)
                    units.append(Unit(split, index, (Segment(i, k * span, stop),), n))
                    index += 1
                continue
            if filled + expected > maxcount:
                flush()
            current.append(Segment(i))
            filled += expected
        flush()
    return Plan(dataset, items, units)


def count_video_frames(root: Path, items: Iterable[SourceItem], cache_path: Path | None,
                       progress: bool = True) -> dict[str, int]:
    """Frame counts of the videos that lack `num_frames`, from their headers; cached by (size, mtime).

    An unreadable video counts as 1 (it will be one reject)."""
    from tqdm import tqdm

    counts: dict[str, int] = {}
    todo = []
    for item in items:
        if item.kind != "video":
            continue
        if item.num_frames is not None:
            counts[item.path] = int(item.num_frames)
        else:
            todo.append(item.path)
    if not todo:
        return counts
    cache: dict[str, list[int]] = {}
    if cache_path is not None and cache_path.exists():
        try:
            cache = read_json(cache_path)
        except ValueError:
            cache = {}
    changed = False
    for rel in tqdm(todo, desc="probe videos", unit="video", disable=not progress or len(todo) < 50):
        path = resolve_in_root(root, rel)
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            counts[rel] = 1
            continue
        hit = cache.get(rel)
        if hit is not None and hit[:2] == stamp:
            counts[rel] = hit[2]
            continue
        try:
            frames = probe_video_frames(path)
        except InputError:
            frames = 1
        counts[rel] = frames
        cache[rel] = [*stamp, frames]
        changed = True
    if changed and cache_path is not None:
        atomic_write_json(cache_path, cache)
    return counts


def check_unique_keys(dataset: str, items: dict[str, list[SourceItem]]) -> None:
    seen: dict[str, str] = {}
    for split_items in items.values():
        for item in split_items:
            key = safe_key(dataset, item.id)
            if key in seen:
                raise PlanError(f"items {seen[key]!r} and {item.id!r} both give sample key {key!r}; "
                                "the source must give unique ids (after sanitising to [A-Za-z0-9_-])")
            seen[key] = item.id
