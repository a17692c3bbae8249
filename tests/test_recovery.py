"""Parameter recovery (fbench/metrics/recovery.py) and the `recovery` benchmark (benchmarks/recovery):
the errors against a plain per-vertex re-computation, the oracle at zero and the mean method above it,
a root without ground truth refused, and `fbench eval recovery` from the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from conftest import shared_synthetic
from fbench.flame import FLAME, FlameParams
from fbench.metrics.recovery import jaw_angle_deg, recovery_errors


@pytest.fixture(scope="module")
def flame(flame_dir):
    return FLAME(flame_dir, n_exp=50)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, flame):
    return shared_synthetic(tmp_path_factory, "ffhq", flame, n=4, seed=1, corrupt=0).root


def _random_params(rng: np.random.Generator, n: int, n_exp: int = 50) -> FlameParams:
    p = FlameParams.zeros(n, 300, n_exp)
    for name, scale in (("shape", 1.0), ("expression", 1.0), ("global_pose", 0.3), ("neck", 0.1), ("eyes", 0.1),
                        ("cam", 1.0), ("translation", 0.01)):
        value = getattr(p, name)
        setattr(p, name, torch.as_tensor(rng.normal(0, scale, value.shape), dtype=torch.float32))
    p.jaw = torch.as_tensor(np.c_[rng.uniform(0, 0.3, n), rng.normal(0, 0.05, (n, 2))], dtype=torch.float32)
    p.eyelids = torch.as_tensor(rng.uniform(0, 1, (n, 2)), dtype=torch.float32)
    return p


def _plain_offset_error(flame, true: FlameParams, pred: FlameParams, region) -> list[float]:
    """Per item, one FLAME call per head, numpy distances."""
    f64 = FLAME(flame.assets_files["model"].parent, n_exp=50, dtype=torch.float64)
    out = []
    for i in range(true.batch_size):
        def head(exp, jaw, lids):
            p = FlameParams.from_dict({"shape": true.shape[i].double(), "expression": exp, "jaw": jaw,
                                       "eyelids": lids}, dtype=torch.float64)
            return f64(p).vertices[0].numpy()[region]

        zero = head(torch.zeros(50), torch.zeros(3), torch.zeros(2))
        d_true = head(true.expression[i], true.jaw[i], true.eyelids[i]) - zero
        d_pred = head(pred.expression[i], pred.jaw[i], pred.eyelids[i]) - zero
        out.append(float(np.linalg.norm(d_pred - d_true, axis=1).mean() * 1000))
    return out


def test_errors_match_a_plain_recomputation_and_ignore_identity_and_pose(flame):
    rng = np.random.default_rng(0)
    true, pred = _random_params(rng, 5), _random_params(rng, 5)
    errors = recovery_errors(flame, true, pred, region="face", batch_size=2)  # several batches
    face = flame.masks["face"].numpy()
    assert errors.offset_mm == pytest.approx(_plain_offset_error(flame, true, pred, face), rel=1e-6)
    plain_jaw = [math.degrees((Rotation.from_rotvec(t.double().numpy()).inv()
                               * Rotation.from_rotvec(p.double().numpy())).magnitude())
                 for t, p in zip(true.jaw, pred.jaw)]
    assert errors.jaw_deg == pytest.approx(plain_jaw, abs=1e-7)
    assert errors.region == "face" and errors.n_vertices == len(face) and errors.eyelids
    # the predicted identity, head pose, camera, eyes and translation play no part
    other = FlameParams(**{**pred.as_dict(), **{k: v for k, v in _random_params(rng, 5).as_dict().items()
                                                if k in ("shape", "global_pose", "neck", "eyes", "cam", "translation")}})
    again = recovery_errors(flame, true, other, batch_size=2)
    assert np.array_equal(again.offset_mm, errors.offset_mm) and np.array_equal(again.jaw_deg, errors.jaw_deg)
    # a neutral prediction scores the size of the true offsets; the truth scores zero
    neutral = FlameParams.zeros(5)
    assert recovery_errors(flame, true, neutral).offset_mm == pytest.approx(errors.neutral_mm, rel=1e-12)
    exact = recovery_errors(flame, true, true)
    assert np.all(exact.offset_mm == 0) and np.all(exact.jaw_deg == 0)
    summary = errors.summary()
    assert summary["offset_mean_mm"] == pytest.approx(errors.offset_mm.mean())
    assert summary["jaw_median_deg"] == pytest.approx(np.median(errors.jaw_deg))
    assert summary["n_items"] == 5


def test_whole_head_region_and_narrower_predictions(flame):
    rng = np.random.default_rng(1)
    true, pred = _random_params(rng, 3), _random_params(rng, 3, n_exp=20)  # a method with 20 components
    errors = recovery_errors(flame, true, pred, region="all")
    padded = FlameParams(**{**pred.as_dict(), "expression": torch.nn.functional.pad(pred.expression, (0, 30))})
    assert errors.n_vertices == flame.num_vertices
    assert np.array_equal(errors.offset_mm, recovery_errors(flame, true, padded, region="all").offset_mm)
    with pytest.raises(ValueError, match="no FLAME mask named 'chin'"):
        recovery_errors(flame, true, pred, region="chin")


def test_jaw_angle_of_a_known_rotation():
    true = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    pred = torch.tensor([[0.2 + math.radians(5), 0.0, 0.0], [0.0, math.radians(30), 0.0]], dtype=torch.float64)
    assert jaw_angle_deg(true, pred).tolist() == pytest.approx([5.0, 30.0], abs=1e-6)


def _evaluate(method_name: str, root, out, flame_dir, **config):
    from benchmarks.recovery import RecoveryConfig, evaluate
    from fbench.registry import registry

    plugin = registry("methods").get(method_name)
    model = plugin.build(plugin.config(data_root=str(root)))
    return evaluate(model, root, out, RecoveryConfig(method_name=method_name, flame=str(flame_dir), **config))


def test_oracle_recovers_exactly_and_the_mean_method_does_not(held_out, flame_dir, tmp_path, one_torch_thread):
    oracle = _evaluate("oracle", held_out, tmp_path / "oracle", flame_dir)  # MediaPipe crops (the default)
    assert oracle["n_items"] == 4 and oracle["n_skipped"] == 0 and oracle["synthetic"]
    assert oracle["offset_mean_mm"] == 0 and oracle["jaw_mean_deg"] < 1e-6
    assert oracle["landmarks"] == "MediaPipe 478 (detector)"
    mean = _evaluate("mean", held_out, tmp_path / "mean", flame_dir, landmarks="ground_truth")
    assert mean["offset_mean_mm"] > 0.5 and mean["jaw_mean_deg"] > 0.5
    assert mean["neutral_offset_mean_mm"] == pytest.approx(oracle["neutral_offset_mean_mm"])
    rows = (tmp_path / "mean" / "per_item.csv").read_text().splitlines()
    assert rows[0] == "key,path,offset_mm,jaw_deg,neutral_mm" and len(rows) == 5
    per_item = np.array([float(r.split(",")[2]) for r in rows[1:]])
    assert per_item.mean() == pytest.approx(mean["offset_mean_mm"], abs=1e-5)
    assert json.loads((tmp_path / "mean" / "metrics.json").read_text())["benchmark"] == "recovery"
    with np.load(tmp_path / "mean" / "predictions.npz") as z:
        assert z["expression"].shape == (4, 50) and len(z["keys"]) == 4


def test_a_root_without_ground_truth_is_refused(tmp_path, flame_dir):
    from benchmarks.recovery import RecoveryConfig, evaluate
    from methods.oracle import MeanReconstructor

    (tmp_path / "photos").mkdir()
    with pytest.raises(FileNotFoundError, match="no fbench_ground_truth.h5; the recovery benchmark needs images"):
        evaluate(MeanReconstructor(), tmp_path / "photos", tmp_path / "out", RecoveryConfig())


def test_fbench_eval_recovery_from_the_command_line(held_out, flame_dir, tmp_path, one_torch_thread):
    from benchmarks.recovery import BENCHMARK
    from fbench.cli.plugins import eval_command

    command = eval_command(BENCHMARK)
    out = tmp_path / "res"
    r = CliRunner().invoke(command, ["--method", "mean", "--root", str(held_out), "--out", str(out),
                                     "--flame", str(flame_dir), "-o", "landmarks=ground_truth"])
    assert r.exit_code == 0, r.output
    assert "recovery / mean: " in r.output and "offset_mean_mm" in r.output
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_item.csv", "table.md", "config.yaml",
                                               "reference.json", "predictions.npz", "skipped.csv"}
    r = CliRunner().invoke(command, ["--method", "mean", "--root", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no fbench_ground_truth.h5" in r.output
    r = CliRunner().invoke(command, ["--method", "mean"])
    assert r.exit_code != 0 and "pass --root DIR" in r.output
