"""Synthetic BP4D-Spontaneous 3D: read back with plain readers (no fbench code), checked against
data_cards/bp4d.yaml; the ground-truth transform maps the GT FLAME mesh onto the scan within the noise."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shared_synthetic
import torch
import yaml
from PIL import Image

from fbench.flame import FLAME, FlameParams
from fbench.geometry import point_mesh_distance
from fbench.synth import SynthResult, bp4d

CARD = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_cards" / "bp4d.yaml").read_text())


def read_obj_plain(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    v, vt, f, other = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            v.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            vt.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            f.append([int(c.split("/")[0]) - 1 for c in parts[1:4]])
        else:
            other.append(line)
    return np.array(v), np.array(f), np.array(vt), other


def read_wrl_plain(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    text = path.read_text()
    assert text.startswith("#VRML V2.0 utf8")
    point = re.search(r"coord Coordinate \{\s*point \[(.*?)\]", text, re.S).group(1)
    index = re.search(r"\bcoordIndex \[(.*?)\]", text, re.S).group(1)
    url = re.search(r'ImageTexture \{ url "([^"]+)" \}', text).group(1)
    v = np.array([float(x) for x in point.replace(",", " ").split()]).reshape(-1, 3)
    idx = np.array([int(x) for x in index.replace(",", " ").split()]).reshape(-1, 4)
    assert (idx[:, 3] == -1).all()
    return v, idx[:, :3], url


@pytest.fixture(scope="module")
def flame(flame_dir: Path) -> FLAME:
    return FLAME(flame_dir)


def shared_bp4d(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    """The session's synthetic bp4d (n=2, seed=5, corrupt=4), shared with the other bp4d test module."""
    return shared_synthetic(tmp_path_factory, "bp4d", flame, n=2, seed=5, corrupt=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    return shared_bp4d(tmp_path_factory, flame)


def _regex(template: str) -> re.Pattern:
    p = re.escape(template)
    p = p.replace(re.escape("{subject}"), CARD["layout"]["subject_regex"].strip("^$"))
    p = p.replace(re.escape("{task}"), CARD["layout"]["task_regex"].strip("^$"))
    p = p.replace(re.escape("{frame:04d}"), "[0-9]{4}")
    return re.compile("^" + p + "$")


def test_layout_matches_data_card(dataset) -> None:
    root = dataset.root
    patterns = {k: _regex(v) for k, v in CARD["layout"]["files"].items()}
    kinds: dict[str, list[str]] = {k: [] for k in patterns}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in ("fbench_ground_truth.h5", "synth_result.json"):
            continue
        rel = str(path.relative_to(root))
        matched = [k for k, p in patterns.items() if p.match(rel)]
        assert len(matched) == 1, f"{rel} matches {matched}"
        kinds[matched[0]].append(rel)
    subjects = sorted({r.split("/")[0] for r in kinds["texture"]})
    assert subjects == ["F001", "M001"]
    assert {r.split("/")[1] for r in kinds["texture"]} == set(CARD["tasks"])
    per_subject = len(CARD["tasks"]) * CARD["synthetic"]["frames_per_task"]
    assert len(kinds["mesh_obj"]) == len(kinds["material"]) == per_subject  # F001: OBJ
    assert len(kinds["mesh_wrl"]) == per_subject  # M001: VRML
    assert len(kinds["texture"]) == len(kinds["landmarks"]) == 2 * per_subject
    for rel in kinds["mesh_obj"]:
        stem = rel[:-4]
        assert f"{stem}.mtl" in kinds["material"] and f"{stem}.png" in kinds["texture"]
    for rel in kinds["texture"][:2]:
        image = Image.open(root / rel)
        assert image.mode == "RGB" and image.size == (bp4d.TEXTURE_SIZE, bp4d.TEXTURE_SIZE)
    # The 2D frames: one JPEG per scan, one 2D feature track per (subject, task).
    assert sorted(r[:-4] for r in kinds["frame_2d"]) == sorted(r[:-4] for r in kinds["texture"])
    assert len(kinds["features_2d"]) == 2 * len(CARD["tasks"])
    image = Image.open(root / kinds["frame_2d"][0])
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == bp4d.FRAME_2D_SIZE


def _gt(root: Path) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    with h5py.File(root / "fbench_ground_truth.h5", "r") as f:
        return ([p.decode() for p in f["path"][()]], {k: f["flame"][k][()] for k in f["flame"]},
                f["transform"][()], f["landmarks"][()])


def test_scans_are_the_transformed_ground_truth_surface(dataset, flame: FLAME) -> None:
    root = dataset.root
    paths, params, transforms, landmarks = _gt(root)
    model = FLAME(flame.assets_files["model"].parent, dtype=torch.float64)
    checked = set()
    for i, rel in enumerate(paths):
        stem = rel.rsplit(".", 1)[0]
        if rel in dataset.corrupted or f"{stem}_lmk3d.txt" in dataset.corrupted:
            continue
        fmt = rel.rsplit(".", 1)[1]
        if fmt in checked:
            continue
        if fmt == "obj":
            v, f, vt, other = read_obj_plain(root / rel)
            assert vt.shape == (len(v), 2)
            mtl = other[0].split()[1]
            assert other[:2] == [f"mtllib {mtl}", "usemtl skin"]
            assert (root / rel).parent.joinpath(mtl).read_text().strip().endswith(f"map_Kd {Path(stem).name}.png")
        else:
            v, f, url = read_wrl_plain(root / rel)
            assert url == f"{Path(stem).name}.png"
        assert f.max() < len(v) and len(v) > 1000
        t = transforms[i]
        s = np.cbrt(np.linalg.det(t[:3, :3]))
        assert abs(s - 1000.0) < 1e-6  # mm per metre
        rot = t[:3, :3] / s
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9)
        p = FlameParams.from_dict({k: val[i] for k, val in params.items()}, n_shape=300, n_exp=100,
                                  dtype=torch.float64)
        with torch.no_grad():
            out = model(p)
        mesh_mm = out.vertices[0].numpy() @ t[:3, :3].T + t[:3, 3]
        d = point_mesh_distance(v, mesh_mm, flame.faces.numpy()).distances
        assert np.median(d) < 1.2 * bp4d.NOISE_MM and d.max() < 6 * bp4d.NOISE_MM + 0.01
        # Landmarks: the GT landmarks are FLAME's fixed 3D landmarks of that head; the file holds them + noise.
        lmk_gt = out.landmarks_full[0].numpy() @ t[:3, :3].T + t[:3, 3]
        assert np.allclose(landmarks[i], lmk_gt, atol=1e-6)
        lines = (root / f"{stem}_lmk3d.txt").read_text().splitlines()
        lmk_file = np.array([[float(x) for x in line.split()] for line in lines])
        assert lmk_file.shape == (68, 3)
        assert np.abs(lmk_file - lmk_gt).max() < 6 * bp4d.LANDMARK_NOISE_MM
        checked.add(fmt)
    assert checked == {"obj", "wrl"}


def test_scan_is_cropped_remeshed_and_holed(dataset, flame: FLAME) -> None:
    root = dataset.root
    paths, _, _, _ = _gt(root)
    counts = []
    for rel in paths[:6]:
        if rel in dataset.corrupted or not rel.endswith(".obj"):
            continue
        v, f, _, _ = read_obj_plain(root / rel)
        counts.append(len(v))
        assert len(v) != flame.num_vertices
    assert len(set(counts)) > 1  # holes differ per frame
    assert max(counts) < bp4d.SCAN_VERTICES


def test_corruptions(dataset) -> None:
    root = dataset.root
    assert len(dataset.corrupted) == 4
    seen = set()
    for rel in dataset.corrupted:
        data = (root / rel).read_bytes()
        if rel.endswith("_lmk3d.txt"):
            assert len(data.decode().splitlines()) == 40
            seen.add("landmarks")
        elif not data:
            seen.add("empty")
        elif b"nan nan nan" in data:
            seen.add("nan")
        else:
            seen.add("truncated")
    assert seen == {"landmarks", "empty", "nan", "truncated"}


def test_deterministic(tmp_path: Path, flame: FLAME, dataset) -> None:
    again = bp4d.write(tmp_path, n=1, seed=5, corrupt=0, flame=flame)
    for rel in ("F001/T3", "F001/T8"):
        for path in sorted((tmp_path / rel).iterdir()):
            original = dataset.root / rel / path.name
            if str(original.relative_to(dataset.root)) not in dataset.corrupted:
                assert path.read_bytes() == original.read_bytes(), path
    assert again.counts["scans"] == len(bp4d.TASKS) * bp4d.FRAMES_PER_TASK
