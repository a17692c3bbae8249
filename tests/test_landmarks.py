"""Landmark detectors (MediaPipe on a real photo, FAN's no-download guard and output parsing) and crops."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.landmarks import (Annotator, CropBox, LandmarkConfig, choose_box, crop_square, invert_affine, landmark_box,
                              transform_points)
from fbench.landmarks.fan import FAN_NET_FILE, S3FD_FILE, FanDetector, FanUnavailable, resolve_fan_mode, select_face
from fbench.landmarks.mediapipe_detector import (MediaPipeDetector, normalized_list_to_array, resolve_backend,
                                                 tasks_result_to_array)

# The astronaut's face in skimage.data.astronaut() (512 x 512): generous bounds around head and chin.
FACE = (150, 40, 300, 220)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with MediaPipeDetector("facemesh") as det:
        yield det


@pytest.fixture()
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so FAN weights are missing whatever the machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


# --------------------------------------------------------------------------------------- MediaPipe


def test_mediapipe_finds_478_points_inside_the_astronauts_face(detector, photo) -> None:
    points = detector.detect(photo)
    assert points.shape == (478, 3) and points.dtype == np.float32
    assert np.isfinite(points).all()
    x0, y0, x1, y1 = FACE
    assert (points[:, 0] > x0).all() and (points[:, 0] < x1).all()
    assert (points[:, 1] > y0).all() and (points[:, 1] < y1).all()
    # z is in pixels like x: a face's depth range is a fraction of its width, not of 1.
    assert 5 < np.ptp(points[:, 2]) < np.ptp(points[:, 0])
    # Landmark 1 (nose tip) lies between the eye corners 33 and 263 horizontally.
    assert min(points[33, 0], points[263, 0]) < points[1, 0] < max(points[33, 0], points[263, 0])


def test_direct_graph_path_equals_facemesh_process(detector, photo) -> None:
    """The detector skips FaceMesh.process's per-call namedtuple; its landmarks are FaceMesh's, bit for bit."""
    import mediapipe as mp

    assert detector._direct is not None  # the pinned mediapipe has the internals the fast path uses
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        for image in (photo, np.ascontiguousarray(photo[40:300, 100:400]), np.zeros((64, 64, 3), np.uint8)):
            result = mesh.process(image)
            ours = detector.detect(image)
            if result.multi_face_landmarks is None:
                assert np.isnan(ours).all()
                continue
            lm = result.multi_face_landmarks[0].landmark
            h, w = image.shape[:2]
            expected = np.array([[p.x * w, p.y * h, p.z * w] for p in lm], np.float32)
            assert np.array_equal(ours, expected)


def test_mediapipe_no_face_gives_nan(detector) -> None:
    points = detector.detect(np.zeros((240, 320, 3), np.uint8))
    assert points.shape == (478, 3) and np.isnan(points).all()


def test_mediapipe_follows_the_image(detector, photo) -> None:
    """A flipped photo gives mirrored landmarks; a shifted one shifted landmarks (pixels, not normalised)."""
    base = detector.detect(photo)
    flipped = detector.detect(np.ascontiguousarray(photo[:, ::-1]))
    assert abs(np.mean(flipped[:, 0]) - (512 - np.mean(base[:, 0]))) < 3
    padded = np.zeros((612, 612, 3), np.uint8)
    padded[100:, 50:562] = photo
    moved = detector.detect(padded)
    assert np.allclose(np.median(moved[:, :2] - base[:, :2], axis=0), [50, 100], atol=3)


def test_mediapipe_rejects_non_rgb_input(detector) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_protobuf_fast_path_matches_fields_and_falls_back() -> None:
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, (478, 3)).astype(np.float32)
    lst = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in values:
        lst.landmark.add(x=float(x), y=float(y), z=float(z))
    assert np.array_equal(normalized_list_to_array(lst), values)
    lst.landmark[7].x = 0.0  # proto3 omits a zero field: the fixed-size record layout breaks
    lst.landmark[9].visibility = 0.5
    values[7, 0] = 0.0
    assert np.array_equal(normalized_list_to_array(lst), values)


def test_tasks_result_parsing_scales_to_pixels() -> None:
    pts = [SimpleNamespace(x=0.5, y=0.25, z=-0.1)] * 478
    out = tasks_result_to_array(SimpleNamespace(face_landmarks=[pts]), width=200, height=100)
    assert out.shape == (478, 3) and np.allclose(out[0], [100, 25, -20])
    assert np.isnan(tasks_result_to_array(SimpleNamespace(face_landmarks=[]), 200, 100)).all()
    with pytest.raises(RuntimeError, match="478"):
        tasks_result_to_array(SimpleNamespace(face_landmarks=[pts[:468]]), 200, 100)


def test_backend_selection_without_the_task_asset() -> None:
    # conftest points FBENCH_HOME at an empty folder: no face_landmarker.task.
    assert resolve_backend("auto") == ("facemesh", None)
    with pytest.raises(FileNotFoundError, match="face_landmarker.task.*mediapipe-face-landmarker"):
        resolve_backend("tasks")


# --------------------------------------------------------------------------------------------- FAN


def test_fan_required_fails_up_front_naming_files_and_source(empty_hub: Path) -> None:
    with pytest.raises(FanUnavailable) as err:
        resolve_fan_mode("required")
    message = str(err.value)
    for name in (FAN_NET_FILE, S3FD_FILE):
        assert str(empty_hub / name) in message
    assert "adrianbulat.com" in message and "--fan off" in message
    assert resolve_fan_mode("auto") is False and resolve_fan_mode("off") is False


def test_fan_never_constructs_face_alignment_without_weights(empty_hub: Path, monkeypatch) -> None:
    import sys

    def download_trap(*args, **kwargs):
        raise AssertionError("face_alignment.FaceAlignment would download its weights")

    # A stand-in module: importing the real one costs seconds (torch), and it must not be reached anyway.
    monkeypatch.setitem(sys.modules, "face_alignment", SimpleNamespace(FaceAlignment=download_trap))
    with pytest.raises(FanUnavailable):
        FanDetector()
    # auto: the annotator simply runs without FAN.
    fake_mp = SimpleNamespace(detect=lambda im: np.full((478, 3), np.nan, np.float32), close=lambda: None)
    assert Annotator(LandmarkConfig(fan="auto"), mediapipe=fake_mp).fan is None


def test_fan_auto_uses_weights_when_present(empty_hub: Path) -> None:
    empty_hub.mkdir(parents=True)
    for name in (FAN_NET_FILE, S3FD_FILE):
        (empty_hub / name).write_bytes(b"weights")
    assert resolve_fan_mode("auto") is True and resolve_fan_mode("required") is True


def test_fan_construction_reads_only_local_files(empty_hub: Path, monkeypatch) -> None:
    """With the weights in place, face-alignment gets the S3FD file explicitly and no compile step."""
    import sys

    empty_hub.mkdir(parents=True)
    for name in (FAN_NET_FILE, S3FD_FILE):
        (empty_hub / name).write_bytes(b"weights")
    made = []

    class FakeFA:
        def __init__(self, landmarks_type, **kwargs):
            made.append((landmarks_type, kwargs))

        def get_landmarks_from_image(self, image, return_bboxes=False):
            return [_face(20, 30, 50)], None, [(20, 30, 70, 80, 0.9)]

    monkeypatch.setitem(sys.modules, "face_alignment",
                        SimpleNamespace(FaceAlignment=FakeFA, LandmarksType=SimpleNamespace(TWO_D="2D")))
    fake_mp = SimpleNamespace(detect=lambda im: np.full((478, 3), np.nan, np.float32), close=lambda: None)
    annotator = Annotator(LandmarkConfig(fan="auto"), mediapipe=fake_mp)
    assert made == [("2D", {"device": "cpu", "face_detector": "sfd", "compile": False,
                            "face_detector_kwargs": {"path_to_detector": str(empty_hub / S3FD_FILE)}})]
    result = annotator(np.zeros((120, 120, 3), np.uint8))
    # MediaPipe found nothing: FAN's points define the crop box.
    assert result.fan_found and not result.mp_found and result.box_source == "fan"


def _face(x0: float, y0: float, size: float) -> np.ndarray:
    t = np.linspace(0, 1, 68)
    return np.stack([x0 + size * t, y0 + size * (t ** 2)], axis=1).astype(np.float32)


def test_select_face_picks_the_face_overlapping_the_reference() -> None:
    small, large = _face(10, 10, 40), _face(200, 200, 120)
    boxes = [(10, 10, 50, 50, 0.99), (200, 200, 320, 320, 0.98)]
    assert np.array_equal(select_face([small, large], boxes), large)  # no reference: largest
    assert np.array_equal(select_face([small, large], boxes, reference_box=(5, 5, 45, 52)), small)
    assert np.array_equal(select_face([small, large], None, reference_box=(190, 210, 300, 300)), large)
    assert np.isnan(select_face(None, None)).all() and select_face([], []).shape == (68, 2)
    with pytest.raises(RuntimeError, match="68"):
        select_face([np.zeros((5, 2))], None)


def test_fan_detector_parses_a_fake_face_alignment() -> None:
    calls = []

    class FakeFA:
        def get_landmarks_from_image(self, image, return_bboxes=False):
            calls.append((image.shape, return_bboxes))
            return [_face(10, 10, 40), _face(100, 100, 60)], None, [(10, 10, 50, 50, 1.0), (100, 100, 160, 160, 1.0)]

    fan = FanDetector(model=FakeFA())
    out = fan.detect(np.zeros((200, 200, 3), np.uint8), reference_box=(95, 90, 170, 165))
    assert calls == [((200, 200, 3), True)]
    assert out.dtype == np.float32 and np.array_equal(out, _face(100, 100, 60))

    class NoFace:
        def get_landmarks_from_image(self, image, return_bboxes=False):
            return None, None, None

    assert np.isnan(FanDetector(model=NoFace()).detect(np.zeros((8, 8, 3), np.uint8))).all()


# ------------------------------------------------------------------------------------------- crops


def test_landmark_box_is_smirks_crop_geometry() -> None:
    pts = np.array([[10.0, 20.0], [50.0, 100.0], [30.0, np.nan]])
    box = landmark_box(pts, 2.0)
    # centre of the extent; side = mean of width (40) and height (80) x scale
    assert (box.cx, box.cy, box.side) == (30.0, 60.0, 120.0)
    assert landmark_box(np.full((5, 2), np.nan), 2.2) is None


def test_choose_box_priority() -> None:
    mp = np.random.default_rng(0).uniform(100, 200, (478, 3)).astype(np.float32)
    fan = np.random.default_rng(1).uniform(0, 50, (68, 2)).astype(np.float32)
    ann = np.random.default_rng(2).uniform(300, 400, (5, 2)).astype(np.float32)
    nan_mp, nan_fan = np.full_like(mp, np.nan), np.full_like(fan, np.nan)
    assert choose_box(mp, fan, ann, 2.2)[1] == "mediapipe"
    assert choose_box(nan_mp, fan, ann, 2.2)[1] == "fan"
    assert choose_box(nan_mp, nan_fan, ann, 2.2)[1] == "annotations"
    assert choose_box(nan_mp, nan_fan, None, 2.2) == (None, None)


@settings(max_examples=40, deadline=None)
@given(cx=st.floats(-60, 260), cy=st.floats(-60, 200), side=st.floats(8, 700), size=st.sampled_from([32, 64, 100]),
       px=st.integers(0, 199), py=st.integers(0, 149))
def test_crop_affine_maps_source_pixels_onto_the_crop(cx, cy, side, size, px, py) -> None:
    """A bright 5x5 spot in the source lands where the returned affine says, and the part of
    the box outside the image is black."""
    image = np.full((150, 200, 3), 40, np.uint8)
    image[max(py - 2, 0):py + 3, max(px - 2, 0):px + 3] = 255
    crop = crop_square(image, CropBox(cx, cy, side), size)
    assert crop.image.shape == (size, size, 3)
    u, v = transform_points(crop.affine, np.array([[px, py]], np.float32))[0]
    scale = crop.affine[0, 0]
    assert np.isclose(scale, size / crop.region[2])
    if 1 <= u < size - 1 and 1 <= v < size - 1 and scale > 0.6:
        # The spot's brightest pixel is within a pixel (+ blur radius) of the mapped centre.
        win = crop.image[..., 0].astype(float)
        spot = np.argwhere(win == win.max())
        d = np.min(np.hypot(spot[:, 1] - u, spot[:, 0] - v))
        assert d <= 1.0 + 0.5 * scale
    # Corner of the crop outside the image: black.
    inv = invert_affine(crop.affine)
    for cu, cv in [(0, 0), (size - 1, 0), (0, size - 1), (size - 1, size - 1)]:
        sx, sy = transform_points(inv, np.array([[cu, cv]], np.float32))[0]
        margin = 2 / min(scale, 1.0) + 1
        if sx < -margin or sy < -margin or sx > 199 + margin or sy > 149 + margin:
            assert crop.image[cv, cu].max() == 0


def test_large_downscale_averages_blocks() -> None:
    """A 1200 px box into 100 px: a fine checkerboard averages to grey instead of aliasing."""
    image = np.zeros((1200, 1200, 3), np.uint8)
    image[::2, ::2] = 255
    image[1::2, 1::2] = 255
    crop = crop_square(image, CropBox(599.5, 599.5, 1200), 100)
    assert abs(crop.image.astype(float).mean() - 127.5) < 2 and crop.image.std() < 3


def test_transform_points_round_trip_and_z_scale() -> None:
    crop = crop_square(np.zeros((50, 50, 3), np.uint8), CropBox(25, 25, 40), 80)
    pts = np.array([[10.0, 20.0, 3.0], [np.nan, np.nan, np.nan]], np.float32)
    moved = transform_points(crop.affine, pts)
    assert np.isclose(moved[0, 2], 3.0 * 2.0) and np.isnan(moved[1]).all()
    back = transform_points(invert_affine(crop.affine), moved[:, :2])
    assert np.allclose(back[0], pts[0, :2], atol=1e-4)
