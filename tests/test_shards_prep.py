"""The prep runner end to end on the toy dataset (astronaut photos, an H.264 clip, corrupt files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fbench.landmarks import LandmarkConfig, invert_affine, transform_points
from fbench.landmarks.fan import FanUnavailable
from fbench.landmarks.mediapipe_detector import MediaPipeDetector
from fbench.shards import SourceOptions
from fbench.shards.manifest import find_parts, merge_manifests, read_rejects
from fbench.shards.prep import PrepConfig, PrepError, run_prep
from fbench.shards.reader import iter_samples, shard_paths
from pixel_check import assert_crop_matches_affine
from test_shards_data import BLACK_FRAME, CLIP_FRAMES, GOOD_IMAGES, ToySource, image_variants, write_toy_dataset

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def detector():
    with MediaPipeDetector("facemesh") as det:
        yield det


def config(root: Path, out: Path, **kw) -> PrepConfig:
    base = dict(landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh", size=256), maxcount=3,
                frame_stride=2, progress=False)
    base.update(kw)
    return PrepConfig(root=root, out=out, **base)


@pytest.fixture(scope="module")
def reference(toy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted single-process run: the result every other run is compared with."""
    out = tmp_path_factory.mktemp("reference")
    return run_prep(ToySource(), config(toy_root, out))


def manifest_text(path: Path) -> str:
    return path.read_text()


def test_counts_add_up_with_corrupt_inputs(reference) -> None:
    m = json.loads(reference.manifest.read_text())
    clip_samples = len(range(0, CLIP_FRAMES, 2))
    train, val = m["counts"]["train"], m["counts"]["val"]
    assert (train["items"], train["inputs"], train["samples"], train["rejects"]) == (5, 5, GOOD_IMAGES, 1)
    assert (val["items"], val["inputs"], val["samples"], val["rejects"]) == (3, clip_samples + 2, clip_samples, 2)
    for c in (train, val, m["total"]):
        assert c["samples"] + c["rejects"] == c["inputs"]
    # Frame 5 is black but stride 2 skips it; every sampled frame has a face.
    assert val["mp"] == clip_samples and val["no_face"] == 0 and m["total"]["unexpected_errors"] == 0
    rejects = read_rejects(reference.rejects)
    assert [(r["file"], r["frame"]) for r in rejects] == [("train/corrupt.jpg", None), ("val/empty.mp4", None),
                                                          ("val/garbage.mp4", None)]
    assert "corrupt.jpg: cannot decode image" in rejects[0]["reason"]
    assert all("video" in r["reason"] for r in rejects[1:])
    assert sum(s["samples"] for s in m["shards"]) == m["total"]["samples"]
    assert all(s["samples"] <= 3 for s in m["shards"])


def test_shards_follow_the_schema(reference) -> None:
    samples = list(iter_samples(shard_paths(reference.dataset_dir)))
    keys = [s.key for s in samples]
    assert keys == ["toy_train-a0", "toy_train-a1", "toy_train-a2", "toy_train-a3"] + \
        [f"toy_val-clip_f{k:06d}" for k in range(0, CLIP_FRAMES, 2)]
    for s in samples:
        assert s.image.shape == (256, 256, 3) and s.mp.shape == (478, 3) and s.mp.dtype == np.float32
        assert s.fan.shape == (68, 2) and np.isnan(s.fan).all() and s.ann is None
        assert s.meta["dataset"] == "toy" and s.meta["subject"] == "astronaut"
        assert s.meta["box_source"] == "mediapipe" and s.meta["landmarks"] == {"mp": True, "fan": False, "ann": None}
        assert s.meta["landmark_sources"]["mp"].startswith("mediapipe") and s.meta["landmark_sources"]["fan"] is None
        # MediaPipe's points sit inside the crop, around its centre (crop = 2.2 x the landmark box).
        assert (s.mp[:, :2] > 256 * 0.2).all() and (s.mp[:, :2] < 256 * 0.8).all()
    video = [s for s in samples if s.meta["kind"] == "video"]
    assert [s.meta["frame_index"] for s in video] == list(range(0, CLIP_FRAMES, 2))
    assert all(s.meta["source_path"] == "val/clip.mp4" for s in video)
    assert samples[0].meta["labels"] == {"variant": "a0.jpg"} and samples[0].meta["frame_index"] is None


def test_astronaut_round_trip_through_a_shard(reference, detector) -> None:
    """The shard's landmarks, mapped back through the stored affine, are the detection on the
    source photo; and the stored crop is that photo's pixels under the affine."""
    import cv2

    originals = image_variants()
    for sample in iter_samples(shard_paths(reference.dataset_dir, splits=["train"])):
        source = _toy_file(reference, sample.meta["source_path"])
        name = sample.meta["labels"]["variant"].removesuffix(".jpg")
        assert source.shape == originals[name].shape
        direct = detector.detect(source)
        back = transform_points(invert_affine(sample.affine), sample.mp)
        assert np.abs(back[:, :2] - direct[:, :2]).max() < 1e-3
        assert np.abs(back[:, 2] - direct[:, 2]).max() < 1e-3
        expected = cv2.warpAffine(source, sample.affine, (256, 256), flags=cv2.INTER_LINEAR)
        # JPEG (q95) and resize filtering differ slightly from a plain warp: compare means.
        assert np.abs(expected.astype(float) - sample.image.astype(float)).mean() < 6
        # ... and the grid to a tenth of a pixel (a one-pixel shift passed the mean check above).
        assert_crop_matches_affine(sample.image, source, sample.affine, sample.key)


def _toy_file(result, rel: str) -> np.ndarray:
    from fbench.shards import read_image

    manifest = json.loads(result.manifest.read_text())
    return read_image(Path(manifest["root"]) / rel)


def test_black_frame_keeps_its_row_with_nan_landmarks(toy_root: Path, tmp_path: Path) -> None:
    result = run_prep(ToySource(), config(toy_root, tmp_path, frame_stride=1, options=SourceOptions(splits=("val",))))
    samples = {s.meta["frame_index"]: s for s in iter_samples(shard_paths(result.dataset_dir))}
    assert sorted(samples) == list(range(CLIP_FRAMES))
    black, before = samples[BLACK_FRAME], samples[BLACK_FRAME - 1]
    assert np.isnan(black.mp).all() and black.meta["landmarks"]["mp"] is False
    assert black.meta["box_source"] == "previous" and black.meta["affine"] == before.meta["affine"]
    m = json.loads(result.manifest.read_text())
    assert m["counts"]["val"]["no_face"] == 1 and m["counts"]["val"]["samples"] == CLIP_FRAMES
    # 12 frames, maxcount 3: the clip is cut into 4 shards by frame range; all frames once, in order.
    assert [s["samples"] for s in m["shards"]] == [3, 3, 3, 3]


class BreaksAtFrame7(ToySource):
    """The clip decodes up to frame 6 and then fails, as a damaged stream would, whatever range is
    asked for (each piece of a split video decodes from the start); a.jpg variant a2 hits a bug."""

    def frames(self, root, item, stride=1, start=0, stop=None):
        from fbench.shards import InputError

        if item.id == "train/a2":
            raise ZeroDivisionError("a bug in a pipeline")
        if item.id != "val/clip":
            yield from super().frames(root, item, stride, start, stop)
            return
        for index, image in super().frames(root, item, stride, 0, None):
            if index == 7:
                raise InputError(f"{item.path}: damaged at frame 7", frame=7)
            if index >= start and (stop is None or index < stop):
                yield index, image


def test_a_video_failing_mid_way_keeps_its_frames_and_is_one_reject(toy_root: Path, tmp_path: Path) -> None:
    result = run_prep(BreaksAtFrame7(), config(toy_root, tmp_path, frame_stride=1))
    m = json.loads(result.manifest.read_text())
    val, train = m["counts"]["val"], m["counts"]["train"]
    # Frames 0-6 are samples (5 without a face is a sample too); the failure is one reject, reported once
    # although the clip is cut into 4 pieces of 3 frames.
    assert (val["samples"], val["rejects"], val["inputs"]) == (7, 3, 10)
    assert (train["samples"], train["rejects"], train["unexpected_errors"]) == (3, 2, 1)
    rejects = read_rejects(result.rejects)
    clip = [r for r in rejects if r["file"] == "val/clip.mp4"]
    assert len(clip) == 1 and clip[0]["frame"] == 7 and "damaged at frame 7" in clip[0]["reason"]
    bug = [r for r in rejects if r["file"] == "train/a2.jpg"]
    assert bug[0]["reason"] == "unexpected ZeroDivisionError: a bug in a pipeline"
    frames = [s.meta["frame_index"] for s in iter_samples(shard_paths(result.dataset_dir, splits=["val"]))]
    assert frames == list(range(7))


def test_interrupted_run_resumes_to_the_same_manifest(toy_root: Path, tmp_path: Path, reference) -> None:
    cfg = config(toy_root, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_prep(ToySource(interrupt_on="train/a3"), cfg)  # a3 opens the second train unit
    done = sorted(p.name for p in (tmp_path / "toy").rglob("*.tar"))
    assert done == ["toy-train-000000.tar"] and not list((tmp_path / "toy").rglob("*.tmp"))
    assert not (tmp_path / "toy" / "manifest.json").exists()
    result = run_prep(ToySource(), cfg)
    assert result.units_skipped == 1 and result.units_run == result.units_total - 1
    assert manifest_text(result.manifest) == manifest_text(reference.manifest)
    assert result.rejects.read_text() == reference.rejects.read_text()
    again = run_prep(ToySource(), cfg)  # nothing left to do
    assert again.units_run == 0 and manifest_text(again.manifest) == manifest_text(reference.manifest)


def test_partial_shard_files_are_redone(toy_root: Path, tmp_path: Path, reference) -> None:
    """A shard cut short (a crash mid-write leaves .tmp; a damaged final file fails its size check)."""
    cfg = config(toy_root, tmp_path)
    run_prep(ToySource(), cfg)
    shard = tmp_path / "toy" / "train" / "toy-train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    (tmp_path / "toy" / "val" / "toy-val-000000.tar.tmp").write_bytes(b"half a shard")
    result = run_prep(ToySource(), cfg)
    assert result.units_run == 1
    assert manifest_text(result.manifest) == manifest_text(reference.manifest)


def test_parts_merge_into_the_undivided_manifest(toy_root: Path, tmp_path: Path, reference) -> None:
    for i in range(3):
        result = run_prep(ToySource(), config(toy_root, tmp_path, part=(i, 3)))
        assert result.manifest.name == f"manifest.part-{i:04d}-of-0003.json"
    parts = find_parts(tmp_path / "toy")
    assert len(parts) == 3
    merged, rejects = merge_manifests(parts)
    assert merged == json.loads(reference.manifest.read_text())
    assert rejects == read_rejects(reference.rejects)


def test_two_workers_write_identical_shards(toy_root: Path, tmp_path: Path, reference) -> None:
    result = run_prep(ToySource(), config(toy_root, tmp_path, workers=2))
    assert manifest_text(result.manifest) == manifest_text(reference.manifest)


def test_overlap_threads_do_not_change_shards(toy_root: Path, tmp_path: Path, reference) -> None:
    on = run_prep(ToySource(), config(toy_root, tmp_path / "on", overlap=True))
    off = run_prep(ToySource(), config(toy_root, tmp_path / "off", overlap=False))
    assert manifest_text(on.manifest) == manifest_text(off.manifest) == manifest_text(reference.manifest)


def test_resume_with_other_settings_is_refused(toy_root: Path, tmp_path: Path) -> None:
    run_prep(ToySource(), config(toy_root, tmp_path))
    with pytest.raises(PrepError, match="different settings.*content"):
        run_prep(ToySource(), config(toy_root, tmp_path, jpeg_quality=80))
    with pytest.raises(PrepError, match="input items"):
        run_prep(ToySource(), config(toy_root, tmp_path, options=SourceOptions(limit=2)))


def test_fan_required_fails_before_any_output(toy_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))
    cfg = config(toy_root, tmp_path / "out", landmarks=LandmarkConfig(fan="required"))
    with pytest.raises(FanUnavailable, match="2DFAN4"):
        run_prep(ToySource(), cfg)
    assert not (tmp_path / "out").exists()


def test_annotations_only_mode_keeps_ground_truth(toy_root: Path, tmp_path: Path, detector) -> None:
    """--landmarks annotations: no detector runs; the dataset's points define the crop and come
    back exactly through the stored affine (how synthetic ground truth is checked)."""
    truth = {}
    for name in ("a0", "a2"):
        pts = detector.detect(_read(toy_root / "train" / f"{name}.jpg"))[:68, :2]
        truth[f"train/{name}"] = pts + 7.0  # any points will do; shifted so they differ from MediaPipe's
    cfg = config(toy_root, tmp_path, landmarks=LandmarkConfig(landmarks="annotations"),
                 options=SourceOptions(splits=("train",)))
    result = run_prep(ToySource(annotations=truth), cfg)
    m = json.loads(result.manifest.read_text())
    assert m["landmark_sources"] == {"mp": None, "fan": None}
    assert m["counts"]["train"]["samples"] == 2 and m["counts"]["train"]["rejects"] == 3
    reasons = [r["reason"] for r in read_rejects(result.rejects)]
    assert sum("no annotation landmarks" in r for r in reasons) == 2
    for s in iter_samples(shard_paths(result.dataset_dir)):
        assert np.isnan(s.mp).all() and s.meta["box_source"] == "annotations"
        assert s.meta["landmarks"]["ann"] == "ibug68"
        back = transform_points(invert_affine(s.affine), s.ann)
        assert np.abs(back - truth[s.meta["id"]]).max() < 1e-3


def _read(path: Path) -> np.ndarray:
    from fbench.shards import read_image

    return read_image(path)


# Runs by default (issue 15 item 8): about 5-9 s on 2 shared cores, the toy dataset is already small.
def test_sigkilled_worker_then_rerun_gives_the_same_manifest(toy_root: Path, tmp_path: Path, reference) -> None:
    """A worker process dies by SIGKILL part way (2 workers, in a subprocess); the run fails with a
    clear message, and rerunning the same command finishes with the reference manifest."""
    script = f"""
import sys
from pathlib import Path
from fbench.landmarks import LandmarkConfig
from fbench.shards.prep import PrepConfig, PrepError, run_prep
from pixel_check import assert_crop_matches_affine
from test_shards_data import ToySource
if __name__ == "__main__":
    cfg = PrepConfig(root=Path({str(toy_root)!r}), out=Path({str(tmp_path / 'out')!r}),
                     landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh", size=256),
                     maxcount=3, frame_stride=2, workers=2, progress=False)
    try:
        result = run_prep(ToySource(interrupt_on="val/clip", kill=True, only_once_marker={str(tmp_path / 'crashed')!r}),
                          cfg)
        print("SKIPPED", result.units_skipped)
    except PrepError as exc:
        print("PREP ERROR:", exc)
        sys.exit(3)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "worker process died" in first.stdout
    # Units finished before the crash were recorded as they finished (train shards come before the clip).
    recorded = sorted(p.name for p in (tmp_path / "out" / "toy" / ".prep" / "units").glob("*.json"))
    assert recorded and set(recorded) <= {"train-000000.json", "train-000001.json"}
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"SKIPPED {len(recorded)}" in second.stdout  # the rerun resumed: recorded units were not redone
    final = tmp_path / "out" / "toy" / "manifest.json"
    assert final.read_text() == reference.manifest.read_text()
