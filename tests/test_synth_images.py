"""Synthetic FFHQ, CelebA and AffectNet: written in the layout their data cards describe, read back plainly.

Everything a dataset reader would see is read here without fbench: os.walk for the layout,
the cards' regexes/headers/columns, PIL for images, json/csv/plain text for annotations,
h5py for the ground truth. fbench code is used to write the datasets and where a test checks
a generator's own property (the label model, the similarity camera, the mask packing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fbench.synth import affectnet, celeba, ffhq
from fbench.synth.faces import Camera, torch_threads
from fbench.synth.images import encode_jpeg, encode_png, pack_mask, similarity_camera, similarity_fit, unpack_mask

CARDS = Path(__file__).resolve().parents[1] / "data_cards"
GT_FILE = "fbench_ground_truth.h5"
FFHQ_N, FFHQ_SEED, FFHQ_CORRUPT = 3, 3, 2  # one validation index; both corruption kinds
CELEBA_N, CELEBA_SEED, CELEBA_CORRUPT = 9, 4, 2  # 3 identities: one per split
AFFECTNET_N, AFFECTNET_SEED, AFFECTNET_CORRUPT = 30, 5, 2  # 3 invalid rows: No-Face, None, Uncertain


# ---------------------------------------------------------------- plain readers (no fbench)

def load_card(name: str) -> dict:
    return yaml.safe_load((CARDS / f"{name}.yaml").read_text())


def list_files(root: Path) -> list[str]:
    out = []
    for folder, _, names in os.walk(root):
        out += [Path(folder, n).relative_to(root).as_posix() for n in names]
    return sorted(out)


def read_gt(root: Path) -> dict:
    """Every dataset of the ground-truth file as numpy arrays (strings decoded), plus attrs."""
    gt: dict = {}
    with h5py.File(root / GT_FILE, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if value.dtype.kind in "OS":
                    value = np.array([v.decode() if isinstance(v, bytes) else v for v in np.atleast_1d(value)])
                gt[name] = value
        f.visititems(visit)
        gt["attrs"] = dict(f.attrs)
    return gt


def load_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # decodes everything: raises on a truncated file
        return np.asarray(im.convert("RGB"))


def mask_of(gt: dict, row: int) -> np.ndarray:
    width, height = gt["image_size"][row]
    return np.unpackbits(gt["face_mask"][row], axis=1)[:height, :width].astype(bool)


def inside(mask: np.ndarray, points: np.ndarray, grow: int = 1) -> np.ndarray:
    """Whether each (x, y) point (pixel centres at +0.5) falls on the mask grown by `grow` pixels."""
    grown = mask.copy()
    for dy in range(-grow, grow + 1):
        for dx in range(-grow, grow + 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    cols, rows = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    ok = (cols >= 0) & (rows >= 0) & (cols < mask.shape[1]) & (rows < mask.shape[0])
    out = np.zeros(len(points), dtype=bool)
    out[ok] = grown[rows[ok], cols[ok]]
    return out


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[36:42].mean(0), lm[42:48].mean(0)


def ffhq_quad(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ's crop (centre, half-axis x) by the card's alignment rule, written out independently."""
    left, right = eye_centres(lm)
    eye_avg, eye_to_eye = (left + right) / 2, right - left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    return eye_avg + eye_to_mouth * 0.1, x


def compare_trees(a: Path, b: Path, skip: set[str]) -> list[str]:
    """Files whose bytes differ between two roots (the ground-truth file and `skip` excluded)."""
    files = list_files(a)
    assert files == list_files(b)
    return [f for f in files if f != GT_FILE and f not in skip and (a / f).read_bytes() != (b / f).read_bytes()]


def same_ground_truth(a: Path, b: Path) -> bool:
    ga, gb = read_gt(a), read_gt(b)
    if set(ga) != set(gb):
        return False
    for key in ga:
        if key == "attrs":
            continue
        if not np.array_equal(ga[key], gb[key]):
            return False
    return True


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import FLAME

    return FLAME(flame_dir, n_exp=50)


def _write(tmp_path_factory, module, name: str, n: int, seed: int, corrupt: int, flame):
    root = tmp_path_factory.mktemp(f"{name}_{seed}_{corrupt}") / name
    return root, module.write(root, n=n, seed=seed, corrupt=corrupt, flame=flame)


@pytest.fixture(scope="module")
def ffhq_data(tmp_path_factory, flame):
    return _write(tmp_path_factory, ffhq, "FFHQ", FFHQ_N, FFHQ_SEED, FFHQ_CORRUPT, flame)


@pytest.fixture(scope="module")
def ffhq_clean(tmp_path_factory, flame):
    return _write(tmp_path_factory, ffhq, "FFHQ", FFHQ_N, FFHQ_SEED, 0, flame)


@pytest.fixture(scope="module")
def celeba_data(tmp_path_factory, flame):
    return _write(tmp_path_factory, celeba, "CelebA", CELEBA_N, CELEBA_SEED, CELEBA_CORRUPT, flame)


@pytest.fixture(scope="module")
def celeba_clean(tmp_path_factory, flame):
    return _write(tmp_path_factory, celeba, "CelebA", CELEBA_N, CELEBA_SEED, 0, flame)


@pytest.fixture(scope="module")
def affectnet_data(tmp_path_factory, flame):
    return _write(tmp_path_factory, affectnet, "AffectNet", AFFECTNET_N, AFFECTNET_SEED, AFFECTNET_CORRUPT, flame)


@pytest.fixture(scope="module")
def affectnet_clean(tmp_path_factory, flame):
    return _write(tmp_path_factory, affectnet, "AffectNet", AFFECTNET_N, AFFECTNET_SEED, 0, flame)


# ---------------------------------------------------------------- data cards

@pytest.mark.parametrize("name, module", [("ffhq", ffhq), ("celeba", celeba), ("affectnet", affectnet)])
def test_card_describes_the_real_release_and_the_writer(name, module):
    card = load_card(name)
    for key in ("source", "licence", "citation", "layout", "formats", "splits", "counts", "verified", "synthetic"):
        assert card.get(key), f"{name} card lacks {key}"
    assert card["key"] == name
    assert card["source"]["url"].startswith(("https://", "http://"))
    assert "@" in card["citation"] and "title" in card["citation"]
    for pattern in card["layout"]["regex"].values():
        re.compile(pattern)
    assert card["synthetic"]["writer"] == module.__name__
    assert card["synthetic"]["default_n"] == module.DEFAULT_N
    assert all({"fact", "source"} <= set(v) for v in card["verified"])
    if name == "celeba":
        assert card["formats"]["landmarks"]["header"] == celeba.LANDMARK_HEADER
        assert card["synthetic"]["image_size"] == [celeba.WIDTH, celeba.HEIGHT]
    if name == "affectnet":
        assert tuple(card["formats"]["csv"]["columns"]) == affectnet.CSV_COLUMNS
        assert tuple(card["formats"]["classes"].values()) == affectnet.CLASSES
        assert [card["layout"]["files"][k] for k in ("training", "validation")] == list(affectnet.SPLIT_FILES.values())
    if name == "ffhq":
        assert card["synthetic"]["image_size"] == [ffhq.SIZE, ffhq.SIZE]
        assert card["counts"]["training"] == ffhq.TRAINING_COUNT and card["counts"]["images"] == ffhq.REAL_COUNT


# ---------------------------------------------------------------- FFHQ

def test_ffhq_layout_and_json_match_card(ffhq_data):
    root, result = ffhq_data
    card = load_card("ffhq")
    files = [f for f in list_files(root) if f != GT_FILE]
    regex = {k: re.compile(v) for k, v in card["layout"]["regex"].items()}
    assert card["layout"]["files"]["metadata"] in files
    images = [f for f in files if regex["image"].match(f)]
    thumbs = [f for f in files if regex["thumbnail"].match(f)]
    assert len(images) == len(thumbs) == FFHQ_N == result.counts["images"]
    assert sorted(images + thumbs + [card["layout"]["files"]["metadata"]]) == files  # nothing else

    entries = json.loads((root / card["layout"]["files"]["metadata"]).read_text())
    assert list(entries) == sorted(entries, key=int)  # keyed by index, in index order
    meta = card["formats"]["metadata"]
    broken = set(result.corrupted)
    for key, entry in entries.items():
        index = int(key)
        folder = f"{index // 1000 * 1000:05d}"  # the card's folder_rule
        assert list(entry) == meta["entry"]
        for section in ("metadata", "image", "thumbnail", "in_the_wild"):
            assert list(entry[section]) == meta[section], section
        assert entry["category"] in meta["category_values"]
        assert entry["category"] == ("training" if index < 60000 else "validation")  # the card's split rule
        assert entry["image"]["file_path"] == f"images1024x1024/{folder}/{index:05d}.png"
        assert entry["thumbnail"]["file_path"] == f"thumbnails128x128/{folder}/{index:05d}.png"
        assert entry["in_the_wild"]["file_path"] == f"in-the-wild-images/{folder}/{index:05d}.png"
        assert not (root / entry["in_the_wild"]["file_path"]).exists()  # release_only
        for section, size in (("image", 1024), ("thumbnail", 128)):
            spec, path = entry[section], root / entry[section]["file_path"]
            assert spec["pixel_size"] == [size, size]
            if spec["file_path"] in broken:
                continue
            data = path.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert (spec["file_size"], spec["file_md5"]) == (len(data), hashlib.md5(data).hexdigest())
            pixels = load_image(path)
            assert pixels.shape == (size, size, 3)
            assert hashlib.md5(np.ascontiguousarray(pixels)).hexdigest() == spec["pixel_md5"]
        assert len(entry["image"]["face_landmarks"]) == 68
        wild = entry["in_the_wild"]
        assert len(wild["face_landmarks"]) == 68 and len(wild["face_quad"]) == 4 and len(wild["face_rect"]) == 4
        assert all(isinstance(v, int) for p in wild["face_landmarks"] for v in p)
    assert sum(e["category"] == "validation" for e in entries.values()) == result.counts["validation"] >= 1


def test_ffhq_landmarks_are_ground_truth_and_aligned(ffhq_data):
    root, _ = ffhq_data
    entries = json.loads((root / "ffhq-dataset-v2.json").read_text())
    gt = read_gt(root)
    assert sorted(gt["key"]) == [f"ffhq_{int(k):05d}" for k in entries]
    for row, path in enumerate(gt["path"]):
        entry = entries[str(int(gt["index"][row]))]
        assert entry["image"]["file_path"] == path
        assert gt["split"][row] == {"training": "train", "validation": "val"}[entry["category"]]
        lm = np.array(entry["image"]["face_landmarks"])
        np.testing.assert_array_equal(lm, gt["landmarks68"][row])  # floats, written exactly
        assert inside(mask_of(gt, row), lm).all()
        # FFHQ's rule applied to the image's own landmarks gives the whole image: aligned, eyes about level
        # (the rule levels eye_to_eye - rot90(eye_to_mouth), not the eyes alone).
        centre, x = ffhq_quad(lm)
        np.testing.assert_allclose(centre, [512, 512], atol=0.05)
        np.testing.assert_allclose(x, [512, 0], atol=0.05)
        left, right = eye_centres(lm)
        assert abs(left[1] - right[1]) < 0.15 * (right[0] - left[0]) and left[0] < 512 < right[0]
        # The wild photo's landmarks are the ground truth's, rounded; its quad maps onto this image.
        wild = np.array(gt["wild_landmarks68"][row])
        np.testing.assert_array_equal(np.array(entry["in_the_wild"]["face_landmarks"]), np.floor(wild + 0.5))
        c, xw = ffhq_quad(wild)
        quad = np.array(entry["in_the_wild"]["face_quad"])
        y = np.flipud(xw) * [-1, 1]
        np.testing.assert_allclose(quad, [c - xw - y, c - xw + y, c + xw + y, c + xw - y], atol=1e-6)
        scale = 1024 / (2 * np.hypot(*xw))
        axes = np.stack([xw, y]) / np.hypot(*xw)
        np.testing.assert_allclose((wild[17:] - c) @ axes.T * scale + 512, lm[17:], atol=0.01)


# ---------------------------------------------------------------- CelebA

def parse_celeba(root: Path, card: dict) -> dict:
    """The three annotation files by the card's formats; rows that do not match go to 'bad'."""
    files, fmt = card["layout"]["files"], card["formats"]
    lines = (root / files["landmarks"]).read_text().splitlines()
    assert re.fullmatch(fmt["landmarks"]["count_line"], lines[0])
    assert lines[1].split() == fmt["landmarks"]["header"].split()
    out: dict = {"count": int(lines[0]), "landmarks": {}, "bad": [], "order": []}
    for line in lines[2:]:
        if re.fullmatch(fmt["landmarks"]["row"], line):
            name, *values = line.split()
            out["landmarks"][name] = np.array(values, dtype=int).reshape(5, 2)
            out["order"].append(name)
        else:
            out["bad"].append(line)
    for key in ("identity", "partition"):
        rows = [re.fullmatch(fmt[key]["row"], ln) for ln in (root / files[key]).read_text().splitlines()]
        assert all(rows), key
        out[key] = {m[1]: int(m[2]) for m in rows}
    out["partition_order"] = [m for m in out["partition"]]
    return out


def test_celeba_layout_and_annotation_files_match_card(celeba_data):
    root, result = celeba_data
    card = load_card("celeba")
    files = [f for f in list_files(root) if f != GT_FILE]
    image_re = re.compile(card["layout"]["regex"]["image"])
    images = [f for f in files if image_re.match(f)]
    listed = [card["layout"]["files"][k] for k in ("landmarks", "identity", "partition")]
    assert sorted(images + listed) == files
    names = [Path(f).name for f in images]
    assert names == [f"{i:06d}.jpg" for i in range(1, CELEBA_N + 1)]  # 1-based, six digits, no gaps

    ann = parse_celeba(root, card)
    assert ann["count"] == CELEBA_N
    assert ann["partition_order"] == names and list(ann["identity"]) == names
    assert sorted(ann["order"] + [b.split()[0] for b in ann["bad"]]) == names
    codes = [ann["partition"][n] for n in names]
    assert codes == sorted(codes) and set(codes) == {0, 1, 2}  # contiguous ranges, every split present
    by_split = {c: {ann["identity"][n] for n in names if ann["partition"][n] == c} for c in (0, 1, 2)}
    assert not (by_split[0] & by_split[1] or by_split[0] & by_split[2] or by_split[1] & by_split[2])
    counts = {i: list(ann["identity"].values()).count(i) for i in set(ann["identity"].values())}
    assert len(counts) == result.counts["identities"] == 3 and max(counts.values()) >= 2
    assert all(1 <= i <= card["counts"]["identities"] for i in counts)
    for name in names:
        if f"Img/img_align_celeba/{name}" not in result.corrupted:
            with Image.open(root / "Img/img_align_celeba" / name) as im:
                assert im.format == "JPEG" and im.size == (178, 218) and im.mode == "RGB"


def test_celeba_landmarks_and_identities_are_ground_truth(celeba_data):
    root, _ = celeba_data
    card = load_card("celeba")
    ann = parse_celeba(root, card)
    gt = read_gt(root)
    codes = {0: "train", 1: "val", 2: "test"}
    assert {int(k): v for k, v in card["formats"]["partition"]["codes"].items()} == codes
    shapes: dict[int, np.ndarray] = {}
    for row, path in enumerate(gt["path"]):
        name = Path(path).name
        assert gt["identity"][row] == ann["identity"][name]
        assert gt["split"][row] == codes[ann["partition"][name]]
        lm = gt["landmarks68"][row]
        # The card's mapping: eye centres, nose tip, mouth corners, rounded to whole pixels.
        five = np.stack([*eye_centres(lm), lm[30], lm[48], lm[54]])
        np.testing.assert_allclose(five, gt["landmarks5"][row], atol=1e-9)
        if name in ann["landmarks"]:
            np.testing.assert_array_equal(ann["landmarks"][name], np.floor(five + 0.5))
        assert five[0, 0] < five[1, 0] and five[3, 0] < five[4, 0]  # "left" = the image's left
        assert inside(mask_of(gt, row), five).all() and inside(mask_of(gt, row), lm).all()
        # Aligned: eyes near the template's places.
        assert np.abs(five[:2] - [[69.5, 111.5], [108.5, 111.5]]).max() < 12
        # One identity = one FLAME shape; its images differ in expression.
        shape = gt["flame/shape"][row]
        if gt["identity"][row] in shapes:
            np.testing.assert_array_equal(shapes[gt["identity"][row]], shape)
        shapes.setdefault(gt["identity"][row], shape)
    assert len({tuple(np.round(e, 6)) for e in gt["flame/expression"]}) == CELEBA_N
    assert len(shapes) == 3


# ---------------------------------------------------------------- AffectNet

def read_affectnet_csvs(root: Path, card: dict) -> tuple[dict[str, list[dict]], dict[str, list[list[str]]]]:
    """Rows of both CSVs as dicts by the card's columns; rows with the wrong field count kept apart."""
    good, bad = {}, {}
    for split in ("training", "validation"):
        with open(root / card["layout"]["files"][split], newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == card["formats"]["csv"]["columns"]
            rows = list(reader)
        columns = card["formats"]["csv"]["columns"]
        good[split] = [dict(zip(columns, r)) for r in rows if len(r) == len(columns)]
        bad[split] = [r for r in rows if len(r) != len(columns)]
    return good, bad


def test_affectnet_layout_and_csvs_match_card(affectnet_data):
    root, result = affectnet_data
    card = load_card("affectnet")
    files = [f for f in list_files(root) if f != GT_FILE]
    image_re = re.compile(card["layout"]["regex"]["image"])
    images = [f for f in files if image_re.match(f)]
    assert sorted(images + [card["layout"]["files"][k] for k in ("training", "validation")]) == files
    assert len(images) == AFFECTNET_N

    good, bad = read_affectnet_csvs(root, card)
    listed = [r["subDirectory_filePath"] for rows in good.values() for r in rows]
    listed += [r[0] for rows in bad.values() for r in rows]
    assert sorted("Manually_Annotated_Images/" + p for p in listed) == images  # each image in exactly one row
    assert len(good["validation"]) + len(bad["validation"]) == result.counts["validation"] >= 1
    sizes = set()
    classes = card["formats"]["classes"]
    sep = card["formats"]["csv"]["landmark_separator"]
    for row in good["training"] + good["validation"]:
        path = root / "Manually_Annotated_Images" / row["subDirectory_filePath"]
        x, y, w, h = (int(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
        lm = np.array(row["facial_landmarks"].split(sep), dtype=float).reshape(card["formats"]["csv"]["landmarks"], 2)
        assert all(re.fullmatch(r"-?[0-9]+\.[0-9]{2}", v) for v in row["facial_landmarks"].split(sep))
        expression = int(row["expression"])
        valence, arousal = float(row["valence"]), float(row["arousal"])
        assert expression in classes
        if (valence, arousal) != (-2, -2):
            assert -1 <= valence <= 1 and -1 <= arousal <= 1
        if path.relative_to(root).as_posix() in result.corrupted:
            continue
        with Image.open(path) as im:
            im.load()
            assert im.format == "JPEG"
            width, height = im.size
        sizes.add((width, height))
        assert 150 <= max(width, height) <= 800 and 100 <= min(width, height)
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 0 and h > 0
        assert (lm >= [x, y]).all() and (lm <= [x + w, y + h]).all()  # the box holds the landmarks
    assert len(sizes) >= 10  # varied sizes


def test_affectnet_annotations_are_ground_truth(affectnet_data):
    root, result = affectnet_data
    card = load_card("affectnet")
    good, _ = read_affectnet_csvs(root, card)
    rows = {"Manually_Annotated_Images/" + r["subDirectory_filePath"]: (split, r)
            for split, rs in good.items() for r in rs}
    gt = read_gt(root)
    seen_invalid = set()
    for i, path in enumerate(gt["path"]):
        if path not in rows:  # the malformed row
            assert json.loads(gt["attrs"]["corrupted_items"]) and gt["corrupted"][i] == 2
            continue
        split, row = rows[path]
        assert gt["split"][i] == {"training": "train", "validation": "val"}[split]
        lm = np.array(row["facial_landmarks"].split(";"), dtype=float).reshape(68, 2)
        np.testing.assert_allclose(lm, gt["landmarks68"][i], atol=0.005 + 1e-9)  # 2 decimals
        assert [int(row[k]) for k in ("face_x", "face_y", "face_width", "face_height")] == list(gt["face_box"][i])
        assert int(row["expression"]) == gt["expression"][i]
        assert (float(row["valence"]), float(row["arousal"])) == (gt["valence"][i], gt["arousal"][i])
        emotion = int(gt["emotion"][i])
        if emotion >= 8:
            seen_invalid.add(emotion)
            assert int(row["expression"]) == emotion
        assert ((gt["valence"][i], gt["arousal"][i]) == (-2, -2)) == (emotion in (9, 10))
        if emotion != 10:  # a face is visible: its landmarks are on it
            assert inside(mask_of(gt, i), lm, grow=2).all()
        else:  # No-Face: the head is turned away
            assert abs(abs(float(gt["flame/global_pose"][i][1])) - math.pi) < 0.6
    assert seen_invalid == {8, 9, 10}
    # The written labels are the label model's (reproducible without rendering).
    ann = affectnet.annotations(AFFECTNET_SEED, AFFECTNET_N, 50)
    order = gt["row"]
    np.testing.assert_array_equal(ann.expression[order], gt["expression"])
    np.testing.assert_array_equal(ann.valence[order], gt["valence"])
    np.testing.assert_allclose(ann.params.expression.numpy()[order], gt["flame/expression"], atol=1e-6)
    attrs = gt["attrs"]
    assert attrs["prototypes"].shape == (8, 50) and attrs["va_centres"].shape == (8, 2)
    assert 0 < attrs["flip_prob"] < 0.5 and "class-first" in attrs["label_model"]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch_threads(1):  # tiny problem: threads only contend on a shared machine
        opt.step(closure)
    return w.detach(), b.detach()


def test_affectnet_labels_are_learnable_from_expression_and_jaw():
    ann = affectnet.annotations(seed=11, n=1000, n_exp=50)
    valid = ann.emotion < 8
    assert (ann.expression[~valid] == ann.emotion[~valid]).all()
    features = np.concatenate([ann.params.expression.numpy(), ann.params.jaw.numpy()], 1)[valid]
    x, y = torch.as_tensor(features, dtype=torch.float64), torch.as_tensor(ann.expression[valid])
    w, b = _fit_logistic(x[:500], y[:500], 8)
    accuracy = float(((x[500:] @ w + b).argmax(1) == y[500:]).double().mean())
    assert accuracy > 0.6, accuracy  # chance is 1/8; label noise caps it near 0.9
    # Some label noise, not too much; valence follows the emotion's sign where the centre has one.
    assert 0.03 < ann.flipped[valid].mean() < 0.2
    happy, sad = ann.emotion == 1, ann.emotion == 2
    assert ann.valence[happy].mean() > 0.3 and ann.valence[sad].mean() < -0.3
    # Shuffled labels are not learnable (the test above can fail).
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    w, b = _fit_logistic(x[:500], shuffled[:500], 8)
    assert float(((x[500:] @ w + b).argmax(1) == shuffled[500:]).double().mean()) < 0.3


# ---------------------------------------------------------------- corruption and determinism

@pytest.mark.parametrize("name", ["ffhq", "celeba", "affectnet"])
def test_corrupt_breaks_the_promised_files_and_nothing_else(name, request):
    root, result = request.getfixturevalue(f"{name}_data")
    clean_root, clean = request.getfixturevalue(f"{name}_clean")
    gt = read_gt(root)
    assert clean.corrupted == []
    assert json.loads(gt["attrs"]["corrupted"]) == result.corrupted
    kinds = gt["attrs"]["corruption_kinds"].split(",")
    damaged_rows = np.nonzero(gt["corrupted"])[0]
    assert len(damaged_rows) == {"ffhq": FFHQ_CORRUPT, "celeba": CELEBA_CORRUPT,
                                 "affectnet": AFFECTNET_CORRUPT}[name]
    assert len({kinds[gt["corrupted"][i] - 1] for i in damaged_rows}) == 2  # both kinds
    for i in damaged_rows:
        kind, path = kinds[gt["corrupted"][i] - 1], gt["path"][i]
        if kind == "empty":
            assert (root / path).stat().st_size == 0
        elif kind == "truncated":
            assert 0 < (root / path).stat().st_size < (clean_root / path).stat().st_size
            with pytest.raises(OSError):
                load_image(root / path)
        else:  # a malformed annotation row, the image itself intact
            load_image(root / path)
    # Every other file is byte-identical to the clean copy (same seed): the corruption is the only change.
    differing = compare_trees(root, clean_root, skip=set())
    assert sorted(differing) == sorted(result.corrupted)
    # The ground truth still describes the intact data.
    assert same_ground_truth(root, clean_root) is False  # only the corrupted column differs ...
    clean_gt = read_gt(clean_root)
    for key in gt:
        if key not in ("attrs", "corrupted"):
            np.testing.assert_array_equal(gt[key], clean_gt[key], err_msg=key)
    for i, path in enumerate(clean_gt["path"]):
        load_image(clean_root / path)  # ... and every clean image reads


def test_corrupt_rows_are_malformed_as_promised(celeba_data, affectnet_data):
    root, result = celeba_data
    ann = parse_celeba(root, load_card("celeba"))
    items = json.loads(read_gt(root)["attrs"]["corrupted_items"])
    rows = [it for it in items if it["kind"] == "malformed_landmarks_row"]
    assert [b.split()[0] for b in ann["bad"]] == [Path(it["path"]).name for it in rows]
    assert all(len(b.split()) == 6 for b in ann["bad"])  # the name and 5 of 10 numbers
    assert "Anno/list_landmarks_align_celeba.txt" in result.corrupted

    root, result = affectnet_data
    card = load_card("affectnet")
    _, bad = read_affectnet_csvs(root, card)
    items = [it for it in json.loads(read_gt(root)["attrs"]["corrupted_items"]) if it["kind"] == "malformed_csv_row"]
    found = [(split, r) for split, rs in bad.items() for r in rs]
    assert len(found) == len(items) == 1
    split, row = found[0]
    assert items[0]["file"] == card["layout"]["files"][split] and items[0]["file"] in result.corrupted
    lines = (root / items[0]["file"]).read_text().splitlines()
    assert lines[items[0]["line"] - 1].startswith(row[0] + ",")
    assert len(row) == 6 and len(row[5].split(";")) == 67


def test_same_seed_same_files_other_seed_other_files(tmp_path, flame, celeba_clean):
    # Same seed: byte-identical files (here CelebA written a second time; the corruption tests above
    # compare every uncorrupted file of all three datasets between two runs of the same seed).
    root, _ = celeba_clean
    again = tmp_path / "again"
    celeba.write(again, n=CELEBA_N, seed=CELEBA_SEED, corrupt=0, flame=flame)
    assert compare_trees(root, again, skip=set()) == [] and same_ground_truth(root, again)
    for module, n in ((celeba, 3), (affectnet, 2), (ffhq, 1)):
        a, b = tmp_path / f"{module.__name__}_a", tmp_path / f"{module.__name__}_b"
        module.write(a, n=n, seed=21, corrupt=0, flame=flame)
        module.write(b, n=n, seed=22, corrupt=0, flame=flame)
        images = lambda r: sorted(f for f in list_files(r) if f.endswith((".jpg", ".png")))  # noqa: E731
        pixels_a = [load_image(a / f) for f in images(a)]
        pixels_b = [load_image(b / f) for f in images(b)]
        assert len(pixels_a) == len(pixels_b) >= n
        assert all(p.shape != q.shape or not np.array_equal(p, q) for p, q in zip(pixels_a, pixels_b))
        assert not same_ground_truth(a, b)


def test_writers_reject_bad_arguments(tmp_path, flame):
    for module in (ffhq, celeba, affectnet):
        with pytest.raises(ValueError, match="at least one"):
            module.write(tmp_path / module.__name__, n=0, seed=0, corrupt=0, flame=flame)
        with pytest.raises(ValueError, match="--corrupt"):
            module.write(tmp_path / module.__name__, n=1, seed=0, corrupt=2, flame=flame)
        with pytest.raises(ValueError, match="FLAME"):
            module.write(tmp_path / module.__name__, n=1, seed=0, corrupt=0, flame=None)


# ---------------------------------------------------------------- helpers

@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.2, 5.0), angle=st.floats(-math.pi, math.pi),
       shift=st.tuples(st.floats(-500, 500), st.floats(-500, 500)))
def test_similarity_camera_moves_projections_by_the_similarity(scale, angle, shift):
    camera = Camera.looking_at_face(640, 480, 200.0, (300.0, 260.0), distance=0.8, azimuth_deg=20.0)
    points = torch.tensor(np.random.default_rng(0).normal(0, 0.1, (50, 3)))
    A = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = similarity_camera(camera, A, np.array(shift), 320, 240)
    expected = camera.project(points).numpy() @ A.T + np.array(shift)
    np.testing.assert_allclose(moved.project(points).numpy(), expected, atol=1e-7 * (1 + scale * 1000))
    assert np.allclose(moved.R @ moved.R.T, np.eye(3)) and np.linalg.det(moved.R) > 0
    assert (moved.width, moved.height) == (320, 240)


def test_similarity_helpers_reject_and_fit():
    camera = Camera.looking_at_face(64, 64, 30.0, (32.0, 32.0))
    with pytest.raises(ValueError, match="rotation"):
        similarity_camera(camera, np.array([[1.0, 0.0], [0.0, 2.0]]), np.zeros(2), 64, 64)
    with pytest.raises(ValueError, match="rotation"):
        similarity_camera(camera, np.array([[1.0, 0.0], [0.0, -1.0]]), np.zeros(2), 64, 64)  # a mirror
    src = np.random.default_rng(1).uniform(0, 100, (5, 2))
    A = 1.7 * np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    fit_A, fit_b = similarity_fit(src, src @ A.T + [4.0, -2.0])
    np.testing.assert_allclose(fit_A, A, atol=1e-12)
    np.testing.assert_allclose(fit_b, [4.0, -2.0], atol=1e-10)
    two_A, two_b = similarity_fit(src[:2], [[10.0, 10.0], [30.0, 10.0]])  # two points: exact
    np.testing.assert_allclose(src[:2] @ two_A.T + two_b, [[10, 10], [30, 10]], atol=1e-10)
    with pytest.raises(ValueError, match="coincide"):
        similarity_fit(np.ones((2, 2)), np.zeros((2, 2)))


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 30), width=st.integers(1, 30), seed=st.integers(0, 1000))
def test_mask_packing_round_trips(height, width, seed):
    mask = np.random.default_rng(seed).random((height, width)) < 0.5
    packed = pack_mask(mask, 32, 40)
    assert packed.shape == (32, 5) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_mask(packed, width, height), mask)
    with pytest.raises(ValueError):
        pack_mask(mask, height - 1, width)


def test_encoders_are_deterministic_and_plain():
    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    assert encode_png(image) == encode_png(image.copy())
    assert encode_jpeg(image, 90) == encode_jpeg(image.copy(), 90)
    with Image.open(io.BytesIO(encode_png(image))) as im:
        assert np.array_equal(np.asarray(im), image) and not im.info.get("exif")
    with Image.open(io.BytesIO(encode_jpeg(image, 90))) as im:
        assert im.size == (30, 20) and "exif" not in im.info and "progressive" not in im.info
    with pytest.raises(ValueError):
        encode_png(image.astype(np.float32))
    with pytest.raises(ValueError):
        encode_jpeg(image, 0)
