"""Fit results on disk: per-sequence parts (resumable), the consolidated ``fits.h5``, SMIRK templates.

Layout of an output directory::

    fits.h5                    every fitted frame (see below), rewritten atomically after each sequence
    summary.csv                frames fitted / failed and residuals per sequence
    failures.jsonl             one JSON line per frame that could not be fitted, with the reason
    .parts/<subject>/<sequence>.h5    one finished sequence (the unit of resumption)
    .parts/<subject>/_identity.h5     the subject's identity fit

``fits.h5``::

    attrs                       dataset, generator, flame_model, synthetic, config (YAML), units
    /<subject>/<sequence>/      attrs: identity (how the shape was obtained)
        frame (N,) int64        frame number in the sequence
        source (N,) str         file the frame was fitted to, relative to the dataset root
        shape (N, S), expression (N, E), global_pose, neck, jaw (N, 3), eyes (N, 6),
        eyelids (N, 2, zeros), translation (N, 3)     FLAME parameters (metres, radians)
        scale (N,)              data units per FLAME metre (1 for registrations, ~1000 for mm scans)
        transform (N, 4, 4)     FLAME space -> data coordinates, [scale R | t]
        residual_mean_mm, residual_median_mm, residual_max_mm (N,)
        loss (N,), converged (N,) bool
    /failures/{subject, sequence, frame, source, reason}   (M,) each

Subject and sequence names come from the dataset's directory names; they are checked
against ``SAFE_NAME`` before being used as HDF5 groups or output paths.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np
import yaml

from fbench.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from fbench.io import stale_temporaries as io_stale

FITS_FILE = "fits.h5"
SUMMARY_FILE = "summary.csv"
FAILURES_FILE = "failures.jsonl"
PARTS_DIR = ".parts"
FIT_LOCK = ".fit.lock"  # one fit-flame run per output folder (fbench.lock)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PARAM_FIELDS = ("shape", "expression", "global_pose", "neck", "jaw", "eyes", "eyelids", "translation")
ARRAY_FIELDS = PARAM_FIELDS + ("scale", "transform", "residual_mean_mm", "residual_median_mm", "residual_max_mm",
                               "loss", "converged", "frame")


class UnsafeNameError(ValueError):
    """A subject or sequence name from the dataset cannot be used as a path or group name."""


def check_name(name: str, what: str) -> str:
    if not SAFE_NAME.match(name) or name in (".", "..") or ".." in name:
        raise UnsafeNameError(f"{what} name {name!r} is not allowed (letters, digits, '_', '-', '.'; "
                              "no leading dot or '..')")
    return name


@dataclass
class SequenceFit:
    """Fitted frames of one (subject, sequence)."""

    subject: str
    sequence: str
    frame: np.ndarray  # (N,)
    source: list[str]
    params: dict[str, np.ndarray]  # PARAM_FIELDS -> (N, w)
    scale: np.ndarray  # (N,)
    transform: np.ndarray  # (N, 4, 4)
    residual_mean_mm: np.ndarray
    residual_median_mm: np.ndarray
    residual_max_mm: np.ndarray
    loss: np.ndarray
    converged: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def empty(cls, subject: str, sequence: str, n_shape: int, n_exp: int, attrs: dict[str, Any] | None = None
              ) -> "SequenceFit":
        """A sequence none of whose frames could be fitted (kept, so a rerun does not redo it)."""
        widths = {"shape": n_shape, "expression": n_exp, "global_pose": 3, "neck": 3, "jaw": 3, "eyes": 6,
                  "eyelids": 2, "translation": 3}
        return cls(subject=subject, sequence=sequence, frame=np.zeros(0, np.int64), source=[],
                   params={k: np.zeros((0, w)) for k, w in widths.items()}, scale=np.zeros(0),
                   transform=np.zeros((0, 4, 4)), residual_mean_mm=np.zeros(0), residual_median_mm=np.zeros(0),
                   residual_max_mm=np.zeros(0), loss=np.zeros(0), converged=np.zeros(0, bool), attrs=dict(attrs or {}))


def _atomic_h5(path: Path, fill) -> None:
    """Build the HDF5 file in memory, then write it atomically with plain file I/O: HDF5 itself
    writing into a full or read-only folder can crash the process instead of raising."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    atomic_write_bytes(path, buffer.getvalue())


def _write_sequence(group: h5py.Group, fit: SequenceFit) -> None:
    strings = h5py.string_dtype()
    group.create_dataset("frame", data=np.asarray(fit.frame, dtype=np.int64))
    group.create_dataset("source", data=np.array(fit.source, dtype=object), dtype=strings)
    for name in PARAM_FIELDS:
        group.create_dataset(name, data=np.asarray(fit.params[name], dtype=np.float64))
    group.create_dataset("scale", data=np.asarray(fit.scale, dtype=np.float64))
    group.create_dataset("transform", data=np.asarray(fit.transform, dtype=np.float64))
    for name in ("residual_mean_mm", "residual_median_mm", "residual_max_mm", "loss"):
        group.create_dataset(name, data=np.asarray(getattr(fit, name), dtype=np.float64))
    group.create_dataset("converged", data=np.asarray(fit.converged, dtype=bool))
    for key, value in fit.attrs.items():
        group.attrs[key] = value


def _read_sequence(group: h5py.Group, subject: str, sequence: str) -> SequenceFit:
    src = [s.decode() if isinstance(s, bytes) else str(s) for s in group["source"][()]]
    return SequenceFit(subject=subject, sequence=sequence, frame=group["frame"][()], source=src,
                       params={k: group[k][()] for k in PARAM_FIELDS}, scale=group["scale"][()],
                       transform=group["transform"][()], residual_mean_mm=group["residual_mean_mm"][()],
                       residual_median_mm=group["residual_median_mm"][()],
                       residual_max_mm=group["residual_max_mm"][()], loss=group["loss"][()],
                       converged=group["converged"][()], attrs=dict(group.attrs))


def read_fits(path: str | Path) -> tuple[dict[tuple[str, str], SequenceFit], list[dict[str, Any]], dict[str, Any]]:
    """(sequences by (subject, sequence), failures, file attrs) of a ``fits.h5`` (or its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / FITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no fits file")
    out: dict[tuple[str, str], SequenceFit] = {}
    failures: list[dict[str, Any]] = []
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        for subject in f:
            if subject == "failures":
                continue
            for sequence in f[subject]:
                out[(subject, sequence)] = _read_sequence(f[subject][sequence], subject, sequence)
        if "failures" in f:
            g = f["failures"]
            cols = {k: g[k][()] for k in g}
            n = len(cols.get("reason", []))
            for i in range(n):
                row = {}
                for k, v in cols.items():
                    value = v[i]
                    row[k] = value.decode() if isinstance(value, bytes) else (int(value) if k == "frame" else value)
                failures.append(row)
    return out, failures, attrs


def config_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FitStore:
    """An output directory being filled sequence by sequence (see the module docstring)."""

    def __init__(self, out: str | Path, dataset: str, config: dict[str, Any], flame_description: str,
                 synthetic: bool) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset
        self.config = config
        self.digest = config_digest({"dataset": dataset, "config": config, "flame": flame_description})
        self.flame_description = flame_description
        self.synthetic = synthetic
        self.failures: list[dict[str, Any]] = []
        self._load_failures()

    # --- parts
    def part_path(self, subject: str, sequence: str) -> Path:
        return self.out / PARTS_DIR / check_name(subject, "subject") / f"{check_name(sequence, 'sequence')}.h5"

    def identity_path(self, subject: str) -> Path:
        return self.out / PARTS_DIR / check_name(subject, "subject") / "_identity.h5"

    def _valid(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with h5py.File(path, "r") as f:
                return f.attrs.get("digest") == self.digest
        except OSError:
            return False  # unreadable (should not happen: parts are written atomically)

    def done(self, subject: str, sequence: str) -> bool:
        return self._valid(self.part_path(subject, sequence))

    def save(self, fit: SequenceFit) -> None:
        def fill(f: h5py.File) -> None:
            f.attrs["digest"] = self.digest
            f.attrs["subject"] = fit.subject
            f.attrs["sequence"] = fit.sequence
            _write_sequence(f.create_group("fit"), fit)
        _atomic_h5(self.part_path(fit.subject, fit.sequence), fill)

    def load(self, subject: str, sequence: str) -> SequenceFit:
        with h5py.File(self.part_path(subject, sequence), "r") as f:
            return _read_sequence(f["fit"], subject, sequence)

    def save_identity(self, subject: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        def fill(f: h5py.File) -> None:
            f.attrs["digest"] = self.digest
            f.attrs.update(attrs)
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
        _atomic_h5(self.identity_path(subject), fill)

    def load_identity(self, subject: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        path = self.identity_path(subject)
        if not self._valid(path):
            return None
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f}, dict(f.attrs)

    # --- failures
    def _load_failures(self) -> None:
        path = self.out / FAILURES_FILE
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if row.get("digest") == self.digest:
                self.failures.append(row)

    def record_failure(self, subject: str, sequence: str, frame: int, source: str, reason: str) -> None:
        row = {"subject": subject, "sequence": sequence, "frame": int(frame), "source": source,
               "reason": reason, "digest": self.digest, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        key = (subject, sequence, int(frame), source)
        if any((r["subject"], r["sequence"], r["frame"], r["source"]) == key for r in self.failures):
            return  # already logged by an earlier (resumed) run
        self.failures.append(row)
        with open(self.out / FAILURES_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    # --- consolidation
    def finished(self) -> list[tuple[str, str]]:
        root = self.out / PARTS_DIR
        pairs = []
        if not root.is_dir():
            return pairs
        for subject_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for part in sorted(subject_dir.glob("*.h5")):
                if part.name.startswith("_") or part.name.startswith("."):
                    continue
                if self._valid(part):
                    pairs.append((subject_dir.name, part.stem))
        return pairs

    def consolidate(self) -> Path:
        """Rewrite ``fits.h5`` (and summary.csv) from every finished part, atomically."""
        pairs = self.finished()

        def fill(f: h5py.File) -> None:
            f.attrs.update({"dataset": self.dataset, "generator": "fbench.fitting", "flame_model": self.flame_description,
                            "synthetic": bool(self.synthetic), "config": yaml.safe_dump(self.config, sort_keys=True),
                            "digest": self.digest,
                            "units": "FLAME parameters in metres/radians; residuals in mm (data units)"})
            for subject, sequence in pairs:
                fit = self.load(subject, sequence)
                _write_sequence(f.require_group(subject).create_group(sequence), fit)
            g = f.create_group("failures")
            strings = h5py.string_dtype()
            for key in ("subject", "sequence", "source", "reason"):
                g.create_dataset(key, data=np.array([r[key] for r in self.failures], dtype=object), dtype=strings)
            g.create_dataset("frame", data=np.array([r["frame"] for r in self.failures], dtype=np.int64))
        path = self.out / FITS_FILE
        _atomic_h5(path, fill)
        self._write_summary(pairs)
        return path

    def summary_rows(self, pairs: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        rows = []
        failed: dict[tuple[str, str], int] = {}
        for r in self.failures:
            failed[(r["subject"], r["sequence"])] = failed.get((r["subject"], r["sequence"]), 0) + 1
        for subject, sequence in (pairs if pairs is not None else self.finished()):
            fit = self.load(subject, sequence)
            med = fit.residual_median_mm
            rows.append({"subject": subject, "sequence": sequence, "frames": len(fit),
                         "failed": failed.pop((subject, sequence), 0),
                         "not_converged": int((~fit.converged.astype(bool)).sum()),
                         "median_residual_mm": float(np.median(med)) if len(med) else float("nan"),
                         "max_residual_mm": float(fit.residual_max_mm.max()) if len(med) else float("nan")})
        for (subject, sequence), count in sorted(failed.items()):
            rows.append({"subject": subject, "sequence": sequence, "frames": 0, "failed": count, "not_converged": 0,
                         "median_residual_mm": float("nan"), "max_residual_mm": float("nan")})
        return rows

    def _write_summary(self, pairs: list[tuple[str, str]]) -> None:
        rows = self.summary_rows(pairs)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["subject", "sequence", "frames", "failed", "not_converged",
                                                    "median_residual_mm", "max_residual_mm"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.out / SUMMARY_FILE, buffer.getvalue())


@contextlib.contextmanager
def claimed_output(out: str | Path) -> Iterator[None]:
    """Hold the output folder's lock for the block (one fit-flame run per --out; a second one gets
    fbench.lock.LockHeldError naming the holder) and remove the temporaries a killed run left."""
    from fbench.faults import remove_stale
    from fbench.lock import output_lock

    out = Path(out)
    with output_lock(out / FIT_LOCK, f"fit output {out}"):
        remove_stale(stale_temporaries(out), f"fit-flame {out}")
        yield


def stale_temporaries(out: str | Path) -> list[Path]:
    """The temporaries a killed fit run leaves in its output folder: the atomic writes' temporaries
    of fits.h5, summary.csv and the parts' files (only these names: --out may hold other files)."""
    out = Path(out)
    found = io_stale(out, FITS_FILE) + io_stale(out, SUMMARY_FILE)
    if (out / PARTS_DIR).is_dir():
        found += [p for part in (out / PARTS_DIR).iterdir() if part.is_dir() for p in io_stale(part)]
    return sorted(found)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of summary rows (one line per sequence plus a total)."""
    header = f"{'subject':<22} {'sequence':<26} {'frames':>6} {'failed':>6} {'median mm':>10} {'max mm':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['subject']:<22} {r['sequence']:<26} {r['frames']:>6} {r['failed']:>6} "
                     f"{r['median_residual_mm']:>10.4f} {r['max_residual_mm']:>9.4f}")
    total = sum(r["frames"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<22} {len(rows):<26} {total:>6} {failed:>6}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- SMIRK templates

TEMPLATE_KEYS = ("expression", "jaw", "pose")


def export_templates(fits: dict[tuple[str, str], SequenceFit], out_dir: str | Path) -> int:
    """Write SMIRK's expression-template layout ``DIR/<subject>/<sequence>/<frame:06d>.npy``.

    Each file is ``np.save`` of a dict: ``expression`` (E,) float32 (SMIRK's
    ``utils.load_templates`` reads ``params.item()['expression'].squeeze()`` and its
    trainer keeps the first ``num_expression`` = 50), ``jaw`` (3,) and ``pose`` (15,):
    FLAME's pose vector (global, neck, jaw, left eye, right eye), no eyelids.

    These are pickled object arrays (that is what SMIRK loads, with allow_pickle=True).
    They are fbench's own output; anything reading them back in fbench must use
    :func:`fbench.safe_pickle.safe_load_npy`, never ``np.load(allow_pickle=True)`` on files
    of unknown origin. SMIRK's loader reads *every* file of a sequence folder, so nothing
    else is written there (temporary files go to ``DIR/.tmp``); a manifest goes to
    ``DIR/templates_manifest.json`` (a file, which SMIRK's subject loop skips).
    Returns the number of files written.
    """
    out = Path(out_dir)
    tmp_dir = out / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    manifest: dict[str, Any] = {"format": "SMIRK expression templates (fbench.fitting.store.export_templates)",
                                "keys": list(TEMPLATE_KEYS), "sequences": {}}
    for (subject, sequence), fit in sorted(fits.items()):
        target = out / check_name(subject, "subject") / check_name(sequence, "sequence")
        target.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(fit.frame):
            pose = np.concatenate([fit.params["global_pose"][i], fit.params["neck"][i], fit.params["jaw"][i],
                                   fit.params["eyes"][i]]).astype(np.float32)
            record = {"expression": fit.params["expression"][i].astype(np.float32),
                      "jaw": fit.params["jaw"][i].astype(np.float32), "pose": pose}
            fd, tmp = tempfile.mkstemp(prefix=f"{subject}.{sequence}.", suffix=".npy", dir=tmp_dir)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, record, allow_pickle=True)
            os.replace(tmp, target / f"{int(frame):06d}.npy")
            count += 1
        manifest["sequences"][f"{subject}/{sequence}"] = len(fit)
    atomic_write_json(out / "templates_manifest.json", manifest)
    try:
        tmp_dir.rmdir()
    except OSError:
        pass
    return count
