"""FaMoS as the downloads extract (issue 14): `registrations/` under --root (descended into),
raw test scans in `scans/` and training scans as `sampled_scan_points/` (`fit-flame famos --scans`
reports the fit's scan-to-mesh residual), and registrations whose triangles differ from the loaded
FLAME's only in order/winding (or at all) are fitted, with one warning, never rejected."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pipelines_support import synth_cli

from fbench.fitting.store import read_fits
from fbench.geometry import Mesh, read_mesh, write_mesh
from fbench.synth.ground_truth import read_ground_truth
from pipelines import famos

FAST = ["-o", "registration.identity_max_frames=2", "-o", "registration.identity_lbfgs.max_iterations=60"]
SUBJECT = "FaMoS_subject_001"


@pytest.fixture(scope="module")
def release(tmp_path_factory, flame_dir) -> Path:
    """`fbench synth famos --variant release` through the CLI (one subject)."""
    root = tmp_path_factory.mktemp("famos-release") / "training_data"
    synth_cli("famos", root, flame_dir, "--n", "1", "--variant", "release")
    return root


def test_release_layout_is_written(release) -> None:
    gt = read_ground_truth(release)
    assert all(p.startswith(f"registrations/{SUBJECT}/") for p in gt.paths)
    assert (release / "scans" / SUBJECT / "jaw" / "jaw.000000.obj").is_file()
    points = np.load(release / "sampled_scan_points" / SUBJECT / "jaw" / "jaw.000000.npy")
    assert points.shape == (4000, 3) and points.dtype == np.float32
    assert not any(p.is_dir() and p.name == SUBJECT for p in release.iterdir())  # nothing at the top level


def test_parent_root_descends_and_scans_give_residuals(release, flame_dir, caplog) -> None:
    """Fast: the reader's pieces on the written files (no optimisation): descent, the scan index of both
    trees, and the residual of the true registration (= the ground-truth mesh) to its scan is the noise."""
    caplog.set_level(logging.WARNING)
    assert famos.registrations_root(release) == release / "registrations" and "reading the registrations" in caplog.text
    assert famos.registrations_root(release / "registrations") == release / "registrations"
    from fbench.flame import FLAME

    faces = FLAME(flame_dir).faces.numpy()
    registration = famos.read_registration(release / "registrations" / SUBJECT / "jaw" / "jaw.000000.ply", faces)
    for tree, suffix in (("scans", ".obj"), ("sampled_scan_points", ".npy")):
        index = famos.ScanIndex(release / tree)
        found = index.frames(SUBJECT, "jaw")
        assert list(found) == [0] and found[0].suffix == suffix
        res = famos.scan_residuals(registration[None], faces, [0, 10], found, release)
        assert list(res["scan_frames"]) == [0] and res["scan_files"] == [f"{tree}/{SUBJECT}/jaw/jaw.000000{suffix}"]
        assert 0.05 < res["scan_residual_median_mm"][0] < 1.0  # the synthetic scan noise, not a misplaced mesh
    both = famos.ScanIndex(release)  # the folder holding scans/ and sampled_scan_points/
    assert both.frames(SUBJECT, "jaw")[0].suffix == ".obj"


@pytest.mark.slow
def test_fit_flame_famos_release_root_with_scans(release, flame_dir, tmp_path) -> None:
    """End to end: --root at the parent of registrations/, --scans at scans/: fits and residuals."""
    out = tmp_path / "fits"
    result = CliRunner().invoke(famos.command(), ["--root", str(release), "--out", str(out), "--flame", str(flame_dir),
                                                "--sequences", "jaw", "--stride", "10", "--no-progress",
                                                "--scans", str(release / "scans"), *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fits, failures, _ = read_fits(out)
    fit = fits[(SUBJECT, "jaw")]
    assert list(fit.frame) == [0, 10] and not failures and fit.source[0] == f"{SUBJECT}/jaw/jaw.000000.ply"
    assert list(fit.attrs["scan_frames"]) == [0] and 0.05 < fit.attrs["scan_residual_median_mm"][0] < 1.0
    assert "scan-to-mesh residual on 1 scanned frame(s): median" in result.output


def test_faces_differing_in_order_or_winding_are_accepted(release, flame_dir, tmp_path, caplog) -> None:
    """Same vertices, triangles reordered and rewound: not a difference. Other triangles: accepted
    with one warning for the run. Another vertex count: still a reject naming the file."""
    from fbench.flame import FLAME

    faces = FLAME(flame_dir).faces.numpy()
    src = release / "registrations" / SUBJECT / "jaw" / "jaw.000000.ply"
    mesh = read_mesh(src, units="m")
    rng = np.random.default_rng(0)
    shuffled = mesh.faces[rng.permutation(len(mesh.faces))][:, [0, 2, 1]]
    write_mesh(tmp_path / "a.ply", Mesh(mesh.vertices, shuffled, "m"), binary=True)
    check = famos.FaceCheck(faces)
    caplog.set_level(logging.WARNING)
    assert np.allclose(famos.read_registration(tmp_path / "a.ply", faces, check), mesh.vertices)
    assert check.differing == 0 and "triangles differ" not in caplog.text
    other = mesh.faces.copy()
    other[:, 2] = (other[:, 2] + 1) % len(mesh.vertices)
    write_mesh(tmp_path / "b.ply", Mesh(mesh.vertices, other, "m"), binary=True)
    shutil.copy(tmp_path / "b.ply", tmp_path / "c.ply")
    famos.read_registration(tmp_path / "b.ply", faces, check)
    famos.read_registration(tmp_path / "c.ply", faces, check)
    assert check.differing == 2 and caplog.text.count("triangles differ") == 1
    write_mesh(tmp_path / "d.ply", Mesh(mesh.vertices[:-1], mesh.faces[mesh.faces.max(1) < len(mesh.vertices) - 1],
                                        "m"), binary=True)
    with pytest.raises(famos.MeshError, match="vertices, the FLAME model has"):
        famos.read_registration(tmp_path / "d.ply", faces, check)
