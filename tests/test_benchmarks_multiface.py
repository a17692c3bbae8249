"""MultiFace benchmark contract: the oracle scores ~0 mm, the mean method is the floor, the reader
picks the tracked meshes' coordinate frame from the data, bad frames are skipped and counted,
a finished run resumes from its cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.multiface import BENCHMARK, MultifaceConfig, reader
from fbench.synth.ground_truth import read_ground_truth
from methods.oracle import MEAN, ORACLE, ReferenceConfig

N = 4


@pytest.fixture(scope="session")
def flame(flame_dir):
    from fbench.flame import load_flame

    return load_flame(flame_dir)


@pytest.fixture(scope="session")
def mf_head(tmp_path_factory, flame):
    from conftest import shared_synthetic

    return shared_synthetic(tmp_path_factory, "multiface", flame, N, 0, 0).root


@pytest.fixture(scope="session")
def mf_world(tmp_path_factory, flame):
    from fbench.synth import multiface

    root = tmp_path_factory.mktemp("mf-world")
    multiface.write(root, n=N, seed=0, corrupt=0, flame=flame, mesh_frame="world")
    return root


def _samples(root: Path):
    gt = read_ground_truth(root)
    entity = reader.read_entity(root, reader.list_entities(root)[0])
    out = []
    for ref in entity.frames:
        vertices, pose = reader.load_scan(root, entity, ref)
        out.append((vertices, pose, gt.extras["landmarks68"][gt.paths.index(ref.image)]))
    return entity, out


def _config(flame_dir, **kw):
    return MultifaceConfig(flame=str(flame_dir), icp_points=500, worst_renders=kw.pop("worst_renders", 0), **kw)


def test_world_option_writes_world_coordinates(mf_head, mf_world):
    _, head = _samples(mf_head)
    _, world = _samples(mf_world)
    for (vh, pose, _), (vw, pose_w, _) in zip(head, world):
        np.testing.assert_allclose(pose, pose_w)
        np.testing.assert_allclose(vw, reader.to_world(vh, pose, "head"), atol=1e-3)  # float32 storage, mm
        assert np.abs(vw - vh).max() > 1.0  # the head moves: the two conventions differ


@pytest.mark.parametrize("which,expected", [("head", "head"), ("world", "world")])
def test_reader_decides_the_coordinate_frame(mf_head, mf_world, which, expected):
    root = mf_head if which == "head" else mf_world
    entity, samples = _samples(root)
    decision = reader.decide_mesh_frame(entity.camera, entity.topology.faces, samples, samples[0][0])
    assert decision.reading == expected
    other = "world" if expected == "head" else "head"
    assert decision.scores[expected]["spread_mm"] < 2.0 < decision.scores[other]["spread_mm"]
    # Landmarks that are not on the face (shifted off it): neither reading fits, and it says so.
    shifted = [(v, p, px + np.array([0.0, 330.0])) for v, p, px in samples]
    with pytest.raises(RuntimeError, match="neither reading"):
        reader.decide_mesh_frame(entity.camera, entity.topology.faces, shifted, samples[0][0])


def test_oracle_is_zero_and_mean_is_the_floor(mf_head, flame_dir, tmp_path):
    results = {}
    for plugin in (ORACLE, MEAN):
        method = plugin.build(ReferenceConfig(data_root=str(mf_head)))
        results[plugin.name] = BENCHMARK.evaluate(method, mf_head, tmp_path / plugin.name,
                                                  _config(flame_dir, method_name=plugin.name, max_frames=3,
                                                          worst_renders=1 if plugin is MEAN else 0))
    oracle, mean = results["oracle"], results["mean"]
    assert oracle["n_items"] == 3 and oracle["n_skipped"] == 0  # max_frames: an evenly spaced subset
    assert oracle["mean_mm"] < 1e-3 and oracle["max_mm"] < 1e-2  # float32 meshes + ICP tolerance
    assert mean["mean_mm"] > 0.02 and mean["mean_mm"] > 100 * oracle["mean_mm"]
    assert mean["max_mm"] > mean["median_mm"]
    with open(tmp_path / "mean" / "per_item.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["entity", "frame", "mean_mm", "median_mm", "max_mm", "n_points"]
    # The headline numbers are per-frame statistics averaged over frames.
    assert mean["mean_mm"] == pytest.approx(np.mean([float(r["mean_mm"]) for r in rows]), rel=1e-5)
    assert mean["max_mm"] == pytest.approx(np.mean([float(r["max_mm"]) for r in rows]), rel=1e-5)
    assert mean["pooled"]["max_mm"] == pytest.approx(max(float(r["max_mm"]) for r in rows), rel=1e-5)
    assert list(mean["per_subject"]) == ["9000000"]
    saved = json.loads((tmp_path / "mean" / "metrics.json").read_text())
    assert saved["mean_mm"] == pytest.approx(mean["mean_mm"]) and saved["coordinate_frames"]
    table = (tmp_path / "mean" / "table.md").read_text()
    assert table.index("| mean |") < table.index("Published") < table.index("SMIRK")
    assert (tmp_path / "mean" / "plots" / "cumulative_error.png").is_file()  # both methods' curves
    assert len(list((tmp_path / "mean" / "plots").glob("worst_*.png"))) == 1
    assert (tmp_path / "mean" / "config.yaml").is_file()


class _NoCalls:
    def __init__(self, inner):
        self.crop, self.n_exp, self.inner, self.calls = inner.crop, inner.n_exp, inner, 0

    def reconstruct(self, images, items=None):
        self.calls += 1
        return self.inner.reconstruct(images, items)


def test_bad_frames_are_skipped_counted_and_runs_resume(mf_head, flame_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mf_head, root)
    entity = reader.read_entity(root, reader.list_entities(root)[0])
    refs = entity.frames
    (root / refs[0].mesh).write_bytes((root / refs[0].mesh).read_bytes()[:1000])  # truncated scan
    (root / refs[1].transform).unlink()  # listed frame with a missing file
    oracle = ORACLE.build(ReferenceConfig(data_root=str(root)))
    config = _config(flame_dir, method_name="oracle", max_skip_fraction=0.6)
    first = BENCHMARK.evaluate(oracle, root, tmp_path / "out", config)
    assert first["n_items"] == 2 and first["n_skipped"] == 2
    assert first["skipped"] == {"missing_files": 1, "bad_scan": 1}
    again = _NoCalls(oracle)
    second = BENCHMARK.evaluate(again, root, tmp_path / "out", config)
    assert again.calls == 0 and second["mean_mm"] == first["mean_mm"] and second["n_skipped"] == 2
    # Killed after reconstructing, before scoring: the reconstructions are reused.
    for result in (tmp_path / "out" / "cache").rglob("result/*.npz"):
        result.unlink()
    third = BENCHMARK.evaluate(again, root, tmp_path / "out", config)
    assert again.calls == 0 and third["mean_mm"] == pytest.approx(first["mean_mm"], rel=1e-9)
    # Almost everything broken: the run stops and says why.
    (root / refs[2].image).write_bytes(b"\x89PNG broken")
    with pytest.raises(RuntimeError, match="3 of 4 items failed"):
        BENCHMARK.evaluate(oracle, root, tmp_path / "out2", _config(flame_dir, method_name="oracle"))
