"""`fbench fit-flame bp4d` on a tiny synthetic BP4D (an OBJ and a VRML subject): the CLI end to end
(failures, resumption), the landmark initialisation against the GT similarity, and the accuracy
proof: median scan-to-mesh residual within 1.5x the added noise, the face where the GT put it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_synthetic
import torch
from click.testing import CliRunner

from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.scan import ScanFitConfig, ScanFrame, fit_scan_subject, initial_transforms
from fbench.fitting.scan_io import read_landmarks_3d, read_scan
from fbench.fitting.store import read_fits
from fbench.flame import FLAME
from fbench.flame.model import axis_angle_to_matrix
from fbench.geometry import Similarity, point_mesh_distance
from fbench.registry import SPECS, check_plugin
from fbench.synth import SynthResult, bp4d
from fbench.synth.files import truncate_file
from fbench.synth.ground_truth import read_ground_truth
from pipelines import BP4D
from pipelines_support import BP4D_FIT_FAST

FAST = list(BP4D_FIT_FAST)


def shared_bp4d(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    """The session's synthetic bp4d (n=2, seed=5, corrupt=4), shared with the other bp4d test module."""
    return shared_synthetic(tmp_path_factory, "bp4d", flame, n=2, seed=5, corrupt=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, flame_dir: Path) -> SynthResult:
    """The shared dataset (read only)."""
    return shared_bp4d(tmp_path_factory, FLAME(flame_dir))


def _clean_tasks(data: SynthResult, subject: str) -> list[str]:
    return [t for t in bp4d.TASKS if not any(c.startswith(f"{subject}/{t}/") for c in data.corrupted)]


@pytest.fixture(scope="module")
def run(data: SynthResult, tmp_path_factory: pytest.TempPathFactory, flame_dir: Path):
    """One intact task of F001 (OBJ) and of M001 (VRML) copied out; one VRML scan then truncated."""
    picks = {"F001": _clean_tasks(data, "F001")[0], "M001": _clean_tasks(data, "M001")[0]}
    root = tmp_path_factory.mktemp("bp4d_data")
    for subject, task in picks.items():
        shutil.copytree(data.root / subject / task, root / subject / task)
    wrl = sorted(str(p.relative_to(root)) for p in (root / "M001" / picks["M001"]).glob("*.wrl"))
    truncate_file(root / wrl[1], 0.5)
    out = tmp_path_factory.mktemp("bp4d_fits")
    args = ["--root", str(root), "--out", str(out), "--flame", str(flame_dir), "--tasks",
            ",".join(sorted(set(picks.values()))), "--no-progress", *FAST]
    result = CliRunner().invoke(BP4D.command_for("fit"), args, catch_exceptions=False)
    return {"out": out, "args": args, "result": result, "broken": wrl[1], "picks": picks}


def test_cli_fits_both_formats_and_logs_failures(run) -> None:
    result = run["result"]
    assert result.exit_code == 0, result.output
    fits, failures, attrs = read_fits(run["out"])
    assert sorted(fits) == sorted(run["picks"].items())
    assert len(fits[("F001", run["picks"]["F001"])]) == 2 and len(fits[("M001", run["picks"]["M001"])]) == 1
    assert [f["source"] for f in failures] == [run["broken"]] and "VRML" in failures[0]["reason"]
    assert attrs["dataset"] == "bp4d"
    for fit in fits.values():
        assert np.allclose(fit.scale, 1000.0) and fit.transform.shape == (len(fit), 4, 4)
        # Even with the CLI test's few iterations the fit reaches the noise floor's neighbourhood.
        # Measured 0.23-0.34 mm with these few iterations (0.202 mm ideal); 3 x noise admitted ~0.7 mm.
        assert fit.residual_median_mm.max() < 1.5 * bp4d.NOISE_MM


def test_rerun_resumes(run) -> None:
    parts = sorted((run["out"] / ".parts").rglob("*.h5"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    result = CliRunner().invoke(BP4D.command_for("fit"), run["args"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in parts} == before


def test_plugin_protocol_and_help() -> None:
    assert check_plugin(SPECS["pipelines"], "bp4d", BP4D) == []
    result = CliRunner().invoke(BP4D.command_for("fit"), ["--help"])
    assert result.exit_code == 0 and "fbench fit-flame bp4d --root" in result.output


# --------------------------------------------------------------------------- initialisation


def _head(flame: FLAME, shape: np.ndarray, global_pose: np.ndarray, translation: np.ndarray) -> Similarity:
    """FLAME's rigid head motion: rotation about the (identity's) root joint, then translation."""
    root = FittingFlame(flame, torch.as_tensor(shape), n_exp=0).root.numpy()
    rot = axis_angle_to_matrix(torch.as_tensor(global_pose, dtype=torch.float64)[None])[0].numpy()
    return Similarity(1.0, rot, root - rot @ root + translation)


def _gt_similarity(gt, i: int, flame: FLAME) -> Similarity:
    """The GT rigid head motion composed with the scanner similarity (FLAME rest space -> scan mm)."""
    return Similarity.from_matrix(gt.extras["transform"][i]).compose(
        _head(flame, gt.flame["shape"][i], gt.flame["global_pose"][i], gt.flame["translation"][i]))


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


def _frames(data: SynthResult, subject: str, limit: int = 16) -> tuple[list[int], list[ScanFrame]]:
    gt = read_ground_truth(data.root)
    rows = [i for i, p in enumerate(gt.paths) if p.startswith(f"{subject}/") and p not in data.corrupted
            and p.rsplit(".", 1)[0] + "_lmk3d.txt" not in data.corrupted][:limit]
    frames = []
    for i in rows:
        mesh = read_scan(data.root / gt.paths[i])
        lmk = read_landmarks_3d(data.root / (gt.paths[i].rsplit(".", 1)[0] + "_lmk3d.txt"), 68)
        frames.append(ScanFrame(mesh.vertices, mesh.faces, lmk, gt.paths[i]))
    return rows, frames


def test_landmark_initialisation_recovers_the_similarity(data: SynthResult, flame_dir: Path) -> None:
    """Umeyama on the noisy 3D landmarks of the mean head vs the GT scanner similarity (uniformly random
    rotation, 300 mm translation) composed with the frame's head pose: a good start, not the answer
    (identity and expression differ from the mean head)."""
    flame = FLAME(flame_dir, dtype=torch.float64)
    gt = read_ground_truth(data.root)
    rows, frames = _frames(data, "F001")
    for units in ("unknown", "mm"):
        sims, scale = initial_transforms(flame, frames, ScanFitConfig(scan_units=units))
        if units == "unknown":
            assert abs(scale / 1000.0 - 1.0) < 0.05
        errors = [(_angle_deg(sim.rotation, _gt_similarity(gt, i, flame).rotation),
                   np.linalg.norm(sim.translation - _gt_similarity(gt, i, flame).translation))
                  for sim, i in zip(sims, rows)]
        assert max(e[0] for e in errors) < 10.0 and np.median([e[0] for e in errors]) < 7.0, errors
        assert max(e[1] for e in errors) < 15.0, errors  # mm
    # A frame without landmarks borrows its nearest neighbour's transform.
    frames[1] = ScanFrame(frames[1].vertices, frames[1].faces, None, frames[1].source)
    sims, _ = initial_transforms(flame, frames, ScanFitConfig())
    assert np.allclose(sims[1].rotation, sims[0].rotation) and np.allclose(sims[1].translation, sims[0].translation)


# --------------------------------------------------------------------------- accuracy proof

# Scan noise is N(0, NOISE_MM) along the normal, so a perfect fit leaves a median unsigned residual of
# 0.674 x NOISE_MM (the median of |N(0, 1)|); the bound below leaves room for solver tolerance only.
# Measured (four F001 frames, fast settings): residual medians 0.20-0.23 mm for the 0.202 mm ideal,
# true-face medians 0.09-0.11 mm. 1.5 x NOISE_MM used to admit ~0.25 mm of systematic error.
RESIDUAL_FACTOR = 0.9
TRUE_FACE_MM = 0.2


def _true_face_medians(flame: FLAME, gt, rows: list[int], frames: list[ScanFrame], fit) -> np.ndarray:
    """Per frame, the median distance (mm, scanner space) from the GT face vertices the scan saw
    to the fitted FLAME surface: the check against the true surface, not only against the noisy scan."""
    faces = flame.faces.numpy()
    face = np.zeros(flame.num_vertices, bool)
    face[flame.masks["face"].numpy()] = True
    with torch.no_grad():
        mine = flame(fit.params).vertices.numpy()
        truth = flame(gt.params(np.array(rows)).to(dtype=torch.float64)).vertices.numpy()
    out = []
    for k, (i, frame) in enumerate(zip(rows, frames)):
        a = fit.transforms[k].apply(mine[k])
        b = Similarity.from_matrix(gt.extras["transform"][i]).apply(truth[k])
        seen = point_mesh_distance(b, frame.vertices, frame.faces).distances < 1.0
        out.append(float(np.median(point_mesh_distance(b[seen & face], a, faces).distances)))
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("subject", ["F001", "M001"])
def test_scan_fit_accuracy(data: SynthResult, flame_dir: Path, subject: str) -> None:
    """Default settings, all intact frames of a subject: median residual <= RESIDUAL_FACTOR x noise on
    every frame, and the GT face (where the scan saw it) lies on the fitted surface in scanner space."""
    flame = FLAME(flame_dir, dtype=torch.float64)
    gt = read_ground_truth(data.root)
    rows, frames = _frames(data, subject)
    fit = fit_scan_subject(flame, frames, ScanFitConfig())
    medians = np.array([np.median(r) for r in fit.residual_mm])
    assert medians.max() <= RESIDUAL_FACTOR * bp4d.NOISE_MM, medians
    true_face = _true_face_medians(flame, gt, rows, frames, fit)
    assert true_face.max() < TRUE_FACE_MM, true_face


def test_scan_fit_accuracy_fast(data: SynthResult, flame_dir: Path) -> None:
    """The same proof on four frames of the OBJ subject, in the default run (fewer iterations),
    including the check against the true surface."""
    flame = FLAME(flame_dir, dtype=torch.float64)
    gt = read_ground_truth(data.root)
    rows, frames = _frames(data, "F001", limit=4)
    cfg = ScanFitConfig(identity_frames=2, identity_rounds=2, frame_rounds=1)
    fit = fit_scan_subject(flame, frames, cfg)
    medians = np.array([np.median(r) for r in fit.residual_mm])
    true_face = _true_face_medians(flame, gt, rows, frames, fit)
    assert medians.max() <= RESIDUAL_FACTOR * bp4d.NOISE_MM, medians
    assert true_face.max() < TRUE_FACE_MM, true_face
    assert np.isfinite(fit.loss).all() and torch.isfinite(fit.params.expression).all()
