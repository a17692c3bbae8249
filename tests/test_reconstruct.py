"""fbench.reconstruct end to end with a SMIRK model built from its config (random weights:
these tests check the plumbing, never accuracy) on skimage's astronaut photo."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fbench.landmarks.crop import crop_for_method, method_crop_affine
from fbench.plugins import CropSpec
from fbench.reconstruct import (
    ReconstructOptions,
    load_reconstruction,
    one_euro,
    run_reconstruct,
    savgol,
    smooth_params,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from methods.smirk.plugin import SmirkConfig, build

    torch.manual_seed(0)
    m = build(SmirkConfig(generator=False))
    with torch.no_grad():  # make every parameter group depend on the pixels
        m.encoder.shape_encoder.shape_layers[0].weight.normal_(0, 0.01)
    return m


@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import load_flame

    return load_flame(flame_dir)


@pytest.fixture(scope="module")
def astro_points(astronaut) -> np.ndarray:
    from fbench.landmarks.mediapipe_detector import MediaPipeDetector

    with MediaPipeDetector() as det:
        points = det.detect(astronaut)
    assert np.isfinite(points).all()
    return points


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def test_crop_for_method_is_the_official_demo_crop(astronaut, astro_points):
    from skimage.transform import estimate_transform, warp

    pts = astro_points[:, :2].astype(np.float64)
    crop, affine = crop_for_method(astronaut, astro_points, CropSpec(size=224, scale=1.4))
    # demo.py crop_face, written out: int(mean side x 1.4), corners onto 0 and 223
    left, right, top, bottom = pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()
    size = int((right - left + bottom - top) / 2 * 1.4)
    c = np.array([right - (right - left) / 2, bottom - (bottom - top) / 2])
    src = np.array([[c[0] - size / 2, c[1] - size / 2], [c[0] - size / 2, c[1] + size / 2],
                    [c[0] + size / 2, c[1] - size / 2]])
    tform = estimate_transform("similarity", src, np.array([[0, 0], [0, 223], [223, 0]]))
    np.testing.assert_allclose(affine, tform.params[:2], atol=1e-9)
    ref = warp(astronaut, tform.inverse, output_shape=(224, 224), preserve_range=True).astype(np.uint8)
    diff = np.abs(ref.astype(np.float32) / 255 - crop)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.float32 and diff.max() <= 3.5 / 255 and diff.mean() < 1 / 255
    with_nan = np.vstack([astro_points, np.full((5, 3), np.nan)])
    np.testing.assert_array_equal(method_crop_affine(with_nan, 1.4, 224), affine)
    with pytest.raises(ValueError, match="two finite landmarks"):
        crop_for_method(astronaut, np.full((4, 2), np.nan), CropSpec())


def test_astronaut_end_to_end(model, flame, astronaut, astro_points, tmp_path):
    src = _write(tmp_path / "in" / "astronaut photo.png", astronaut)
    options = ReconstructOptions(mesh="obj", render=True, landmarks=True, flame=flame, progress=False)
    summary = run_reconstruct(model, [src], tmp_path / "out", options)
    out = tmp_path / "out" / "astronaut_photo"
    assert summary.done == 1 and summary.faces == 1 and summary.failures == 0
    params, extras = load_reconstruction(out / "params.npz")
    assert params.batch_size == 1 and params.expression.shape == (1, model.n_exp)
    crop, affine = crop_for_method(astronaut, astro_points, model.crop)
    expected = model.reconstruct(torch.from_numpy(crop).permute(2, 0, 1)[None])
    for name, value in expected.as_dict().items():
        torch.testing.assert_close(getattr(params, name), value, atol=1e-5, rtol=0, msg=name)
    np.testing.assert_allclose(extras["affine"][0], affine)
    assert extras["frame"].tolist() == [-1] and extras["face"].tolist() == [0]
    mesh = (out / "mesh.obj").read_text()
    assert mesh.count("\nv ") + mesh.startswith("v ") == flame.num_vertices
    render = cv2.cvtColor(cv2.imread(str(out / "render.png")), cv2.COLOR_BGR2RGB)
    marks = cv2.cvtColor(cv2.imread(str(out / "landmarks.png")), cv2.COLOR_BGR2RGB)
    x0, y0 = astro_points[:, :2].min(0).astype(int)
    x1, y1 = astro_points[:, :2].max(0).astype(int)
    changed = np.abs(render.astype(int) - astronaut).max(-1) > 8
    assert changed[y0:y1, x0:x1].mean() > 0.3  # the shaded face covers the face
    assert not changed[:, : x0 - 60].any() and not changed[y1 + 60:].any()  # and nothing far from it
    assert (np.abs(marks.astype(int) - astronaut).max(-1) > 8)[y0:y1, x0:x1].mean() > 0.05


def test_folder_no_face_corrupt_resume_and_all_faces(model, astronaut, tmp_path):
    head = astronaut[0:240, 100:340]  # MediaPipe's detector needs faces large in the frame
    small = cv2.resize(head, (160, 160), interpolation=cv2.INTER_AREA)
    pair = np.concatenate([head, np.pad(small, ((0, 80), (0, 0), (0, 0)))], axis=1)
    folder = tmp_path / "photos"
    _write(folder / "a.png", head)
    _write(folder / "pair.jpg", pair)
    _write(folder / "wall.png", np.full((160, 120, 3), 128, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    summary = run_reconstruct(model, [folder], out, ReconstructOptions(progress=False, batch_size=3))
    assert summary.inputs == 4 and summary.done == 4 and summary.faces == 2 and summary.failures == 2
    fails = {Path(f["input"]).name: f for f in _failures(out)}
    assert fails["wall.png"]["reason"] == "no face found" and fails["wall.png"]["frame"] is None
    assert "broken.jpg" in fails["broken.jpg"]["reason"] and "cannot read image header" in fails["broken.jpg"]["reason"]
    params, extras = load_reconstruction(out / "photos" / "wall" / "params.npz")
    assert params is None and extras["frame"].shape == (0,)
    _, ae = load_reconstruction(out / "photos" / "a" / "params.npz")
    p, pe = load_reconstruction(out / "photos" / "pair" / "params.npz")
    assert p.batch_size == 1  # largest face only by default: the full-size astronaut, about the same crop
    np.testing.assert_allclose(pe["affine"][0], ae["affine"][0], rtol=0.05, atol=4)
    # resume: nothing is redone
    stamp = (out / "photos" / "a" / "params.npz").stat().st_mtime_ns
    again = run_reconstruct(model, [folder], out, ReconstructOptions(progress=False))
    assert again.skipped == 4 and again.done == 0
    assert (out / "photos" / "a" / "params.npz").stat().st_mtime_ns == stamp
    # every face, largest first
    both = run_reconstruct(model, [folder / "pair.jpg"], tmp_path / "all",
                           ReconstructOptions(progress=False, all_faces=True))
    _, e2 = load_reconstruction(tmp_path / "all" / "pair" / "params.npz")
    assert both.faces == 2 and e2["face"].tolist() == [0, 1]
    assert e2["affine"][0, 0, 0] < e2["affine"][1, 0, 0]  # the smaller face is magnified more
    assert e2["landmarks_mp"][0, :, 0].mean() < 240 < e2["landmarks_mp"][1, :, 0].mean()
    np.testing.assert_allclose(e2["affine"][0], pe["affine"][0])


def test_bad_arguments_name_the_problem(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        run_reconstruct(model, [tmp_path / "nope.png"], tmp_path / "o")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="x.txt: not an image"):
        run_reconstruct(model, [tmp_path / "x.txt"], tmp_path / "o")
    with pytest.raises(ValueError, match="FLAME"):
        ReconstructOptions(render=True)
    with pytest.raises(ValueError, match="smoothing"):
        ReconstructOptions(smooth="kalman")


def _clip(astronaut: np.ndarray, path: Path, blank_at: int, n: int = 6) -> Path:
    from fbench.synth.video import write_h264

    head = np.ascontiguousarray(astronaut[0:240, 100:340])
    shifts = np.random.default_rng(0).integers(-8, 9, n)
    frames = [np.roll(head, int(s), axis=1) for s in shifts]
    frames[blank_at] = np.full_like(head, 100)  # no face in this frame
    write_h264(path, frames, fps=10)
    return path


def test_video_keeps_frame_indices_and_smooths(model, astronaut, tmp_path):
    video = _clip(astronaut, tmp_path / "clip.mp4", blank_at=1)
    out = tmp_path / "out"
    summary = run_reconstruct(model, [video], out, ReconstructOptions(progress=False, batch_size=2))
    assert summary.faces == 5 and [f["frame"] for f in _failures(out)] == [1]
    raw, extras = load_reconstruction(out / "clip" / "params.npz")
    assert extras["frame"].tolist() == [0, 2, 3, 4, 5] and float(extras["fps"]) == 10
    run_reconstruct(model, [video], tmp_path / "smooth", ReconstructOptions(
        smooth="savgol", savgol_window=3, savgol_order=1, progress=False))
    sm, se = load_reconstruction(tmp_path / "smooth" / "clip" / "params.npz")
    assert se["frame"].tolist() == [0, 2, 3, 4, 5]
    # frame 0 is a run of its own (frame 1 has no face): untouched; frames 2..5 are smoothed
    torch.testing.assert_close(sm[0].global_pose, raw[0].global_pose)
    assert not torch.allclose(sm[1:].global_pose, raw[1:].global_pose)
    assert sm[1:].global_pose.std(0).sum() < raw[1:].global_pose.std(0).sum()


@pytest.mark.slow
def test_video_meshes_and_render(model, flame, astronaut, tmp_path):
    import av

    video = _clip(astronaut, tmp_path / "clip.mp4", blank_at=2, n=5)
    out = tmp_path / "out"
    run_reconstruct(model, [video], out, ReconstructOptions(render=True, landmarks=True, mesh="ply", flame=flame,
                                                            smooth="one-euro", progress=False))
    assert sorted(p.name for p in (out / "clip" / "meshes").iterdir()) == [f"{i:06d}.ply" for i in (0, 1, 3, 4)]
    for name in ("render.mp4", "landmarks.mp4"):
        with av.open(str(out / "clip" / name)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5, name


def test_smoothing_filters():
    t = np.arange(90) / 30.0
    rng = np.random.default_rng(1)
    clean = np.stack([np.sin(2 * np.pi * 0.2 * t), np.full_like(t, 0.3)], 1)
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    for smooth in (one_euro(noisy, t, min_cutoff=1.0, beta=2.0, d_cutoff=1.0), savgol(noisy, 9, 2)):
        assert smooth.shape == noisy.shape
        assert np.abs(smooth - clean)[5:].mean() < 0.7 * np.abs(noisy - clean)[5:].mean()
    still = one_euro(noisy[:, 1:], t, min_cutoff=1.0, beta=0.0, d_cutoff=1.0)  # at rest: strong smoothing
    assert np.abs(still - 0.3)[10:].mean() < 0.4 * np.abs(noisy[:, 1:] - 0.3)[10:].mean()
    const = np.full((10, 3), 2.0)
    np.testing.assert_allclose(one_euro(const, np.arange(10.0), 1.0, 0.5, 1.0), const)
    np.testing.assert_allclose(savgol(const, 5, 2), const)
    # the largest face's runs are smoothed; another face's rows and other runs are not mixed in
    n = 8
    arrays = {k: np.zeros((n, w), np.float32) for k, w in (("shape", 2), ("expression", 2), ("jaw", 3),
              ("eyelids", 2), ("global_pose", 3), ("neck", 3), ("eyes", 6), ("cam", 3), ("translation", 3))}
    arrays["expression"][:, 0] = [0, 1, 0, 1, 0, 5, 5, 5]
    frames = np.array([0, 1, 2, 3, 4, 4, 9, 10])
    faces = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    options = ReconstructOptions(smooth="savgol", savgol_window=5, savgol_order=1)
    out = smooth_params(arrays, frames, faces, 25.0, options)
    assert np.ptp(out["expression"][:5, 0]) < 0.5  # zig-zag flattened
    assert out["expression"][5, 0] == 5 and out["expression"][6:, 0].tolist() == [5, 5]


def test_a_detector_crash_on_one_image_is_logged_not_raised(model, astronaut, tmp_path, monkeypatch):
    from fbench.landmarks.mediapipe_detector import MediaPipeDetector

    real = MediaPipeDetector.detect_faces

    def flaky(self, image):
        if image.shape[0] == 100:
            raise RuntimeError("graph error")
        return real(self, image)

    monkeypatch.setattr(MediaPipeDetector, "detect_faces", flaky)
    folder = tmp_path / "in"
    _write(folder / "bad.png", np.zeros((100, 100, 3), np.uint8))
    _write(folder / "good.png", np.ascontiguousarray(astronaut[0:240, 100:340]))
    summary = run_reconstruct(model, [folder], tmp_path / "out", ReconstructOptions(progress=False))
    assert summary.done == 2 and summary.faces == 1
    (fail,) = _failures(tmp_path / "out")
    assert fail["input"].endswith("bad.png") and "graph error" in fail["reason"]
