"""`fbench fit-flame famos` end to end on a tiny synthetic FaMoS: accuracy against the ground truth,
failures logged, SMIRK templates, resumption, plugin protocol."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_synthetic
import torch
from click.testing import CliRunner

from fbench.fitting.store import read_fits
from fbench.flame import FLAME, FlameParams
from fbench.registry import SPECS, check_plugin
from fbench.synth import SynthResult
from fbench.synth.files import truncate_file
from fbench.synth.ground_truth import read_ground_truth
from pipelines import FAMOS

FAST = ["-o", "registration.identity_max_frames=3", "-o", "registration.identity_lbfgs.max_iterations=80"]


@pytest.fixture(scope="module")
def flame64(flame_dir: Path) -> FLAME:
    return FLAME(flame_dir, dtype=torch.float64)


def shared_famos(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    """The session's synthetic famos (n=1, seed=3, corrupt=4), shared with the other famos test module."""
    return shared_synthetic(tmp_path_factory, "famos", flame, n=1, seed=3, corrupt=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, flame_dir: Path):
    """Two intact sequences copied out of the shared dataset; one frame then truncated on purpose."""
    shared = shared_famos(tmp_path_factory, FLAME(flame_dir))
    subject = "FaMoS_subject_001"
    clean = [q for q in ("jaw", "kissing", "high_smile", "lips_up", "mouth_side")
             if not any(c.startswith(f"{subject}/{q}/") for c in shared.corrupted)][:2]
    root = tmp_path_factory.mktemp("famos_data")
    for seq in clean:
        shutil.copytree(shared.root / subject / seq, root / subject / seq)
    broken = f"{subject}/{clean[0]}/{clean[0]}.000010.ply"
    truncate_file(root / broken, 0.5)
    out = tmp_path_factory.mktemp("famos_fits")
    templates = out / "templates"
    args = ["--root", str(root), "--out", str(out), "--flame", str(flame_dir), "--sequences", ",".join(clean),
            "--stride", "5", "--export-templates", str(templates), "--no-progress", *FAST]
    result = CliRunner().invoke(FAMOS.command_for("fit"), args, catch_exceptions=False)
    return {"root": root, "gt_root": shared.root, "out": out, "templates": templates, "args": args,
            "result": result, "broken": broken, "sequences": clean}


def test_cli_fits_and_reports(run) -> None:
    result = run["result"]
    assert result.exit_code == 0, result.output
    first, second = run["sequences"]
    assert "FaMoS_subject_001" in result.output and second in result.output and "total" in result.output
    fits, failures, attrs = read_fits(run["out"])
    assert sorted(fits) == sorted([("FaMoS_subject_001", first), ("FaMoS_subject_001", second)])
    assert list(fits[("FaMoS_subject_001", second)].frame) == [0, 5, 10]
    assert list(fits[("FaMoS_subject_001", first)].frame) == [0, 5]  # frame 10 is broken
    assert len(failures) == 1 and failures[0]["source"] == run["broken"] and failures[0]["frame"] == 10
    assert "PLY" in failures[0]["reason"]  # the reader's reason (truncated file)
    assert attrs["dataset"] == "famos" and bool(attrs["synthetic"])
    assert (run["out"] / "summary.csv").read_text().count("\n") == 3


def test_fits_match_the_ground_truth(run, flame64: FLAME) -> None:
    """Registrations: mean vertex error <= 0.05 mm; expressions recovered (see the tolerances)."""
    fits, _, _ = read_fits(run["out"])
    gt = read_ground_truth(run["gt_root"])
    e = flame64.blend_dirs[flame64.n_shape:].reshape(flame64.n_exp, -1) * 1000.0
    metric = (e @ e.T / flame64.num_vertices).numpy()
    for fit in fits.values():
        rows = [gt.paths.index(s) for s in fit.source]
        p = FlameParams.from_dict({k: v for k, v in fit.params.items() if k != "eyelids"}, n_shape=300, n_exp=100,
                                  dtype=torch.float64)
        with torch.no_grad():
            mine = flame64(p).vertices
            truth = flame64(gt.params(np.array(rows)).to(dtype=torch.float64)).vertices
        err_mm = (mine - truth).norm(dim=-1) * 1000
        assert float(err_mm.mean()) <= 0.05, float(err_mm.mean())
        assert np.allclose(fit.residual_mean_mm, err_mm.mean(-1).numpy(), atol=2e-3)  # registration = GT to float32
        d = fit.params["expression"] - gt.flame["expression"][rows]
        assert np.sqrt(np.einsum("bi,ij,bj->b", d, metric, d)).max() < 0.03  # expression displacement, mm RMS
        assert np.abs(d[:, :20]).mean() < 0.1  # designed components, coefficient units (sd)
        assert np.abs(fit.params["jaw"] - gt.flame["jaw"][rows]).max() < 5e-3


def test_templates_follow_smirks_layout(run) -> None:
    root = run["templates"]
    first, second = run["sequences"]
    assert sorted(os.listdir(root / "FaMoS_subject_001")) == sorted(run["sequences"])
    assert sorted(os.listdir(root / "FaMoS_subject_001" / second)) == ["000000.npy", "000005.npy", "000010.npy"]
    fits, _, _ = read_fits(run["out"])
    # Read as SMIRK reads them (plain np.load, its keys), each file against its own sequence and frame.
    from test_fitting_core import check_templates_file_by_file, smirk_load_templates

    loaded = smirk_load_templates(root, list(run["sequences"]))
    assert sorted(loaded) == sorted(f"FaMoS_subject_001{q}" for q in run["sequences"])
    for (subject, sequence), fit in fits.items():
        assert loaded[subject + sequence].shape == (len(fit.frame), fit.params["expression"].shape[1])
    assert check_templates_file_by_file(root, fits) == sum(len(f.frame) for f in fits.values())


def test_rerun_resumes_without_refitting(run) -> None:
    parts = sorted((run["out"] / ".parts").rglob("*.h5"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    result = CliRunner().invoke(FAMOS.command_for("fit"), run["args"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in parts} == before
    fits, failures, _ = read_fits(run["out"])
    assert len(fits) == 2 and len(failures) == 1


def test_plugin_protocol_and_help() -> None:
    assert check_plugin(SPECS["pipelines"], "famos", FAMOS) == []
    result = CliRunner().invoke(FAMOS.command_for("fit"), ["--help"])
    assert result.exit_code == 0 and "fbench fit-flame famos --root" in result.output


def test_root_without_registrations_is_a_clear_error(tmp_path: Path, flame_dir: Path) -> None:
    (tmp_path / "data" / "FaMoS_subject_001" / "jaw").mkdir(parents=True)
    result = CliRunner().invoke(FAMOS.command_for("fit"), ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                          "--flame", str(flame_dir), "--no-progress"])
    assert result.exit_code != 0 and "no FaMoS registrations found" in result.output
