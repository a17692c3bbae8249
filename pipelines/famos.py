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
from fbench.fitting.config import config_to_dict
from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout
from fbench.fitting.registration import (
    RegistrationFitConfig,
    fit_frames,
    fit_identity,
    frame_preconditioner,
    vertex_errors_mm,
)
from fbench.fitting.runner import (
    DatasetError,
    PipelinePlugin,
    finish,
    fit_options,
    guarded,
    load_flame_for_fitting,
    load_pipeline_config,
    select_existing,
    split_list,
    strided,
)
from fbench.fitting.store import FitStore, SequenceFit, UnsafeNameError, check_name
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
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    subjects = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_name(d.name, "subject")
        except UnsafeNameError as exc:
            log.warning("skipping %s: %s", d, exc)
            continue
        if find_sequences(root, d.name):
            subjects.append(d.name)
    return subjects


def find_sequences(root: Path, subject: str) -> list[str]:
    out = []
    for d in sorted(p for p in (root / subject).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_name(d.name, "sequence")
        except UnsafeNameError as exc:
            log.warning("skipping %s: %s", d, exc)
            continue
        if any(REGISTRATION_RE.match(p.name) for p in d.iterdir()):
            out.append(d.name)
    return out


def read_registration(path: Path, faces: np.ndarray) -> np.ndarray:
    """(V, 3) vertices in metres; MeshError naming the file if unreadable or not in FLAME topology."""
    mesh = read_mesh(path, units="m")
    expected = int(faces.max()) + 1
    if mesh.num_vertices != expected:
        raise MeshError(f"{mesh.num_vertices} vertices, the FLAME model has {expected}: not a registration", path)
    if mesh.faces.shape != faces.shape or not np.array_equal(mesh.faces, faces):
        raise MeshError("faces differ from the FLAME model's: not a registration in this FLAME topology", path)
    return mesh.vertices


def _params_dict(params: FlameParams, n: int) -> dict[str, np.ndarray]:
    d = {k: v.detach().double().numpy() for k, v in params.as_dict().items()}
    d["eyelids"] = np.zeros((n, 2))
    return d


def fit_famos(root: Path, out: Path, flame: FLAME, config: FamosConfig, subjects: list[str] | None = None,
              overwrite: bool = False, progress: bool = True) -> FitStore:
    """Fit every selected (subject, sequence) of a FaMoS registration tree; returns the store (see module doc)."""
    root = Path(root)
    cfg = config.registration
    source = getattr(flame, "flame_source", None)
    store = FitStore(out, "famos", config_to_dict(config), source.describe() if source else str(flame.source),
                     bool(source.synthetic) if source else False)
    found = find_subjects(root)
    if not found:
        raise DatasetError(f"{root}: no FaMoS registrations found (expected <subject>/<sequence>/<sequence>.<frame>.ply)")
    chosen = select_existing(subjects, found, "subject", root)
    faces = flame.faces.cpu().numpy()
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
            _fit_subject(root, store, flame, config, subject, todo, first_frames[subject], faces, bar)
        except (MeshError, ValueError, RuntimeError) as exc:
            # A subject-wide failure (no readable neutral frame, diverged identity fit): log every frame.
            for seq, refs in todo.items():
                for ref in refs:
                    store.record_failure(subject, seq, ref.frame, str(ref.path.relative_to(root)), f"subject: {exc}")
            bar.update(sum(len(v) for v in todo.values()))
        store.consolidate()
    bar.close()
    return store


def _identity(root: Path, store: FitStore, flame: FLAME, config: FamosConfig, subject: str,
              todo: dict[str, list[FrameRef]], firsts: dict[str, FrameRef], faces: np.ndarray
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
            targets.append(read_registration(ref.path, faces))
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
                 todo: dict[str, list[FrameRef]], firsts: dict[str, FrameRef], faces: np.ndarray, bar: tqdm) -> None:
    cfg = config.registration
    layout = Layout.frame(cfg.n_exp)
    shape, neutral = _identity(root, store, flame, config, subject, todo, firsts, faces)
    model = FittingFlame(flame, shape, n_exp=cfg.n_exp)
    precond = frame_preconditioner(model, layout, cfg.priors)
    zero = FlameParams.zeros(1, n_shape=0, n_exp=cfg.n_exp, dtype=torch.float64)
    n_id = len(neutral)
    for seq, refs in todo.items():
        targets, ok_refs = [], []
        for ref in refs:
            rel = str(ref.path.relative_to(root))
            try:
                targets.append(read_registration(ref.path, faces))
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
            result = SequenceFit(
                subject=subject, sequence=seq, frame=sel([r.frame for r in ok_refs]),
                source=[str(ok_refs[i].path.relative_to(root)) for i in keep],
                params={k: v[keep] for k, v in params.items()}, scale=np.ones(len(keep)),
                transform=np.repeat(np.eye(4)[None], len(keep), axis=0),
                residual_mean_mm=errors[keep].mean(axis=1), residual_median_mm=np.median(errors[keep], axis=1),
                residual_max_mm=errors[keep].max(axis=1), loss=sel(fit.loss.numpy()),
                converged=sel(fit.converged.numpy()),
                attrs={"identity": f"shape fitted to {n_id} neutral frame(s) (first frame of each sequence)",
                       "stride": config.stride, "residual": "per-vertex distance to the registration"})
        else:
            result = SequenceFit(subject=subject, sequence=seq, frame=np.zeros(0, np.int64), source=[],
                                 params={k: np.zeros((0, w)) for k, w in (("shape", 300), ("expression", cfg.n_exp),
                                         ("global_pose", 3), ("neck", 3), ("jaw", 3), ("eyes", 6), ("eyelids", 2),
                                         ("translation", 3))},
                                 scale=np.zeros(0), transform=np.zeros((0, 4, 4)), residual_mean_mm=np.zeros(0),
                                 residual_median_mm=np.zeros(0), residual_max_mm=np.zeros(0), loss=np.zeros(0),
                                 converged=np.zeros(0, bool), attrs={"stride": config.stride})
        store.save(result)


@click.command("famos", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="FaMoS registrations root: <subject>/<sequence>/<sequence>.<frame:06d>.ply (metres).")
@click.option("--sequences", default=None,
              help="Comma-separated sequences, or 'all' (default: SMIRK's twelve: " + ", ".join(SMIRK_SEQUENCES) + ").")
@fit_options
@guarded
def command(root: Path, sequences: str | None, out: Path, subjects: str | None, stride: int | None,
            export_dir: Path | None, config_path: Path | None, overrides: tuple[str, ...], flame: Path | None,
            overwrite: bool, no_progress: bool) -> None:
    """Fit FLAME to FaMoS registrations (SMIRK's expression templates).

    Per subject, a shape is fitted to the neutral first frames of its sequences; then per
    frame global pose, translation, neck, jaw, eyes and 100 expression components, batched
    and warm-started along each sequence. Writes OUT/fits.h5 (parameters, residuals in
    mm, source files), OUT/summary.csv and OUT/failures.jsonl; reruns resume.

    \b
    Examples:
      fbench fit-flame famos --root /data/FaMoS --stride 10 --out fits/famos
      fbench fit-flame famos --root /data/FaMoS --out fits/famos --sequences all --subjects FaMoS_subject_001
      fbench fit-flame famos --root /data/FaMoS --out fits/famos --export-templates assets/expression_templates_famos
    """
    config = load_pipeline_config(FamosConfig, config_path, overrides)
    if stride is not None:
        config.stride = stride
    if sequences:
        config.sequences = split_list(sequences) or list(SMIRK_SEQUENCES)
    model = load_flame_for_fitting(flame)
    store = fit_famos(root, out, model, config, subjects=split_list(subjects), overwrite=overwrite,
                      progress=not no_progress)
    finish(store, export_dir)


PIPELINE = PipelinePlugin(name="famos", summary="FLAME fits of FaMoS registrations (SMIRK expression templates)",
                          stage="fit", command=command)
