"""BP4D-Spontaneous: fit FLAME to the 3D face scans (FIELDS' expression supervision).

Reads ``<root>/<subject>/<task>/<frame>.{obj,wrl}`` (textured scans in mm, not in FLAME
topology) with per-frame 3D landmarks (see data_cards/bp4d.yaml: the release's per-frame
format is not publicly documented, so both mesh formats and several landmark-file
namings are accepted; ``landmark_patterns`` places the landmark file anywhere under the root
from the subject, task, frame and scan name, e.g. BP4D+'s separate tree
``3DFeatures/FacialLandmarks/<S>_<T>_<frame>.bndplus`` with 83 points: no 83-to-68 mapping is
published, so such frames are initialised without landmarks, by multi-start rigid ICP,
unless ``landmark_map`` is given), and runs :mod:`fbench.fitting.scan`: landmark (Umeyama)
initialisation, a joint identity fit on frames spread over the subject's tasks, then
robust (Geman-McClure) scan-to-mesh + landmark fits of every frame with that identity,
restricted to the face region.

Resumable per (subject, task); the identity is cached per subject. Frames whose scan or
landmarks cannot be read are logged (``failures.jsonl``; missing or broken landmarks
only cost the frame its own initialisation: it borrows its neighbour's) and the run goes on.

Example::

    fbench fit-flame bp4d --root /data/BP4D --out fits/bp4d
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from fbench.checks import ConfigValueError, check_fields, limits
from fbench.config import config_to_dict
from fbench.cli.fit import FitSpec, fit_command
from fbench.fitting.runner import DatasetError, residual_stats, select_existing, strided
from fbench.fitting.scan import ScanFitConfig, ScanFrame, fit_scan_subject
from fbench.fitting.scan_io import read_landmarks_3d, read_scan
from fbench.fitting.store import FitStore, SequenceFit, check_name
from fbench.flame import FLAME
from fbench.geometry import MeshError
from fbench.shards import safe_relpath
from pipelines.bp4d_layout import TASKS, find_subjects

log = logging.getLogger("fbench.pipelines.bp4d")

MESH_SUFFIXES = (".obj", ".wrl", ".ply")
FRAME_RE = re.compile(r"^(?P<frame>\d+)\.(?P<ext>obj|wrl|ply)$", re.IGNORECASE)


@dataclass
class Bp4dConfig:
    """Settings of ``fbench fit-flame bp4d`` (YAML keys; ``-o scan.identity_frames=4`` etc.)."""

    scan: ScanFitConfig = field(default_factory=ScanFitConfig)
    stride: int = field(default=1, metadata=limits(ge=1))
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata=limits(nonempty=True))
    # Where each scan's 3D landmark file is, relative to the dataset root; the first existing pattern wins.
    # Fields: {subject}, {task}, {frame} (the scan's frame number, an int: {frame:04d}) and {stem} (the scan's
    # file name without suffix). The last one is BP4D+'s separate landmark tree (83 points per file).
    landmark_patterns: list[str] = field(default_factory=lambda: [
        "{subject}/{task}/{stem}_lmk3d.txt", "{subject}/{task}/{stem}.bnd", "{subject}/{task}/{stem}.lm3",
        "{subject}/{task}/{stem}_landmarks.txt", "3DFeatures/FacialLandmarks/{subject}_{task}_{frame:04d}.bndplus"])
    # For files with another point count (BP4D's 83-point scheme): pairs [file index, iBUG-68 index].
    landmark_map: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self)
        for pair in self.landmark_map:
            if len(pair) != 2 or min(pair) < 0 or pair[1] >= 68:
                raise ConfigValueError(f"landmark_map: {pair!r} is not a pair [file index >= 0, iBUG-68 index 0..67]")


@dataclass(frozen=True)
class ScanRef:
    task: str
    frame: int
    mesh: Path
    landmarks: Path | None


def find_scans(root: Path, subject: str, tasks: list[str], patterns: list[str]) -> dict[str, list[ScanRef]]:
    """Scans of a subject by task, sorted by frame number (one mesh per frame; OBJ preferred over WRL/PLY)."""
    out: dict[str, list[ScanRef]] = {}
    for task in tasks:
        tdir = root / subject / task
        if not tdir.is_dir():
            continue
        check_name(task, "task")
        by_frame: dict[int, Path] = {}
        for p in sorted(tdir.iterdir()):
            m = FRAME_RE.match(p.name)
            if not m or not p.is_file():
                continue
            frame = int(m["frame"])
            if frame not in by_frame or MESH_SUFFIXES.index(p.suffix.lower()) < MESH_SUFFIXES.index(
                    by_frame[frame].suffix.lower()):
                by_frame[frame] = p
        refs = []
        for frame, mesh in sorted(by_frame.items()):
            refs.append(ScanRef(task, frame, mesh, landmark_file(root, patterns, subject, task, frame, mesh.stem)))
        if refs:
            out[task] = refs
    return out


def landmark_file(root: Path, patterns: list[str], subject: str, task: str, frame: int, stem: str) -> Path | None:
    """The first existing landmark file of `patterns` (relative to the root) for one scan. A pattern that is
    malformed, or names a path outside the root, is a DatasetError (it is configuration, not data)."""
    for pattern in patterns:
        try:
            rel = safe_relpath(pattern.format(subject=subject, task=task, frame=frame, stem=stem))
        except (KeyError, IndexError, ValueError) as exc:  # UnsafePathError is a ValueError
            raise DatasetError(f"landmark pattern {pattern!r}: {exc} (fields: subject, task, frame, stem)") from None
        if (root / rel).is_file():
            return root / rel
    return None


class LandmarkScheme(ValueError):
    """A landmark file in a scheme other than iBUG-68 and no landmark_map for it (e.g. BP4D+'s 83 points)."""


def load_landmarks(path: Path | None, landmark_map: list[list[int]]) -> np.ndarray:
    """(68, 3) landmarks in iBUG order (NaN rows for points the file does not provide)."""
    if path is None:
        raise FileNotFoundError("no landmark file next to the scan")
    points = read_landmarks_3d(path)
    if len(points) == 68 and not landmark_map:
        return points
    if not landmark_map:
        raise LandmarkScheme(f"{path}: {len(points)} landmarks; iBUG-68 expected (give landmark_map for other "
                             "schemes)")
    out = np.full((68, 3), np.nan)
    for src, dst in landmark_map:
        if src >= len(points) or not 0 <= dst < 68:
            raise ValueError(f"{path}: landmark_map pair ({src}, {dst}) out of range for {len(points)} points")
        out[dst] = points[src]
    return out


def fit_bp4d(root: Path, out: Path, flame: FLAME, config: Bp4dConfig, subjects: list[str] | None = None,
             overwrite: bool = False, progress: bool = True) -> FitStore:
    """Fit every selected (subject, task) of a BP4D 3D tree; returns the store (see module doc)."""
    root = Path(root)
    cfg = config.scan
    source = getattr(flame, "flame_source", None)
    store = FitStore(out, "bp4d", config_to_dict(config), source.describe() if source else str(flame.source),
                     bool(source.synthetic) if source else False)
    found = find_subjects(root)
    chosen = select_existing(subjects, found, "subject", root)
    plan: dict[str, dict[str, list[ScanRef]]] = {}
    existing = sorted({p.name for s in chosen for p in (root / s).iterdir() if p.is_dir()})
    if config.tasks != list(TASKS):
        select_existing(config.tasks, existing, "task", root)  # none of the asked tasks anywhere: an error
    for subject in chosen:
        scans = find_scans(root, subject, config.tasks, config.landmark_patterns)
        todo = {task: strided(refs, config.stride) for task, refs in scans.items()
                if overwrite or not store.done(subject, task)}
        if todo:
            plan[subject] = todo
    if not plan and not store.finished():
        raise DatasetError(f"{root}: no BP4D scans found (expected <subject>/<task>/<frame>.obj|.wrl)")
    total = sum(len(r) for todo in plan.values() for r in todo.values())
    bar = tqdm(total=total, unit="scan", desc="bp4d", disable=not progress)
    schemes: list[str] = []  # frames whose landmark file is in another scheme (no landmark_map)
    for subject, todo in plan.items():
        frames: list[ScanFrame] = []
        refs: list[ScanRef] = []
        for task, task_refs in todo.items():
            for ref in task_refs:
                rel = str(ref.mesh.relative_to(root))
                try:
                    mesh = read_scan(ref.mesh, units="mm")
                except MeshError as exc:
                    store.record_failure(subject, task, ref.frame, rel, exc.reason)
                    bar.update(1)
                    continue
                try:
                    lmk = load_landmarks(ref.landmarks, config.landmark_map)
                except LandmarkScheme as exc:  # a whole dataset in another scheme: said once, not per frame
                    if not schemes:
                        log.warning("%s; no 83-to-68 mapping is shipped (none is published): these frames are "
                                    "initialised without landmarks (multi-start rigid ICP) and fitted without a "
                                    "landmark term; said once for the run", exc)
                    schemes.append(rel)
                    lmk = None
                except (FileNotFoundError, ValueError) as exc:
                    log.warning("%s: landmarks unusable, initialised from a neighbouring frame (%s)", rel, exc)
                    lmk = None
                frames.append(ScanFrame(mesh.vertices, mesh.faces, lmk, rel))
                refs.append(ref)
        done_before = bar.n
        try:
            if not frames:
                raise ValueError("no readable scan")
            identity = store.load_identity(subject)
            given = None if identity is None else (torch.as_tensor(identity[0]["shape"]),
                                                   float(identity[0]["log_scale"]))
            fit = fit_scan_subject(flame, frames, cfg, identity=given, progress=bar.update)
            if identity is None:
                store.save_identity(subject, {"shape": fit.shape.numpy(), "log_scale": np.array(fit.log_scale)},
                                    {"frames": [frames[i].source for i in fit.identity_frames]})
        except (ValueError, RuntimeError) as exc:
            for ref in refs:
                store.record_failure(subject, ref.task, ref.frame, str(ref.mesh.relative_to(root)), f"subject: {exc}")
            bar.update(len(refs) - (bar.n - done_before))
            store.consolidate()
            continue
        by_task: dict[str, list[int]] = {}
        for i, ref in enumerate(refs):
            by_task.setdefault(ref.task, []).append(i)
        for task in todo:
            rows = []
            for i in by_task.get(task, []):
                r = fit.residual_mm[i]
                if not np.isfinite(fit.loss[i]) or r.size == 0:
                    reason = "optimisation diverged (non-finite loss)" if not np.isfinite(fit.loss[i]) \
                        else "no scan point in the face region after fitting"
                    store.record_failure(subject, task, refs[i].frame, frames[i].source, reason)
                    continue
                rows.append(i)
            if not rows:
                store.save(SequenceFit.empty(subject, task, flame.n_shape, cfg.n_exp))
                continue
            params = {k: v.detach().double().numpy()[rows] for k, v in fit.params.as_dict().items()}
            params["eyelids"] = np.zeros((len(rows), 2))
            stats = np.array([residual_stats(fit.residual_mm[i]) for i in rows])
            store.save(SequenceFit(
                subject=subject, sequence=task, frame=np.array([refs[i].frame for i in rows]),
                source=[frames[i].source for i in rows], params=params, scale=fit.scale[rows],
                transform=np.stack([fit.transforms[i].matrix() for i in rows]),
                residual_mean_mm=stats[:, 0], residual_median_mm=stats[:, 1], residual_max_mm=stats[:, 2],
                loss=fit.loss[rows], converged=fit.converged[rows],
                attrs={"identity": f"shape fitted jointly to {len(fit.identity_frames)} frame(s) of the subject",
                       "stride": config.stride, "scan_units": cfg.scan_units,
                       "residual": "point-to-surface distance of face-region scan points to the fit (scan units)"}))
        store.consolidate()
    bar.close()
    if schemes:
        log.warning("%d frame(s) had landmarks in another scheme and were initialised without them (e.g. %s)",
                    len(schemes), schemes[0])
    return store


HELP = """Fit FLAME to BP4D-Spontaneous 3D scans (FIELDS' expression supervision).

Scale and pose from the per-frame 3D landmarks (Umeyama), one shape per subject fitted
jointly on frames spread over its tasks, then robust scan-to-mesh + landmark fits of
every frame restricted to the face. Writes OUT/fits.h5 (parameters, scan transform,
residuals in mm, source files), OUT/summary.csv and OUT/failures.jsonl; reruns resume.

\b
Examples:
  fbench fit-flame bp4d --root /data/BP4D --out fits/bp4d
  fbench fit-flame bp4d --root /data/BP4D --out fits/bp4d --subjects F001,M001 --tasks T1,T8 --stride 5
  fbench fit-flame bp4d --root /data/BP4D --out fits/bp4d -o scan.scan_units=unknown
"""


def command() -> click.Command:
    """`fbench fit-flame bp4d` (built on first use by the registry entry in pipelines/__init__.py)."""
    return fit_command(FitSpec(name="bp4d", help=HELP,
                               root_help='BP4D-Spontaneous 3D root: <subject>/<task>/<frame>.obj|.wrl with 3D landmark files.',
                               config=Bp4dConfig, fit=fit_bp4d,
                               selection="tasks", selection_help="Comma-separated tasks (default: T1..T8)."))
