"""The dataset source protocol that every `pipelines/<dataset>.py` prep pipeline implements.

A source lists a dataset's items in its real on-disk layout, with the dataset's own
splits and annotations, and loads the frames of one item:

    class AffectNetSource(MediaSource):
        name = "affectnet"
        splits = ("train", "val")

        def items(self, root, options):
            ...  # parse the dataset's CSVs, in a deterministic order
            return [SourceItem(id="train-0001", split="train", path="train_set/images/0001.jpg",
                               labels={"expression": 3, "valence": 0.2, "arousal": -0.1},
                               annotations=lmk68, annotation_format="ibug68")]

`MediaSource.frames` reads images with OpenCV and videos with PyAV (`media.py`); a
source overrides it only for unusual storage (frame folders, archives). The prep
runner (`fbench.shards.prep.run_prep`) does the rest: filtering, keys, landmarks,
crops, shards, manifest, rejects.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from fbench.shards.keys import resolve_in_root, safe_relpath
from fbench.shards.media import iter_video_frames, read_image

Kind = Literal["image", "video"]
ANNOTATION_FORMATS = {"ibug68": 68, "ibug49": 49, "celeba5": 5, "mediapipe478": 478}


PER_FRAME_LABELS = "per_frame"  # labels key of a video's per-frame labels (see SourceItem, frame_labels)


def frame_labels(labels: Mapping[str, Any], frame: int | None) -> dict[str, Any]:
    """The labels a sample stores: `labels` without its per-frame table, plus, for a video frame, each
    per-frame label's value at that frame (None where the table has no entry for it)."""
    out = dict(labels)
    per_frame = out.pop(PER_FRAME_LABELS, None) or {}
    for name, by_frame in per_frame.items():
        out[name] = by_frame.get(str(frame)) if frame is not None else None
    return out


@dataclass(frozen=True)
class SourceItem:
    """One input of a dataset: an image, or a video whose frames become samples.

    id: dataset-unique id; the sample key is `safe_key(dataset, id)` (+ `_f<frame>` for video).
    split: the dataset's own split name.
    path: path relative to the dataset root (checked by `safe_relpath`; never absolute, no '..').
    kind: "image" or "video".
    subject: identity / subject id when the dataset has one.
    labels: JSON-serialisable per-item labels (emotion, valence, view, ...), stored in the sample JSON;
        a video's per-frame labels go under `per_frame` as {name: {"<frame index>": value}}: each frame's
        sample stores `name: value` of its own frame, never the whole table (`frame_labels`).
    annotations: dataset landmarks in source pixels (x, y): (P, 2) for an image, (F, P, 2) per
        frame for a video (all-NaN rows where a frame has none).
    annotation_format: what the P points are: "ibug68" (AffectNet, FFHQ, 300W order), "ibug49"
        (iBUG-68 without jaw contour and inner mouth corners, `fbench.landmarks.indices.IBUG49_IN_68`:
        BP4D's 2D feature tracks), "celeba5" (eyes, nose, mouth corners), "mediapipe478".
    num_frames: a video's frame count when the dataset knows it (else the runner probes the header).
    """

    id: str
    split: str
    path: str
    kind: Kind = "image"
    subject: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    annotations: np.ndarray | None = None
    annotation_format: str | None = None
    num_frames: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"item {self.id!r}: kind must be 'image' or 'video', got {self.kind!r}")
        object.__setattr__(self, "path", safe_relpath(self.path))
        try:
            json.dumps(dict(self.labels), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"item {self.id!r}: labels must be JSON-serialisable without NaN ({exc})") from exc
        if self.annotations is not None:
            ann = np.asarray(self.annotations, dtype=np.float32)
            want = 2 if self.kind == "image" else 3
            if ann.ndim != want or ann.shape[-1] not in (2, 3):
                raise ValueError(f"item {self.id!r}: annotations must be {'(P, 2)' if want == 2 else '(F, P, 2)'} "
                                 f"source pixels, got shape {ann.shape}")
            fmt = self.annotation_format
            if fmt not in ANNOTATION_FORMATS or ANNOTATION_FORMATS[fmt] != ann.shape[-2]:
                raise ValueError(f"item {self.id!r}: annotation_format {fmt!r} does not describe {ann.shape[-2]} points "
                                 f"(known: {ANNOTATION_FORMATS})")
            object.__setattr__(self, "annotations", ann[..., :2])

    def annotations_for(self, frame_index: int | None) -> np.ndarray | None:
        """(P, 2) annotations of an image, or of one video frame; None when there are none."""
        if self.annotations is None:
            return None
        if self.kind == "image":
            ann = self.annotations
        elif frame_index is None or not 0 <= frame_index < len(self.annotations):
            return None
        else:
            ann = self.annotations[frame_index]
        return None if np.isnan(ann).all() else ann


@dataclass(frozen=True)
class SourceOptions:
    """Input selection shared by all pipelines. `limit` is per split; `filters` carries
    dataset-specific selections (e.g. MEAD {"views": ("front",)}); all are part of the prep
    config, so a resumed run must use the same."""

    splits: tuple[str, ...] | None = None
    limit: int | None = None
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:  # configs read from YAML give lists
        if self.splits is not None:
            object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "filters", {k: tuple(v) for k, v in self.filters.items()})

    def as_dict(self) -> dict[str, Any]:
        return {"splits": list(self.splits) if self.splits else None, "limit": self.limit,
                "filters": {k: list(v) for k, v in sorted(self.filters.items())}}


@runtime_checkable
class DatasetSource(Protocol):
    """What a prep pipeline provides. Instances must be picklable (they travel to worker processes)."""

    name: str  # dataset name: [a-z0-9_], used in keys, output folders and shard names
    splits: tuple[str, ...]  # the dataset's own split names

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        """All items under `root`, in a deterministic order (sorted, never os.listdir order).

        May use `options` to list less (splits, filters, limit); the runner applies splits and
        limit again, so honouring them here is an optimisation only."""
        ...

    def frames(self, root: Path, item: SourceItem, stride: int = 1, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(frame_index, RGB uint8 (H, W, 3)) for the item: one (0, image) for an image, every
        `stride`-th frame in [start, stop) for a video. Raises `InputError` for unusable input."""
        ...


class MediaSource(ABC):
    """Base for sources whose items are plain image and video files under the root: a
    subclass sets `name` and `splits` and lists its items; frames come from the shared readers."""

    name: str = ""
    splits: tuple[str, ...] = ()

    @abstractmethod
    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        """All items under `root` in a deterministic order (see DatasetSource.items)."""

    def frames(self, root: Path, item: SourceItem, stride: int = 1, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        path = resolve_in_root(root, item.path)
        if item.kind == "image":
            yield 0, read_image(path)
        else:
            yield from iter_video_frames(path, stride=stride, start=start, stop=stop)


def walk_files(root: Path, suffixes: Sequence[str], under: str = "") -> list[str]:
    """Sorted POSIX paths, relative to `root`, of files under `root/under` whose suffix
    (case-insensitive) is in `suffixes`. Follows directory symlinks; hidden entries skipped."""
    base = resolve_in_root(root, under) if under else Path(root)
    wanted = tuple(s.lower() for s in suffixes)
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(wanted):
                found.append(name if rel == "." else f"{rel}/{name}")
    return sorted(found)


def select_items(items: Sequence[SourceItem], source_splits: Sequence[str],
                 options: SourceOptions) -> dict[str, list[SourceItem]]:
    """Items grouped by split (in the source's split order), filtered by `options.splits`
    and cut to `options.limit` per split, keeping the source's order."""
    known = list(source_splits)
    if options.splits:
        unknown = [s for s in options.splits if s not in known]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; this dataset has {known}")
    wanted = [s for s in known if not options.splits or s in options.splits]
    grouped: dict[str, list[SourceItem]] = {s: [] for s in wanted}
    for item in items:
        if item.split not in known:
            raise ValueError(f"item {item.id!r} has split {item.split!r}, not one of the source's splits {known}")
        if item.split in grouped and (options.limit is None or len(grouped[item.split]) < options.limit):
            grouped[item.split].append(item)
    return {s: v for s, v in grouped.items() if v}


# options.filters key of the --annotations table of video pipelines (a 1-tuple of its path)
ANNOTATIONS_FILTER = "annotations"


@dataclass(frozen=True)
class Choice:
    """A dataset filter option (`--views front,left_30`): comma-separated values from `choices`."""

    name: str
    choices: tuple[str, ...]
    help: str
    single: bool = False  # one value only (e.g. which image variant of a dataset)

    def parse(self, values: Sequence[str]) -> tuple[str, ...]:
        unknown = [v for v in values if v not in self.choices]
        if unknown:
            raise ValueError(f"unknown {self.name} {', '.join(map(repr, unknown))}; choose from {', '.join(self.choices)}")
        values = tuple(dict.fromkeys(values))
        if self.single and len(values) > 1:
            raise ValueError(f"--{self.name.replace('_', '-')} takes one value, got {', '.join(values)}")
        return values


def filter_values(options: SourceOptions, choice: Choice) -> frozenset[str] | None:
    """The selected values of a filter (None: no selection), validated against its choices."""
    values = options.filters.get(choice.name)
    if not values:
        return None
    return frozenset(choice.parse(values))
