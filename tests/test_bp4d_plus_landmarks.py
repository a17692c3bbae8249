"""BP4D+'s landmark tree (issue 14): `3DFeatures/FacialLandmarks/<S>_<T>_<frame>.bndplus`, 83 points
`x,y,z`, found through a landmark pattern using subject, task and frame; no 83-to-68 mapping is
published, so such frames are initialised without landmarks (multi-start rigid ICP), tested here
against the ground-truth similarity, and fitted end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pipelines_support import synth_cli

from fbench.fitting.scan import ScanFitConfig, ScanFrame, initial_transforms
from fbench.fitting.scan_io import read_scan
from fbench.fitting.store import read_fits
from fbench.flame import FLAME
from fbench.synth import bp4d
from fbench.synth.ground_truth import read_ground_truth
from pipelines import bp4d as pipeline
from test_fitting_bp4d import FAST, _angle_deg, _gt_similarity


@pytest.fixture(scope="module")
def plus(tmp_path_factory, flame_dir) -> Path:
    """`fbench synth bp4d --variant bp4dplus --n 1` through the CLI."""
    root = tmp_path_factory.mktemp("bp4dplus") / "BP4D+"
    synth_cli("bp4d", root, flame_dir, "--n", "1", "--variant", "bp4dplus")
    return root


def test_landmark_pattern_finds_the_bndplus_tree(plus) -> None:
    gt = read_ground_truth(plus)
    scans = pipeline.find_scans(plus, "F001", list(bp4d.TASKS), pipeline.Bp4dConfig().landmark_patterns)
    refs = [r for task in scans.values() for r in task]
    assert len(refs) == len(gt) and not list(plus.glob("F001/*/*_lmk3d.txt"))
    for ref in refs:
        assert ref.landmarks == plus / f"3DFeatures/FacialLandmarks/F001_{ref.task}_{ref.frame:04d}.bndplus"
        with pytest.raises(pipeline.LandmarkScheme, match="83 landmarks; iBUG-68 expected"):
            pipeline.load_landmarks(ref.landmarks, [])
    # A pattern naming a place outside the root is refused as configuration, not followed.
    with pytest.raises(pipeline.DatasetError, match="landmark pattern"):
        pipeline.landmark_file(plus, ["../{subject}.txt"], "F001", "T1", 1, "0001")
    with pytest.raises(pipeline.DatasetError, match="fields: subject, task, frame, stem"):
        pipeline.landmark_file(plus, ["{person}.txt"], "F001", "T1", 1, "0001")


def check_landmark_free_init(plus: Path, flame_dir: Path, rows: list[int]) -> None:
    flame = FLAME(flame_dir, dtype=torch.float64)
    gt = read_ground_truth(plus)
    frames = [ScanFrame(*(lambda m: (m.vertices, m.faces))(read_scan(plus / gt.paths[i])), None, gt.paths[i])
              for i in rows]
    sims, scale = initial_transforms(flame, frames, ScanFitConfig(scan_units="mm"))
    assert scale == 1000.0
    errors = [(_angle_deg(s.rotation, _gt_similarity(gt, i, flame).rotation),
               float(np.linalg.norm(s.translation - _gt_similarity(gt, i, flame).translation)))
              for s, i in zip(sims, rows)]
    assert max(e[0] for e in errors) < 10.0 and max(e[1] for e in errors) < 15.0, errors
    with pytest.raises(ValueError, match="enough 3D landmarks"):
        initial_transforms(flame, frames, ScanFitConfig(scan_units="mm", landmark_free_init=False))


def test_landmark_free_initialisation_recovers_the_similarity(plus, flame_dir) -> None:
    """Without any landmark: the multi-start rigid ICP (first frame) and its warm start (a frame of
    another task) land within the landmark initialisation's bounds of the ground-truth scanner
    similarity (uniformly random rotation, 300 mm translation). About 10 s on a loaded 2-core machine."""
    check_landmark_free_init(plus, flame_dir, [0, 9])


@pytest.mark.slow
def test_landmark_free_initialisation_over_many_frames(plus, flame_dir) -> None:
    check_landmark_free_init(plus, flame_dir, list(range(0, 16, 2)))


@pytest.mark.slow
def test_fit_flame_bp4d_plus_without_landmarks(plus, flame_dir, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    out = tmp_path / "fits"
    result = CliRunner().invoke(pipeline.command(), ["--root", str(plus), "--out", str(out), "--flame", str(flame_dir),
                                                   "--tasks", "T1", "--no-progress", *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fits, failures, _ = read_fits(out)
    assert not failures and len(fits[("F001", "T1")]) == bp4d.FRAMES_PER_TASK
    assert fits[("F001", "T1")].residual_median_mm.max() < 3 * bp4d.NOISE_MM
    assert caplog.text.count("no 83-to-68 mapping is shipped") == 1
