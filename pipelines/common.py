"""Helpers shared by the prep pipelines (`pipelines/<dataset>.py`).

- `PipelineSource`: a `MediaSource` whose items may stand for an unusable input found while
  listing (a malformed CSV row, a path that climbs out of the root): such an item is made with
  `bad_item` and its `frames` raises `InputError`, so the prep runner writes exactly one
  rejects.jsonl line naming the file and the problem, and the run goes on.
- `Choice`, `filter_values` (from `fbench.shards.source`): dataset filters checked against the
  dataset's vocabulary; the command itself comes from `fbench.cli.prep.prep_command`.
- `read_landmark_table` / `video_annotations`: per-frame landmarks for video datasets
  (`--annotations TABLE`).
- `unique_keys`: a later item whose sample key repeats an earlier one's (a duplicated row) becomes
  a reject instead of stopping the run; `limit_per_split`: what the runner keeps of --limit/--splits,
  so a source can skip per-item work; `points_array`: landmark parsing with a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fbench.safe_read import check_regular_file
from fbench.shards import InputError, MediaSource, SourceItem, SourceOptions, UnsafePathError, safe_key, safe_relpath
from fbench.shards.source import ANNOTATIONS_FILTER, Choice, filter_values  # noqa: F401 (pipelines import them here)

log = logging.getLogger(__name__)

# Label of an item that stands for an input found unusable while listing (see `bad_item`).
ERROR_LABEL = "fbench_input_error"


class PipelineSource(MediaSource):
    """A MediaSource whose `bad_item`s are rejected by the runner instead of read."""

    def frames(self, root: Path, item: SourceItem, stride: int = 1, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        error = item.labels.get(ERROR_LABEL)
        if error is not None:
            raise InputError(str(error))
        yield from super().frames(root, item, stride, start, stop)


def bad_item(id: str, split: str, listing_file: str, reason: str) -> SourceItem:
    """An item that the prep runner turns into one reject with `reason`.

    `listing_file` is the (safe, root-relative) file the problem was found in, e.g. the CSV
    whose row is malformed: the reject line names it, never the unsafe path itself."""
    return SourceItem(id=id, split=split, path=listing_file, kind="image", labels={ERROR_LABEL: reason})


def unlisted_items(files: Sequence[str], split_of, layout: str) -> list[SourceItem]:
    """Rejects for input files found outside the dataset's layout (their names cannot become sample
    keys), so samples + rejects = inputs holds: one per file, in the split `split_of(path)` gives,
    with an id from a digest of the path (stable, unique, keyable whatever the name holds)."""
    import hashlib

    if files:
        log.warning("%d file(s) outside the layout %s become rejects, e.g. %s", len(files), layout, files[0])
    return [bad_item(f"unlisted-{hashlib.sha1(rel.encode()).hexdigest()[:16]}", split_of(rel), rel,
                     f"{rel}: not in the layout {layout}; no sample key can be made from its path")
            for rel in files]


def is_bad(item: SourceItem) -> bool:
    return ERROR_LABEL in item.labels


def unique_keys(dataset: str, items: Sequence[SourceItem], listing_file: str | Mapping[str, str]) -> list[SourceItem]:
    """Items whose sample key repeats an earlier item's (a duplicated annotation row, or ids that
    sanitise alike) become rejects: the runner refuses a plan with a duplicate key outright.
    `listing_file`: the file the items were listed from, or one per split."""
    seen: dict[str, str] = {}
    out = []
    for item in items:
        key = safe_key(dataset, item.id)
        if key in seen:
            source = listing_file if isinstance(listing_file, str) else listing_file[item.split]
            item = bad_item(f"duplicate-{len(out)}-{item.id}", item.split, source,
                            f"{source}: {item.id!r} gives the same sample key {key!r} as {seen[key]!r} "
                            "(listed twice?); the first is kept")
            key = safe_key(dataset, item.id)
        seen[key] = item.id
        out.append(item)
    return out


def limit_per_split(items: Sequence[SourceItem], options: SourceOptions) -> list[SourceItem]:
    """The first `options.limit` items of each wanted split, in order (what the runner keeps):
    lets a source skip per-item work (reading transcripts, tables) for items it would drop."""
    counts: dict[str, int] = {}
    kept = []
    for item in items:
        if options.splits and item.split not in options.splits:
            continue
        n = counts.get(item.split, 0)
        if options.limit is None or n < options.limit:
            kept.append(item)
            counts[item.split] = n + 1
    return kept


# ------------------------------------------------------------------------ per-frame landmark tables


def read_landmark_table(path: Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Per-video (F, 68, 2) landmarks in source pixels from an HDF5 table; NaN rows for frames
    the table does not list (or lists with face_visible False).

    Columns (one row per frame): `path` (str, relative to the dataset root), `frame` (int),
    `landmarks68` (68, 2) and optionally `face_visible` (bool). This is the layout of the
    synthetic datasets' `fbench_ground_truth.h5` and a simple target for precomputed tracks.
    Paths are normalised with `safe_relpath`; unsafe ones are skipped with a warning (they are
    only looked up, never opened). `wanted`: keep only these paths (memory)."""
    import h5py

    check_regular_file(path)  # a FIFO passed as the table must not block the run
    try:
        with h5py.File(path, "r") as f:
            missing = [c for c in ("path", "frame", "landmarks68") if c not in f]
            if missing:
                raise ValueError(f"{path}: landmark table lacks column(s) {missing} (needs path, frame, landmarks68)")
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f["path"][()]]
            frames = np.asarray(f["frame"][()], dtype=np.int64)
            points = np.asarray(f["landmarks68"][()], dtype=np.float32)
            visible = np.asarray(f["face_visible"][()], dtype=bool) if "face_visible" in f else None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read landmark table ({exc})") from exc
    n = len(paths)
    if frames.shape != (n,) or points.shape[1:] != (68, 2) or len(points) != n or \
            (visible is not None and visible.shape != (n,)):
        raise ValueError(f"{path}: landmark table columns disagree: path {n}, frame {frames.shape}, "
                         f"landmarks68 {points.shape}" + (f", face_visible {visible.shape}" if visible is not None else ""))
    rows: dict[str, list[int]] = {}
    unsafe = []
    for i, p in enumerate(paths):
        try:
            rel = safe_relpath(p)
        except UnsafePathError:
            unsafe.append(p)
            continue
        if wanted is None or rel in wanted:
            rows.setdefault(rel, []).append(i)
    if unsafe:
        log.warning("%s: skipped %d row(s) with unsafe paths, e.g. %r", path, len(unsafe), unsafe[0])
    out = {}
    for rel, idx in rows.items():
        idx_arr = np.asarray(idx)
        f_idx = frames[idx_arr]
        if (f_idx < 0).any():
            raise ValueError(f"{path}: negative frame index for {rel}")
        tracks = np.full((int(f_idx.max()) + 1, 68, 2), np.nan, dtype=np.float32)
        tracks[f_idx] = points[idx_arr]
        if visible is not None:
            tracks[f_idx[~visible[idx_arr]]] = np.nan
        out[rel] = tracks
    return out


def video_annotations(options: SourceOptions, items: Sequence[SourceItem]) -> dict[str, np.ndarray]:
    """The --annotations table's tracks of these video items ({} without a table); an error when
    the table matches none of them (most likely a table of another dataset or root)."""
    table = options.filters.get(ANNOTATIONS_FILTER)
    if not table:
        return {}
    wanted = {i.path for i in items if not is_bad(i)}
    tracks = read_landmark_table(Path(table[0]), wanted)
    if wanted and not tracks:
        raise ValueError(f"{table[0]}: no row of the landmark table names one of the {len(wanted)} videos "
                         f"listed (e.g. {sorted(wanted)[0]!r}); is it the table of this dataset root?")
    return tracks


def with_annotations(item: SourceItem, tracks: Mapping[str, np.ndarray]) -> SourceItem:
    """`item` carrying its video's track from `tracks` as ibug68 annotations (unchanged without one)."""
    track = tracks.get(item.path)
    if track is None:
        return item
    return SourceItem(id=item.id, split=item.split, path=item.path, kind=item.kind, subject=item.subject,
                      labels=item.labels, annotations=track, annotation_format="ibug68", num_frames=item.num_frames)


# ------------------------------------------------------------------------------ annotation parsing


def points_array(value: Any, n: int, what: str) -> np.ndarray:
    """(n, 2) finite float32 points from nested lists (JSON) or a flat sequence of 2n numbers (CSV/text);
    ValueError saying what is wrong."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} are not numbers") from None
    if array.size != 2 * n or array.ndim not in (1, 2) or (array.ndim == 2 and array.shape != (n, 2)):
        raise ValueError(f"{what}: expected {n} (x, y) points, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} are not all finite")
    return array.reshape(n, 2).astype(np.float32)
