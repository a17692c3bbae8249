"""Synthetic LRS3 and MEAD: written in the layout their data cards describe, read back with plain tools.

Everything a dataset reader would see is read here without fbench: os.walk for the layout,
the cards' regexes for paths and transcripts, PyAV for the videos, h5py for the ground truth.
fbench code is used only to write the datasets and where a test checks a generator's own
property (emotion prototypes, cameras, the syllable jaw).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fbench.synth import lrs3, mead
from fbench.synth.faces import Appearance, Camera, background_image, camera_landmarks68, render_photo, syllable_jaw
from fbench.io import atomic_path
from fbench.synth.files import choose_corrupted, truncate_file
from fbench.synth.video import corrupt_video, write_h264

CARDS = Path(__file__).resolve().parents[1] / "data_cards"
GT_FILE = "fbench_ground_truth.h5"
LRS3_N, LRS3_SEED, LRS3_CORRUPT = 5, 3, 3  # 5 clips: every split, one talk with 3 clips; all 3 corruption kinds
MEAD_N, MEAD_SEED, MEAD_CORRUPT = 1, 5, 2  # one take (happy, level 2) x 7 views; both corruption kinds


# ---------------------------------------------------------------- plain readers (no fbench)

def load_card(name: str) -> dict:
    return yaml.safe_load((CARDS / f"{name}.yaml").read_text())


def list_files(root: Path) -> list[str]:
    out = []
    for folder, _, names in os.walk(root):
        out += [Path(folder, n).relative_to(root).as_posix() for n in names]
    return sorted(out)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def read_gt(root: Path) -> dict:
    """Every dataset of the ground-truth file as numpy arrays (strings decoded), plus attrs."""
    gt: dict = {}
    with h5py.File(root / GT_FILE, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if value.dtype.kind in "OS":
                    value = np.array([v.decode() if isinstance(v, bytes) else v for v in value])
                gt[name] = value
        f.visititems(visit)
        gt["attrs"] = dict(f.attrs)
    return gt


def rows_by_path(gt: dict) -> dict[str, np.ndarray]:
    """Row indices of each path, in frame order."""
    out = {}
    for path in sorted(set(gt["path"])):
        rows = np.nonzero(gt["path"] == path)[0]
        out[path] = rows[np.argsort(gt["frame"][rows])]
    return out


def parse_transcript(text: str, lines: dict) -> tuple[str, int, list[tuple[str, float, float, float]] | None]:
    """Strict LRS3 transcript parser from the card's line regexes; ValueError on any deviation.
    (text, conf, word rows or None when the file has no word table); the face track is checked, not returned."""
    got = text.split("\n")
    if got and got[-1] == "":
        got = got[:-1]
    if len(got) < 2:
        raise ValueError("too few lines")
    m_text, m_conf = re.fullmatch(lines["text"], got[0]), re.fullmatch(lines["conf"], got[1])
    if not (m_text and m_conf):
        raise ValueError(f"bad header: {got[:2]}")
    i = 3 if len(got) > 2 and re.fullmatch(lines["ref"], got[2]) else 2
    words = None
    while i < len(got):
        if not re.fullmatch(lines["blank"], got[i]) or i + 1 >= len(got):
            raise ValueError(f"line {i + 1}: expected a blank line then a table header")
        header = got[i + 1]
        kind = "word" if re.fullmatch(lines["word_header"], header) else \
            "track" if re.fullmatch(lines["track_header"], header) else None
        if kind is None:
            raise ValueError(f"bad table header {header!r}")
        i += 2
        rows = []
        while i < len(got) and got[i] != "":
            m = re.fullmatch(lines[f"{kind}_row"], got[i])
            if not m:
                raise ValueError(f"bad {kind} row {got[i]!r}")
            rows.append((m[1], float(m[2]), float(m[3]), float(m[4])) if kind == "word" else m.groups())
            i += 1
        if kind == "word":
            words = rows
    return m_text[1], int(m_conf[1]), words


def unpack_mask(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1)[..., :width].astype(bool)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import FLAME

    return FLAME(flame_dir, n_exp=50)


@pytest.fixture(scope="module")
def lrs3_data(tmp_path_factory, flame):
    root = tmp_path_factory.mktemp("lrs3") / "LRS3"
    result = lrs3.write(root, n=LRS3_N, seed=LRS3_SEED, corrupt=LRS3_CORRUPT, flame=flame)
    return root, result


@pytest.fixture(scope="module")
def lrs3_clean(tmp_path_factory, flame):
    root = tmp_path_factory.mktemp("lrs3_clean") / "LRS3"
    return root, lrs3.write(root, n=LRS3_N, seed=LRS3_SEED, corrupt=0, flame=flame)


@pytest.fixture(scope="module")
def mead_data(tmp_path_factory, flame):
    root = tmp_path_factory.mktemp("mead") / "MEAD"
    result = mead.write(root, n=MEAD_N, seed=MEAD_SEED, corrupt=MEAD_CORRUPT, flame=flame)
    return root, result


@pytest.fixture(scope="module")
def mead_clean(tmp_path_factory, flame):
    root = tmp_path_factory.mktemp("mead_clean") / "MEAD"
    return root, mead.write(root, n=MEAD_N, seed=MEAD_SEED, corrupt=0, flame=flame)


@pytest.fixture(params=["lrs3", "mead"])
def dataset(request):
    """(name, root, SynthResult) for each video dataset."""
    root, result = request.getfixturevalue(f"{request.param}_data")
    return request.param, root, result


# ---------------------------------------------------------------- data cards

@pytest.mark.parametrize("name, module", [("lrs3", lrs3), ("mead", mead)])
def test_card_describes_the_real_release_and_the_writer(name, module):
    card = load_card(name)
    for key in ("source", "licence", "citation", "layout", "splits", "counts", "verified", "synthetic"):
        assert card.get(key), f"{name} card lacks {key}"
    assert card["source"]["url"].startswith("https://")
    assert "@" in card["citation"] and "title" in card["citation"]
    for pattern in card["layout"]["regex"].values():
        re.compile(pattern)
    synthetic = card["synthetic"]
    assert synthetic["writer"] == module.__name__
    assert synthetic["default_n"] == module.DEFAULT_N
    size = [lrs3.SIZE, lrs3.SIZE] if name == "lrs3" else [mead.WIDTH, mead.HEIGHT]
    assert synthetic["image_size"] == size and synthetic["fps"] == module.FPS
    if name == "mead":
        assert synthetic["views"] == {k: list(v) for k, v in mead.VIEWS.items()}
        assert card["layout"]["fields"]["view"] == list(mead.VIEWS)
        assert card["layout"]["fields"]["emotion"] == list(mead.EMOTIONS)


# ---------------------------------------------------------------- LRS3

def test_lrs3_layout_matches_card(lrs3_data):
    root, result = lrs3_data
    card = load_card("lrs3")
    files = [f for f in list_files(root) if f != GT_FILE]
    video_re, text_re = (re.compile(card["layout"]["regex"][k]) for k in ("video", "transcript"))
    assert files and all(video_re.match(f) or text_re.match(f) for f in files), files
    videos = {f[:-4] for f in files if f.endswith(".mp4")}
    assert videos == {f[:-4] for f in files if f.endswith(".txt")}  # every clip has its transcript
    assert len(videos) == LRS3_N == result.counts["clips"]
    assert {v.split("/")[0] for v in videos} == set(card["layout"]["splits"])
    ids = {split: {v.split("/")[1] for v in videos if v.startswith(split + "/")} for split in card["layout"]["splits"]}
    assert not ids["test"] & (ids["trainval"] | ids["pretrain"])  # test speakers are unseen
    per_id = {i: sum(v.startswith(f"trainval/{i}/") for v in videos) for i in ids["trainval"]}
    assert max(per_id.values()) >= 2  # several clips per speaker: a by-speaker split is meaningful

    gt = read_gt(root)
    assert set(gt["path"]) == {v + ".mp4" for v in videos}
    assert len(set(gt["key"])) == len(gt["key"]) and all(k.startswith("lrs3_") for k in gt["key"])
    for i, path in enumerate(gt["path"]):
        split, video_id, clip = path[:-4].split("/")
        assert (gt["split"][i], gt["video_id"][i], gt["clip"][i]) == (split, video_id, clip)


def test_lrs3_videos_and_transcripts_read_back(lrs3_data):
    root, result = lrs3_data
    card = load_card("lrs3")
    gt = read_gt(root)
    broken = set(result.corrupted)
    fps = card["synthetic"]["fps"]
    for path, rows in rows_by_path(gt).items():
        stem = path[:-4]
        if path not in broken:
            with av.open(str(root / path)) as c:
                stream = c.streams.video[0]
                assert stream.codec_context.name == "h264" and stream.average_rate == fps
            frames = decode(root / path)
            assert len(frames) == len(rows) and list(gt["frame"][rows]) == list(range(len(rows)))
            assert all(f.shape == (*gt["image_size"][r][::-1], 3) for f, r in zip(frames, rows))
            assert list(gt["image_size"][rows[0]]) == card["synthetic"]["image_size"]
        if stem + ".txt" in broken:
            continue
        lines = card["formats"]["transcript"]["lines"]
        text, conf, words = parse_transcript((root / (stem + ".txt")).read_text(), lines)
        if words is None:  # the file written without a word table (as some real ones)
            assert stem + ".txt" in json.loads(gt["attrs"]["transcripts_without_words"]) and 1 <= conf <= 5
            continue
        assert text.split(" ") == [w for w, *_ in words] and 1 <= conf <= 5
        ends = [0.0] + [e for _, _, e, _ in words]
        assert all(s >= prev and e > s for (_, s, e, _), prev in zip(words, ends)), words  # in order, no overlap
        assert ends[-1] <= len(rows) / fps + 1e-9
        # The jaw opens while each word is spoken (FLAME jaw[0] is the opening, radians).
        jaw = gt["flame/jaw"][rows, 0]
        centres = (np.arange(len(rows)) + 0.5) / fps
        for word, start, end, _ in words:
            during = (centres >= start) & (centres <= end)
            if during.any():
                assert jaw[during].max() > 0.05, (path, word)


def test_lrs3_cut_away_frames_have_no_face_but_keep_their_rows(lrs3_data):
    root, _ = lrs3_data
    gt = read_gt(root)
    no_face = json.loads(gt["attrs"]["no_face"])
    assert len(no_face) == 1
    (path, frames), = no_face.items()
    rows = rows_by_path(gt)[path]
    width, height = gt["image_size"][rows[0]]
    assert len(frames) == lrs3.NO_FACE_FRAMES
    visible = gt["face_visible"][rows]
    assert [f for f in range(len(rows)) if not visible[f]] == frames
    assert gt["face_visible"].sum() == len(gt["key"]) - len(frames)  # only there
    decoded = decode(root / path)
    for f in frames:
        r = rows[f]
        assert not unpack_mask(gt["face_mask"][r], width).any()
        lm = gt["landmarks68"][r]
        assert ((lm[:, 0] < 0) | (lm[:, 0] > width) | (lm[:, 1] < 0) | (lm[:, 1] > height)).all()
        # The picture is the background: equal to a face frame away from that frame's face.
        v = frames[0] - 1
        face = cv2.dilate(unpack_mask(gt["face_mask"][rows[v]], width).astype(np.uint8), np.ones((7, 7), np.uint8))
        diff = np.abs(decoded[f].astype(float) - decoded[v]).mean(-1)
        assert diff[face == 0].mean() < 3 and diff[unpack_mask(gt["face_mask"][rows[v]], width)].mean() > 15


def test_lrs3_identity_is_the_speakers(lrs3_data):
    root, _ = lrs3_data
    gt = read_gt(root)
    shapes = {}
    for path, rows in rows_by_path(gt).items():
        assert np.ptp(gt["flame/shape"][rows], axis=0).max() == 0  # fixed within a clip
        shapes.setdefault(path.split("/")[1], []).append(gt["flame/shape"][rows[0]])
    for same in shapes.values():
        assert all(np.array_equal(s, same[0]) for s in same)  # and within a talk
    firsts = [s[0] for s in shapes.values()]
    assert all(not np.allclose(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])


# ---------------------------------------------------------------- MEAD

def test_mead_layout_matches_card(mead_data):
    root, result = mead_data
    card = load_card("mead")
    files = [f for f in list_files(root) if f != GT_FILE]
    video_re = re.compile(card["layout"]["regex"]["video"])
    assert files and all(video_re.match(f) for f in files), files
    assert all(re.match(card["layout"]["regex"]["neutral_video"], f) for f in files if "/neutral/" in f)
    takes: dict[tuple, set] = {}
    for f in files:
        actor, _, view, emotion, level, clip = f[:-4].split("/")
        takes.setdefault((actor, emotion, level, clip), set()).add(view)
    assert len(takes) == MEAD_N == result.counts["takes"]
    assert all(views == set(card["layout"]["fields"]["view"]) for views in takes.values())

    gt = read_gt(root)
    assert set(gt["path"]) == set(files)
    assert len(set(gt["key"])) == len(gt["key"]) and all(k.startswith("mead_") for k in gt["key"])
    for i, path in enumerate(gt["path"]):
        actor, _, view, emotion, level, clip = path[:-4].split("/")
        assert (gt["actor"][i], gt["view"][i], gt["emotion"][i], f"level_{gt['level'][i]}", gt["clip"][i]) == \
            (actor, view, emotion, level, clip)


def test_mead_default_actors_cover_the_split_lists():
    splits = load_card("mead")["splits"]
    for seed in range(3):
        actors = {t.actor for t in mead.plan_takes(np.random.default_rng(seed), mead.DEFAULT_N)}
        assert actors & set(splits["val"]) and actors & set(splits["test"])
        assert len(actors - set(splits["val"]) - set(splits["test"])) >= 2
    for n in range(1, 20):
        takes = mead.plan_takes(np.random.default_rng(n), n)
        assert all(t.level == 1 for t in takes if t.emotion == "neutral")
        assert len({(t.actor, t.emotion, t.level, t.clip) for t in takes}) == n  # distinct takes


def test_mead_views_share_the_trajectory_and_differ_in_camera(mead_data):
    root, result = mead_data
    views = load_card("mead")["synthetic"]["views"]
    gt = read_gt(root)
    flame_keys = [k for k in gt if k.startswith("flame/")]
    for take in np.unique(gt["take"]):
        rows = np.nonzero(gt["take"] == take)[0]
        for frame in np.unique(gt["frame"][rows]):
            same = rows[gt["frame"][rows] == frame]
            assert sorted(gt["view"][same]) == sorted(views)
            for k in flame_keys:  # one moment, seven cameras
                assert (gt[k][same] == gt[k][same[0]]).all(), k
            for r in same:
                R, t = gt["camera_R"][r], gt["camera_t"][r]
                centre = -R.T @ t  # camera centre in FLAME's frame (x: actor's left, y: up, z: forward)
                azimuth = math.degrees(math.atan2(centre[0], centre[2]))
                elevation = math.degrees(math.atan2(centre[1], math.hypot(centre[0], centre[2])))
                assert np.allclose([azimuth, elevation], views[gt["view"][r]], atol=1e-6)
            lm = {gt["view"][r]: gt["landmarks68"][r] for r in same}
            assert np.abs(lm["front"] - lm["left_60"]).mean() > 5
    decoded = {}
    for path in rows_by_path(gt):
        if path not in result.corrupted and gt["take"][gt["path"] == path][0] == 0:
            decoded[path.split("/")[2]] = decode(root / path)
    assert len(decoded) >= 5  # at most two of this take's views were corrupted
    images = list(decoded.values())
    assert all(np.abs(a[0].astype(float) - b[0]).mean() > 3 for i, a in enumerate(images) for b in images[i + 1:])


def test_mead_emotion_and_level_drive_the_expression(mead_data):
    """Every emotion's prototype is recoverable from a take's mean expression, scaled by its level."""
    n_exp = 50
    prototypes = mead.emotion_prototypes(n_exp)
    names = [e for e in mead.EMOTIONS if e != "neutral"]
    unit = np.stack([prototypes[e] / np.linalg.norm(prototypes[e]) for e in names])

    def classify(expression: np.ndarray) -> tuple[str, float]:
        mean = expression.mean(0)
        scores = unit @ mean
        best = int(np.argmax(scores))
        return names[best], scores[best] / mead.PROTOTYPE_NORM

    identity = mead.sample_params(np.random.default_rng(0), 1, n_exp=n_exp)
    for seed in range(2):
        for emotion in mead.EMOTIONS:
            strengths = []
            for level in ([1] if emotion == "neutral" else mead.LEVELS):
                take = mead.Take("M003", emotion, level, "001", 13)
                params = mead.take_params(np.random.default_rng(seed), take, identity, prototypes, n_exp)
                expression = params.expression.numpy()
                if emotion == "neutral":  # no emotion: weaker than half a level-1 one along every prototype
                    assert np.abs(unit @ expression.mean(0)).max() / mead.PROTOTYPE_NORM < 0.5 * mead.LEVEL_SCALE[1]
                    continue
                got, strength = classify(expression)
                assert got == emotion and abs(strength - mead.LEVEL_SCALE[level]) < 0.3, (emotion, level, strength)
                strengths.append(strength)
            assert strengths == sorted(strengths)
    # ... and in the written ground truth, from the folder names alone.
    root, _ = mead_data
    gt = read_gt(root)
    checked = 0
    for take in np.unique(gt["take"]):
        rows = np.nonzero((gt["take"] == take) & (gt["view"] == "front"))[0]
        emotion, level = gt["emotion"][rows[0]], int(gt["level"][rows[0]])
        if emotion != "neutral":
            got, strength = classify(gt["flame/expression"][rows])
            assert got == emotion and abs(strength - mead.LEVEL_SCALE[level]) < 0.3
            checked += 1
    assert checked


# ---------------------------------------------------------------- both datasets

def test_frames_match_ground_truth(dataset):
    name, root, result = dataset
    gt = read_gt(root)
    size = load_card(name)["synthetic"]["image_size"]
    checked = 0
    for path, rows in rows_by_path(gt).items():
        if path in result.corrupted:
            continue
        frames = decode(root / path)
        assert len(frames) == len(rows) and list(gt["frame"][rows]) == list(range(len(rows)))
        assert all(f.shape == (size[1], size[0], 3) for f in frames)
        assert (gt["image_size"][rows] == size).all()
        checked += 1
    assert checked == len(rows_by_path(gt)) - len([p for p in result.corrupted if p.endswith(".mp4")])


def lip_contrast(image: np.ndarray, lips: np.ndarray) -> float:
    """How much redder (lips are skin with less green, plus red) the polygon of the 12 outer lip
    landmarks is than a 2-pixel ring round it."""
    img = image.astype(np.float32)
    red = (img[..., 0] - img[..., 1]) / np.maximum(img.mean(-1), 1)
    inside = np.zeros(red.shape, np.uint8)
    cv2.fillPoly(inside, [np.round((lips - 0.5) * 4).astype(np.int32)], 1, shift=2)  # pixel centres at +0.5
    ring = cv2.dilate(inside, np.ones((5, 5), np.uint8)) - inside
    return float(red[inside > 0].mean() - red[ring > 0].mean())


def test_landmarks_lie_on_the_rendered_face(dataset):
    """GT landmarks sit inside the GT silhouette, the silhouette is where the decoded picture has
    its face (a strong edge all along it), and the lip landmarks outline the red lips better than
    the same outline moved by half a mouth height or a third of its width."""
    name, root, result = dataset
    gt = read_gt(root)
    for path, rows in rows_by_path(gt).items():
        if path in result.corrupted:
            continue
        side = "_60/" in path  # 60-degree views hide part of the face
        frames = decode(root / path)
        lips_fit = []
        for frame, r in zip(frames, rows):
            if not gt["face_visible"][r]:
                continue
            width, height = gt["image_size"][r]
            mask = unpack_mask(gt["face_mask"][r], width)
            lm = gt["landmarks68"][r]
            assert ((lm >= 0) & (lm <= [width, height])).all()
            px = np.clip(np.floor(lm).astype(int), 0, [width - 1, height - 1])
            inside = mask[px[17:, 1], px[17:, 0]].mean()  # the 51 inner points (not the jaw contour)
            assert inside >= (0.7 if side else 0.9), (path, r, inside)

            img = frame.astype(np.float32)
            grad = np.zeros(mask.shape, np.float32)
            grad[:, :-1] += np.abs(np.diff(img, axis=1)).sum(-1)
            grad[:-1, :] += np.abs(np.diff(img, axis=0)).sum(-1)
            m8 = mask.astype(np.uint8)
            boundary = (cv2.dilate(m8, np.ones((3, 3), np.uint8)) - cv2.erode(m8, np.ones((3, 3), np.uint8))) > 0
            far = cv2.dilate(m8, np.ones((11, 11), np.uint8)) == 0
            assert grad[boundary].mean() > 5 * max(grad[far].mean(), 1.0), (path, r)

            lips = lm[48:60]
            h, w = np.ptp(lips[:, 1]), np.ptp(lips[:, 0])
            moved = [lip_contrast(frame, lips + d) for d in ([0, 0.6 * h], [0, -0.6 * h], [0.4 * w, 0], [-0.4 * w, 0])]
            lips_fit.append(lip_contrast(frame, lips) > max(moved))
        if lips_fit:
            assert np.mean(lips_fit) >= 0.9, (path, lips_fit)


def test_trajectories_are_smooth(dataset):
    name, root, _ = dataset
    gt = read_gt(root)
    # Largest change from one frame to the next: expression coefficients (unit-normal scale),
    # radians for the rotations, eyelid blend weights.
    bounds = {"expression": 0.6, "jaw": 0.1, "global_pose": 0.1, "neck": 0.05, "eyes": 0.05, "eyelids": 0.15}
    for path, rows in rows_by_path(gt).items():
        assert np.ptp(gt["flame/shape"][rows], axis=0).max() == 0
        for field, bound in bounds.items():
            v = gt[f"flame/{field}"][rows]
            step = np.abs(np.diff(v, axis=0))
            assert step.max() <= bound, (path, field, step.max())
        for field in ("expression", "global_pose"):
            v = gt[f"flame/{field}"][rows]
            first, second = np.abs(np.diff(v, axis=0)).mean(), np.abs(np.diff(v, n=2, axis=0)).mean()
            assert second < 0.5 * first, (path, field)  # white noise would give ~1.7x


def test_corrupt_files_are_broken_as_promised_and_the_rest_valid(dataset):
    name, root, result = dataset
    gt = read_gt(root)
    kinds = gt["attrs"]["corruption_kinds"].split(",")
    assert json.loads(gt["attrs"]["corrupted"]) == result.corrupted
    assert len(result.corrupted) == (LRS3_CORRUPT if name == "lrs3" else MEAD_CORRUPT)
    broken_rows = gt["corrupted"] > 0
    seen = set()
    for rel in result.corrupted:
        path = rel[:-4] + ".mp4"
        rows = rows_by_path(gt)[path]
        kind = kinds[gt["corrupted"][rows[0]] - 1]
        assert (gt["corrupted"][rows] == gt["corrupted"][rows[0]]).all() and broken_rows[rows].all()
        seen.add(kind)
        file = root / rel
        if kind in ("empty", "empty_video"):
            assert file.stat().st_size == 0
            with pytest.raises(av.error.FFmpegError):
                av.open(str(file))
        elif kind in ("truncated", "truncated_video"):
            assert file.stat().st_size > 0
            got = 0
            with av.open(str(file)) as c:  # opens, and still promises every frame ...
                assert c.streams.video[0].frames == len(rows)
                try:
                    for _ in c.decode(video=0):
                        got += 1
                except av.error.FFmpegError:
                    pass
            assert got < len(rows)  # ... but cannot deliver them
        elif kind == "malformed_txt":
            with pytest.raises(ValueError):
                parse_transcript(file.read_text(), load_card("lrs3")["formats"]["transcript"]["lines"])
            assert len(decode(root / path)) == len(rows)  # its video is fine
        else:
            pytest.fail(f"unknown corruption {kind}")
    assert seen == set(kinds)
    assert broken_rows.sum() == sum(len(rows_by_path(gt)[p[:-4] + ".mp4"]) for p in result.corrupted)


def test_same_seed_same_bytes_and_corruption_touches_nothing_else(dataset, request):
    name, root, result = dataset
    clean_root, clean = request.getfixturevalue(f"{name}_clean")
    assert clean.corrupted == [] and clean.counts == result.counts
    files = list_files(clean_root)
    assert files == list_files(root)
    for rel in files:
        if rel != GT_FILE and rel not in result.corrupted:
            assert (root / rel).read_bytes() == (clean_root / rel).read_bytes(), rel
    a, b = read_gt(root), read_gt(clean_root)
    assert set(a) == set(b)
    for k in a:
        if k not in ("attrs", "corrupted"):
            assert np.array_equal(a[k], b[k]), k
    assert not b["corrupted"].any()
    differ = {k for k in a["attrs"] if k != "corrupted" and not np.array_equal(a["attrs"][k], b["attrs"][k])}
    assert not differ, differ


def test_too_many_corruptions_is_a_clear_error(tmp_path, flame):
    with pytest.raises(ValueError, match="--corrupt 1"):
        lrs3.write(tmp_path / "l", n=1, seed=0, corrupt=1, flame=flame)  # its one clip has the no-face frames
    with pytest.raises(ValueError, match="--corrupt 8"):
        mead.write(tmp_path / "m", n=1, seed=0, corrupt=8, flame=flame)  # 7 videos


def test_cli_writes_lrs3(tmp_path, flame_dir):
    from click.testing import CliRunner

    from fbench.cli import main

    out = tmp_path / "LRS3"
    run = CliRunner().invoke(main, ["synth", "lrs3", "--out", str(out), "--n", "1", "--flame", str(flame_dir)])
    assert run.exit_code == 0, run.output
    assert "1 clips" in run.output
    (video,) = [f for f in list_files(out) if f.endswith(".mp4")]
    assert video.startswith("trainval/") and (out / GT_FILE).is_file()


# ---------------------------------------------------------------- transcripts (property)

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), frames=st.integers(8, 200))
def test_transcripts_parse_with_the_card_regexes(seed, frames):
    lines = load_card("lrs3")["formats"]["transcript"]["lines"]
    words, conf = lrs3.transcript(np.random.default_rng(seed), frames / lrs3.FPS)
    text, got_conf, rows = parse_transcript(lrs3.transcript_text(words, conf), lines)
    assert got_conf == conf and text == " ".join(w for w, *_ in words)
    assert [(w, s, e) for w, s, e, _ in rows] == [(w, s, e) for w, s, e, _ in words]
    assert all(e <= frames / lrs3.FPS + 1e-9 for _, _, e, _ in rows)
    with pytest.raises(ValueError):
        parse_transcript(lrs3.malformed_transcript_text(words, conf), lines)


# ---------------------------------------------------------------- building blocks

def test_h264_writer_is_deterministic_and_close_to_its_input(tmp_path):
    y, x = np.mgrid[0:64, 0:96]
    frames = [np.stack([(x * 2 + 5 * i) % 256, (y * 3) % 256, np.full_like(x, 80 + 4 * i)], -1).astype(np.uint8)
              for i in range(12)]
    assert write_h264(tmp_path / "a.mp4", frames, 25) == 12
    write_h264(tmp_path / "b.mp4", iter(frames), 25)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    back = decode(tmp_path / "a.mp4")
    assert len(back) == 12 and np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(back, frames)]) < 3
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="even"):
        write_h264(tmp_path / "c.mp4", [np.zeros((63, 96, 3), np.uint8)], 25)
    with pytest.raises(ValueError, match="uint8"):
        write_h264(tmp_path / "c.mp4", [np.zeros((64, 96, 3), np.float32)], 25)
    with pytest.raises(ValueError, match="no frames"):
        write_h264(tmp_path / "c.mp4", [], 25)
    assert not (tmp_path / "c.mp4").exists() and not list(tmp_path.glob(".*tmp*"))  # nothing half-written
    corrupt_video(tmp_path / "b.mp4", "truncated")
    assert (tmp_path / "b.mp4").stat().st_size == len((tmp_path / "a.mp4").read_bytes()) // 2
    with pytest.raises(ValueError, match="unknown"):
        corrupt_video(tmp_path / "b.mp4", "scrambled")


def test_file_helpers(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.write_bytes(b"0123456789")
    truncate_file(target, 0.3)
    assert target.read_bytes() == b"012"
    with pytest.raises(ValueError):
        truncate_file(target, 1.0)
    rng = np.random.default_rng(0)
    assert choose_corrupted(rng, ["a", "b", "c"], 0) == []
    picked = choose_corrupted(np.random.default_rng(1), ["a", "b", "c", "d"], 2)
    assert picked == sorted(set(picked)) and len(picked) == 2
    assert picked == choose_corrupted(np.random.default_rng(1), ["a", "b", "c", "d"], 2)
    with pytest.raises(ValueError):
        choose_corrupted(rng, ["a"], 2)


def test_orbit_camera_and_the_contour_it_sees(flame):
    from fbench.flame import FlameParams

    cam = Camera.looking_at_face(480, 270, 90, (240, 120), distance=1.5, azimuth_deg=30, elevation_deg=-20)
    centre = -cam.R.T @ cam.t
    assert np.allclose(centre, 1.5 * np.array([math.cos(math.radians(-20)) * math.sin(math.radians(30)),
                                                math.sin(math.radians(-20)),
                                                math.cos(math.radians(-20)) * math.cos(math.radians(30))]))
    assert np.allclose(cam.R @ cam.R.T, np.eye(3))
    origin = cam.project(torch.zeros(1, 3, dtype=torch.float64))
    assert torch.allclose(origin, torch.tensor([[240.0, 120.0]], dtype=torch.float64))
    # A camera 25 degrees to the actor's right sees the jawline of a head turned 25 degrees left.
    still = FlameParams.zeros(1)
    turned = FlameParams.zeros(1)
    turned.global_pose[0, 1] = math.radians(25)
    out_still, out_turned = flame(still), flame(turned)
    side = Camera.looking_at_face(224, 224, 120, (112, 112), azimuth_deg=-25)
    contour = camera_landmarks68(flame, still, out_still.vertices, side, out_still.landmarks)[0, :17]
    R = torch.as_tensor(cv2.Rodrigues(np.array([0.0, math.radians(25), 0.0]))[0], dtype=torch.float32)
    root = out_turned.joints[0, 0]
    assert torch.allclose((out_turned.landmarks[0, :17] - root) @ R + root, contour, atol=1e-5)
    front = Camera.looking_at_face(224, 224, 120, (112, 112))
    assert camera_landmarks68(flame, still, out_still.vertices, front, out_still.landmarks) is out_still.landmarks


def test_render_photo_off_screen_is_background_and_windowed_render_is_consistent(flame):
    from fbench.flame import FlameParams

    rng = np.random.default_rng(0)
    appearance = Appearance.sample(rng)
    params = FlameParams.zeros(1)
    background = background_image(appearance, 2 * 96, 2 * 64)
    away = Camera.looking_at_face(96, 64, 50, (400.0, 32.0))
    r = render_photo(flame, params, away, appearance, background=background)
    pooled = torch.nn.functional.avg_pool2d(background.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    assert not r.face_mask.any() and np.array_equal(r.image, (pooled.numpy() * 255 + 0.5).astype(np.uint8))
    # Half the head off the left edge: the window is clipped, the picture still matches its mask.
    edge = Camera.looking_at_face(96, 64, 50, (0.0, 32.0))
    r = render_photo(flame, params, edge, appearance, background=background)
    assert r.face_mask[:, :10].any() and not r.face_mask[:, 40:].any()
    changed = np.abs(r.image.astype(int) - (pooled.numpy() * 255 + 0.5).astype(int)).max(-1) > 0
    assert (changed & ~cv2.dilate(r.face_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)).sum() == 0
    with pytest.raises(ValueError, match="background"):
        render_photo(flame, params, edge, appearance, background=background[:-2])


def test_syllable_jaw_opens_per_syllable_and_moves_smoothly():
    fps = 25
    syllables = [(0.1, 0.2), (0.5, 0.62), (0.9, 0.95)]
    jaw = syllable_jaw(np.random.default_rng(0), 30, fps, syllables)
    centres = (np.arange(30) + 0.5) / fps
    for start, end in syllables:
        mid = np.argmin(np.abs(centres - (start + end) / 2))
        assert jaw[mid] > 0.02 + 0.05
    assert jaw.min() >= 0.02 - 1e-12 and jaw.max() <= 0.02 + 0.16 + 1e-12
    assert np.abs(np.diff(jaw)).max() <= math.pi * 0.16 / (0.2 * fps) + 1e-9
