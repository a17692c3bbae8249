"""Training tensors from shards the SMIRK way (methods/smirk/data.py, augment.py), and the generic
shard streams they ride on (fbench/shards/stream.py): mixing and splitting over readers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fbench.landmarks import LandmarkConfig, SMIRK_MEDIAPIPE_INDICES
from fbench.shards import SourceOptions
from fbench.geometry.alignment import umeyama
from fbench.shards.prep import PrepConfig, run_prep
from fbench.shards.reader import iter_samples, shard_paths
from fbench.shards.stream import MixedShardDataset, ShardDataset, ShardSet, batch_composition, shard_set, split_shards
from methods.smirk.augment import SmirkAugment, shift_scale_rotate_matrix
from methods.smirk.data import SmirkDataConfig, SmirkTransform, crop_transform, hull_mask, prepare_sample, smirk_mix
from test_shards_data import CLIP_FRAMES, ToySource, write_toy_dataset


@pytest.fixture(scope="module")
def prepped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_toy_dataset(tmp_path_factory.mktemp("toy"))
    out = tmp_path_factory.mktemp("shards")
    run_prep(ToySource(), PrepConfig(root=root, out=out, maxcount=2, progress=False,
                                     landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh")))
    return out / "toy"


def test_smirk_mediapipe_indices() -> None:
    assert len(SMIRK_MEDIAPIPE_INDICES) == 105 == len(set(SMIRK_MEDIAPIPE_INDICES))
    assert SMIRK_MEDIAPIPE_INDICES[:3] == (276, 282, 283) and SMIRK_MEDIAPIPE_INDICES[-1] == 415


def test_crop_transform_is_smirks_three_point_similarity() -> None:
    """Same map as SMIRK's crop_face: skimage's similarity from the box corners onto [0, S-1]."""
    from skimage.transform import estimate_transform

    pts = np.random.default_rng(3).uniform(50, 300, (478, 3))
    for scale in (1.2, 1.6, 1.8):
        left, right, top, bottom = pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()
        size = int((right - left + bottom - top) / 2 * scale)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        src = np.array([[cx - size / 2, cy - size / 2], [cx - size / 2, cy + size / 2], [cx + size / 2, cy - size / 2]])
        dst = np.array([[0, 0], [0, 223], [223, 0]])
        expected = estimate_transform("similarity", src, dst).params[:2]
        assert np.allclose(crop_transform(pts, scale, 224), expected, atol=1e-9)


def test_hull_mask_is_one_outside_the_face() -> None:
    square = np.array([[20, 20], [80, 20], [80, 80], [20, 80]], np.float32)
    mask = hull_mask(square, 100)
    assert mask.dtype == np.uint8 and mask[50, 50] == 0 and mask[5, 5] == 1 and mask[95, 50] == 1


def test_umeyama_on_image_points_matches_skimage() -> None:
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    dst = rng.uniform(0, 112, (5, 2))
    if hasattr(SimilarityTransform, "from_estimate"):
        tform = SimilarityTransform.from_estimate(src, dst)
    else:
        tform = SimilarityTransform()
        tform.estimate(src, dst)
    assert np.allclose(umeyama(src, dst).affine(), tform.params[:2], atol=1e-8)


def test_batch_composition_matches_smirks_sampler() -> None:
    # LRS3 0.2, MEAD 0.1, FFHQ 0.3, CelebA 0.3, MEAD sides 0.1 at batch 32 (first entry takes the rest).
    assert batch_composition([0.2, 0.1, 0.3, 0.3, 0.1], 32) == [8, 3, 9, 9, 3]
    assert batch_composition([1, 1, 1], 10) == [4, 3, 3]


def test_test_time_sample_matches_the_shard(prepped: Path) -> None:
    sample = next(iter_samples(shard_paths(prepped)))
    out = prepare_sample(sample, np.random.default_rng(0), SmirkDataConfig(mica=True), train=False)
    assert out["img"].shape == (3, 224, 224) and out["img"].dtype == torch.float32
    assert 0 <= out["img"].min() and out["img"].max() <= 1
    assert out["landmarks_mp"].shape == (105, 2) and out["landmarks_fan"].shape == (68, 2)
    assert out["flag_landmarks_fan"] is False and out["flag_landmarks_mp"] is True
    assert torch.all(out["landmarks_fan"] == 0)
    assert out["mask"].shape == (1, 224, 224) and set(out["mask"].unique().tolist()) == {0.0, 1.0}
    assert out["img_mica"].shape == (3, 112, 112) and out["img_mica"].abs().sum() == 0  # no FAN: zeros
    # Landmarks: normalised as p / 224 * 2 - 1 after the 1.6 crop of the shard's landmarks.
    m = crop_transform(sample.mp, 1.6, 224)
    pixels = sample.mp[list(SMIRK_MEDIAPIPE_INDICES), :2] @ m[:, :2].T + m[:, 2]
    assert np.allclose(out["landmarks_mp"].numpy(), pixels / 224 * 2 - 1, atol=1e-5)
    # At scale 1.6 the face (landmark box) spans 1 / 1.6 of the crop; the mask's hole is the face hull.
    inside = 1 - out["mask"][0].numpy()
    cols = np.flatnonzero(inside.any(0))
    assert 224 / 1.6 * 0.8 < cols[-1] - cols[0] < 224 / 1.6 * 1.2
    # Crop pixels are the shard image warped by the same map.
    import cv2

    warped = cv2.warpAffine(sample.image, m, (224, 224), flags=cv2.INTER_LINEAR)
    assert np.abs(warped / 255.0 - out["img"].numpy().transpose(1, 2, 0)).max() < 1e-6


def test_training_samples_stay_aligned_under_augmentation(prepped: Path) -> None:
    """Augmented images keep their landmarks on the face: the hull mask (which follows the image
    warp) still contains the moved MediaPipe points."""
    sample = next(iter_samples(shard_paths(prepped)))
    rng = np.random.default_rng(1)
    sides = []
    for _ in range(20):
        out = prepare_sample(sample, rng, SmirkDataConfig(), train=True, augment=SmirkAugment())
        pix = ((out["landmarks_mp"].numpy() + 1) / 2 * 224).round().astype(int).clip(0, 223)
        face = 1 - out["mask"][0].numpy()
        assert face[pix[:, 1], pix[:, 0]].mean() > 0.9
        cols = np.flatnonzero(face.any(0))
        sides.append(cols[-1] - cols[0])
    # Random crop scale in [1.2, 1.8] (x 0.9..1.1 from the augmentation): the face size varies.
    assert max(sides) / min(sides) > 1.2


def test_shift_scale_rotate_moves_pixels_with_keypoints() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[30, 70] = 255
    aug = SmirkAugment(p_brightness_contrast=0, p_gamma=0, p_color_jitter=0, p_clahe=0, p_rgb_shift=0, p_blur=0,
                       p_noise=0, p_shift_scale_rotate=1)
    mask = np.zeros((100, 100), np.uint8)
    mask[30, 70] = 1
    out, out_mask, (kp,) = aug(np.random.default_rng(5), image, mask, [np.array([[70.0, 30.0]])])
    y, x = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert np.hypot(x - kp[0, 0], y - kp[0, 1]) <= 1.0
    assert out_mask.sum() <= 1 and (out_mask.sum() == 0 or np.hypot(*(np.argwhere(out_mask)[0][::-1] - kp[0])) <= 1)
    m = shift_scale_rotate_matrix(100, 100, 0, 1, 0.05, 0)
    assert np.allclose(m, [[1, 0, 5], [0, 1, 0]])


def test_photometric_augmentations_keep_shape_and_dtype() -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    aug = SmirkAugment(p_brightness_contrast=1, p_gamma=1, p_color_jitter=1, p_clahe=1, p_rgb_shift=1, p_blur=1,
                       p_noise=1, p_shift_scale_rotate=0)
    out, mask, _ = aug(np.random.default_rng(0), image, np.ones((64, 64), np.uint8), [np.zeros((3, 2))])
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert mask.min() == 1  # photometric changes leave the mask alone


def test_split_shards_over_readers() -> None:
    shards = [f"s{k}" for k in range(5)]
    assert split_shards(shards, 1, 2) == (["s1", "s3"], 1, 0)
    assert split_shards(shards[:1], 2, 3) == (["s0"], 3, 2)  # fewer shards than readers: every 3rd sample


@pytest.mark.parametrize("workers,shards", [(0, None), (2, None), (2, 1)])
def test_eval_pass_reads_each_sample_once_across_workers(prepped: Path, workers: int, shards: int | None) -> None:
    """Each sample once: shards split over workers, or (one shard, two workers) samples split."""
    val = shard_set("toy", prepped, splits=["val"])
    val = ShardSet("toy", val.shards[:shards] if shards else val.shards)
    # Frame 5 is black: no MediaPipe landmarks, so SMIRK-style reading leaves it out.
    expected = sorted(s.key for s in iter_samples(map(Path, val.shards), decode_image=False)
                      if np.isfinite(s.mp).all())
    assert len(expected) == (2 if shards == 1 else CLIP_FRAMES - 1)
    loader = torch.utils.data.DataLoader(ShardDataset(val, SmirkTransform(train=False)), batch_size=3, num_workers=workers)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == expected


def test_ranks_see_disjoint_samples(prepped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = shard_set("toy", prepped, splits=None)
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        seen.append({s["key"] for s in ShardDataset(one, SmirkTransform(train=False))})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 4 + CLIP_FRAMES - 1  # all but the black frame


def test_mixed_batches_have_smirks_composition(prepped: Path) -> None:
    train = shard_set("images", prepped, weight=0.75, splits=["train"])
    video = shard_set("video", prepped, weight=0.25, splits=["val"])
    ds = MixedShardDataset([train, video], SmirkTransform(), batch_size=8, batches_per_epoch=3, shuffle_buffer=4, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
        assert batch["img"].shape == (8, 3, 224, 224) and batch["landmarks_mp"].shape == (8, 105, 2)
        assert Counter(batch["mix"]) == {"images": 6, "video": 2}
        assert all(k.startswith("toy_train") for k, mix in zip(batch["key"], batch["mix"]) if mix == "images")


def test_label_filter_selects_views(prepped: Path) -> None:
    only_a1 = ShardSet("a1", tuple(map(str, shard_paths(prepped))), labels={"variant": ("a1.jpg",)})
    keys = {s["key"] for s in ShardDataset(only_a1, SmirkTransform(train=False))}
    assert keys == {"toy_train-a1"}


def test_endless_stream_over_nothing_fails_instead_of_spinning(prepped: Path) -> None:
    nothing = ShardSet("none", tuple(map(str, shard_paths(prepped))), labels={"variant": ("no-such-view",)})
    with pytest.raises(RuntimeError, match="no samples"):
        next(iter(MixedShardDataset([nothing], SmirkTransform(), batch_size=2)))


def test_smirk_mix_reports_missing_datasets(prepped: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lrs3.*ffhq|lrs3"):
        smirk_mix(tmp_path)
    (tmp_path / "ffhq").symlink_to(prepped)
    sets = smirk_mix(tmp_path, splits=None, skip_missing=True)
    assert [(s.name, s.weight) for s in sets] == [("ffhq", 0.3)]


def test_smirk_mix_default_splits_follow_smirk(prepped: Path, tmp_path: Path) -> None:
    """SMIRK trains on every FFHQ and CelebA image but only the train lists of LRS3 and MEAD."""
    for name in ("lrs3", "ffhq", "celeba"):
        (tmp_path / name).symlink_to(prepped)
    sets = {s.name: s for s in smirk_mix(tmp_path, skip_missing=True)}
    def splits(shard_set) -> list[str]:
        return [Path(p).parent.name for p in shard_set.shards]

    assert set(splits(sets["lrs3"])) == {"train"} and len(sets["lrs3"].shards) == len(shard_paths(prepped, ("train",)))
    for name in ("ffhq", "celeba"):  # the toy data has train and val shards: all of them
        assert set(splits(sets[name])) == {"train", "val"} and len(sets[name].shards) == len(shard_paths(prepped))
    only_train = {s.name: s for s in smirk_mix(tmp_path, splits=("train",), skip_missing=True)}
    assert set(splits(only_train["celeba"])) == {"train"}


def test_samples_without_mediapipe_are_skipped_by_default(tmp_path: Path) -> None:
    root = write_toy_dataset(tmp_path / "data")
    run_prep(ToySource(), PrepConfig(root=root, out=tmp_path / "out", progress=False,
                                     options=SourceOptions(splits=("val",)),
                                     landmarks=LandmarkConfig(fan="off", mediapipe_backend="facemesh", size=128)))
    one = shard_set("toy", tmp_path / "out" / "toy", splits=None)
    keys = [s["key"] for s in ShardDataset(one, SmirkTransform(train=False))]
    assert len(keys) == CLIP_FRAMES - 1 and "toy_val-clip_f000005" not in keys
    kept = [s for s in ShardDataset(one, SmirkTransform(SmirkDataConfig(require_mediapipe=False), train=False))]
    black = [s for s in kept if s["key"] == "toy_val-clip_f000005"][0]
    assert black["flag_landmarks_mp"] is False and black["mask"].min() == 1


def test_a_mix_whose_transform_keeps_nothing_fails_instead_of_spinning(prepped: Path, monkeypatch) -> None:
    import fbench.shards.stream as stream

    monkeypatch.setattr(stream, "MAX_REFUSED_IN_A_ROW", 20)
    every = ShardSet("toy", tuple(map(str, shard_paths(prepped))))
    with pytest.raises(RuntimeError, match="kept none of 20 samples in a row"):
        next(iter(MixedShardDataset([every], lambda sample, rng: None, batch_size=2)))
