"""`fbench shards inspect | merge-manifests` and the prep command built from a source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fbench.cli.prep import prep_command
from fbench.cli.shards import shards_group
from fbench.shards.source import Choice
from test_shards_data import CLIP_FRAMES, ToySource, write_toy_dataset


class RecordingSource(ToySource):
    """Remembers the options the command passed (the MEAD-style --views filter)."""

    seen: list = []

    def items(self, root, options):
        RecordingSource.seen.append(options)
        return super().items(root, options)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def prepped(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    command = prep_command(RecordingSource(), "Toy prep.", choices=(Choice("views", ("front", "left_30", "top"), "camera views"),))
    result = CliRunner().invoke(command, ["--root", str(toy_root), "--out", str(out), "--maxcount", "4", "--size", "200",
                                          "--frame-stride", "3", "--fan", "off", "--no-progress", "--views", "front,left_30"])
    assert result.exit_code == 0, result.output
    assert "toy: 8 samples in" in result.output and "3 rejects" in result.output
    return out / "toy"


def test_prep_command_passes_options(prepped: Path) -> None:
    options = RecordingSource.seen[-1]
    assert options.filters == {"views": ("front", "left_30")} and options.limit is None and options.splits is None
    manifest = json.loads((prepped / "manifest.json").read_text())
    assert manifest["config"]["frame_stride"] == 3 and manifest["config"]["landmarks"]["size"] == 200
    assert manifest["config"]["options"]["filters"] == {"views": ["front", "left_30"]}
    assert manifest["counts"]["val"]["samples"] == len(range(0, CLIP_FRAMES, 3))


def test_prep_command_errors_are_readable(toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    command = prep_command(ToySource(), "Toy prep.")
    base = ["--root", str(toy_root), "--out", str(tmp_path / "out"), "--no-progress"]
    result = CliRunner().invoke(command, base + ["--fan", "required"])
    assert result.exit_code == 1 and "2DFAN4-11f355bf06.pth.tar" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(command, base + ["--limit", "1", "--splits", "train"])  # click 8.2+: stderr kept apart
    assert result.exit_code == 0 and "note: FAN is off" in result.stderr and "2DFAN4" in result.stderr
    result = CliRunner().invoke(command, base + ["--part", "4/4"])
    assert result.exit_code == 2 and "0..N-1" in result.output
    result = CliRunner().invoke(command, base + ["--splits", "dev"])
    assert result.exit_code == 1 and "unknown split" in result.output
    assert "fbench prep toy --root" in CliRunner().invoke(command, ["--help"]).output


def test_inspect_prints_counts_and_draws_landmarks(prepped: Path, tmp_path: Path) -> None:
    png = tmp_path / "sample.png"
    result = CliRunner().invoke(shards_group, ["inspect", str(prepped), "--sample", "2", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert re.search(r"train\s+samples\s+4\s+rejects\s+1", result.output)
    assert "1 x cannot decode image" in result.output and f"wrote {png}" in result.output
    assert "sample toy_train-a2" in result.output
    import cv2

    drawn = cv2.imread(str(png), cv2.IMREAD_COLOR_RGB)
    assert drawn.shape == (200, 200, 3)
    # The MediaPipe points are drawn in pure green where the shard says they are.
    from fbench.shards.reader import iter_samples, shard_paths

    sample = [s for s in iter_samples(shard_paths(prepped)) if s.key == "toy_train-a2"][0]
    x, y = np.round(sample.mp[1, :2]).astype(int)
    patch = drawn[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
    assert any(p[1] > 200 and p[0] < 80 and p[2] < 80 for p in patch)


def test_inspect_a_single_tar_by_key(prepped: Path, tmp_path: Path) -> None:
    tar = prepped / "val" / "toy-val-000000.tar"
    png = tmp_path / "v.png"
    result = CliRunner().invoke(shards_group, ["inspect", str(tar), "--key", "toy_val-clip_f000003", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "4 samples" in result.output and "frame 3" in result.output and png.exists()
    result = CliRunner().invoke(shards_group, ["inspect", str(tar), "--key", "nope"])
    assert result.exit_code == 1 and "no sample with key nope" in result.output


def test_merge_manifests_command(toy_root: Path, tmp_path: Path, prepped: Path) -> None:
    command = prep_command(ToySource(), "Toy prep.")
    args = ["--root", str(toy_root), "--out", str(tmp_path), "--maxcount", "4", "--size", "200", "--frame-stride", "3",
            "--fan", "off", "--no-progress"]
    for part in ("0/2", "1/2"):
        # Part 1/2 holds only the toy's unreadable inputs: its manifest is written, and the run exits 1
        # because every input it had was rejected.
        result = CliRunner().invoke(command, args + ["--part", part])
        assert result.exit_code == 0 or (part == "1/2" and "every input was rejected (3)" in result.output), \
            result.output
    result = CliRunner().invoke(shards_group, ["merge-manifests", str(tmp_path / "toy")])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    whole = json.loads((prepped / "manifest.json").read_text())
    # The undivided run saw a --views filter; everything else (shards, sha256, counts) is the same.
    whole["config"]["options"]["filters"] = {}
    assert {k: v for k, v in merged.items() if k not in ("identity", "root")} == \
        {k: v for k, v in whole.items() if k not in ("identity", "root")}
    assert (tmp_path / "toy" / "rejects.jsonl").read_text().count("\n") == 3
    result = CliRunner().invoke(shards_group, ["merge-manifests", str(tmp_path / "toy" / "manifest.part-0000-of-0002.json")])
    assert result.exit_code == 1 and "missing [1]" in result.output


def test_prep_settings_come_from_config_file_overrides_and_typed_options(toy_root: Path, tmp_path: Path) -> None:
    """Defaults < --config < -o < typed options; the resolved config.yaml reproduces the run."""
    import yaml

    settings = tmp_path / "prep.yaml"
    settings.write_text("landmarks: {size: 96, fan: 'off'}\nmaxcount: 7\nframe_stride: 3\n")
    command = prep_command(ToySource(), "Toy prep.")
    out = tmp_path / "out"
    result = CliRunner().invoke(command, ["--root", str(toy_root), "--out", str(out), "--no-progress",
                                          "--config", str(settings), "-o", "maxcount=4", "--size", "64"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "toy" / "manifest.json").read_text())["config"]
    assert manifest["landmarks"]["size"] == 64  # typed option beats the file
    assert manifest["maxcount"] == 4  # -o beats the file
    assert manifest["frame_stride"] == 3 and manifest["landmarks"]["fan"] == "off"  # from the file
    resolved = yaml.safe_load((out / "toy" / "config.yaml").read_text())
    assert resolved["landmarks"]["size"] == 64 and resolved["maxcount"] == 4 and resolved["root"] == str(toy_root)
    again = CliRunner().invoke(command, ["--config", str(out / "toy" / "config.yaml"), "--out", str(tmp_path / "b"),
                                         "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b" / "toy" / "manifest.json").read_text())["config"] == manifest
    bad = CliRunner().invoke(command, ["--root", str(toy_root), "--out", str(out), "-o", "landmarks.sise=3"])
    assert bad.exit_code == 2 and "landmarks.sise" in bad.output and "Traceback" not in bad.output
