"""fbench.fitting building blocks: the lean FLAME forward, the batched L-BFGS, layouts, rigid
composition, configs, VRML/landmark readers, the fits store and SMIRK template export."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.config import ConfigError, apply_overrides, load_config
from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout, compose_rigid, finite_difference_jacobian, matrix_to_axis_angle
from fbench.fitting.lbfgs import LbfgsOptions, Preconditioner, batched_lbfgs
from fbench.fitting.registration import RegistrationFitConfig, fit_subject_frames, vertex_errors_mm
from fbench.fitting.scan_io import read_landmarks_3d, read_wrl
from fbench.fitting.store import (
    FitStore,
    SequenceFit,
    UnsafeNameError,
    check_name,
    export_templates,
    read_fits,
)
from fbench.flame import FLAME, FlameParams
from fbench.flame.model import axis_angle_to_matrix
from fbench.geometry import MeshError
from fbench.synth.faces import PoseRanges, sample_params, smooth_trajectory


@pytest.fixture(scope="module")
def flame(flame_dir: Path) -> FLAME:
    return FLAME(flame_dir, dtype=torch.float64)


def _random_params(seed: int, n: int) -> FlameParams:
    p = sample_params(np.random.default_rng(seed), n, n_exp=100).to(dtype=torch.float64)
    p.eyelids = torch.zeros_like(p.eyelids)
    p.translation = torch.as_tensor(np.random.default_rng(seed + 1).normal(0, 0.05, (n, 3)))
    return p


# --------------------------------------------------------------------------- FittingFlame


def test_fitting_flame_equals_flame_forward(flame: FLAME) -> None:
    p = _random_params(0, 4)
    p.shape = p.shape[:1].expand(4, -1).clone()
    ref = flame(p)
    fast = FittingFlame(flame, p.shape[0])
    layout = Layout.frame(100)
    v = fast.from_vector(layout.pack(p), layout.slices())
    assert torch.allclose(v, ref.vertices, atol=1e-12, rtol=0)
    assert torch.allclose(fast.landmarks(v), ref.landmarks_full, atol=1e-12, rtol=0)
    # Free shape: the identity as a variable gives the same vertices.
    free = FittingFlame(flame, free_shape=True)
    v2 = free.from_vector(layout.pack(p), layout.slices(), p.shape[:1])
    assert torch.allclose(v2, ref.vertices, atol=1e-12, rtol=0)


def test_linear_jacobian_matches_finite_differences(flame: FLAME) -> None:
    model = FittingFlame(flame, free_shape=True, n_exp=20)
    layout = Layout.frame(20)
    sl = layout.slices()
    x = torch.as_tensor(np.random.default_rng(3).normal(0, 0.2, (1, layout.size)))
    jac = model.linear_jacobian(x, sl, "expression")

    def fn(e: torch.Tensor) -> torch.Tensor:
        full = x.expand(e.shape[0], -1).clone()
        full[:, sl["expression"]] = e
        return model.from_vector(full, sl, planar=True).reshape(e.shape[0], -1)

    ref = finite_difference_jacobian(fn, x[0, sl["expression"]])
    assert torch.allclose(jac, ref, atol=1e-8 * float(ref.abs().max()))
    shape_jac = model.linear_jacobian(x, sl, "shape")
    assert shape_jac.shape == (3 * model.num_vertices, model.n_shape)


# --------------------------------------------------------------------------- L-BFGS


def _quadratic(seed: int, batch: int, size: int = 30, decades: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=g, dtype=torch.float64)
    scales = torch.logspace(-decades, decades, size, dtype=torch.float64)
    h = (a @ a.T + torch.eye(size, dtype=torch.float64)) * scales.sqrt()[:, None] * scales.sqrt()[None]
    b = torch.randn(batch, size, generator=g, dtype=torch.float64)
    return h, b


def test_lbfgs_exact_preconditioner_is_newton() -> None:
    h, b = _quadratic(0, 3)
    fun = lambda x, rows: 0.5 * ((x @ h) * x).sum(-1) - (x * b[rows]).sum(-1)  # noqa: E731
    res = batched_lbfgs(fun, torch.zeros_like(b), Preconditioner(h), LbfgsOptions(max_iterations=5))
    assert res.converged.all() and (res.iterations == 1).all()
    assert torch.allclose(res.x, torch.linalg.solve(h, b.T).T, rtol=1e-8, atol=1e-10)


def test_lbfgs_rows_are_independent_of_the_batch() -> None:
    """A row's iterates are the same alone or in a batch (the basis of the batched fitting)."""
    h, b = _quadratic(1, 4, decades=1.0)
    h2 = h * torch.linspace(0.5, 2.0, h.shape[0], dtype=torch.float64)[None]  # a different curvature than H0
    h2 = 0.5 * (h2 + h2.T) + torch.eye(h.shape[0], dtype=torch.float64) * 10

    def fun(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        quad = 0.5 * ((x @ h2) * x).sum(-1) - (x * b[rows]).sum(-1)
        return quad + 0.1 * (x ** 4).sum(-1)  # non-quadratic

    opts = LbfgsOptions(max_iterations=100, history=5)
    pre = Preconditioner(h)
    x0 = torch.zeros_like(b)
    batched = batched_lbfgs(fun, x0, pre, opts)
    for i in range(b.shape[0]):
        alone = batched_lbfgs(lambda x, rows: fun(x, rows + i), x0[i:i + 1], pre, opts)
        # Same iterates up to BLAS rounding (batched and single products round differently).
        assert torch.allclose(alone.x[0], batched.x[i], atol=1e-9, rtol=1e-9)
        assert abs(int(alone.iterations[0]) - int(batched.iterations[i])) <= 1
    assert batched.converged.all()


def test_lbfgs_reports_nonfinite_start_as_stalled() -> None:
    fun = lambda x, rows: torch.where(rows == 1, torch.full_like(x[:, 0], float("nan")), (x ** 2).sum(-1))  # noqa: E731
    res = batched_lbfgs(fun, torch.ones(2, 3, dtype=torch.float64), None, LbfgsOptions(max_iterations=20))
    assert bool(res.converged[0]) and bool(res.stalled[1]) and not bool(res.converged[1])


# --------------------------------------------------------------------------- layouts and rotations


def test_layout_roundtrip() -> None:
    p = _random_params(2, 3)
    layout = Layout.frame(100)
    x = layout.pack(p)
    assert x.shape == (3, 118)
    q = layout.unpack(x, FlameParams.zeros(1, n_exp=100, dtype=torch.float64))
    for name in ("global_pose", "translation", "neck", "jaw", "eyes", "expression"):
        assert torch.equal(getattr(q, name), getattr(p, name))
    assert torch.equal(q.eyelids, torch.zeros(3, 2, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3.1, 3.1), min_size=3, max_size=3))
def test_matrix_to_axis_angle_roundtrip(aa: list[float]) -> None:
    v = torch.tensor([aa], dtype=torch.float64)
    rot = axis_angle_to_matrix(v)
    back = axis_angle_to_matrix(matrix_to_axis_angle(rot))
    assert torch.allclose(rot, back, atol=1e-6)  # FLAME adds 1e-8 to the angle


def test_compose_rigid_moves_the_whole_head(flame: FLAME) -> None:
    p = _random_params(4, 2)
    p.shape = p.shape[:1].expand(2, -1).clone()
    model = FittingFlame(flame, p.shape[0])
    layout = Layout.frame(100)
    x = layout.pack(p)
    sl = layout.slices()
    rot = axis_angle_to_matrix(torch.tensor([[0.3, -0.2, 0.1], [0.0, 1.0, 0.5]], dtype=torch.float64))
    off = torch.tensor([[0.01, 0.02, -0.03], [0.1, 0.0, 0.0]], dtype=torch.float64)
    pose, trans = compose_rigid(x[:, sl["global_pose"]], x[:, sl["translation"]], rot, off, model.root)
    y = x.clone()
    y[:, sl["global_pose"]], y[:, sl["translation"]] = pose, trans
    moved = model.from_vector(x, sl) @ rot.transpose(1, 2) + off[:, None]
    assert torch.allclose(model.from_vector(y, sl), moved, atol=1e-10)


# --------------------------------------------------------------------------- registration fit


def test_registration_fit_recovers_a_sequence(flame: FLAME) -> None:
    """Frames from a smooth trajectory (known identity): vertex error and expression recovery."""
    rng = np.random.default_rng(5)
    identity = sample_params(rng, 1, n_exp=100)
    gt = smooth_trajectory(rng, 6, identity, n_exp=100, pose=PoseRanges(5, 15, 3)).to(dtype=torch.float64)
    gt.eyelids = torch.zeros_like(gt.eyelids)
    with torch.no_grad():
        target = flame(gt).vertices
    cfg = RegistrationFitConfig(batch_size=3)
    fit = fit_subject_frames(flame, gt.shape[0], target, FlameParams.zeros(1, n_exp=100, dtype=torch.float64), cfg)
    err = vertex_errors_mm(fit.vertices, target)
    assert float(err.mean()) < 0.05 and float(err.max()) < 0.5
    # Expression recovery where the geometry determines it: the expression-induced
    # displacement differs by < 0.02 mm RMS (the synthetic basis has a near-null combination
    # of designed components, so raw coefficients are compared in the metric that matters).
    e = flame.blend_dirs[flame.n_shape:].reshape(flame.n_exp, -1) * 1000.0
    metric = e @ e.T / flame.num_vertices
    d = fit.params.expression - gt.expression
    rms_mm = torch.sqrt(torch.einsum("bi,ij,bj->b", d, metric, d))
    assert float(rms_mm.max()) < 0.02
    assert float((fit.params.jaw - gt.jaw).abs().max()) < 2e-3
    assert fit.converged.all()


# --------------------------------------------------------------------------- config


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "fit.yaml"
    path.write_text("batch_size: 8\npriors:\n  expression: 0.001\nlbfgs:\n  history: 4\n")
    cfg = load_config(RegistrationFitConfig, path, ["priors.jaw=1e-3", "lbfgs.max_iterations=7"])
    assert cfg.batch_size == 8 and cfg.priors.expression == 1e-3 and cfg.priors.jaw == 1e-3
    assert cfg.lbfgs.history == 4 and cfg.lbfgs.max_iterations == 7
    assert cfg.priors.neck == RegistrationFitConfig().priors.neck  # untouched default
    with pytest.raises(ConfigError, match="unknown"):
        apply_overrides(cfg, ["priors.typo=1"])
    with pytest.raises(ConfigError, match="integer"):
        apply_overrides(cfg, ["batch_size=abc"])
    path.write_text("batchsize: 8\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(RegistrationFitConfig, path)


# --------------------------------------------------------------------------- readers


def test_read_wrl_polygons_shapes_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "a.wrl"
    path.write_text("""#VRML V2.0 utf8
# comment with IndexedFaceSet inside a comment
Transform { children [
Shape { geometry IndexedFaceSet {
  coord Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0 ] }
  texCoord TextureCoordinate { point [ 0 0, 1 0, 1 1, 0 1 ] }
  coordIndex [ 0, 1, 2, 3, -1 ]
  texCoordIndex [ 0, 1, 2, 3, -1 ]
} }
Shape { geometry IndexedFaceSet {
  coord Coordinate { point [ 0 0 1 1 0 1 0 1 1 ] }
  coordIndex [ 0 1 2 ]
} } ] }
""")
    mesh = read_wrl(path)
    assert mesh.vertices.shape == (7, 3) and mesh.units == "mm"
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [4, 5, 6]]
    bad = tmp_path / "b.wrl"
    bad.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 0, 1 0 0 ] }"
                   " coordIndex [ 0, 1, 5, -1 ] } }")
    with pytest.raises(MeshError, match="b.wrl"):
        read_wrl(bad)
    nan = tmp_path / "c.wrl"
    nan.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ nan 0 0, 1 0 0,"
                   " 0 1 0 ] } coordIndex [ 0, 1, 2, -1 ] } }")
    with pytest.raises(MeshError, match="NaN"):
        read_wrl(nan)
    plain = tmp_path / "d.wrl"
    plain.write_text("not vrml")
    with pytest.raises(MeshError, match="VRML"):
        read_wrl(plain)


def test_read_landmarks_3d(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("# header\n1 0.5 1.5 2.5\n2, 3.0, 4.0, 5.0\n\n")
    assert read_landmarks_3d(path).tolist() == [[0.5, 1.5, 2.5], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="expected 68"):
        read_landmarks_3d(path, expected=68)
    path.write_text("1 2\n")
    with pytest.raises(ValueError, match="l.txt: line 1"):
        read_landmarks_3d(path)


# --------------------------------------------------------------------------- store and templates


def _fake_fit(subject: str, sequence: str, n: int) -> SequenceFit:
    rng = np.random.default_rng(len(sequence))
    widths = {"shape": 300, "expression": 100, "global_pose": 3, "neck": 3, "jaw": 3, "eyes": 6, "eyelids": 2,
              "translation": 3}
    return SequenceFit(subject=subject, sequence=sequence, frame=np.arange(n) * 10,
                       source=[f"{subject}/{sequence}/{sequence}.{10 * i:06d}.ply" for i in range(n)],
                       params={k: rng.normal(size=(n, w)) for k, w in widths.items()}, scale=np.ones(n),
                       transform=np.repeat(np.eye(4)[None], n, 0), residual_mean_mm=rng.random(n),
                       residual_median_mm=rng.random(n), residual_max_mm=rng.random(n) + 1, loss=rng.random(n),
                       converged=np.ones(n, bool), attrs={"identity": "test"})


def test_store_resume_consolidate_failures(tmp_path: Path) -> None:
    store = FitStore(tmp_path, "famos", {"a": 1}, "synthetic", True)
    fit = _fake_fit("S1", "jaw", 3)
    assert not store.done("S1", "jaw")
    store.save(fit)
    assert store.done("S1", "jaw")
    store.record_failure("S1", "kissing", 5, "S1/kissing/kissing.000005.ply", "truncated PLY")
    store.record_failure("S1", "kissing", 5, "S1/kissing/kissing.000005.ply", "truncated PLY")  # deduplicated
    store.consolidate()
    fits, failures, attrs = read_fits(tmp_path)
    got = fits[("S1", "jaw")]
    assert got.source == fit.source and np.array_equal(got.frame, fit.frame)
    assert np.allclose(got.params["expression"], fit.params["expression"])
    assert failures == [{"subject": "S1", "sequence": "kissing", "frame": 5,
                         "source": "S1/kissing/kissing.000005.ply", "reason": "truncated PLY"}]
    assert attrs["dataset"] == "famos" and bool(attrs["synthetic"])
    # Another config: nothing counts as done, old failures are not carried over.
    other = FitStore(tmp_path, "famos", {"a": 2}, "synthetic", True)
    assert not other.done("S1", "jaw") and other.failures == []
    # Same config again: resumes.
    again = FitStore(tmp_path, "famos", {"a": 1}, "synthetic", True)
    assert again.done("S1", "jaw") and len(again.failures) == 1
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("subject,sequence,frames")


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a\\b", "", "x" * 200, "a..b"])
def test_unsafe_names_rejected(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_name(name, "subject")


def smirk_load_templates(templates_path: Path, classes_to_load: list[str]) -> dict[str, np.ndarray]:
    """SMIRK's loader, as in src/utils/utils.py:5-25 (load_templates): every file of each
    <subject>/<class> folder read with plain `np.load(..., allow_pickle=True)` (these are the
    test's own files), `params.item()['expression'].squeeze()`, rows in directory order."""
    templates = {}
    for subject in os.listdir(templates_path):
        if os.path.isdir(os.path.join(templates_path, subject)):
            for template in os.listdir(os.path.join(templates_path, subject)):
                if template.endswith(".mp4") or template not in classes_to_load:
                    continue
                exps = []
                for npy_file in os.listdir(os.path.join(templates_path, subject, template)):
                    params = np.load(os.path.join(templates_path, subject, template, npy_file), allow_pickle=True)
                    exp = params.item()["expression"].squeeze()
                    exps.append(exp)
                templates[subject + template] = np.array(exps)
    return templates


def check_templates_file_by_file(root: Path, fits: dict) -> int:
    """Each <subject>/<sequence>/<frame:06d>.npy holds exactly that sequence's fit at that frame:
    expression (float32), jaw, and pose = global, neck, jaw, eyes (FLAME's pose order); read with
    plain np.load as SMIRK does. Returns the number of files checked."""
    checked = 0
    for (subject, sequence), fit in fits.items():
        folder = root / subject / sequence
        frames = [int(f) for f in np.asarray(fit.frame)]
        assert sorted(os.listdir(folder)) == [f"{f:06d}.npy" for f in sorted(frames)], folder
        for row, frame in enumerate(frames):
            record = np.load(folder / f"{frame:06d}.npy", allow_pickle=True).item()
            assert set(record) == {"expression", "jaw", "pose"}
            assert record["expression"].dtype == np.float32 and record["expression"].ndim == 1
            p = fit.params
            np.testing.assert_array_equal(record["expression"], p["expression"][row].astype(np.float32))
            np.testing.assert_array_equal(record["jaw"], p["jaw"][row].astype(np.float32))
            pose = np.concatenate([p["global_pose"][row], p["neck"][row], p["jaw"][row], p["eyes"][row]])
            np.testing.assert_array_equal(record["pose"], pose.astype(np.float32))
            checked += 1
    return checked


def test_export_templates_smirk_layout(tmp_path: Path) -> None:
    fits = {("S1", "jaw"): _fake_fit("S1", "jaw", 3), ("S1", "kissing"): _fake_fit("S1", "kissing", 2)}
    count = export_templates(fits, tmp_path / "templates")
    assert count == 5
    root = tmp_path / "templates"
    assert sorted(os.listdir(root)) == ["S1", "templates_manifest.json"]
    assert sorted(os.listdir(root / "S1" / "jaw")) == ["000000.npy", "000010.npy", "000020.npy"]
    loaded = smirk_load_templates(root, ["jaw", "kissing"])
    assert loaded["S1jaw"].shape == (3, 100) and loaded["S1kissing"].shape == (2, 100)
    # SMIRK's base_trainer.py:69-74 load_random_template keeps the first 50 of a random row.
    assert loaded["S1jaw"][0][:50].shape == (50,)
    assert check_templates_file_by_file(root, fits) == 5
