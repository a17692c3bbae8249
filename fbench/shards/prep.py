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
import multiprocessing
import platform
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fbench.faults import remove_stale
from fbench.landmarks.annotate import LandmarkConfig
from fbench.io import atomic_write_json, atomic_write_lines, dumps_json, read_json
from fbench.io import stale_temporaries as io_stale
from fbench.shards.keys import check_dataset_name
from fbench.shards.media import InputError
from fbench.shards.plan import Plan, PlanError, Unit, check_unique_keys, count_video_frames, plan_units
from fbench.shards.schema import SCHEMA_VERSION
from fbench.shards.source import DatasetSource, SourceItem, SourceOptions, select_items
from fbench.shards.worker import UnitWorker, init_worker, overlap_for, run_unit
from fbench.shards.writer import TMP_SUFFIX

log = logging.getLogger(__name__)

STATE_DIR = ".prep"
START_METHODS = ("auto", "forkserver", "spawn")  # no plain fork: the parent may hold OpenCV/FFmpeg threads


class PrepError(RuntimeError):
    """The prep run cannot start or could not finish (the message says why and what to do)."""


@dataclass(frozen=True)
class PrepConfig:
    """Everything a prep run needs besides the source. Fields marked (content) decide what the
    shards contain; a resumed run must repeat them."""

    root: Path | None = None  # dataset root (the CLI fills in the catalogued one)
    out: Path = Path("shards")  # output root; shards go to <out>/<dataset>/
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
        if self.root is not None:
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


# ---------------------------------------------------------------------------------- landmark setup


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
    listing: dict[str, Any] = field(default_factory=dict)  # the source's listing_report (see run_prep)


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


def _mp_context(method: str, start: bool = False):
    if method == "auto":
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Import the heavy modules once in the fork server; each worker then starts in milliseconds.
        ctx.set_forkserver_preload(["fbench.shards.prep", "fbench.shards.worker", "cv2", "mediapipe"])
        if start:
            # Launch it now: its imports (about a second) overlap the listing and planning.
            from multiprocessing import forkserver

            forkserver.ensure_running()
    return ctx


def lock_path(dataset_dir: Path, part: tuple[int, int]) -> Path:
    """The lock of one part of a prep output: parts of a job array run in parallel, two runs of
    the same part do not (see fbench.lock)."""
    return dataset_dir / STATE_DIR / f"lock.part-{part[0]}-of-{part[1]}"


def stale_temporaries(dataset_dir: Path, dataset: str, units: list[Unit], names) -> list[Path]:
    """Temporaries this part's writes leave when killed: its shards' `.tar.tmp`, its unit records'
    and its manifest's atomic-write temporaries (fbench.io's names). Other parts' are not touched."""
    found = [dataset_dir / (u.shard_relpath(dataset) + TMP_SUFFIX) for u in units]
    for folder, name in [(dataset_dir / STATE_DIR / "units", u.record_name()) for u in units] + \
            [(dataset_dir, names.manifest), (dataset_dir, names.rejects)]:
        found += io_stale(folder, name) if folder.is_dir() else []
    return found


def run_prep(source: DatasetSource, config: PrepConfig) -> PrepResult:
    """Prep one dataset (or one part of it) into shards; resumes where an earlier run stopped.
    Lists and checks the items first (nothing written), then holds the output part's lock while
    it writes: a second run of the same part refuses (PrepError naming the holder)."""
    from fbench.lock import LockHeldError, output_lock

    started = time.perf_counter()
    dataset = check_dataset_name(source.name)
    if config.root is None or not config.root.is_dir():
        raise PrepError(f"dataset root {config.root} is not a directory")
    landmarks, sources = resolve_landmarks(config.landmarks)
    if config.workers > 1:
        _mp_context(config.start_method, start=True)
    config = replace(config, landmarks=landmarks)
    dataset_dir = config.out / dataset

    try:
        grouped = select_items(source.items(config.root, config.options), source.splits, config.options)
    except (ValueError, OSError, InputError) as exc:
        raise PrepError(f"{dataset}: cannot list items under {config.root}: {exc}") from exc
    if not grouped:
        raise PrepError(f"{dataset}: no items found under {config.root} (splits: {config.options.splits or 'all'})")
    # Optional source hook: what the listing found (layout variant, failed side files), for the manifest
    # and the summary line: `listing_report(root, items) -> {"summary": one line, ...}`.
    report = getattr(source, "listing_report", None)
    listing = report(config.root, [i for items in grouped.values() for i in items]) if report else {}
    try:
        check_unique_keys(dataset, grouped)
    except PlanError as exc:
        raise PrepError(str(exc)) from exc
    i, n = config.part
    try:
        with output_lock(lock_path(dataset_dir, config.part), f"prep output {dataset_dir} (part {i}/{n})"):
            return _write_shards(source, config, sources, grouped, listing, started)
    except LockHeldError as exc:
        raise PrepError(str(exc)) from None


def _write_shards(source: DatasetSource, config: PrepConfig, sources: dict[str, str | None],
                  grouped: dict[str, list[SourceItem]], listing: dict[str, Any], started: float) -> PrepResult:
    from tqdm import tqdm

    from fbench.shards.manifest import build_manifest, manifest_names

    dataset, landmarks = source.name, config.landmarks
    dataset_dir = config.out / dataset
    state_dir = dataset_dir / STATE_DIR
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
    names = manifest_names(config.part)
    remove_stale(stale_temporaries(dataset_dir, dataset, mine, names), f"prep {dataset_dir}")

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

    ordered = [records[(u.split, u.index)] for u in mine]
    manifest, rejects = build_manifest(dataset=dataset, config=config, sources=sources, versions=versions,
                                       identity=identity, splits=list(grouped), records=ordered,
                                       units_in_plan=len(plan.units))
    if listing:
        manifest["listing"] = listing
    atomic_write_lines(dataset_dir / names.rejects, [dumps_json(r) for r in rejects])
    atomic_write_json(dataset_dir / names.manifest, manifest)
    return PrepResult(dataset_dir=dataset_dir, manifest=dataset_dir / names.manifest,
                      rejects=dataset_dir / names.rejects, counts=manifest["total"], units_total=len(mine),
                      units_skipped=skipped, units_run=len(todo), elapsed_s=time.perf_counter() - started,
                      listing=listing)


def _unit_items(plan: Plan, unit: Unit) -> list[SourceItem]:
    items = plan.items[unit.split]
    return [items[s.item] for s in unit.segments]


def _run_in_process(source, config, dataset_dir, sources, plan, todo, finished, bar) -> None:
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the same single-core work as one pool worker
    worker = UnitWorker(source, config, dataset_dir, sources, overlap=overlap_for(config))
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
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                             initargs=(source, config, dataset_dir, sources)) as pool:
        units: dict[Future, Unit] = {pool.submit(run_unit, u, _unit_items(plan, u)): u for u in todo}
        try:
            # Record each unit as soon as it is done: that is what a rerun resumes from.
            for future in as_completed(units):
                unit = units[future]
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
            for future in units:
                future.cancel()
            raise
