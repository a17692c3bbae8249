"""The fbench command line: help with examples, assets, FLAME synth/decode."""

from __future__ import annotations


import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

from fbench.cli import main


def _all_commands(group, prefix=()):
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for path, command in _all_commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output or "example" in result.output, f"`fbench {' '.join(path)} --help` has no example"


def test_assets_lists_and_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("FBENCH_HOME", str(tmp_path))
    runner = CliRunner()
    listing = runner.invoke(main, ["assets"])
    assert listing.exit_code == 0
    for name in ("flame2020", "smirk-checkpoint", "teaser-checkpoint", "fan-weights", "mica",
                 "emoca-emotion-resnet50", "vgg16-weights", "mediapipe-face-landmarker", "famos-expression-templates"):
        assert name in listing.output
    assert str(tmp_path) in listing.output and "MISSING" in listing.output
    missing = runner.invoke(main, ["assets", "check", "smirk-checkpoint"])
    assert missing.exit_code == 1 and "SMIRK_em1.pt" in missing.output
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "SMIRK_em1.pt").write_bytes(b"x")
    present = runner.invoke(main, ["assets", "check", "smirk-checkpoint"])
    assert present.exit_code == 0 and "present" in present.output
    unknown = runner.invoke(main, ["assets", "check", "nope"])
    assert unknown.exit_code != 0 and "unknown asset" in unknown.output


def test_flame_synth_is_deterministic(tmp_path, flame_dir):
    result = CliRunner().invoke(main, ["flame", "synth", "--out", str(tmp_path / "m"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    for f in flame_dir.iterdir():
        assert (tmp_path / "m" / f.name).read_bytes() == f.read_bytes(), f.name


def test_flame_decode_single_and_batch(tmp_path, flame_dir):
    from fbench.flame import FLAME, FlameParams

    runner = CliRunner()
    np.savez(tmp_path / "one.npz", jaw=[0.2, 0, 0], expression=np.linspace(-1, 1, 10), translation=[0, 0, 0.1])
    result = runner.invoke(main, ["flame", "decode", "--flame", str(flame_dir), "--params", str(tmp_path / "one.npz"),
                                  "--out", str(tmp_path / "one.obj")])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.output  # says which model it used
    mesh = trimesh.load(tmp_path / "one.obj", process=False, maintain_order=True)
    model = FLAME(flame_dir)
    expected = model(FlameParams.from_dict(dict(np.load(tmp_path / "one.npz")), n_exp=10)).vertices[0].detach()
    np.testing.assert_allclose(mesh.vertices, expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, model.faces.numpy())

    np.savez(tmp_path / "batch.npz", expression=np.random.default_rng(0).normal(size=(3, 50)))
    result = runner.invoke(main, ["flame", "decode", "--flame", str(flame_dir), "--params",
                                  str(tmp_path / "batch.npz"), "--out", str(tmp_path / "b.obj")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("b_*.obj")) == ["b_000.obj", "b_001.obj", "b_002.obj"]


@pytest.mark.parametrize("content, message", [
    (b"not an npz", "not a readable .npz"),
    (None, "no such parameter file"),
])
def test_flame_decode_bad_params_file(tmp_path, flame_dir, content, message):
    params = tmp_path / "p.npz"
    if content is not None:
        params.write_bytes(content)
    result = CliRunner().invoke(main, ["flame", "decode", "--flame", str(flame_dir), "--params", str(params),
                                       "--out", str(tmp_path / "m.obj")])
    assert result.exit_code == 1 and message in result.output and str(params) in result.output


def test_flame_decode_unknown_key(tmp_path, flame_dir):
    np.savez(tmp_path / "p.npz", jaw_pose=[0, 0, 0])
    result = CliRunner().invoke(main, ["flame", "decode", "--flame", str(flame_dir), "--params",
                                       str(tmp_path / "p.npz"), "--out", str(tmp_path / "m.obj")])
    assert result.exit_code == 1 and "unknown FLAME parameter" in result.output


def test_demo_runs_end_to_end(tmp_path, flame_dir):
    import json

    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--flame", str(flame_dir)])
    assert result.exit_code == 0, result.output
    for name in ("neutral", "expression", "jaw_open", "eyes_closed", "head_turn"):
        assert (out / f"{name}.obj").is_file() and (out / f"{name}.png").is_file()
    manifest = json.loads((out / "shards" / "affectnet" / "manifest.json").read_text())
    rejects = (out / "shards" / "affectnet" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1  # the one file the demo corrupts on purpose
    samples = sum(split["samples"] for split in manifest["counts"].values())
    assert samples + len(rejects) == 16, manifest["counts"]
    assert (out / "fits" / "fits.h5").is_file() and list((out / "templates").rglob("*.npy"))
    # a short SMIRK core training on the FFHQ shards, with the templates exported above
    import yaml

    from fbench.io import load_checkpoint

    run = out / "runs" / "smirk"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["position"]["step"] == 2
    assert (run / "images" / "step_0000002.png").is_file()
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["train"]["phase"] == "core" and "FaMoS expression templates from" in record["run"]["cycle_templates"]
    # its checkpoint reconstructed the AffectNet images (four, the corrupted one left out) and was scored
    assert len(list((out / "reconstructions").rglob("params.npz"))) == 4
    assert "[7/8] fbench reconstruct --method smirk: 4 AffectNet images" in result.output
    assert yaml.safe_load((out / "results" / "multiface" / "smirk" / "config.yaml").read_text())["checkpoint"] \
        == str(run / "SMIRK.pt")
    check_demo_contents(out, flame_dir)


def check_demo_contents(out, flame_dir) -> None:
    """The demo's outputs read back with independent readers (trimesh, PIL, tarfile, h5py, np.load)."""
    import io
    import json
    import tarfile

    import h5py
    import trimesh
    from PIL import Image

    from independent_flame import read_flame_dir

    raw = read_flame_dir(flame_dir)
    meshes = {}
    for name in ("neutral", "expression", "jaw_open", "eyes_closed", "head_turn"):
        mesh = trimesh.load(out / f"{name}.obj", process=False, force="mesh")
        assert mesh.vertices.shape == raw["v_template"].shape and len(mesh.faces) == len(raw["faces"]), name
        assert np.isfinite(mesh.vertices).all()
        meshes[name] = np.asarray(mesh.vertices)
        image = np.asarray(Image.open(out / f"{name}.png").convert("RGB"), dtype=np.float64)
        assert image.shape == (224, 224, 3)
        lit = (image.max(axis=2) > 0).mean()
        assert 0.1 < lit < 0.95 and image[image.max(axis=2) > 0].std() > 5, (name, lit)  # a shaded face, not blank
    # Neutral is FLAME's template (metres, as written); the others move it.
    np.testing.assert_allclose(meshes["neutral"], raw["v_template"], atol=1e-6)
    for name in ("expression", "jaw_open", "eyes_closed", "head_turn"):
        assert np.abs(meshes[name] - meshes["neutral"]).max() > 1e-3, name
    # Shards: plain tarfile + PIL + json, samples counted against the manifest.
    folder = out / "shards" / "affectnet"
    manifest = json.loads((folder / "manifest.json").read_text())
    n = 0
    for tar_path in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        keys = {name.split(".", 1)[0] for name in members}
        for key in keys:
            image = Image.open(io.BytesIO(members[f"{key}.jpg"]))
            assert image.size[0] == image.size[1] and image.size[0] >= 64
            meta = json.loads(members[f"{key}.json"])
            assert meta["dataset"] == "affectnet" and len(meta["affine"]) == 2
            mp = np.load(io.BytesIO(members[f"{key}.mp.npy"]))
            assert mp.shape == (478, 3)
            n += 1
    assert n == manifest["total"]["samples"] == sum(c["samples"] for c in manifest["counts"].values()) > 0
    # Fits: every fitted frame plausible (finite, residual medians near the synthetic scan noise), one
    # template per fitted frame.
    with h5py.File(out / "fits" / "fits.h5", "r") as f:
        frames = 0
        for subject in f:
            if subject == "failures":
                continue
            for sequence in f[subject]:
                g = f[subject][sequence]
                frames += len(g["frame"])
                assert np.isfinite(g["expression"][()]).all() and np.isfinite(g["transform"][()]).all()
                assert (g["residual_median_mm"][()] < 1.0).all(), g["residual_median_mm"][()]
    templates = list((out / "templates").rglob("*.npy"))
    assert frames > 0 and len(templates) == frames
    for path in templates:
        record = np.load(path, allow_pickle=True).item()
        assert np.isfinite(record["expression"]).all() and record["pose"].shape == (15,)
