"""`fbench prep bp4d --fits fits.h5` on the synthetic miniature, end to end: synth (one subject, a
truncated 2D frame among the corruptions) -> `fbench fit-flame bp4d` -> prep. The samples carry their
fits.h5 row exactly under the join key, their targets match the synthetic truth of their own frame
(within the fit's accuracy, far better than a neighbouring frame's), the 2D feature tracks become
their annotation landmarks, frames without a fit are counted, the broken frame is a reject."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_synthetic

from fbench.fitting.store import read_fits
from fbench.flame import FLAME, FlameParams
from fbench.landmarks.indices import IBUG49_IN_68
from fbench.shards import SourceOptions
from fbench.synth import SynthResult
from fbench.synth.ground_truth import read_ground_truth
from pipelines import bp4d_frames
from pipelines_support import (BP4D_FIT_ACCURATE, check_counts, load_prepped, prep_cli, shared_bp4d_fits,
                               source_landmarks)

MINIATURE = dict(n=1, seed=0, corrupt=5)  # the fifth corruption truncates a 2D frame whose scan is intact


@pytest.fixture(scope="module")
def data(tmp_path_factory, flame_dir: Path) -> SynthResult:
    return shared_synthetic(tmp_path_factory, "bp4d", FLAME(flame_dir), **MINIATURE)


def _prep(tmp_path_factory, data: SynthResult, fits: Path) -> dict:
    out = tmp_path_factory.mktemp("bp4d_shards")
    output, _ = prep_cli("bp4d", data.root, out, "--fits", str(fits), "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(out, "bp4d")
    return {"fits": fits, "out": out, "output": output, "manifest": manifest, "samples": samples, "rejects": rejects}


@pytest.fixture(scope="module")
def prepped(data, tmp_path_factory, flame_dir: Path) -> dict:
    return _prep(tmp_path_factory, data, shared_bp4d_fits(tmp_path_factory, data.root, flame_dir) / "fits.h5")


def test_samples_carry_their_fits_row_under_the_join_key(prepped, data) -> None:
    manifest, samples, rejects = prepped["manifest"], prepped["samples"], prepped["rejects"]
    check_counts(manifest, samples, rejects)
    fits, failures, _ = read_fits(prepped["fits"])
    fitted = {(s, t, int(f)) for (s, t), fit in fits.items() for f in fit.frame}
    seen = set()
    for sample in samples:
        labels = sample.meta["labels"]
        subject, task, frame = labels["fit_key"].split("/")
        frame = int(frame)
        assert (subject, task, frame) == (labels["subject"], labels["task"], labels["frame"])
        assert sample.key == f"bp4d_{subject}_{task}_{frame:04d}"
        assert sample.meta["source_path"] == f"{subject}/{task}/{frame:04d}.jpg"
        fit = fits[(subject, task)]
        row = int(np.flatnonzero(fit.frame == frame)[0])
        for name in bp4d_frames.TARGETS:  # the fits.h5 values themselves (JSON keeps float64 exactly)
            assert np.array_equal(np.array(labels["flame"][name]), fit.params[name][row]), (sample.key, name)
        assert labels["fit"]["source"] == fit.source[row]
        seen.add((subject, task, frame))
    # Every fitted frame is a sample but the one whose 2D frame was truncated: that one is the reject.
    broken = [c for c in data.corrupted if c.endswith(".jpg")]
    assert len(broken) == 1 and [r["file"] for r in rejects] == broken
    assert "cannot decode" in rejects[0]["reason"]
    s, t, f = broken[0][:-4].split("/")
    assert seen | {(s, t, int(f))} == fitted and (s, t, int(f)) not in seen
    # Frames without a fit (their scans were broken) are counted, not prepped.
    listing = manifest["listing"]
    assert {f["source"] for f in failures} == {c for c in data.corrupted if c.endswith((".obj", ".wrl"))}
    assert listing["frames_without_fit"] == len(failures) == 3
    assert listing["frames_found"] == data.counts["frames_2d"] == len(fitted) + len(failures)
    assert "3 without one, not prepped" in prepped["output"]


def _expression_errors(flame: FLAME, gt, labels: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the expression-driven face error (mm: the sample's fitted shape under its target
    expression and jaw vs under the true ones, zero pose, mean over the face region), the same error
    against the truth of the task's other frames (a wrong join), and the jaw-opening error (rad)."""
    face = flame.masks["face"].numpy()

    def face_mm(shape, expression, jaw):
        p = FlameParams.from_dict({"shape": np.atleast_2d(shape), "expression": np.atleast_2d(expression),
                                   "jaw": np.atleast_2d(jaw)}, n_shape=300, n_exp=100, dtype=torch.float64)
        with torch.no_grad():
            return flame(p).vertices[0].numpy()[face] * 1000.0

    own, other, jaw = [], [], []
    for lab in labels:
        mine = face_mm(lab["flame"]["shape"], lab["flame"]["expression"], lab["flame"]["jaw"])
        prefix = f"{lab['subject']}_{lab['task']}_"
        for key in (k for k in gt.keys if k.startswith(prefix)):
            g = gt.index(key)
            err = np.linalg.norm(mine - face_mm(lab["flame"]["shape"], gt.flame["expression"][g], gt.flame["jaw"][g]),
                                 axis=1).mean()
            if int(key[len(prefix):]) == lab["frame"]:
                own.append(err)
                jaw.append(abs(lab["flame"]["jaw"][0] - gt.flame["jaw"][g][0]))
            else:
                other.append(err)
    return np.array(own), np.array(other), np.array(jaw)


def test_targets_match_the_synthetic_truth_of_their_frame(prepped, data, flame_dir: Path) -> None:
    """With the few-iteration fit: each sample's targets are close to its own frame's true expression and
    jaw, and much closer than to the other frame of its task (the neutral start vs the expression).
    Measured: own 0.62-1.05 mm (median 0.67), other frame median 1.41 mm, jaw within 0.012 rad."""
    labels = [s.meta["labels"] for s in prepped["samples"]]
    own, other, jaw = _expression_errors(FLAME(flame_dir, dtype=torch.float64), read_ground_truth(data.root), labels)
    assert len(own) == len(labels) and len(other) == len(labels)
    assert own.max() < 1.3 and np.median(own) < 0.6 * np.median(other), (own, other)
    assert jaw.max() < 0.02, jaw


@pytest.mark.slow
def test_targets_match_the_synthetic_truth_accurate_fit(data, tmp_path_factory, flame_dir: Path) -> None:
    """The same proof with more identity frames and rounds in the fit (about 20 s more): the targets are
    within the fit's accuracy of the truth. Measured: own 0.26-0.79 mm (median 0.31), other 1.07 mm."""
    fits = shared_bp4d_fits(tmp_path_factory, data.root, flame_dir, BP4D_FIT_ACCURATE) / "fits.h5"
    result = _prep(tmp_path_factory, data, fits)
    labels = [s.meta["labels"] for s in result["samples"]]
    own, other, jaw = _expression_errors(FLAME(flame_dir, dtype=torch.float64), read_ground_truth(data.root), labels)
    assert own.max() < 1.0 and np.median(own) < 0.45 and np.median(own) < 0.4 * np.median(other), (own, other)
    assert jaw.max() < 0.02, jaw


def test_annotations_are_the_2d_feature_tracks(prepped, data) -> None:
    """The 49-point tracks of 2DFeatures/<subject>_<task>.mat land on the frames they were tracked on."""
    gt = read_ground_truth(data.root)
    for sample in prepped["samples"]:
        assert sample.meta["landmarks"]["ann"] == "ibug49" and sample.ann.shape == (49, 2)
        g = gt.index(sample.key.removeprefix("bp4d_"))
        truth = gt.extras["landmarks68_2d"][g][list(IBUG49_IN_68)]
        assert np.abs(source_landmarks(sample) - truth).max() < 0.01, sample.key


def test_without_fits_the_default_location_is_named(data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no fits/bp4d/fits.h5 here
    output, code = prep_cli("bp4d", data.root, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "fits/bp4d/fits.h5" in output and "fbench fit-flame bp4d" in output
    assert not (tmp_path / "out" / "bp4d").exists()


def _items(root: Path, fits: Path) -> tuple[bp4d_frames.Bp4dFramesSource, list]:
    source = bp4d_frames.Bp4dFramesSource()
    return source, source.items(root, SourceOptions(filters={bp4d_frames.FITS: (str(fits), "test")}))


def test_an_unreadable_feature_track_costs_its_task_the_annotations_only(prepped, data, tmp_path, caplog) -> None:
    fits, _, _ = read_fits(prepped["fits"])
    subject, task = next(k for k, fit in fits.items() if len(fit) == 2)
    root = tmp_path / "root"
    shutil.copytree(data.root / subject / task, root / subject / task)
    track = bp4d_frames.FEATURES.format(subject=subject, task=task)
    (root / track).parent.mkdir(parents=True)
    (root / track).write_bytes((data.root / track).read_bytes()[:100])  # truncated
    caplog.set_level(logging.WARNING)
    source, items = _items(root, prepped["fits"])
    assert [i.path for i in items] == [f"{subject}/{task}/{f:04d}.jpg" for f in fits[(subject, task)].frame]
    assert all(i.annotations is None for i in items)
    assert source.listing_report(root, items)["unreadable_feature_tracks"] == [track]
    assert track in caplog.text
    # Intact, the same track annotates both frames.
    (root / track).write_bytes((data.root / track).read_bytes())
    assert all(i.annotation_format == "ibug49" for i in _items(root, prepped["fits"])[1])


def test_a_lost_frame_in_a_track_has_no_points(tmp_path) -> None:
    from scipy.io import savemat

    fit = np.empty((1, 3), dtype=[("frame", "O"), ("pts_2d", "O"), ("headPose", "O")])
    points = np.arange(98, dtype=np.float64).reshape(49, 2)
    fit[0, 0] = (np.array([[1.0]]), points, np.zeros((3, 1)))
    fit[0, 1] = (np.array([[2.0]]), np.zeros((0, 0)), np.zeros((0, 0)))  # the tracker lost it: empty fields
    fit[0, 2] = (np.array([[3.0]]), points.T, np.zeros((3, 1)))  # stored transposed
    buffer = io.BytesIO()
    savemat(buffer, {"fit": fit})
    (tmp_path / "t.mat").write_bytes(buffer.getvalue())
    track = bp4d_frames.read_features(tmp_path / "t.mat")
    assert sorted(track) == [1, 3] and np.array_equal(track[1], points) and np.array_equal(track[3], points)
    savemat(tmp_path / "other.mat", {"tracks": np.zeros(3)})
    with pytest.raises(ValueError, match="other.mat: no struct array 'fit'"):
        bp4d_frames.read_features(tmp_path / "other.mat")


def test_resuming_with_changed_fits_is_refused(prepped, data, tmp_path) -> None:
    """The fits file is part of the shards' content (its digest is in the prep config): shards made from
    other fits are never mixed in by a resumed run."""
    import h5py

    fits = tmp_path / "fits" / "fits.h5"
    fits.parent.mkdir()
    shutil.copy(prepped["fits"], fits)
    args = ("--fits", str(fits.parent), "--landmarks", "annotations", "--size", "64", "--limit", "1")
    prep_cli("bp4d", data.root, tmp_path / "out", *args)
    assert "units: 0 done now" in prep_cli("bp4d", data.root, tmp_path / "out", *args)[0]  # same fits: resumes
    # The run's config.yaml names its fits: resuming from it needs no --fits.
    config = str(tmp_path / "out" / "bp4d" / "config.yaml")
    assert "units: 0 done now" in prep_cli("bp4d", data.root, tmp_path / "out", "--config", config)[0]
    with h5py.File(fits, "a") as f:  # a row the one prepped sample does not carry: only the file's digest tells
        subject = [k for k in f if k != "failures"][-1]
        task = [t for t in f[subject] if len(f[subject][t]["frame"])][-1]
        f[subject][task]["expression"][-1, 0] += 0.5
    output, code = prep_cli("bp4d", data.root, tmp_path / "out", *args, ok=False)
    assert code != 0 and "different settings" in output


def test_a_second_file_of_a_frame_is_a_reject_naming_both(prepped, data, tmp_path) -> None:
    from pipelines.common import ERROR_LABEL, is_bad

    fits, _, _ = read_fits(prepped["fits"])
    subject, task = next(k for k, fit in fits.items() if len(fit) == 2)
    frame = int(fits[(subject, task)].frame[0])
    root = tmp_path / "root"
    shutil.copytree(data.root / subject / task, root / subject / task)
    shutil.copy(root / subject / task / f"{frame:04d}.jpg", root / subject / task / f"{frame}.jpeg")
    _, items = _items(root, prepped["fits"])
    good, bad = [i for i in items if not is_bad(i)], [i for i in items if is_bad(i)]
    assert [i.path for i in good] == [f"{subject}/{task}/{f:04d}.jpg" for f in fits[(subject, task)].frame]
    assert [i.path for i in bad] == [f"{subject}/{task}/{frame}.jpeg"]
    assert f"kept {subject}/{task}/{frame:04d}.jpg" in bad[0].labels[ERROR_LABEL]
