"""LRS3 and MEAD prep pipelines on synthetic datasets: `fbench prep lrs3|mead` end to end.

The synthetic videos have exact per-frame 68-point landmarks in their ground truth; prepped with
`--landmarks annotations --annotations <ground truth>` every shard's landmarks, mapped back
through the stored affine, must land on the ground truth of the frame whose index the sample
records (tolerance 2e-3 px: float32 storage of crop coordinates; the codec does not enter, the
landmarks are not detected). Counts must add up with empty and truncated videos; splits and
labels must follow the pipelines' rules.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import av
import h5py
import numpy as np
import pytest

from fbench.shards import SourceOptions
from fbench.synth.ground_truth import read_ground_truth
from pipelines import lrs3, mead
from conftest import shared_synthetic
from pipelines.common import is_bad
from pipelines_support import check_counts, load_prepped, mediapipe_error, prep_cli, source_landmarks

TOL_PX = 2e-3
LRS3_N, LRS3_SEED, LRS3_CORRUPT = 4, 3, 3  # 4 clips in all three folders; empty, truncated, malformed .txt
MEAD_N, MEAD_SEED, MEAD_CORRUPT = 1, 5, 2  # one take x 7 views; one empty, one truncated
LRS3_COPIES = ("CopyAAAAAA1", "CopyBBBBBB2", "CopyCCCCCC3", "CopyDDDDDD4")  # more trainval speakers
MEAD_COPIES = {"M013": "val", "W029": "test"}  # the synthetic take's actor copied to a val and a test actor


@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import FLAME

    return FLAME(flame_dir, n_exp=50)


def write_table(path: Path, rows: list[tuple[str, int, np.ndarray, bool]]) -> Path:
    """A landmark table (path, frame, landmarks68, face_visible) as read by --annotations."""
    with h5py.File(path, "w") as f:
        f.create_dataset("path", data=np.array([r[0] for r in rows], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("frame", data=np.array([r[1] for r in rows], dtype=np.int64))
        f.create_dataset("landmarks68", data=np.stack([r[2] for r in rows]).astype(np.float64))
        f.create_dataset("face_visible", data=np.array([r[3] for r in rows], dtype=bool))
    return path


def gt_rows(gt) -> dict[tuple[str, int], int]:
    return {(p, int(f)): i for i, (p, f) in enumerate(zip(gt.paths, gt.frames))}


def decoded_frames(path: Path) -> int:
    """Frames PyAV decodes before the end or the first error."""
    n = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                n += 1
    except (av.error.FFmpegError, OSError):
        pass
    return n


def check_landmarks(samples, gt, table_rows: dict[tuple[str, int], tuple[str, int]] | None = None) -> float:
    """Max error (px) of every annotated sample vs the ground truth of its own (path, frame);
    `table_rows` maps copied paths to the original's. Samples without a visible face must have none."""
    rows = gt_rows(gt)
    worst, compared = 0.0, 0
    for s in samples:
        path, frame = s.meta["source_path"], s.meta["frame_index"]
        if table_rows is not None:
            path, frame = table_rows.get((path, frame), (path, frame))
        row = rows[(path, frame)]
        if not gt.extras["face_visible"][row]:
            assert s.ann is None and s.meta["landmarks"]["ann"] is None and s.meta["box_source"] in ("previous", "frame")
            continue
        assert s.meta["landmarks"]["ann"] == "ibug68" and s.meta["box_source"] == "annotations"
        err = np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max()
        worst = max(worst, float(err))
        compared += 1
    assert compared > len(samples) / 2 and worst < TOL_PX, (compared, worst)
    return worst


# ------------------------------------------------------------------------------------------- LRS3


@pytest.fixture(scope="module")
def lrs3_root(tmp_path_factory, flame) -> tuple[Path, Path]:
    """Synthetic LRS3 plus copies of its trainval speaker under new video ids (so a speaker split
    has something to split), and a landmark table covering the copies."""
    root = tmp_path_factory.mktemp("lrs3") / "LRS3"  # a copy: this module adds speakers/actors
    shutil.copytree(shared_synthetic(tmp_path_factory, "lrs3", flame, n=LRS3_N, seed=LRS3_SEED, corrupt=LRS3_CORRUPT).root, root)
    gt = read_ground_truth(root)
    original = sorted({p.split("/")[1] for p in gt.paths if p.startswith("trainval/")})
    assert len(original) == 1
    for vid in LRS3_COPIES:
        shutil.copytree(root / "trainval" / original[0], root / "trainval" / vid)
    rows = [(p, int(f), gt.extras["landmarks68"][i], bool(gt.extras["face_visible"][i]))
            for i, (p, f) in enumerate(zip(gt.paths, gt.frames))]
    rows += [(p.replace(original[0], vid), f, lm, vis) for vid in LRS3_COPIES for p, f, lm, vis in rows
             if p.startswith("trainval/")]
    table = write_table(root.parent / "lrs3_landmarks.h5", rows)
    return root, table


def test_lrs3_prep_matches_ground_truth(lrs3_root, tmp_path) -> None:
    root, table = lrs3_root
    output, _ = prep_cli("lrs3", root, tmp_path, "--landmarks", "annotations", "--annotations", str(table),
                         "--size", "96", "--maxcount", "25")
    manifest, samples, rejects = load_prepped(tmp_path, "lrs3")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(root)
    original = next(p.split("/")[1] for p in gt.paths if p.startswith("trainval/"))
    copies = {(p.replace(original, vid), int(f)): (p, int(f))
              for vid in LRS3_COPIES for p, f in zip(gt.paths, gt.frames) if p.startswith("trainval/")}
    worst = check_landmarks(samples, gt, copies)
    print(f"LRS3: {len(samples)} samples, {len(rejects)} rejects, max landmark error {worst:.2e} px")

    # Every frame of every readable clip is a sample, in frame order; each unreadable clip one reject.
    def orig(rel: str) -> str:
        vid = rel.split("/")[1]
        return rel.replace(vid, original) if vid in LRS3_COPIES else rel

    corrupted = set(json.loads(gt.attrs["corrupted"]))
    no_words = set(json.loads(gt.attrs["transcripts_without_words"]))
    assert no_words  # the variant without a word table is exercised
    by_clip: dict[str, list[int]] = {}
    for s in samples:
        by_clip.setdefault(s.meta["source_path"], []).append(s.meta["frame_index"])
    paths = np.asarray(gt.paths)
    for rel in sorted({*gt.paths, *(p for p, _ in copies)}):
        frames = by_clip.get(rel, [])
        if orig(rel) in corrupted:  # the empty pretrain clip (0 frames) and the truncated test clip (a prefix)
            assert frames == list(range(decoded_frames(root / rel)))
            assert [r["file"] for r in rejects].count(rel) == 1
        else:
            assert frames == list(range(int(np.sum(paths == orig(rel))))), rel
    assert len(rejects) == 2 and all(r["file"] in corrupted for r in rejects)

    # The no-face cut-away keeps its rows (NaN landmarks, previous frame's crop).
    no_face = [s for s in samples if s.ann is None]
    assert len(no_face) == 3 * (1 + len(LRS3_COPIES)) and manifest["total"]["no_face"] == len(no_face)
    assert all(s.meta["box_source"] == "previous" for s in no_face)

    # Splits: speakers never straddle train/val; test and pretrain come from their folders.
    speakers = {split: {s.meta["labels"]["video_id"] for s in samples if s.meta["split"] == split}
                for split in manifest["splits"]}
    assert speakers["val"] and speakers["train"] and not speakers["train"] & speakers["val"]
    assert len(speakers["val"]) == 1  # round(0.2 x 5 speakers)
    for s in samples:
        labels = s.meta["labels"]
        assert s.meta["subject"] == labels["video_id"] == s.meta["source_path"].split("/")[1]
        assert labels["folder"] == s.meta["source_path"].split("/")[0]
        assert labels["clip"] == Path(s.meta["source_path"]).stem
        want = {"trainval": ("train", "val"), "test": ("test",), "pretrain": ("pretrain", "val")}[labels["folder"]]
        assert s.meta["split"] in want
        assert s.key == f"lrs3_{labels['folder']}_{labels['video_id']}_{labels['clip']}_f{s.meta['frame_index']:06d}"
        txt = orig(s.meta["source_path"])[: -len(".mp4")] + ".txt"
        if txt in corrupted:  # the malformed transcript: the clip is kept, without text
            assert labels["text"] is None and labels["conf"] is None and labels["transcript_error"].startswith(
                s.meta["source_path"][: -len(".mp4")] + ".txt: line 1")
        else:
            check_transcript_labels(labels, gt, orig(s.meta["source_path"]), s.meta["frame_index"], txt in no_words)
    # One summary line (and the manifest) counts the failed transcripts: the malformed one and its copies.
    clips = {s.meta["source_path"] for s in samples} | {r["file"] for r in rejects}
    failed = sum(orig(c)[: -len(".mp4")] + ".txt" in corrupted for c in clips)
    assert failed >= 1 and manifest["listing"]["transcripts"]["failed"] == failed
    assert manifest["listing"]["transcripts"]["missing"] == 0
    assert f"lrs3: transcripts: {len(clips) - failed} of {len(clips)} read" in output
    assert f", {failed} failed, 0 missing; e.g. " in output
    assert "lrs3: %d samples" % len(samples) in output
    assert manifest["config"]["options"]["filters"]["annotations"] == [str(table.resolve())]


def check_transcript_labels(labels: dict, gt, rel: str, frame: int, without_words: bool) -> None:
    """A frame's transcript labels against the writer's ground truth: text from the words, ref = the
    video id, its face-track row = the landmark box of the frame (None without a face: the table has no
    row), the clip's row count, the word table unless absent; never the whole table per sample."""
    rows = [i for i, p in enumerate(gt.paths) if p == rel]
    assert labels["ref"] == rel.split("/")[1] and "transcript_error" not in labels and "per_frame" not in labels
    assert isinstance(labels["conf"], int) and 1 <= labels["conf"] <= 5
    visible = [i for i in rows if gt.extras["face_visible"][i]]
    assert labels["face_track_frames"] == len(visible)
    row = next(i for i in rows if int(gt.frames[i]) == frame)
    if gt.extras["face_visible"][row]:
        lm = gt.extras["landmarks68"][row]
        box = np.r_[lm.min(0), lm.max(0) - lm.min(0)] / 224
        assert np.abs(np.asarray(labels["face_track"]) - box).max() <= 5e-4 + 1e-9
    else:
        assert labels["face_track"] is None
    if without_words:
        assert labels["words"] is None and labels["text"]
    else:
        assert labels["text"] == " ".join(w[0] for w in labels["words"]) and len(labels["words"]) >= 1
        assert all(0 <= w[1] < w[2] <= len(rows) / 25 for w in labels["words"])


def test_lrs3_stride_limit_and_crop_pixels(lrs3_root, tmp_path) -> None:
    """--frame-stride keeps every K-th frame with its index; the crop is the frame's pixels under the affine."""
    import cv2

    root, table = lrs3_root
    prep_cli("lrs3", root, tmp_path, "--landmarks", "annotations", "--annotations", str(table), "--size", "96",
             "--frame-stride", "3", "--splits", "train,val", "--limit", "2")
    manifest, samples, rejects = load_prepped(tmp_path, "lrs3")
    check_counts(manifest, samples, rejects)
    assert set(manifest["counts"]) == {"train", "val"} and manifest["counts"]["train"]["items"] == 2
    clips = {}
    for s in samples:
        clips.setdefault(s.meta["source_path"], []).append(s.meta["frame_index"])
    for rel, frames in clips.items():
        n = decoded_frames(root / rel)
        assert frames == list(range(0, n, 3)), rel
    assert manifest["total"]["inputs"] == sum(math.ceil(decoded_frames(root / r) / 3) for r in clips)
    # The stored JPEG is the decoded frame warped by the affine (frame k, not a neighbour).
    s = next(s for s in iter_with_images(tmp_path / "lrs3") if s.meta["frame_index"] == 6)
    with av.open(str(root / s.meta["source_path"])) as c:
        frame = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][6]
    expected = cv2.warpAffine(frame, s.affine, (96, 96), flags=cv2.INTER_LINEAR)
    assert np.abs(expected.astype(float) - s.image.astype(float)).mean() < 4
    # The grid to a tenth of a pixel: a half-pixel shift passed the mean check above.
    from pixel_check import assert_crop_matches_affine

    assert_crop_matches_affine(s.image, frame, s.affine, s.key)


def test_lrs3_mediapipe_on_synthetic_frames(lrs3_root, tmp_path) -> None:
    """Bonus, with the real detector: MediaPipe finds the synthetic speaker in every frame where it is
    in the picture (points near the ground truth's), and the cut-away frames keep their rows with NaN."""
    root, _ = lrs3_root
    prep_cli("lrs3", root, tmp_path, "--fan", "off", "--mediapipe-backend", "facemesh", "--size", "128",
             "--splits", "train,val", "--limit", "1")
    manifest, samples, rejects = load_prepped(tmp_path, "lrs3")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(root)
    original = next(p.split("/")[1] for p in gt.paths if p.startswith("trainval/"))
    rows = gt_rows(gt)
    errors, hidden = [], 0
    for s in samples:
        row = rows[(s.meta["source_path"].replace(s.meta["subject"], original), s.meta["frame_index"])]
        if gt.extras["face_visible"][row]:
            assert s.meta["landmarks"]["mp"] and s.meta["box_source"] == "mediapipe", s.key
            errors.append(mediapipe_error(s, gt.extras["landmarks_mp"][row], gt.extras["landmarks68"][row]))
        else:
            hidden += 1
            assert np.isnan(s.mp).all() and s.meta["box_source"] == "previous", s.key
    assert hidden == 3 * 2 and manifest["total"]["no_face"] == hidden  # the cut-away of both clips
    assert max(errors) < 0.08, max(errors)  # fraction of the face size (synthetic faces are not MediaPipe's)
    print(f"LRS3 MediaPipe: {len(errors)} frames detected, median error <= {max(errors):.3f} x face size")


def iter_with_images(folder: Path):
    from fbench.shards.reader import iter_samples, shard_paths

    return iter_samples(shard_paths(folder))


def _fake_lrs3(root: Path, clips: dict[str, int]) -> None:
    """Empty .mp4 files with transcripts: enough for listing (items() never opens a video)."""
    for folder_vid, n in clips.items():
        for k in range(n):
            base = root / folder_vid / f"{k + 1:05d}"
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_suffix(".mp4").write_bytes(b"")
            base.with_suffix(".txt").write_text(f"Text:  HELLO {k}\nConf:  3\n\nWORD START END ASDSCORE\n"
                                                f"HELLO 0.10 0.40 5.0\n")


def test_lrs3_speaker_split_rules(tmp_path) -> None:
    ids = [f"spk{i:02d}-abcde" for i in range(20)]
    _fake_lrs3(tmp_path, {**{f"trainval/{v}": 3 for v in ids}, **{f"pretrain/{v}": 2 for v in ids[:10]},
                          "pretrain/onlypretrain": 2, "test/testspeaker1": 2})
    (tmp_path / "trainval" / "stray.mp4").write_bytes(b"")  # outside the layout: a reject (test_hostile_inputs)
    items = [i for i in lrs3.LRS3Source().items(tmp_path, SourceOptions()) if not is_bad(i)]
    val = {i.subject for i in items if i.split == "val"}
    assert len(val) == 4 and val == lrs3.val_speakers(set(ids))  # 20 % of 20 trainval speakers
    train = {i.subject for i in items if i.split in ("train", "pretrain")}
    assert not val & train and {i.subject for i in items if i.split == "test"} == {"testspeaker1"}
    # Pretrain clips of val speakers moved to val, keeping their folder label; the rest stay pretrain.
    moved = [i for i in items if i.split == "val" and i.labels["folder"] == "pretrain"]
    assert {i.subject for i in moved} == val & set(ids[:10])
    assert len(items) == 20 * 3 + 10 * 2 + 2 + 2
    # The choice depends on the speakers, not on the listing: a fixed seed.
    assert lrs3.val_speakers(set(reversed(ids))) == val
    assert [i.split for i in items] == sorted((i.split for i in items), key=lrs3.LRS3Source.splits.index)
    # --limit cuts per split in order, and --splits selects.
    limited = lrs3.LRS3Source().items(tmp_path, SourceOptions(splits=("val",), limit=2))
    assert [i.split for i in limited] == ["val", "val"] and all(i.labels["text"] for i in limited)


@pytest.mark.parametrize("text, problem", [
    ("Conf:  3\nText:  HI\n", "line 1"),
    ("Text:  HI\nConf:  x\n", "line 2"),
    ("Text:  HI\nConf:  3\n\nWORDS START END\nHI 0.1 0.2 1.0\n", "line 4"),
    ("Text:  HI\nConf:  3\n\nWORD START END ASDSCORE\nHI O.1 0.2 1.0\n", "line 5"),
    ("Text:  HI\nConf:  3\nRef:   abc\n\nFRAME \tX \tY \tW \tH \n000000 \t0.1 \t0.2 \t0.3\n", "line 6"),
    ("Text:  HI\nConf:  3\nno colon here\n", "line 3"),
    ("", "empty"),
])
def test_lrs3_transcript_errors_name_the_line(text, problem) -> None:
    with pytest.raises(lrs3.TranscriptError, match=problem):
        lrs3.parse_transcript(text)


def test_lrs3_transcript_parses_every_section() -> None:
    """The release's layout: header (Text, Conf, Ref), face track, word table; also without the track
    (older files), without the word table (some files), and tab/space variants of the headers."""
    full = ("Text:  SO WE\nConf:  4\nRef:   0Fi83BHQsMA\n\nFRAME \tX \tY \tW \tH \n"
            "000000 \t0.430 \t0.247 \t0.148 \t0.264 \n000001 \t0.431 \t0.246 \t0.149 \t0.265 \n\n"
            "WORD START END ASDSCORE\nSO 0.00 0.20 3.1\nWE 0.22 0.40 7.0\n")
    t = lrs3.parse_transcript(full)
    assert (t.text, t.conf, t.ref) == ("SO WE", 4, "0Fi83BHQsMA")
    assert t.words == (("SO", 0.0, 0.2, 3.1), ("WE", 0.22, 0.4, 7.0))
    assert t.track == ((0, 0.43, 0.247, 0.148, 0.264), (1, 0.431, 0.246, 0.149, 0.265))
    no_words = lrs3.parse_transcript(full.split("\n\nWORD")[0] + "\n")
    assert no_words.words is None and no_words.track == t.track and no_words.text == "SO WE"
    old = lrs3.parse_transcript("Text:  SO WE\nConf:  4\n\nWORD START END ASDSCORE\nSO 0.00 0.20 3.1\n")
    assert old.ref is None and old.track is None and len(old.words) == 1
    assert lrs3.parse_transcript("Text:  HI\r\nConf:  2\r\n").words is None


def test_lrs3_wrong_root_is_a_clear_error(tmp_path) -> None:
    output, code = prep_cli("lrs3", tmp_path, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "no pretrain/, trainval/ or test/ folder" in output


# ------------------------------------------------------------------------------------------- MEAD


@pytest.fixture(scope="module")
def mead_root(tmp_path_factory, flame) -> tuple[Path, Path]:
    """Synthetic MEAD (one take, seven views, one actor) copied to a val and a test actor, plus a
    landmark table covering the copies."""
    root = tmp_path_factory.mktemp("mead") / "MEAD"  # a copy: this module adds speakers/actors
    shutil.copytree(shared_synthetic(tmp_path_factory, "mead", flame, n=MEAD_N, seed=MEAD_SEED, corrupt=MEAD_CORRUPT).root, root)
    gt = read_ground_truth(root)
    (actor,) = {p.split("/")[0] for p in gt.paths}
    for copy in MEAD_COPIES:
        shutil.copytree(root / actor, root / copy)
    rows = [(p, int(f), gt.extras["landmarks68"][i], bool(gt.extras["face_visible"][i]))
            for i, (p, f) in enumerate(zip(gt.paths, gt.frames))]
    rows += [(copy + p[len(actor):], f, lm, vis) for copy in MEAD_COPIES for p, f, lm, vis in rows]
    return root, write_table(root.parent / "mead_landmarks.h5", rows)


def test_mead_prep_matches_ground_truth(mead_root, tmp_path) -> None:
    root, table = mead_root
    prep_cli("mead", root, tmp_path, "--landmarks", "annotations", "--annotations", str(table), "--size", "96",
             "--frame-stride", "2")
    manifest, samples, rejects = load_prepped(tmp_path, "mead")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(root)
    (actor,) = {p.split("/")[0] for p in gt.paths}
    copies = {(c + p[len(actor):], int(f)): (p, int(f)) for c in MEAD_COPIES for p, f in zip(gt.paths, gt.frames)}
    worst = check_landmarks(samples, gt, copies)
    print(f"MEAD: {len(samples)} samples, {len(rejects)} rejects, max landmark error {worst:.2e} px")

    corrupted = set(json.loads(gt.attrs["corrupted"]))
    videos = sorted(set(gt.paths))
    assert len(videos) == 7 and len(corrupted) == 2
    for a in (actor, *MEAD_COPIES):
        for rel in videos:
            rel = a + rel[len(actor):]
            frames = [s.meta["frame_index"] for s in samples if s.meta["source_path"] == rel]
            n_gt = int(np.sum(np.asarray(gt.paths) == actor + rel[len(a):]))
            if actor + rel[len(a):] in corrupted:
                assert frames == list(range(0, decoded_frames(root / rel), 2))
                assert [r["file"] for r in rejects].count(rel) == 1 and rel.endswith(".mp4")
            else:
                assert frames == list(range(0, n_gt, 2)), rel
    assert len(rejects) == 2 * 3

    # Splits by actor, and the labels of the path and the ground truth.
    rows = {(p, int(f)): i for i, (p, f) in enumerate(zip(gt.paths, gt.frames))}
    for s in samples:
        labels, split = s.meta["labels"], s.meta["split"]
        assert split == {"M013": "val", "W029": "test"}.get(labels["actor"], "train")
        row = rows[copies.get((s.meta["source_path"], s.meta["frame_index"]),
                              (s.meta["source_path"], s.meta["frame_index"]))]
        assert labels["view"] == gt.extras["view"][row].decode()
        assert labels["emotion"] == gt.extras["emotion"][row].decode()
        assert labels["level"] == int(gt.extras["level"][row])
        assert labels["clip"] == gt.extras["clip"][row].decode() and s.meta["subject"] == labels["actor"]
        assert labels["take"] == f"{labels['actor']}_{labels['emotion']}_level_{labels['level']}_{labels['clip']}"
    readable = {Path(p).parts[2] for p in videos if p not in corrupted or decoded_frames(root / p)}
    assert {s.meta["labels"]["view"] for s in samples} == readable and len(readable) >= 5


def test_mead_filters(mead_root, tmp_path) -> None:
    root, table = mead_root
    prep_cli("mead", root, tmp_path, "--landmarks", "annotations", "--views", "front,left_30", "--splits", "val",
             "--frame-stride", "5", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path, "mead")
    check_counts(manifest, samples, rejects)
    assert {s.meta["labels"]["view"] for s in samples} <= {"front", "left_30"}
    assert {s.meta["labels"]["actor"] for s in samples} == {"M013"} and set(manifest["counts"]) == {"val"}
    # Without a table, annotations mode keeps every frame with NaN landmarks (centred frame crops).
    assert all(s.ann is None and s.meta["box_source"] == "frame" for s in samples)
    assert manifest["config"]["options"]["filters"] == {"views": ["front", "left_30"]}
    output, code = prep_cli("mead", root, tmp_path / "x", "--views", "frontal", ok=False)
    assert code == 2 and "unknown views 'frontal'" in output


def _fake_mead(root: Path, paths: list[str]) -> None:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_mead_layout_quirks_and_splits(tmp_path) -> None:
    _fake_mead(tmp_path, ["M003/video/front/happy/level_2/001.mp4", "W021/video/1/front/sad/level_3/002.mp4",
                          "W021/video/front/sad/level_3/002.mp4", "M042/video/top/neutral/level_1/003.mp4",
                          "M028/video/down/fear/level_1/004.mp4", "M003/video/sideways/happy/level_2/001.mp4",
                          "M003/audio/happy/level_2/001.mp4", "notes/video/front/happy/level_2/001.mp4"])
    items = [i for i in mead.MEADSource().items(tmp_path, SourceOptions()) if not is_bad(i)]  # the rest: rejects
    assert [(i.path, i.split) for i in items] == [
        ("M003/video/front/happy/level_2/001.mp4", "train"), ("W021/video/1/front/sad/level_3/002.mp4", "train"),
        ("W021/video/front/sad/level_3/002.mp4", "train"), ("M042/video/top/neutral/level_1/003.mp4", "val"),
        ("M028/video/down/fear/level_1/004.mp4", "test")]
    assert items[1].id == "W021_1_front_sad_level_3_002" and items[2].id == "W021_front_sad_level_3_002"
    assert mead.parse_path("W023/video/front/1/happy/level_1/005.mp4")["quirk"] == "v1"
    assert mead.parse_path("W023/video/front/1/2/happy/level_1/005.mp4") is None
    picked = mead.MEADSource().items(tmp_path, SourceOptions(filters={"emotions": ("sad",), "levels": ("3",)}))
    assert [i.labels["view"] for i in picked if not is_bad(i)] == ["front", "front"]
    with pytest.raises(ValueError, match="unknown levels '4'"):
        mead.MEADSource().items(tmp_path, SourceOptions(filters={"levels": ("4",)}))


def test_annotation_table_errors(mead_root, tmp_path) -> None:
    root, _ = mead_root
    other = write_table(tmp_path / "other.h5", [("elsewhere/x.mp4", 0, np.zeros((68, 2)), True)])
    output, code = prep_cli("mead", root, tmp_path / "out", "--landmarks", "annotations", "--annotations",
                            str(other), ok=False)
    assert code != 0 and "no row of the landmark table names one of the" in output
    broken = tmp_path / "broken.h5"
    with h5py.File(broken, "w") as f:
        f.create_dataset("path", data=np.array(["a.mp4"], dtype=object), dtype=h5py.string_dtype())
    output, code = prep_cli("mead", root, tmp_path / "out2", "--annotations", str(broken), ok=False)
    assert code != 0 and "lacks column(s) ['frame', 'landmarks68']" in output
