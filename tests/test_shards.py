"""Shard building blocks: keys and paths from dataset content, source items, media readers, unit
planning, the tar writer, manifests."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.shards import (InputError, SourceItem, SourceOptions, UnsafePathError, iter_video_frames, read_image,
                           resolve_in_root, safe_key, safe_relpath, select_items)
from fbench.shards.keys import MAX_KEY_LEN
from fbench.shards.manifest import ManifestError, merge_manifests
from fbench.shards.plan import PlanError, Segment, check_unique_keys, plan_units
from fbench.shards.prep import parse_part
from fbench.shards.reader import iter_raw
from fbench.shards.schema import decode_sample, encode_sample
from fbench.shards.writer import ShardFile, sha256_file
from test_shards_data import write_mp4

KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# ------------------------------------------------------------------------------------ keys, paths


def test_safe_key_examples() -> None:
    assert safe_key("affectnet", "train_set/images/0001.jpg") == "affectnet_train_set-images-0001-jpg"
    assert safe_key("mead", "M003", "front", "angry") == "mead_M003_front_angry"
    assert safe_key("x", "../../etc/passwd") == "x_etc-passwd"
    with pytest.raises(ValueError, match="empty"):
        safe_key("x", "...")
    with pytest.raises(ValueError, match="dataset name"):
        safe_key("Bad.Name", "a")


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=120))
def test_safe_key_always_valid_and_bounded(text: str) -> None:
    try:
        key = safe_key("ds", text)
    except ValueError:
        assert not re.sub(r"[^A-Za-z0-9_-]+", "", text).strip("-")
        return
    assert KEY.match(key) and len(key) <= MAX_KEY_LEN and "." not in key


def test_long_keys_stay_distinct() -> None:
    a, b = safe_key("ds", "a" * 200 + "1"), safe_key("ds", "a" * 200 + "2")
    assert a != b and len(a) == len(b) == MAX_KEY_LEN


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../secret.jpg", "a/../../b.jpg", "C:\\x\\y.jpg", "a\0b",
                                 "a/./..", "\\\\server\\share"])
def test_safe_relpath_refuses_escapes(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(bad)


def test_safe_relpath_normalises() -> None:
    assert safe_relpath("train\\img//a.jpg") == "train/img/a.jpg"
    assert safe_relpath("./x/./y.png") == "x/y.png"
    assert resolve_in_root(Path("/data"), "a/b.jpg") == Path("/data/a/b.jpg")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab./\\:C\0"), max_size=30))
def test_safe_relpath_results_stay_inside(text: str) -> None:
    try:
        rel = safe_relpath(text)
    except UnsafePathError:
        return
    assert not rel.startswith("/") and ".." not in rel.split("/") and rel


# ------------------------------------------------------------------------------------- source items


def test_source_item_checks() -> None:
    with pytest.raises(UnsafePathError):
        SourceItem(id="a", split="train", path="../a.jpg")
    with pytest.raises(ValueError, match="JSON"):
        SourceItem(id="a", split="train", path="a.jpg", labels={"x": np.float32(1)})
    with pytest.raises(ValueError, match="annotation_format"):
        SourceItem(id="a", split="train", path="a.jpg", annotations=np.zeros((68, 2)), annotation_format="celeba5")
    with pytest.raises(ValueError, match=r"\(F, P, 2\)"):
        SourceItem(id="a", split="val", path="a.mp4", kind="video", annotations=np.zeros((68, 2)),
                   annotation_format="ibug68")
    video = SourceItem(id="v", split="val", path="v.mp4", kind="video",
                       annotations=np.stack([np.ones((5, 2)), np.full((5, 2), np.nan)]), annotation_format="celeba5")
    assert video.annotations_for(0).shape == (5, 2)
    assert video.annotations_for(1) is None and video.annotations_for(7) is None


def test_select_items_filters_and_limits_per_split() -> None:
    items = [SourceItem(id=f"{s}{i}", split=s, path=f"{s}/{i}.jpg") for s in ("val", "train") for i in range(3)]
    grouped = select_items(items, ("train", "val", "test"), SourceOptions(limit=2))
    assert list(grouped) == ["train", "val"] and [i.id for i in grouped["train"]] == ["train0", "train1"]
    assert list(select_items(items, ("train", "val"), SourceOptions(splits=("val",)))) == ["val"]
    with pytest.raises(ValueError, match="unknown split"):
        select_items(items, ("train", "val"), SourceOptions(splits=("dev",)))
    with pytest.raises(ValueError, match="not one of"):
        select_items(items, ("train",), SourceOptions())


def test_duplicate_keys_are_refused() -> None:
    items = {"train": [SourceItem(id="a/b", split="train", path="a/b.jpg"),
                       SourceItem(id="a.b", split="train", path="a.b.jpg")]}
    with pytest.raises(PlanError, match="both give sample key 'ds_a-b'"):
        check_unique_keys("ds", items)


# ------------------------------------------------------------------------------------------- media


def test_read_image_rgb_and_errors(tmp_path: Path) -> None:
    import cv2

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    image = read_image(tmp_path / "red.png")
    assert image.shape == (20, 30, 3) and image[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((5, 6), 77, np.uint8))
    assert read_image(tmp_path / "grey.png").shape == (5, 6, 3)
    png = (tmp_path / "red.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, why in [("cut.png", "cannot decode"), ("empty.jpg", "empty"), ("missing.jpg", "cannot read")]:
        with pytest.raises(InputError, match=f"{name}.*{why}|{why}"):
            read_image(tmp_path / name)


def test_video_stride_range_and_errors(tmp_path: Path) -> None:
    frames = [np.full((32, 32, 3), 10 * k, np.uint8) for k in range(10)]
    write_mp4(tmp_path / "v.mp4", frames)
    got = list(iter_video_frames(tmp_path / "v.mp4", stride=3))
    assert [i for i, _ in got] == [0, 3, 6, 9]
    # Frame index k really is the k-th written frame (grey level 10 k, up to codec error).
    assert all(abs(float(img.mean()) - 10 * i) < 4 for i, img in got)
    assert [i for i, _ in iter_video_frames(tmp_path / "v.mp4", stride=2, start=3, stop=8)] == [4, 6]
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 50)
    with pytest.raises(InputError, match="junk.mp4.*cannot open"):
        list(iter_video_frames(tmp_path / "junk.mp4"))
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.mp4"):
        list(iter_video_frames(tmp_path / "cut.mp4"))


# ---------------------------------------------------------------------------------------- planning


def test_plan_packs_images_and_splits_long_videos() -> None:
    images = [SourceItem(id=f"i{k}", split="train", path=f"i{k}.jpg") for k in range(7)]
    videos = [SourceItem(id="short", split="val", path="short.mp4", kind="video"),
              SourceItem(id="long", split="val", path="long.mp4", kind="video"),
              SourceItem(id="tail", split="val", path="tail.mp4", kind="video")]
    frames = {"short.mp4": 4, "long.mp4": 25, "tail.mp4": 3}
    plan = plan_units("ds", {"train": images, "val": videos}, frames, stride=2, maxcount=3)
    train = [u for u in plan.units if u.split == "train"]
    assert [len(u.segments) for u in train] == [3, 3, 1] and [u.index for u in train] == [0, 1, 2]
    val = [(u.index, u.segments, u.expected) for u in plan.units if u.split == "val"]
    # short: 2 samples; long: 13 samples at stride 2 -> 5 pieces of 3 x 2 = 6 frames; tail: 2 samples.
    assert val[0] == (0, (Segment(0),), 2)
    assert [v[1][0] for v in val[1:6]] == [Segment(1, 0, 6), Segment(1, 6, 12), Segment(1, 12, 18),
                                           Segment(1, 18, 24), Segment(1, 24, None)]
    assert [v[2] for v in val[1:6]] == [3, 3, 3, 3, 1]
    assert val[6] == (6, (Segment(2),), 2)
    assert plan.units[0].shard_relpath("ds") == "train/ds-train-000000.tar"
    same = plan_units("ds", {"train": images, "val": videos}, frames, stride=2, maxcount=3)
    assert same.fingerprint() == plan.fingerprint()
    moved = plan_units("ds", {"train": images[1:], "val": videos}, frames, stride=2, maxcount=3)
    assert moved.fingerprint() != plan.fingerprint()


def test_parse_part() -> None:
    assert parse_part("3/16") == (3, 16)
    for bad in ("16/16", "1", "a/b", "-1/4", "0/0"):
        with pytest.raises(ValueError):
            parse_part(bad)


# ------------------------------------------------------------------------------------------ writer


def _sample(key: str, k: int) -> dict:
    mp = np.full((478, 3), k, np.float32)
    mp[3] = np.nan
    return encode_sample(key, bytes([k]) * 100, mp, np.zeros((68, 2), np.float32), None, {"k": k, "key": key})


def test_shard_file_is_deterministic_and_readable(tmp_path: Path) -> None:
    digests = []
    for run in range(2):
        shard = ShardFile(tmp_path / f"run{run}" / "s.tar")
        for k in range(3):
            shard.write(_sample(f"ds_s{k}", k))
        assert shard.tmp.exists() and not shard.final.exists()  # only a complete shard has its final name
        digest, size = shard.commit()
        assert not shard.tmp.exists() and shard.final.stat().st_size == size
        assert digest == sha256_file(shard.final)
        digests.append(digest)
    assert digests[0] == digests[1]
    with tarfile.open(tmp_path / "run0" / "s.tar") as tar:
        names = tar.getnames()
        assert names[:4] == ["ds_s0.fan.npy", "ds_s0.jpg", "ds_s0.json", "ds_s0.mp.npy"]
        assert {m.mtime for m in tar.getmembers()} == {0}
    samples = [decode_sample(raw, decode_image=False) for raw in iter_raw(tmp_path / "run0" / "s.tar")]
    assert [s.key for s in samples] == ["ds_s0", "ds_s1", "ds_s2"]
    assert samples[2].mp[0, 0] == 2 and np.isnan(samples[2].mp[3]).all() and samples[1].meta == {"k": 1, "key": "ds_s1"}


def test_shard_bytes_equal_tarfiles_and_npy_equals_np_save(tmp_path: Path) -> None:
    """The fast header template writes exactly what tarfile writes for the same members."""
    members = [("ds_a", {"jpg": b"x" * 1000, "json": b"{}", "mp.npy": b"y" * 5864}),
               ("ds_" + "b" * 80, {"fan.npy": b"", "jpg": b"z" * 512})]
    shard = ShardFile(tmp_path / "s.tar")
    for key, m in members:
        shard.write({"__key__": key, **m})
    shard.commit()
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, m in members:
            for ext in sorted(m):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(m[ext]), 0, 0o444, "fbench", "fbench"
                tar.addfile(info, io.BytesIO(m[ext]))
    assert (tmp_path / "s.tar").read_bytes() == expected.getvalue()
    from fbench.shards.schema import npy_bytes

    for array in (np.full((478, 3), np.nan, np.float32), np.arange(10.0).reshape(5, 2), np.zeros((0, 2), np.float32)):
        ref = io.BytesIO()
        np.save(ref, array)
        assert npy_bytes(array) == ref.getvalue()


def test_shard_file_abort_leaves_nothing(tmp_path: Path) -> None:
    shard = ShardFile(tmp_path / "s.tar")
    shard.write(_sample("ds_a", 1))
    shard.abort()
    assert list(tmp_path.iterdir()) == []


def test_npy_members_refuse_pickles(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw = {"__key__": "k", "jpg": b"", "mp.npy": buf.getvalue(), "fan.npy": buf.getvalue(), "json": b"{}"}
    with pytest.raises(ValueError, match="pickle"):
        decode_sample(raw, decode_image=False)


# --------------------------------------------------------------------------------------- manifests


def test_merge_manifests_needs_every_part(tmp_path: Path) -> None:
    from fbench.io import atomic_write_json

    base = {"format": "fbench-shards", "dataset": "ds", "identity": "abc", "splits": ["train"],
            "units": {"plan": 2, "here": 1}, "counts": {"train": {}}, "shards": []}
    atomic_write_json(tmp_path / "manifest.part-0000-of-0002.json", {**base, "part": [0, 2]})
    with pytest.raises(ManifestError, match=r"missing \[1\]"):
        merge_manifests([tmp_path / "manifest.part-0000-of-0002.json"])
    atomic_write_json(tmp_path / "manifest.part-0001-of-0002.json", {**base, "part": [1, 2], "identity": "zzz"})
    with pytest.raises(ManifestError, match="different settings"):
        merge_manifests(sorted(tmp_path.glob("manifest.part-*")))
