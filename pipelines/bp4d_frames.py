"""BP4D-Spontaneous 2D frames joined to their FLAME fits: `fbench prep bp4d --fits FITS.h5`.

FIELDS' expression supervision (L_3D-GT) needs images whose FLAME expression is known: the 2D video
frames of BP4D, each carrying the fit that `fbench fit-flame bp4d` made of the same frame's 3D scan.

Layout read (data_cards/bp4d.yaml; the same root as `fbench fit-flame bp4d`)::

    <root>/<subject>/<task>/<frame>.jpg            the 2D video frame, numbered like the task's 3D scans
    <root>/2DFeatures/<subject>_<task>.mat         optional: the task's 2D landmark track (49 points)

Only frames with a fit become items: the fits.h5 row of (subject, task, frame) with the frame
number of the JPEG's name (the 2D and 3D files of a frame share its number: assumed, see the data
card). Frames without a fit (fit with --stride, scans that failed to
fit, tasks not fitted) are counted and named in the summary and the manifest's `listing`, not
rejected. A frame that cannot be read is a reject, as in every pipeline.

2D feature tracks: MATLAB struct array ``fit`` (1 x N) with ``frame`` (1-based: JPEG frame number
+ 1, as BP4D+'s are documented by public code), ``pts_2d`` (49, 2) pixels (the "ibug49" scheme:
iBUG-68 without the jaw contour and the inner mouth corners) and ``headPose``; they become the
frames' annotation landmarks. A track that cannot be read costs its task the annotations only
(warned once), like a frame the tracker lost (an empty ``pts_2d``).

Samples (`<key>.json`, key ``bp4d_<subject>_<task>_<frame:04d>``) carry in ``labels``:
``subject``, ``task``, ``frame`` (int), ``fit_key`` = "<subject>/<task>/<frame>" (fits.h5 group
``/<subject>/<task>``, the row whose ``frame`` equals it), ``flame`` = {expression (E), jaw (3),
eyelids (2), shape (S)}: that row's values as JSON numbers (float64, exact), and ``fit`` = {source
(the scan fitted), residual_median_mm, converged, fits_digest}. fbench's BP4D fits do not fit
eyelids (FLAME2020 scans carry no SMIRK eyelid blendshapes): their ``eyelids`` are zeros.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from fbench.cli.prep import FileOption, file_filter
from fbench.landmarks.indices import IBUG49_IN_68
from fbench.shards import SourceItem, SourceOptions
from pipelines.bp4d_layout import TASKS, find_subjects
from pipelines.common import Choice, PipelineSource, bad_item, filter_values

log = logging.getLogger("fbench.pipelines.bp4d")

FRAME_RE = re.compile(r"^(?P<frame>\d+)\.(jpg|jpeg)$", re.IGNORECASE)
FEATURES = "2DFeatures/{subject}_{task}.mat"
FEATURES_POINTS = len(IBUG49_IN_68)
FEATURES_FRAME_OFFSET = 1  # a track's `frame` = the JPEG's frame number + 1
FITS = "fits"  # options.filters key of --fits: (absolute path, digest)
TARGETS = ("expression", "jaw", "eyelids", "shape")
TASK_CHOICE = Choice("tasks", TASKS, "Tasks to prep (default: all).")
DEFAULT_FITS = Path("fits/bp4d")  # `fbench fit-flame bp4d`'s default --out


class FitIndex:
    """The fitted rows of a fits.h5 by (subject, task, frame)."""

    def __init__(self, path: Path, digest: str) -> None:
        from fbench.fitting.store import read_fits

        try:
            self.sequences, self.failures, attrs = read_fits(path)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the fits ({exc})") from None
        if attrs.get("dataset") not in (None, "bp4d"):
            raise ValueError(f"{path}: fits of dataset {attrs.get('dataset')!r}, not bp4d")
        self.path, self.digest = path, digest
        self.rows = {key: {int(f): i for i, f in enumerate(fit.frame)} for key, fit in self.sequences.items()}

    def row(self, subject: str, task: str, frame: int) -> int | None:
        return self.rows.get((subject, task), {}).get(frame)

    def labels(self, subject: str, task: str, frame: int, row: int) -> dict[str, Any]:
        fit = self.sequences[(subject, task)]
        return {"subject": subject, "task": task, "frame": frame, "fit_key": f"{subject}/{task}/{frame}",
                "flame": {k: [float(v) for v in fit.params[k][row]] for k in TARGETS},
                "fit": {"source": fit.source[row], "residual_median_mm": float(fit.residual_median_mm[row]),
                        "converged": bool(fit.converged[row]), "fits_digest": self.digest}}

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


def read_features(path: Path) -> dict[int, np.ndarray]:
    """{track frame (1-based): (49, 2) points} of a 2D feature track; frames the tracker lost are left out.
    ValueError naming the file when it is not such a track."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy's parser fails in many ways on v7.3 (HDF5) or damaged files (IndexError, ...)
        raise ValueError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    fit = mat.get("fit")
    if fit is None or fit.dtype.names is None or not {"frame", "pts_2d"} <= set(fit.dtype.names):
        raise ValueError(f"{path}: no struct array 'fit' with fields frame and pts_2d")
    out = {}
    for cell in fit.ravel():
        try:
            frame, points = np.ravel(np.asarray(cell["frame"])), np.asarray(cell["pts_2d"], dtype=np.float64)
        except (TypeError, ValueError):  # a cell holding something else than numbers: no points for it
            continue
        if points.shape == (2, FEATURES_POINTS):
            points = points.T
        if frame.size == 1 and points.shape == (FEATURES_POINTS, 2) and np.isfinite(points).all():
            out[int(frame[0])] = points.astype(np.float32)
    return out


class Bp4dFramesSource(PipelineSource):
    """The 2D frames of a BP4D root that have a fit in --fits (see module doc)."""

    name = "bp4d"
    splits = ("train",)  # BP4D has no official split; FIELDS supervises with every fitted frame

    def __init__(self) -> None:
        self._listing: dict[str, Any] = {}

    def items(self, root: Path, options: SourceOptions) -> list[SourceItem]:
        root = Path(root)
        given = file_filter(options, FITS)
        if given is None:
            raise ValueError("no fits: pass --fits FITS.h5 (written by `fbench fit-flame bp4d`)")
        fits = FitIndex(*given)
        tasks = filter_values(options, TASK_CHOICE) or frozenset(TASKS)
        found: list[tuple[str, str, int, str]] = []
        for subject in find_subjects(root):
            for task in TASKS:
                folder = root / subject / task
                if task not in tasks or not folder.is_dir():
                    continue
                for p in folder.iterdir():
                    m = FRAME_RE.match(p.name)
                    if m and p.is_file():
                        found.append((subject, task, int(m["frame"]), f"{subject}/{task}/{p.name}"))
        found.sort(key=lambda f: (f[:3], f[3]))
        # Two files of one frame (0373.jpg and 373.jpeg): the first is kept, the other is a reject naming both.
        duplicates, first = [], {}
        for s, t, f, rel in found:
            if first.setdefault((s, t, f), rel) != rel and fits.row(s, t, f) is not None:
                duplicates.append(bad_item(f"duplicate-{s}_{t}_{f}-{len(duplicates)}", "train", rel,
                                           f"{rel}: a second file of frame {f} of {s}/{t} (kept {first[(s, t, f)]})"))
        found = [(s, t, f, rel) for s, t, f, rel in found if first[(s, t, f)] == rel]
        kept = [(s, t, f, rel, row) for s, t, f, rel in found if (row := fits.row(s, t, f)) is not None]
        if options.limit is not None:
            kept = kept[: options.limit]
        missing = [rel for s, t, f, rel in found if fits.row(s, t, f) is None]
        tracks: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        unreadable: list[str] = []
        items = []
        for subject, task, frame, rel, row in kept:
            if (subject, task) not in tracks:
                tracks[(subject, task)] = self._track(root, subject, task, unreadable)
            points = tracks[(subject, task)].get(frame + FEATURES_FRAME_OFFSET)
            items.append(SourceItem(id=f"{subject}_{task}_{frame:04d}", split="train", path=rel, subject=subject,
                                    labels=fits.labels(subject, task, frame, row), annotations=points,
                                    annotation_format="ibug49" if points is not None else None))
        with_frame = {(s, t, f) for s, t, f, _ in found}
        fits_without_frame = sum((s, t, f) not in with_frame for (s, t), rows in fits.rows.items() for f in rows)
        self._listing = {
            "summary": f"{len(found)} 2D frames found, {len(found) - len(missing)} with a fit in {given[0]} "
                       f"({len(missing)} without one, not prepped" + (f", e.g. {missing[0]}" if missing else "")
                       + f"); {fits_without_frame} of the {len(fits)} fitted frames have no 2D frame; "
                       f"2D feature tracks read for {len(tracks) - len(unreadable)} of {len(tracks)} tasks",
            "fits": str(given[0]), "fits_digest": given[1], "frames_found": len(found),
            "frames_without_fit": len(missing), "frames_without_fit_examples": missing[:10],
            "fitted_frames_without_2d_frame": fits_without_frame, "unreadable_feature_tracks": unreadable}
        if not found:
            raise ValueError(f"{root}: no 2D frames <subject>/<task>/<frame>.jpg (the BP4D 2D+3D tree)")
        if not kept:
            raise ValueError(f"{root}: none of the {len(found)} 2D frames has a fit in {given[0]} (e.g. "
                             f"{missing[0]}); was it fitted from this root?")
        return items + duplicates

    @staticmethod
    def _track(root: Path, subject: str, task: str, unreadable: list[str]) -> dict[int, np.ndarray]:
        rel = FEATURES.format(subject=subject, task=task)
        if not (root / rel).is_file():
            return {}
        try:
            return read_features(root / rel)
        except ValueError as exc:
            if not unreadable:
                log.warning("%s; its frames get no annotation landmarks (said once)", exc)
            unreadable.append(rel)
            return {}

    def listing_report(self, root: Path, items: list[SourceItem]) -> dict[str, Any]:
        """What the listing found (frames without a fit, the fits file) for the manifest and the summary."""
        return dict(self._listing)


HELP = """Prep BP4D-Spontaneous 2D frames joined to their FLAME fits (FIELDS' L_3D-GT supervision).

Reads <root>/<subject>/<task>/<frame>.jpg (the 2D+3D tree `fbench fit-flame bp4d` fitted) and
keeps the frames with a row in --fits; each sample's labels carry that row's FLAME expression,
jaw, eyelids and shape under labels.flame and the join key labels.fit_key =
"<subject>/<task>/<frame>" (fits.h5 group /<subject>/<task>, row with that frame). Frames
without a fit are counted, not prepped; unreadable frames are rejects. 2D feature tracks
(2DFeatures/<subject>_<task>.mat, 49 points) become the annotation landmarks."""

EXAMPLES = ("fbench fit-flame bp4d --root /data/BP4D/2D+3D --out fits/bp4d && "
            "fbench prep bp4d --root /data/BP4D/2D+3D --fits fits/bp4d/fits.h5 --out shards/",
            "fbench prep bp4d --root synth/BP4D --fits fits/bp4d --out shards/ --landmarks annotations  "
            "# synthetic data")

FITS_OPTION = FileOption(FITS, "The fits.h5 of `fbench fit-flame bp4d` on this root (or its folder).",
                         default=DEFAULT_FITS / "fits.h5", in_folder="fits.h5",
                         missing="Fit the scans first: `fbench fit-flame bp4d --root ROOT --out fits/bp4d`.")


def command():
    """`fbench prep bp4d` (built on first use by the registry entry in pipelines/__init__.py)."""
    from fbench.cli.prep import prep_command

    return prep_command(Bp4dFramesSource(), HELP, choices=(TASK_CHOICE,), examples=EXAMPLES, files=(FITS_OPTION,))
