"""FaMoS: fit FLAME to the registrations, for SMIRK's expression templates.

SMIRK (supplementary Sec. 1.4) builds its expression templates from FLAME fits of FaMoS:
twelve sequences, 70 subjects, every 10th frame, each subject's own neutral identity.
This pipeline reads the registrations (``<subject>/<sequence>/<sequence>.<frame:06d>.ply``,
FLAME topology, metres; see data_cards/famos.yaml) and runs :mod:`fbench.fitting.registration`:

* identity: one shape per subject, fitted jointly to its neutral frames. FaMoS has no
  neutral sequence; every sequence starts from the neutral face, so the first registered
  frame of each sequence of the subject is used (``neutral_from: all`` sequences found,
  or only the ``fitted`` ones), at most ``registration.identity_max_frames`` of them;
* frames: global rotation, translation, neck, jaw, eyes and 100 expression components
  (SMIRK keeps the first 50) per frame against the registered vertices, TF_FLAME-style
  L2 priors, batched and warm-started along the sequence, rigid stage first.

Resumable per sequence; a frame that cannot be read or fitted is logged with the reason
(``failures.jsonl``) and does not stop the run.

Example::

    fbench fit-flame famos --root /data/FaMoS --stride 10 --out fits/famos --export-templates templates/
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
from tqdm import tqdm

from fbench.checks import check_fields, limits
from fbench.config import config_to_dict
from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout
from fbench.fitting.registration import (
    RegistrationFitConfig,
    fit_frames,
    fit_identity,
    frame_preconditioner,
    vertex_errors_mm,
)
from fbench.cli.fit import FitSpec, fit_command
from fbench.fitting.runner import DatasetError, named_folders, select_existing, strided
from fbench.fitting.store import FitStore, SequenceFit
from fbench.flame import FLAME, FlameParams
from fbench.geometry import MeshError, read_mesh

log = logging.getLogger("fbench.pipelines.famos")

# SMIRK's utils.load_templates classes_to_load, in its order.
SMIRK_SEQUENCES = ("lips_back", "rolling_lips", "mouth_side", "kissing", "high_smile", "mouth_up",
                   "mouth_middle", "mouth_down", "blow_cheeks", "cheeks_in", "jaw", "lips_up")
REGISTRATION_RE = re.compile(r"^(?P<seq>.+)\.(?P<frame>\d+)\.ply$")


@dataclass
class FamosConfig:
    """Settings of ``fbench fit-flame famos`` (YAML keys; ``-o registration.batch_size=32`` etc.)."""

    registration: RegistrationFitConfig = field(default_factory=RegistrationFitConfig)
    stride: int = field(default=10, metadata=limits(ge=1))  # SMIRK: every 10th frame
    sequences: list[str] = field(default_factory=lambda: list(SMIRK_SEQUENCES),
                                 metadata=limits(nonempty=True))  # ["all"] for every sequence
    neutral_from: Literal["all", "fitted"] = "all"  # sequences whose first frame is a neutral frame

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class FrameRef:
    frame: int
    path: Path


def sequence_frames(seq_dir: Path) -> list[FrameRef]:
    """Registered frames of a sequence folder, by frame number (files named <sequence>.<frame>.ply)."""
    frames = []
    for p in seq_dir.iterdir():
        m = REGISTRATION_RE.match(p.name)
        if m and m["seq"] == seq_dir.name and p.is_file():
            frames.append(FrameRef(int(m["frame"]), p))
    return sorted(frames, key=lambda r: r.frame)


def find_subjects(root: Path) -> list[str]:
    """Subject folders holding at least one sequence folder with registrations."""
    return [subject for subject in named_folders(root, "subject") if find_sequences(root, subject)]


def find_sequences(root: Path, subject: str) -> list[str]:
    return [seq for seq in named_folders(root / subject, "sequence")
            if any(REGISTRATION_RE.match(p.name) for p in (root / subject / seq).iterdir())]


def registrations_root(root: Path) -> Path:
    """`root`, or its `registrations/` folder when the registrations archive was extracted there and
    --root names the parent (TEMPEH's fetch_registrations.sh extracts to <data>/registrations/)."""
    root = Path(root)
    if root.is_dir() and not find_subjects(root) and (root / "registrations").is_dir() and \
            find_subjects(root / "registrations"):
        log.warning("%s: no subject folders here; reading the registrations in %s", root, root / "registrations")
        return root / "registrations"
    return root


def canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Triangles as sorted vertex triples in sorted order: equal for two face arrays that differ only
    in triangle order or winding."""
    tri = np.sort(np.asarray(faces, dtype=np.int64), axis=1)
    return tri[np.lexsort(tri.T[::-1])]


@dataclass
class FaceCheck:
    """Compares registrations' faces with the loaded FLAME's. Only the vertex count matters to the fit
    (it compares vertices); triangle order and winding are ignored; other differences are counted and
    warned about once for the run, never a reason to reject a frame."""

    faces: np.ndarray
    differing: int = 0
    first: str | None = None
    _canonical: np.ndarray | None = None

    def check(self, mesh_faces: np.ndarray, path: Path) -> None:
        if mesh_faces.shape == self.faces.shape and np.array_equal(mesh_faces, self.faces):
            return
        if self._canonical is None:
            self._canonical = canonical_faces(self.faces)
        if mesh_faces.shape == self.faces.shape and np.array_equal(canonical_faces(mesh_faces), self._canonical):
            return
        self.differing += 1
        if self.first is None:
            self.first = str(path)
            log.warning("%s: the triangles differ from the loaded FLAME's (same %d vertices); the fit compares "
                        "vertices only, so frames are used; said once for the run", path, int(self.faces.max()) + 1)


def read_registration(path: Path, faces: np.ndarray, face_check: FaceCheck | None = None) -> np.ndarray:
    """(V, 3) vertices in metres; MeshError naming the file if unreadable or with another vertex count
    than the FLAME model (not a registration in its topology). Faces are compared by `face_check`."""
    mesh = read_mesh(path, units="m", require_faces=False)
    expected = int(faces.max()) + 1
    if mesh.num_vertices != expected:
        raise MeshError(f"{mesh.num_vertices} vertices, the FLAME model has {expected}: not a registration", path)
    if face_check is not None:
        face_check.check(mesh.faces, path)
    return mesh.vertices


SCAN_RE = re.compile(r"^(?P<seq>.+)\.(?P<frame>\d+)\.(?P<ext>obj|ply|npy)$")


class ScanIndex:
    """Raw scans for the scan-to-mesh residual of the fits (`--scans DIR`): the released test scans
    `<subject>/<sequence>/<sequence>.<frame>.obj` (mm), TEMPEH's raw form `<subject>/<sequence>/meshes/...obj`,
    and the training scans as sampled points `<subject>/<sequence>/<sequence>.<frame>.npy` ((N, 3), mm).
    DIR may be one such tree or a folder holding `scans/` and/or `sampled_scan_points/`."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"--scans {root}: not a directory")
        self.roots = [d for d in (root / "scans", root / "sampled_scan_points") if d.is_dir()] or [root]

    def frames(self, subject: str, sequence: str) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for base in self.roots:
            for folder in (base / subject / sequence, base / subject / sequence / "meshes"):
                if not folder.is_dir():
                    continue
                for p in sorted(folder.iterdir()):
                    m = SCAN_RE.match(p.name)
                    if m and m["seq"] == sequence and p.is_file():
                        found.setdefault(int(m["frame"]), p)  # meshes before sampled points
        return found


def read_scan_points(path: Path) -> np.ndarray:
    """(N, 3) scan points in metres from an .obj/.ply scan or an .npy of sampled points (both in mm)."""
    if path.suffix == ".npy":
        try:
            points = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MeshError(f"cannot read sampled scan points ({exc})", path) from None
        if points.ndim != 2 or points.shape[1] != 3 or not len(points) or not np.isfinite(points).all():
            raise MeshError(f"expected (N, 3) finite points, got shape {points.shape}", path)
        return points.astype(np.float64) / 1000.0
    return read_mesh(path, units="mm", require_faces=False).to_units("m").vertices


def scan_residuals(fit_vertices: np.ndarray, faces: np.ndarray, frames: list[int], scans: dict[int, Path],
                   root_for_names: Path) -> dict[str, np.ndarray]:
    """Per fitted frame with a scan: scan-to-mesh distance (mm) of the scan's points to the fitted mesh."""
    from fbench.geometry import point_mesh_distance

    rows, medians, means, files = [], [], [], []
    for i, frame in enumerate(frames):
        path = scans.get(frame)
        if path is None:
            continue
        try:
            points = read_scan_points(path)
        except MeshError as exc:
            log.warning("scan residual skipped: %s", exc)
            continue
        d = point_mesh_distance(points, fit_vertices[i], faces).distances * 1000.0
        rows.append(frame)
        medians.append(float(np.median(d)))
        means.append(float(d.mean()))
        try:
            files.append(str(path.relative_to(root_for_names)))
        except ValueError:
            files.append(str(path))
    return {"scan_frames": np.asarray(rows, dtype=np.int64), "scan_residual_median_mm": np.asarray(medians),
            "scan_residual_mean_mm": np.asarray(means), "scan_files": [str(f) for f in files]}


def _params_dict(params: FlameParams, n: int) -> dict[str, np.ndarray]:
    d = {k: v.detach().double().numpy() for k, v in params.as_dict().items()}
    d["eyelids"] = np.zeros((n, 2))
    return d


def fit_famos(root: Path, out: Path, flame: FLAME, config: FamosConfig, subjects: list[str] | None = None,
              overwrite: bool = False, progress: bool = True, scans: Path | None = None) -> FitStore:
    """Fit every selected (subject, sequence) of a FaMoS registration tree; returns the store (see module doc).
    `root` may be the folder holding `registrations/`; with `scans`, each fitted frame that has a scan also
    gets its scan-to-mesh residual (attrs scan_* of the sequence in fits.h5)."""
    root = registrations_root(Path(root))
    scan_index = ScanIndex(scans) if scans is not None else None
    source = getattr(flame, "flame_source", None)
    store = FitStore(out, "famos", config_to_dict(config), source.describe() if source else str(flame.source),
                     bool(source.synthetic) if source else False)
    found = find_subjects(root)
    if not found:
        raise DatasetError(f"{root}: no FaMoS registrations found (expected <subject>/<sequence>/<sequence>.<frame>.ply)")
    chosen = select_existing(subjects, found, "subject", root)
    faces = flame.faces.cpu().numpy()
    face_check = FaceCheck(faces)
    want_all = [s.lower() for s in config.sequences] == ["all"]

    # Plan: which sequences need fitting, and how many frames (for the progress bar).
    plan: dict[str, dict[str, list[FrameRef]]] = {}
    first_frames: dict[str, dict[str, FrameRef]] = {}
    total = 0
    existing: set[str] = set()
    for subject in chosen:
        available = find_sequences(root, subject)
        existing.update(available)
        selected = available if want_all else [s for s in config.sequences if s in available]
        missing = [] if want_all else [s for s in config.sequences if s not in available]
        if missing:
            log.warning("%s: no registrations for sequence(s) %s", subject, ", ".join(missing))
        frames = {seq: sequence_frames(root / subject / seq) for seq in available}
        first_frames[subject] = {seq: refs[0] for seq, refs in frames.items() if refs}
        todo = {seq: strided(frames[seq], config.stride) for seq in selected
                if overwrite or not store.done(subject, seq)}
        if todo:
            plan[subject] = todo
            total += sum(len(v) for v in todo.values())
    if not want_all:
        select_existing(config.sequences, sorted(existing), "sequence", root)  # none of them anywhere: an error
    bar = tqdm(total=total, unit="frame", desc="famos", disable=not progress)
    for subject, todo in plan.items():
        try:
            _fit_subject(root, store, flame, config, subject, todo, first_frames[subject], faces, bar, face_check,
                         scan_index)
        except (MeshError, ValueError, RuntimeError) as exc:
            # A subject-wide failure (no readable neutral frame, diverged identity fit): log every frame.
            for seq, refs in todo.items():
                for ref in refs:
                    store.record_failure(subject, seq, ref.frame, str(ref.path.relative_to(root)), f"subject: {exc}")
            bar.update(sum(len(v) for v in todo.values()))
        store.consolidate()
    bar.close()
    if face_check.differing:
        log.warning("%d registration(s) have triangles that differ from the loaded FLAME's (e.g. %s); fitted on "
                    "their vertices", face_check.differing, face_check.first)
    return store


def _identity(root: Path, store: FitStore, flame: FLAME, config: FamosConfig, subject: str,
              todo: dict[str, list[FrameRef]], firsts: dict[str, FrameRef], faces: np.ndarray,
              face_check: FaceCheck | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The subject's shape and the fitted frame variables of its neutral frames (by sequence)."""
    cfg = config.registration
    layout = Layout.frame(cfg.n_exp)
    cached = store.load_identity(subject)
    if cached is not None:
        arrays, attrs = cached
        seqs = [str(s) for s in attrs.get("sequences", [])]
        return torch.as_tensor(arrays["shape"]), {s: torch.as_tensor(arrays["frames"][i:i + 1])
                                                  for i, s in enumerate(seqs)}
    pool = sorted(firsts) if config.neutral_from == "all" else sorted(s for s in todo if s in firsts)
    if len(pool) > cfg.identity_max_frames:
        pick = np.linspace(0, len(pool) - 1, cfg.identity_max_frames).round().astype(int)
        pool = [pool[i] for i in sorted(set(pick))]
    targets, used = [], []
    for seq in pool:
        ref = firsts[seq]
        try:
            targets.append(read_registration(ref.path, faces, face_check))
            used.append(seq)
        except MeshError as exc:
            log.warning("%s: neutral frame unusable (%s)", subject, exc)
    if not targets:
        raise ValueError("no readable neutral frame (first frame of a sequence) to fit the identity")
    fit = fit_identity(flame, torch.as_tensor(np.stack(targets)), cfg)
    if not torch.isfinite(fit.frames.loss).all():
        raise RuntimeError("identity fit diverged (non-finite loss)")
    frames_x = layout.pack(fit.frames.params)
    errors = vertex_errors_mm(fit.frames.vertices, torch.as_tensor(np.stack(targets)))
    store.save_identity(subject, {"shape": fit.shape.numpy(), "frames": frames_x.numpy()},
                        {"sequences": used, "neutral_frames": [str(firsts[s].path.relative_to(root)) for s in used],
                         "mean_error_mm": float(errors.mean())})
    log.info("%s: identity from %d neutral frames, mean vertex error %.4f mm", subject, len(used),
             float(errors.mean()))
    return fit.shape, {s: frames_x[i:i + 1] for i, s in enumerate(used)}


def _fit_subject(root: Path, store: FitStore, flame: FLAME, config: FamosConfig, subject: str,
                 todo: dict[str, list[FrameRef]], firsts: dict[str, FrameRef], faces: np.ndarray, bar: tqdm,
                 face_check: FaceCheck | None = None, scan_index: ScanIndex | None = None) -> None:
    cfg = config.registration
    layout = Layout.frame(cfg.n_exp)
    shape, neutral = _identity(root, store, flame, config, subject, todo, firsts, faces, face_check)
    model = FittingFlame(flame, shape, n_exp=cfg.n_exp)
    precond = frame_preconditioner(model, layout, cfg.priors)
    zero = FlameParams.zeros(1, n_shape=0, n_exp=cfg.n_exp, dtype=torch.float64)
    n_id = len(neutral)
    for seq, refs in todo.items():
        targets, ok_refs = [], []
        for ref in refs:
            rel = str(ref.path.relative_to(root))
            try:
                targets.append(read_registration(ref.path, faces, face_check))
                ok_refs.append(ref)
            except MeshError as exc:
                store.record_failure(subject, seq, ref.frame, rel, exc.reason)
                bar.update(1)
        if targets:
            init = layout.unpack(neutral[seq], zero) if seq in neutral else zero
            target = torch.as_tensor(np.stack(targets))
            fit = fit_frames(model, target, init, cfg, masks=flame.masks, precond=precond, progress=bar.update)
            errors = vertex_errors_mm(fit.vertices, target).numpy()
            good = np.isfinite(fit.loss.numpy()) & np.isfinite(errors).all(axis=1)
            for i in np.flatnonzero(~good):
                store.record_failure(subject, seq, ok_refs[i].frame, str(ok_refs[i].path.relative_to(root)),
                                     "optimisation diverged (non-finite loss)")
            params = _params_dict(fit.params, len(ok_refs))
            params["shape"] = np.repeat(shape.numpy()[None], len(ok_refs), axis=0)
            keep = np.flatnonzero(good)
            sel = lambda a: np.asarray(a)[keep]  # noqa: E731
            scan_attrs = {}
            if scan_index is not None:
                scan_attrs = scan_residuals(fit.vertices.detach().numpy()[keep], faces,
                                            [ok_refs[i].frame for i in keep], scan_index.frames(subject, seq),
                                            scan_index.roots[0].parent)
            result = SequenceFit(
                subject=subject, sequence=seq, frame=sel([r.frame for r in ok_refs]),
                source=[str(ok_refs[i].path.relative_to(root)) for i in keep],
                params={k: v[keep] for k, v in params.items()}, scale=np.ones(len(keep)),
                transform=np.repeat(np.eye(4)[None], len(keep), axis=0),
                residual_mean_mm=errors[keep].mean(axis=1), residual_median_mm=np.median(errors[keep], axis=1),
                residual_max_mm=errors[keep].max(axis=1), loss=sel(fit.loss.numpy()),
                converged=sel(fit.converged.numpy()),
                attrs={"identity": f"shape fitted to {n_id} neutral frame(s) (first frame of each sequence)",
                       "stride": config.stride, "residual": "per-vertex distance to the registration",
                       **scan_attrs})
        else:
            result = SequenceFit.empty(subject, seq, flame.n_shape, cfg.n_exp, attrs={"stride": config.stride})
        store.save(result)


def scan_summary(store: FitStore) -> str:
    """One line: the scan-to-mesh residuals of the fits that had a scan."""
    from fbench.fitting.store import read_fits

    fits, _, _ = read_fits(store.out)
    medians = [np.asarray(f.attrs.get("scan_residual_median_mm", []), dtype=np.float64) for f in fits.values()]
    values = np.concatenate(medians) if medians else np.zeros(0)
    if not len(values):
        return "scan-to-mesh residual: no fitted frame has a scan under --scans"
    return (f"scan-to-mesh residual on {len(values)} scanned frame(s): median {np.median(values):.3f} mm, "
            f"worst frame median {values.max():.3f} mm (fits.h5 attrs scan_*)")


HELP = """Fit FLAME to FaMoS registrations (SMIRK's expression templates).

Per subject, a shape is fitted to the neutral first frames of its sequences; then per
frame global pose, translation, neck, jaw, eyes and 100 expression components, batched
and warm-started along each sequence. Writes OUT/fits.h5 (parameters, residuals in
mm, source files), OUT/summary.csv and OUT/failures.jsonl; reruns resume.

\b
Examples:
  fbench fit-flame famos --stride 10
  fbench fit-flame famos --root /data/FaMoS --out fits/famos --sequences all --subjects FaMoS_subject_001
  fbench fit-flame famos --root /data/FaMoS --out fits/famos --export-templates assets/expression_templates_famos
"""


def command() -> click.Command:
    """`fbench fit-flame famos` (built on first use by the registry entry in pipelines/__init__.py)."""
    scans = click.option(
        "--scans", "scans", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
        help="Raw scans (mm): scans/<subject>/<sequence>/<sequence>.<frame>.obj, or sampled_scan_points/... .npy, or "
             "a folder holding them; reports each fitted frame's scan-to-mesh residual.")
    return fit_command(FitSpec(
        name="famos", help=HELP, config=FamosConfig, fit=fit_famos, options=(scans,),
        report=lambda store, scans: scan_summary(store) if scans is not None else None,
        root_help="FaMoS registrations root: <subject>/<sequence>/<sequence>.<frame:06d>.ply (metres), or the "
                  "folder holding registrations/.",
        selection="sequences",
        selection_help="Comma-separated sequences, or 'all' (default: SMIRK's twelve: " + ", ".join(SMIRK_SEQUENCES)
                       + ")."))
