"""The prep worker: turns units into shards, one unit at a time, with its landmark models built once.

A worker process (or the main process with --workers 1) holds one `UnitWorker`. Per unit the
items' frames are read in order, go through the landmark models and the crop plan, and the
samples are cut, encoded and appended to the unit's shard in the same order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from fbench.landmarks.annotate import Annotator
from fbench.landmarks.crop import MIN_INSIDE_FRACTION, cut, frame_box, inside_fraction, plan_crop, transform_points
from fbench.shards.keys import safe_key
from fbench.shards.media import InputError
from fbench.shards.plan import Segment, Unit
from fbench.shards.schema import SCHEMA_VERSION, encode_jpeg, encode_sample
from fbench.shards.source import DatasetSource, SourceItem, frame_labels
from fbench.shards.writer import ShardFile

if TYPE_CHECKING:
    from fbench.shards.prep import PrepConfig

log = logging.getLogger(__name__)


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
        if box is not None:
            inside = inside_fraction(box, image.shape[0], image.shape[1], cfg.crop_scale)
            if inside < MIN_INSIDE_FRACTION:
                if frame is None:  # an image: the landmarks do not describe a face in it
                    raise InputError(f"{item.path}: the face box from {box_source} lies mostly outside the "
                                     f"{image.shape[1]}x{image.shape[0]} image ({inside:.0%} inside, centre "
                                     f"{box.cx:.0f},{box.cy:.0f}); landmarks wrong?")
                box = None  # a video frame keeps its row, cropped like a frame without a face
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
            "labels": frame_labels(item.labels, frame), "source_size": [int(image.shape[1]), int(image.shape[0])],
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


_WORKER: UnitWorker | None = None  # this process's worker (pool processes)


def overlap_for(config: PrepConfig) -> bool:
    return config.overlap if config.overlap is not None else config.workers < available_cores()


def init_worker(source: DatasetSource, config: PrepConfig, dataset_dir: Path,
                 sources: dict[str, str | None]) -> None:
    global _WORKER
    import cv2

    # One process per core: library thread pools would only oversubscribe the cores.
    cv2.setNumThreads(1)
    if config.landmarks.fan != "off":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    _WORKER = UnitWorker(source, config, dataset_dir, sources, overlap=overlap_for(config))


def run_unit(unit: Unit, items: list[SourceItem]) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(unit, items)
