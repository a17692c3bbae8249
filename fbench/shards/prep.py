"""The prep runner: dataset source -> landmarks -> face crops -> WebDataset shards.

    from fbench.shards.prep import PrepConfig, run_prep
    result = run_prep(MySource(), PrepConfig(root=Path("/data/FFHQ"), out=Path("shards"), workers=8))

Output, per dataset:

    <out>/<dataset>/<split>/<dataset>-<split>-000000.tar   shards
    <out>/<dataset>/manifest.json                          counts, shards (samples, sha256), config, versions
    <out>/<dataset>/rejects.jsonl                          one line per unusable input
    <out>/<dataset>/.prep/                                 run state: config identity, one record per finished unit

Units of work. The items of each split (in the source's order) are cut into units before
anything runs: consecutive items whose expected sample count (1 per image, frames/stride per
video) fits in `maxcount`. A video longer than `maxcount` samples is split by frame range over
several units. One unit = one output shard, processed start to finish by one worker, so a
shard's content never depends on timing or on the number of workers. `maxcount` is exact for
images; for videos it relies on the frame count in the container header (a header that
under-counts gives a larger last shard).

Resuming. A unit is complete when its .tar exists (it is renamed from `.tar.tmp` only when
complete) and its record in `.prep/units/` matches. A rerun of the same command skips
complete units and redoes the rest; the final shards hold every good sample exactly once.
A rerun with different content settings (or a changed item list, or other library versions)
is refused instead of mixing shards.

Parts. `part=(i, N)` takes units i, i+N, i+2N, ... of the global unit list, so N jobs of a
cluster array write disjoint shards into the same output folder; each writes
`manifest.part-<i>-of-<N>.json`, and `fbench shards merge-manifests` joins them into the
same manifest.json an undivided run writes.

Counting. Every input ends up either as a sample or as a rejects line: an image is one input;
a video gives one input per sampled frame, plus one for a read failure (an unreadable video
is one reject). A video frame with no face is a sample with NaN landmarks, cropped with the
previous frame's box (or the centred frame square when no earlier frame had a face).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import multiprocessing
import os
import platform
import queue
import threading
import time
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from fbench.landmarks.annotate import Annotator, LandmarkConfig
from fbench.landmarks.crop import cut, frame_box, plan_crop, transform_points
from fbench.shards.io import atomic_write_json, atomic_write_lines, dumps_json, read_json
from fbench.shards.keys import check_dataset_name, resolve_in_root, safe_key
from fbench.shards.media import InputError, probe_video_frames
from fbench.shards.schema import SCHEMA_VERSION, encode_jpeg, encode_sample
from fbench.shards.source import DatasetSource, SourceItem, SourceOptions, select_items
from fbench.shards.writer import ShardFile

log = logging.getLogger(__name__)

STATE_DIR = ".prep"
START_METHODS = ("auto", "forkserver", "spawn")  # no plain fork: the parent may hold OpenCV/FFmpeg threads


class PrepError(RuntimeError):
    """The prep run cannot start or could not finish (the message says why and what to do)."""


@dataclass(frozen=True)
class PrepConfig:
    """Everything a prep run needs besides the source. Fields marked (content) decide what the
    shards contain; a resumed run must repeat them."""

    root: Path  # dataset root
    out: Path  # output root; shards go to <out>/<dataset>/
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)  # (content)
    options: SourceOptions = field(default_factory=SourceOptions)  # (content) splits, limit, filters
    frame_stride: int = 1  # (content) every K-th video frame
    maxcount: int = 1000  # (content) samples per shard
    jpeg_quality: int = 95  # (content)
    workers: int = 1  # processes; 1 runs in this process
    part: tuple[int, int] = (0, 1)  # (i, N): this job does units i, i+N, ...; 0 <= i < N
    start_method: str = "auto"  # multiprocessing start method for workers > 1
    overlap: bool | None = None  # read/encode in helper threads; None: when workers < available cores
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "out", Path(self.out))
        if self.frame_stride < 1 or self.maxcount < 1 or self.workers < 1:
            raise ValueError("frame_stride, maxcount and workers must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        i, n = self.part
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"part {i}/{n}: need N >= 1 and 0 <= i < N (parts are numbered 0..N-1)")
        if self.start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}")

    def content(self) -> dict[str, Any]:
        """The settings that decide shard content (recorded in the manifest, checked on resume)."""
        return {"landmarks": asdict(self.landmarks), "options": self.options.as_dict(),
                "frame_stride": self.frame_stride, "maxcount": self.maxcount, "jpeg_quality": self.jpeg_quality,
                "schema": SCHEMA_VERSION}


def parse_part(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N), parts numbered 0..N-1 (as in a job array `--array=0-(N-1)`)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"part {text!r} must look like i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"part {text!r}: need N >= 1 and 0 <= i < N (parts are numbered 0..N-1)")
    return i, n


# ---------------------------------------------------------------------------------------- planning


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
                raise PrepError(f"items {seen[key]!r} and {item.id!r} both give sample key {key!r}; "
                                "the source must give unique ids (after sanitising to [A-Za-z0-9_-])")
            seen[key] = item.id


# ------------------------------------------------------------------------------------- the worker


def resolve_landmarks(config: LandmarkConfig) -> tuple[LandmarkConfig, dict[str, str | None]]:
    """Settle 'auto' choices once, up front (so every worker does the same), and describe the
    landmark sources. Raises when FAN is required but absent, or the Tasks model is missing."""
    from fbench.landmarks.fan import FanDetector, resolve_fan_mode
    from fbench.landmarks.mediapipe_detector import describe_backend, resolve_backend

    if config.landmarks == "annotations":
        return replace(config, fan="off", mediapipe_backend="facemesh"), {"mp": None, "fan": None}
    backend, task_path = resolve_backend(config.mediapipe_backend)
    fan_on = resolve_fan_mode(config.fan)
    resolved = replace(config, mediapipe_backend=backend, fan="required" if fan_on else "off")
    return resolved, {"mp": describe_backend(backend, task_path), "fan": FanDetector.describe() if fan_on else None}


class _Background:
    """Iterate `iterable` in a helper thread, at most `depth` items ahead, in order.

    Used to read and decode the next frames while MediaPipe works on the current one (OpenCV,
    PyAV and MediaPipe release the GIL in their heavy parts). Exceptions reach the consumer
    at the point where they happened."""

    def __init__(self, iterable: Iterable[Any], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True, name="fbench-prefetch")
        self._thread.start()

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Iterable[Any]) -> None:
        try:
            for value in iterable:
                if not self._put(("value", value)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer thread
            self._put(("error", exc))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()  # a stopped generator releases its open files (video containers) now

    def __iter__(self):
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "value":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            self.close()

    def close(self) -> None:
        """Stop the helper thread (it finishes the item it is reading) and wait for it."""
        self._stop.set()
        self._thread.join()


class _SampleWriter:
    """Cuts the crops, encodes samples (JPEG, npy, JSON) and appends them to the shard, in
    submission order; in a helper thread when overlapping, so this pixel work runs while
    MediaPipe works on the next frame."""

    MAX_PENDING = 4  # samples in flight: bounds memory, keeps the helper busy

    def __init__(self, quality: int, threaded: bool) -> None:
        self.quality = quality
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fbench-writer") if threaded else None
        self.pending: deque[Future] = deque()

    def _write(self, shard: ShardFile, parts: tuple) -> None:
        key, image, plan, mp, fan, ann, meta = parts
        shard.write(encode_sample(key, encode_jpeg(cut(image, plan), self.quality), mp, fan, ann, meta))

    def put(self, shard: ShardFile, parts: tuple) -> None:
        if self.pool is None:
            self._write(shard, parts)
            return
        self.pending.append(self.pool.submit(self._write, shard, parts))
        while len(self.pending) > self.MAX_PENDING:
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every submitted sample, then re-raise the first write error, if any."""
        error = None
        while self.pending:
            try:
                self.pending.popleft().result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class UnitWorker:
    """Turns units into shards. One per process; its landmark models are built once.

    Per unit: the items' frames are read in order, each goes through the landmark models and
    the crop, and the samples are encoded and appended to the unit's shard in the same order.
    With `overlap` the reading runs one step ahead and the encoding one step behind, in
    helper threads, so a worker uses more than one core when cores are idle; the shard bytes
    are the same either way."""

    def __init__(self, source: DatasetSource, config: PrepConfig, dataset_dir: Path,
                 sources: dict[str, str | None], overlap: bool = False, annotator: Annotator | None = None) -> None:
        self.source = source
        self.config = config
        self.dataset = source.name
        self.dataset_dir = dataset_dir
        self.sources = sources
        self.overlap = overlap
        self.annotator = annotator or Annotator(config.landmarks)
        self.writer = _SampleWriter(config.jpeg_quality, threaded=overlap)

    def _events(self, unit: Unit, items: list[SourceItem]) -> Iterator[tuple[int, str, Any]]:
        """(segment number, "frame" | "error" | "end", payload) for the whole unit, in order."""
        for s, (segment, item) in enumerate(zip(unit.segments, items)):
            yielded = 0
            try:
                for frame_index, image in self.source.frames(self.config.root, item, self.config.frame_stride,
                                                             segment.start, segment.stop):
                    yielded += 1
                    yield s, "frame", (frame_index, image)
                    if item.kind == "image":
                        break  # an image is one input, whatever the source yields
            except Exception as exc:  # judged by the consumer: InputError -> reject, else unexpected
                yield s, "error", exc
            yield s, "end", yielded

    def run(self, unit: Unit, items: list[SourceItem]) -> dict[str, Any]:
        shard = ShardFile(self.dataset_dir / unit.shard_relpath(self.dataset))
        record: dict[str, Any] = {"split": unit.split, "index": unit.index, "shard": None, "sha256": None,
                                  "bytes": 0, "items": sum(seg.start == 0 for seg in unit.segments),  # once per video
                                  "inputs": 0, "samples": 0, "mp": 0, "fan": 0, "ann": 0, "no_face": 0,
                                  "unexpected_errors": 0, "rejects": []}
        events = self._events(unit, items)
        background = _Background(events) if self.overlap else None
        try:
            previous_box, failed = None, False
            for s, kind, payload in (background if background is not None else events):
                item, segment = items[s], unit.segments[s]
                if kind == "frame":
                    previous_box = self._frame(item, payload, previous_box, shard, record) or previous_box
                elif kind == "error":
                    failed = self._reader_error(item, segment, payload, record)
                else:  # end of the item
                    record["inputs"] += payload
                    if item.kind == "image" and payload == 0 and not failed:
                        self._reject(record, item, None, f"{item.path}: the source yielded no image")
                        record["inputs"] += 1
                    previous_box, failed = None, False
            self.writer.drain()
            if shard.count:
                record["sha256"], record["bytes"] = shard.commit()
                record["shard"] = unit.shard_relpath(self.dataset)
            else:
                shard.abort()
        except BaseException:
            if background is not None:
                background.close()
            try:
                self.writer.drain()  # let in-flight writes finish before the file goes
            except BaseException:
                pass
            shard.abort()
            raise
        if record["samples"] + len(record["rejects"]) != record["inputs"]:
            raise AssertionError(f"unit {unit.record_name()}: samples + rejects != inputs ({record})")
        return record

    def _reject(self, record: dict[str, Any], item: SourceItem, frame: int | None, reason: str,
                unexpected: bool = False) -> None:
        record["rejects"].append({"split": item.split, "unit": record["index"], "file": item.path, "frame": frame,
                                  "id": item.id, "reason": reason})
        if unexpected:
            record["unexpected_errors"] += 1
            log.warning("unexpected error on %s (frame %s): %s", item.path, frame, reason)

    def _reader_error(self, item: SourceItem, segment: Segment, exc: Exception, record: dict[str, Any]) -> bool:
        """Record a failure to read an item; True when this segment reports it."""
        if not isinstance(exc, InputError):
            if segment.start != 0:
                return False
            self._reject(record, item, None, f"unexpected {type(exc).__name__}: {exc}", unexpected=True)
            record["inputs"] += 1
            return True
        # Decoding restarts at frame 0 for every piece of a split video: only the piece whose
        # range holds the failing frame (the first piece for open failures) reports it.
        failed = exc.frame if exc.frame is not None else 0
        if failed >= segment.start and (segment.stop is None or failed < segment.stop):
            self._reject(record, item, exc.frame, str(exc))
            record["inputs"] += 1
            return True
        return False

    def _frame(self, item: SourceItem, payload: tuple[int, np.ndarray], previous_box,
               shard: ShardFile, record: dict[str, Any]):
        """Make and queue one sample (or a reject); returns the face box it used, if any."""
        frame_index, image = payload
        frame = int(frame_index) if item.kind == "video" else None
        try:
            parts, box, stats = self._sample(item, frame, image, previous_box)
        except InputError as exc:
            self._reject(record, item, frame, str(exc))
        except Exception as exc:  # a detector or pipeline bug on one input must not end a long run
            self._reject(record, item, frame, f"unexpected {type(exc).__name__}: {exc}", unexpected=True)
        else:
            self.writer.put(shard, parts)
            record["samples"] += 1
            for k, v in stats.items():
                record[k] += v
            return box
        return None

    def _sample(self, item: SourceItem, frame: int | None, image: np.ndarray,
                previous_box) -> tuple[tuple, Any, dict[str, int]]:
        """Landmarks and crop plan of one frame: the parts of a sample, the box when a face gave
        one, and the sample's landmark counts."""
        cfg = self.config.landmarks
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"{item.path}: expected an RGB uint8 image, got {image.dtype} {image.shape}", frame)
        ann = item.annotations_for(frame)
        if cfg.landmarks == "annotations" and ann is None and frame is None:
            raise InputError(f"{item.path}: no annotation landmarks (prep with --landmarks annotations)")
        lm = self.annotator(image, ann)
        box, box_source = lm.box, lm.box_source
        if box is None:
            if frame is None:
                found = "no annotation landmarks" if cfg.landmarks == "annotations" else \
                    "no face found by MediaPipe" + (" or FAN" if self.annotator.fan else "") + " and no annotations"
                raise InputError(f"{item.path}: {found}")
            box, box_source = (previous_box, "previous") if previous_box is not None else \
                (frame_box(*image.shape[:2]), "frame")
        plan = plan_crop(box, cfg.size)
        mp = transform_points(plan.affine, lm.mp)
        fan = transform_points(plan.affine, lm.fan)
        ann_crop = transform_points(plan.affine, ann) if ann is not None else None
        stats = {"mp": int(lm.mp_found), "fan": int(lm.fan_found), "ann": int(ann is not None),
                 "no_face": int(box_source in ("previous", "frame"))}
        key = safe_key(self.dataset, item.id) if frame is None else f"{safe_key(self.dataset, item.id)}_f{frame:06d}"
        meta = {
            "schema": SCHEMA_VERSION, "dataset": self.dataset, "key": key, "id": item.id, "split": item.split,
            "source_path": item.path, "kind": item.kind, "frame_index": frame, "subject": item.subject,
            "labels": dict(item.labels), "source_size": [int(image.shape[1]), int(image.shape[0])],
            "box": [round(float(v), 4) for v in box.xyxy()], "box_source": box_source,
            "crop_region": list(plan.region), "crop_size": cfg.size, "crop_scale": cfg.crop_scale,
            "affine": plan.affine.tolist(),
            "landmarks": {"mp": lm.mp_found, "fan": lm.fan_found,
                          "ann": item.annotation_format if ann is not None else None},
            "landmark_sources": {**self.sources,
                                 "ann": f"dataset annotations ({item.annotation_format})" if ann is not None else None},
        }
        parts = (key, image, plan, mp, fan, ann_crop, meta)
        return parts, (None if stats["no_face"] else box), stats

    def close(self) -> None:
        self.writer.close()
        self.annotator.close()


_WORKER: UnitWorker | None = None


def _overlap(config: PrepConfig) -> bool:
    return config.overlap if config.overlap is not None else config.workers < available_cores()


def _init_worker(source: DatasetSource, config: PrepConfig, dataset_dir: Path,
                 sources: dict[str, str | None]) -> None:
    global _WORKER
    import cv2

    # One process per core: library thread pools would only oversubscribe the cores.
    cv2.setNumThreads(1)
    if config.landmarks.fan != "off":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    _WORKER = UnitWorker(source, config, dataset_dir, sources, overlap=_overlap(config))


def _run_unit(unit: Unit, items: list[SourceItem]) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(unit, items)


# ------------------------------------------------------------------------------------- the runner


@dataclass
class PrepResult:
    dataset_dir: Path
    manifest: Path
    rejects: Path
    counts: dict[str, int]  # totals of this run's part
    units_total: int  # units in this part
    units_skipped: int  # already complete before this run
    units_run: int
    elapsed_s: float


def package_versions(with_fan: bool = False) -> dict[str, str]:
    names = ["fbench", "numpy", "opencv-python", "mediapipe", "av"] + (["face-alignment"] if with_fan else [])
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    import cv2

    versions["opencv-python"] = cv2.__version__  # the wheel may be opencv-contrib-python
    return versions


def _content_versions(versions: dict[str, str]) -> dict[str, str]:
    # Library versions that can change pixels or landmarks; fbench's own version does not block a resume.
    return {k: v for k, v in versions.items() if k not in ("fbench", "python")}


def _check_state(state_path: Path, state: dict[str, Any]) -> None:
    if not state_path.exists():
        atomic_write_json(state_path, state)
        return
    old = read_json(state_path)
    if old.get("identity") == state["identity"]:
        return
    diffs = []
    for name in ("content", "versions", "plan"):
        if old.get(name) != state[name]:
            diffs.append(name if name != "plan" else "the input items or their unit plan")
    raise PrepError(f"{state_path.parent.parent} holds shards made with different settings ({', '.join(diffs)}). "
                    f"Rerun with the same settings to resume, or use another --out (or delete that folder). "
                    f"Earlier settings: {dumps_json(old.get('content'))}")


def _load_record(path: Path, identity: str, dataset_dir: Path) -> dict[str, Any] | None:
    """A unit's record if the unit is complete: record matches this run and its shard is in place."""
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except ValueError:
        return None
    if record.get("identity") != identity:
        return None
    if record.get("shard"):
        tar = dataset_dir / record["shard"]
        if not tar.is_file() or tar.stat().st_size != record.get("bytes"):
            return None
    return record


def _mp_context(method: str):
    if method == "auto":
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Import the heavy modules once in the fork server; each worker then starts in milliseconds.
        ctx.set_forkserver_preload(["fbench.shards.prep", "cv2", "mediapipe"])
    return ctx


def run_prep(source: DatasetSource, config: PrepConfig) -> PrepResult:
    """Prep one dataset (or one part of it) into shards; resumes where an earlier run stopped."""
    from tqdm import tqdm

    from fbench.shards.manifest import build_manifest, manifest_names

    started = time.perf_counter()
    dataset = check_dataset_name(source.name)
    if not config.root.is_dir():
        raise PrepError(f"dataset root {config.root} is not a directory")
    landmarks, sources = resolve_landmarks(config.landmarks)
    config = replace(config, landmarks=landmarks)
    dataset_dir = config.out / dataset
    state_dir = dataset_dir / STATE_DIR

    try:
        grouped = select_items(source.items(config.root, config.options), source.splits, config.options)
    except (ValueError, OSError, InputError) as exc:
        raise PrepError(f"{dataset}: cannot list items under {config.root}: {exc}") from exc
    if not grouped:
        raise PrepError(f"{dataset}: no items found under {config.root} (splits: {config.options.splits or 'all'})")
    check_unique_keys(dataset, grouped)
    frames = count_video_frames(config.root, (i for items in grouped.values() for i in items),
                                state_dir / "video-frames.json", config.progress)
    plan = plan_units(dataset, grouped, frames, config.frame_stride, config.maxcount)

    versions = package_versions(with_fan=landmarks.fan != "off")
    state = {"content": config.content(), "versions": _content_versions(versions), "plan": plan.fingerprint(),
             "units": len(plan.units)}
    state["identity"] = hashlib.sha256(dumps_json(state).encode()).hexdigest()[:16]
    _check_state(state_dir / "config.json", state)
    identity = state["identity"]

    part_index, parts = config.part
    mine = [u for k, u in enumerate(plan.units) if k % parts == part_index]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for unit in mine:
        record = _load_record(state_dir / "units" / unit.record_name(), identity, dataset_dir)
        if record is not None:
            records[(unit.split, unit.index)] = record
    todo = [u for u in mine if (u.split, u.index) not in records]
    skipped = len(mine) - len(todo)

    def finished(unit: Unit, record: dict[str, Any]) -> None:
        record["identity"] = identity
        atomic_write_json(state_dir / "units" / unit.record_name(), record)
        records[(unit.split, unit.index)] = record

    bar = tqdm(total=sum(u.expected for u in mine), initial=sum(u.expected for u in mine) - sum(u.expected for u in todo),
               desc=f"prep {dataset}" + (f" part {part_index}/{parts}" if parts > 1 else ""), unit="sample",
               disable=not config.progress or not todo, dynamic_ncols=True)
    try:
        if todo and config.workers == 1:
            _run_in_process(source, config, dataset_dir, sources, plan, todo, finished, bar)
        elif todo:
            _run_pool(source, config, dataset_dir, sources, plan, todo, finished, bar)
    finally:
        bar.close()

    names = manifest_names(config.part)
    ordered = [records[(u.split, u.index)] for u in mine]
    manifest, rejects = build_manifest(dataset=dataset, config=config, sources=sources, versions=versions,
                                       identity=identity, splits=list(grouped), records=ordered,
                                       units_in_plan=len(plan.units))
    atomic_write_lines(dataset_dir / names.rejects, [dumps_json(r) for r in rejects])
    atomic_write_json(dataset_dir / names.manifest, manifest)
    return PrepResult(dataset_dir=dataset_dir, manifest=dataset_dir / names.manifest,
                      rejects=dataset_dir / names.rejects, counts=manifest["total"], units_total=len(mine),
                      units_skipped=skipped, units_run=len(todo), elapsed_s=time.perf_counter() - started)


def _unit_items(plan: Plan, unit: Unit) -> list[SourceItem]:
    items = plan.items[unit.split]
    return [items[s.item] for s in unit.segments]


def _run_in_process(source, config, dataset_dir, sources, plan, todo, finished, bar) -> None:
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the same single-core work as one pool worker
    worker = UnitWorker(source, config, dataset_dir, sources, overlap=_overlap(config))
    try:
        for unit in todo:
            finished(unit, worker.run(unit, _unit_items(plan, unit)))
            bar.update(unit.expected)
    finally:
        worker.close()
        cv2.setNumThreads(threads)


def _run_pool(source, config, dataset_dir, sources, plan, todo, finished, bar) -> None:
    # Scripts calling run_prep with workers > 1 need the usual `if __name__ == "__main__":` guard.
    ctx = _mp_context(config.start_method)
    workers = min(config.workers, len(todo))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(source, config, dataset_dir, sources)) as pool:
        pending: dict[Future, Unit] = {pool.submit(_run_unit, u, _unit_items(plan, u)): u for u in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    unit = pending.pop(future)
                    try:
                        record = future.result()
                    except BrokenProcessPool as exc:
                        raise PrepError("a prep worker process died (killed, out of memory, or failed to start: see "
                                        "the log above); finished shards are kept: rerun the same command to "
                                        "resume") from exc
                    except Exception as exc:
                        raise PrepError(f"unit {unit.shard_relpath(plan.dataset)} failed: {type(exc).__name__}: "
                                        f"{exc}; finished shards are kept: rerun the same command to resume") from exc
                    finished(unit, record)
                    bar.update(unit.expected)
        except BaseException:
            for future in pending:
                future.cancel()
            raise

