"""Synthetic FaMoS: read back with plain readers (no fbench code), checked against data_cards/famos.yaml,
and the ground truth reproduces the files (FLAME(params) == registration; scans on the GT surface)."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shared_synthetic
import torch
import yaml

from fbench.flame import FLAME, FlameParams
from fbench.geometry import point_mesh_distance
from fbench.synth import SynthResult, famos

CARD = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_cards" / "famos.yaml").read_text())


def read_ply_plain(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Minimal binary little-endian PLY reader: float x y z vertices, uchar-counted int faces."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii")
    nv = int(re.search(r"element vertex (\d+)", header).group(1))
    nf = int(re.search(r"element face (\d+)", header).group(1))
    assert "format binary_little_endian 1.0" in header
    assert re.search(r"property float x\s+property float y\s+property float z", header)
    assert "property list uchar int vertex_indices" in header
    verts = np.frombuffer(raw, dtype="<f4", count=3 * nv, offset=end).reshape(nv, 3)
    rec = np.frombuffer(raw, dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]), count=nf, offset=end + 12 * nv)
    assert (rec["n"] == 3).all()
    return verts.astype(np.float64), rec["i"].astype(np.int64), header


def read_obj_plain(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v, vt, f = [], [], []
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
    return np.array(v), np.array(f), np.array(vt)


@pytest.fixture(scope="module")
def flame(flame_dir: Path) -> FLAME:
    return FLAME(flame_dir)


def shared_famos(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    """The session's synthetic famos (n=1, seed=3, corrupt=4), shared with the other famos test module."""
    return shared_synthetic(tmp_path_factory, "famos", flame, n=1, seed=3, corrupt=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, flame: FLAME) -> SynthResult:
    return shared_famos(tmp_path_factory, flame)


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{subject}"), CARD["layout"]["subject_regex"].strip("^$"))
    pattern = pattern.replace(re.escape("{sequence}"), r"(?P<seq>[a-z_]+)", 1)
    pattern = pattern.replace(re.escape("{sequence}"), r"(?P=seq)")
    pattern = pattern.replace(re.escape("{frame:06d}"), r"[0-9]{6}")
    return re.compile("^" + pattern + "$")


def test_layout_matches_data_card(dataset) -> None:
    root = dataset.root
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    patterns = {k: _template_regex(v) for k, v in CARD["layout"]["files"].items()}
    kinds: dict[str, list[str]] = {k: [] for k in patterns}
    for rel in files:
        if rel in ("fbench_ground_truth.h5", "synth_result.json"):
            continue
        matched = [k for k, p in patterns.items() if p.match(rel)]
        assert len(matched) == 1, f"{rel} matches {matched} of the data card's layout"
        kinds[matched[0]].append(rel)
    synth = CARD["synthetic"]
    subjects = {r.split("/")[0] for r in kinds["registration"]}
    assert subjects == {"FaMoS_subject_001"}
    sequences = {r.split("/")[1] for r in kinds["registration"]}
    assert sequences == set(synth["sequences"]) == set(famos.SEQUENCES)
    assert set(CARD["smirk_sequences"]) <= sequences and set(synth["sequences"]) <= set(CARD["sequences"])
    assert len(kinds["registration"]) == len(sequences) * synth["frames_per_sequence"]
    assert len(kinds["scan"]) == len(sequences) * len(synth["scan_frames"])
    assert dataset.counts["registrations"] == len(kinds["registration"])


def test_registrations_are_flame_of_the_ground_truth(dataset, flame: FLAME) -> None:
    root = dataset.root
    with h5py.File(root / "fbench_ground_truth.h5", "r") as f:
        paths = [p.decode() for p in f["path"][()]]
        params = {k: f["flame"][k][()] for k in f["flame"]}
        frames = f["frame"][()]
    assert len(paths) == famos.FRAMES_PER_SEQUENCE * len(famos.SEQUENCES)
    model = FLAME(flame.assets_files["model"].parent, dtype=torch.float64)
    ok = [i for i, p in enumerate(paths) if p not in dataset.corrupted]
    p = FlameParams.from_dict({k: v[ok] for k, v in params.items()}, n_shape=300, n_exp=100, dtype=torch.float64)
    with torch.no_grad():
        expected = model(p).vertices.numpy()
    for j, i in enumerate(ok):
        verts, faces, _ = read_ply_plain(root / paths[i])
        assert np.array_equal(faces, flame.faces.numpy())
        assert np.abs(verts - expected[j]).max() < 1e-6  # float32 storage of metres
    # Every sequence starts neutral; the action builds up (different components per sequence).
    neutral = frames == 0
    assert np.abs(params["expression"][neutral]).max() == 0 and np.abs(params["jaw"][neutral]).max() == 0
    assert np.abs(params["eyelids"]).max() == 0
    peak = {}
    for i, path in enumerate(paths):
        seq = path.split("/")[1]
        if frames[i] == 5:
            peak[seq] = params["expression"][i]
    jaw_rows = [i for i, p in enumerate(paths) if p.split("/")[1] == "jaw" and frames[i] == 5]
    assert params["jaw"][jaw_rows[0], 0] > 0.2
    dominant = {seq: int(np.argmax(np.abs(e[:20]))) for seq, e in peak.items() if seq != "head_rotation_left_right"}
    assert len(set(dominant.values())) >= 6, dominant


def test_scans_lie_on_the_ground_truth_surface(dataset, flame: FLAME) -> None:
    root = dataset.root
    with h5py.File(root / "fbench_ground_truth.h5", "r") as f:
        paths = [p.decode() for p in f["path"][()]]
        params = {k: f["flame"][k][()] for k in f["flame"]}
    model = FLAME(flame.assets_files["model"].parent, dtype=torch.float64)
    scans = sorted(str(p.relative_to(root)) for p in root.rglob("meshes/*.obj"))
    checked = 0
    for rel in scans[:4]:
        if rel in dataset.corrupted:
            continue
        seq, frame = re.match(r".*/meshes/(.+)\.(\d{6})\.obj$", rel).groups()
        reg = rel.replace(f"meshes/{seq}.{frame}.obj", f"{seq}.{frame}.ply")
        i = paths.index(reg)
        p = FlameParams.from_dict({k: v[i] for k, v in params.items()}, n_shape=300, n_exp=100, dtype=torch.float64)
        with torch.no_grad():
            gt_mesh = model(p).vertices[0].numpy()
        v_mm, f, vt = read_obj_plain(root / rel)
        assert len(v_mm) > flame.num_vertices  # denser than FLAME, own topology
        assert vt.shape == (len(v_mm), 2) and f.max() < len(v_mm)
        d_mm = point_mesh_distance(v_mm / 1000.0, gt_mesh, flame.faces.numpy()).distances * 1000.0
        assert np.median(d_mm) < 1.2 * famos.NOISE_MM and d_mm.max() < 6 * famos.NOISE_MM + 0.05
        checked += 1
    assert checked >= 2


def test_corruptions_are_listed_and_damaged(dataset) -> None:
    root = dataset.root
    assert len(dataset.corrupted) == 4
    kinds = set()
    for rel in dataset.corrupted:
        path = root / rel
        if rel.endswith(".obj"):
            text = path.read_text()
            assert not text.endswith("\n") or len(text.splitlines()[-1].split()) < 4
            kinds.add("obj")
            continue
        raw = path.read_bytes()
        if not raw:
            kinds.add("empty")
            continue
        try:
            verts, _, _ = read_ply_plain(path)
        except (ValueError, AssertionError):
            kinds.add("truncated")
            continue
        assert np.isnan(verts).any()
        kinds.add("nan")
    assert kinds == {"obj", "empty", "truncated", "nan"}
    assert not any(r.endswith(".000000.ply") for r in dataset.corrupted)


def test_deterministic_fast(tmp_path: Path, flame: FLAME, monkeypatch: pytest.MonkeyPatch) -> None:
    """The determinism proof on one sequence (the slow test below rewrites the whole subject): two
    writes with the same seed give byte-identical registrations and scans, and the same corruptions."""
    monkeypatch.setattr(famos, "SEQUENCES", ("kissing",))
    a = famos.write(tmp_path / "a", n=1, seed=3, corrupt=2, flame=flame)
    b = famos.write(tmp_path / "b", n=1, seed=3, corrupt=2, flame=flame)
    assert a.corrupted == b.corrupted and len(a.corrupted) == 2
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file() and p.suffix in (".ply", ".obj"))
    assert len(files) > 5 and any(rel.suffix == ".obj" for rel in files)
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel


@pytest.mark.slow
def test_deterministic(tmp_path: Path, flame: FLAME, dataset) -> None:
    again = famos.write(tmp_path, n=1, seed=3, corrupt=4, flame=flame)
    assert again.corrupted == dataset.corrupted
    for rel in ("FaMoS_subject_001/jaw/jaw.000007.ply", "FaMoS_subject_001/kissing/meshes/kissing.000000.obj"):
        assert (tmp_path / rel).read_bytes() == (dataset.root / rel).read_bytes()
