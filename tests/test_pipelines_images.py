"""FFHQ, CelebA and AffectNet prep pipelines on synthetic datasets: `fbench prep <dataset>` end to end.

Prepped with `--landmarks annotations` (the datasets' own landmark files, no detector), each
shard's annotation landmarks mapped back through the stored affine must equal the landmarks the
dataset's annotation file gives, and those must match the ground truth within the file's own
rounding: FFHQ's JSON floats (float32 storage: < 1e-3 px on 1024 px images), CelebA's whole
pixels (<= 0.5 px per coordinate from the exact points, exact vs the rounded ones), AffectNet's
two decimals (<= 0.005 px). The image encoding does not matter: annotation landmarks are not
detected. Counts must add up with corrupt images and malformed annotation rows, and a path
climbing out of the root must become a reject, not a read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fbench.shards import SourceOptions
from fbench.synth.ground_truth import read_ground_truth
from pipelines import celeba, ffhq
from conftest import shared_synthetic
from pipelines_support import check_counts, check_crop_pixels, load_prepped, mediapipe_error, prep_cli, source_landmarks

FLOAT_TOL_PX = 1e-3


@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import FLAME

    return FLAME(flame_dir, n_exp=50)


def gt_by_path(gt) -> dict[str, int]:
    return {p: i for i, p in enumerate(gt.paths)}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------- FFHQ


@pytest.fixture(scope="module")
def ffhq_root(tmp_path_factory, flame) -> Path:
    return shared_synthetic(tmp_path_factory, "ffhq", flame, n=4, seed=1, corrupt=2).root


def test_ffhq_prep_matches_ground_truth(ffhq_root, tmp_path) -> None:
    output, _ = prep_cli("ffhq", ffhq_root, tmp_path, "--landmarks", "annotations", "--size", "128")
    manifest, samples, rejects = load_prepped(tmp_path, "ffhq")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(ffhq_root)
    rows = gt_by_path(gt)
    corrupted = set(json.loads(gt.attrs["corrupted"]))
    assert len(samples) == len(gt) - len(corrupted) and len(rejects) == len(corrupted) == 2
    assert {r["file"] for r in rejects} == corrupted and manifest["total"]["inputs"] == len(gt)
    worst = 0.0
    for s in samples:
        row = rows[s.meta["source_path"]]
        worst = max(worst, float(np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max()))
        assert s.meta["split"] == text(gt.extras["split"][row])
        assert s.meta["labels"]["category"] == text(gt.extras["category"][row])
        assert s.meta["labels"]["index"] == int(gt.extras["index"][row]) and s.meta["labels"]["license"]
        assert s.key == f"ffhq_{int(gt.extras['index'][row]):05d}" and s.meta["landmarks"]["ann"] == "ibug68"
    for r in rejects:
        assert r["split"] == text(gt.extras["split"][rows[r["file"]]])
    assert worst < FLOAT_TOL_PX, worst
    check_crop_pixels(tmp_path, "ffhq", ffhq_root)  # the pixels too, not only the landmarks' round trip
    print(f"FFHQ: {len(samples)} samples, {len(rejects)} rejects, max landmark error {worst:.2e} px")


def test_ffhq_thumbnails_scale_the_landmarks(ffhq_root, tmp_path) -> None:
    prep_cli("ffhq", ffhq_root, tmp_path, "--landmarks", "annotations", "--images", "thumbnails", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path, "ffhq")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(ffhq_root)
    assert len(samples) == len(gt) and not rejects  # the thumbnails are intact
    for s in samples:
        assert s.meta["source_path"].startswith("thumbnails128x128/") and s.meta["source_size"] == [128, 128]
        row = gt.keys.index(f"ffhq_{s.meta['labels']['index']:05d}")
        assert np.abs(source_landmarks(s) - gt.extras["landmarks68"][row] * 128 / 1024).max() < FLOAT_TOL_PX


def test_ffhq_malicious_and_malformed_json_entries_are_rejects(ffhq_root, tmp_path) -> None:
    root = tmp_path / "FFHQ"
    shutil.copytree(ffhq_root, root)
    entries = json.loads((root / ffhq.JSON_NAME).read_text())
    first, second, *_ = sorted(entries, key=int)
    entries[first]["image"]["file_path"] = "../../../../../../etc/passwd"
    entries[second]["image"]["face_landmarks"] = entries[second]["image"]["face_landmarks"][:67]
    entries["not-a-number"] = {}
    entries["69999"] = json.loads(json.dumps(entries[second]))
    entries["69999"]["image"]["file_path"] = "images1024x1024/69000/69999.png"  # listed, but not in this copy
    (root / ffhq.JSON_NAME).write_text(json.dumps(entries))
    prep_cli("ffhq", root, tmp_path / "out", "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path / "out", "ffhq")
    check_counts(manifest, samples, rejects)
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert "'..' (path traversal)" in reasons[f"json-{int(first):05d}"]
    assert "expected 68 (x, y) points" in reasons[f"json-{int(second):05d}"]
    assert "is not an image index" in reasons["json-not-a-number"]
    assert all(r["file"] in (ffhq.JSON_NAME, *json.loads(read_ground_truth(root).attrs["corrupted"])) for r in rejects)
    assert not any("passwd" in s.meta["source_path"] for s in samples) and "69999" not in reasons  # absent: skipped
    assert manifest["total"]["inputs"] == len(entries) - 1


def test_ffhq_without_json_splits_by_index(tmp_path) -> None:
    for index in (5, 59999, 60000, 69999):
        path = tmp_path / f"images1024x1024/{index // 1000 * 1000:05d}/{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    items = ffhq.FFHQSource().items(tmp_path, SourceOptions())
    assert [(i.labels["index"], i.split, i.labels["category"]) for i in items] == [
        (5, "train", "training"), (59999, "train", "training"), (60000, "val", "validation"),
        (69999, "val", "validation")]
    assert all(i.annotations is None for i in items)
    with pytest.raises(ValueError, match="neither ffhq-dataset-v2.json, nor a in-the-wild-images/ folder"):
        ffhq.FFHQSource().items(tmp_path, SourceOptions(filters={"images": ("wild",)}))


# ----------------------------------------------------------------------------------------- CelebA


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory, flame) -> Path:
    return shared_synthetic(tmp_path_factory, "celeba", flame, n=10, seed=0, corrupt=2).root


def test_celeba_prep_matches_ground_truth(celeba_root, tmp_path) -> None:
    prep_cli("celeba", celeba_root, tmp_path, "--landmarks", "annotations", "--size", "96", "--maxcount", "4")
    manifest, samples, rejects = load_prepped(tmp_path, "celeba")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(celeba_root)
    rows = gt_by_path(gt)
    kinds = {c["path"]: c["kind"] for c in json.loads(gt.attrs["corrupted_items"])}
    assert len(samples) == len(gt) - len(kinds) and len(rejects) == len(kinds) == 2
    assert manifest["total"]["inputs"] == len(gt)
    worst_int = worst_exact = 0.0
    for s in samples:
        row = rows[s.meta["source_path"]]
        back = source_landmarks(s)
        worst_int = max(worst_int, float(np.abs(back - gt.extras["landmarks5_int"][row]).max()))
        worst_exact = max(worst_exact, float(np.abs(back - gt.extras["landmarks5"][row]).max()))
        assert s.meta["split"] == text(gt.extras["split"][row]) and s.meta["landmarks"]["ann"] == "celeba5"
        assert s.meta["labels"]["identity"] == int(gt.extras["identity"][row]) == int(s.meta["subject"])
    assert worst_int < FLOAT_TOL_PX and worst_exact <= 0.5 + FLOAT_TOL_PX, (worst_int, worst_exact)
    check_crop_pixels(tmp_path, "celeba", celeba_root)
    print(f"CelebA: {len(samples)} samples, {len(rejects)} rejects, max error {worst_int:.2e} px vs the file's "
          f"integers, {worst_exact:.3f} px vs the exact points")
    # One reject per corrupt input, naming the right file: the image, or the landmark file and its line.
    for r in rejects:
        image = f"{celeba.VARIANTS['aligned'][0]}/{r['id']}.jpg"
        assert r["split"] == text(gt.extras["split"][rows[image]])
        if kinds[image] == "truncated":
            assert r["file"] == image and "cannot decode image" in r["reason"]
        else:
            assert r["file"] == "Anno/list_landmarks_align_celeba.txt" and " line " in r["reason"]
    # The synthetic partition is identity-disjoint; the pipeline keeps it so (splits come from the file alone).
    ids = {split: {s.meta["labels"]["identity"] for s in samples if s.meta["split"] == split} for split in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_celeba_malicious_and_malformed_rows_are_rejects(celeba_root, tmp_path) -> None:
    root = tmp_path / "CelebA"
    shutil.copytree(celeba_root, root)
    partition = root / celeba.PARTITION_FILE
    lines = partition.read_text().splitlines()
    lines += ["../../../../etc/passwd 0", "000002.jpg 0", "000004.jpg 7", "000005.jpg"]
    partition.write_text("\n".join(lines) + "\n")
    identity = root / celeba.IDENTITY_FILE
    identity.write_text(identity.read_text().replace("000006.jpg ", "000006.jpg x", 1))
    (root / celeba.ATTRIBUTE_FILE).write_text("2\n" + " ".join(f"A{i}" for i in range(40)) + "\n" +
                                              "000007.jpg " + " ".join(["1", "-1"] * 20) + "\n")
    prep_cli("celeba", root, tmp_path / "out", "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path / "out", "celeba")
    check_counts(manifest, samples, rejects)
    reasons = [r["reason"] for r in rejects]
    assert any("'../../../../etc/passwd' is not a CelebA file name" in r for r in reasons)
    assert any("000002.jpg is listed twice" in r for r in reasons)
    assert any("000006.jpg" in r and "identity_CelebA.txt line 6" in r for r in reasons)
    assert not any("passwd" in s.meta["source_path"] for s in samples)
    # The partition lists 000004 twice (as 7 the second time) and 000005 without a code: both rows reject,
    # the first (good) rows are kept.
    assert sum("000004" in r or "000005" in r for r in reasons) == 2
    seven = next(s for s in samples if s.meta["id"] == "000007")
    assert seven.meta["labels"]["attributes"] == [f"A{i}" for i in range(0, 40, 2)]
    assert manifest["total"]["inputs"] == 10 + 4


def test_celeba_wrong_root_is_a_clear_error(tmp_path) -> None:
    output, code = prep_cli("celeba", tmp_path, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "no CelebA partition list (looked for Eval/list_eval_partition.txt, list_eval_partition.txt" \
        in output


# -------------------------------------------------------------------------------------- AffectNet

AFFECTNET_TOL_PX = 0.005 + FLOAT_TOL_PX  # the CSV's two decimals


@pytest.fixture(scope="module")
def affectnet_root(tmp_path_factory, flame) -> Path:
    return shared_synthetic(tmp_path_factory, "affectnet", flame, n=12, seed=0, corrupt=2).root


def test_affectnet_prep_matches_ground_truth(affectnet_root, tmp_path) -> None:
    prep_cli("affectnet", affectnet_root, tmp_path, "--landmarks", "annotations", "--size", "96")
    manifest, samples, rejects = load_prepped(tmp_path, "affectnet")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(affectnet_root)
    rows = gt_by_path(gt)
    corrupted = {c["path"]: c for c in json.loads(gt.attrs["corrupted_items"])}
    assert len(samples) == len(gt) - len(corrupted) and len(rejects) == len(corrupted) == 2
    assert manifest["total"]["inputs"] == len(gt)
    worst, flagged = 0.0, 0
    for s in samples:
        row = rows[s.meta["source_path"]]
        worst = max(worst, float(np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max()))
        labels = s.meta["labels"]
        expression, valence, arousal = (int(gt.extras[k][row]) if k == "expression" else float(gt.extras[k][row])
                                        for k in ("expression", "valence", "arousal"))
        assert s.meta["split"] == text(gt.extras["split"][row])
        assert (labels["expression"], labels["valence"], labels["arousal"]) == (expression, valence, arousal)
        assert labels["expression_valid"] == (expression < 8) and labels["va_valid"] == (valence != -2)
        assert labels["face_box"] == gt.extras["face_box"][row].tolist()
        flagged += not labels["expression_valid"]
    assert worst < AFFECTNET_TOL_PX, worst
    check_crop_pixels(tmp_path, "affectnet", affectnet_root)
    assert flagged == sum(int(gt.extras["expression"][rows[p]]) >= 8 for p in rows if p not in corrupted) >= 1
    print(f"AffectNet: {len(samples)} samples, {len(rejects)} rejects, max landmark error {worst:.4f} px, "
          f"{flagged} invalid-class sample(s) kept and flagged")
    by_file = {r["file"]: r for r in rejects}
    for path, c in corrupted.items():
        if c["kind"] == "truncated":
            assert "cannot decode image" in by_file[path]["reason"]
        else:  # the malformed row: one reject naming the CSV and its line
            assert f"{c['file']} line {c['line']}: 6 fields, expected 9" in by_file[c["file"]]["reason"]


def test_affectnet_mediapipe_on_synthetic_images(affectnet_root, tmp_path) -> None:
    """Bonus, with the real detector: MediaPipe finds every synthetic face near the ground truth, and
    nothing in the No-Face image (head turned away), which keeps its annotation box and its flag."""
    prep_cli("affectnet", affectnet_root, tmp_path, "--fan", "off", "--mediapipe-backend", "facemesh",
             "--size", "128")
    manifest, samples, rejects = load_prepped(tmp_path, "affectnet")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(affectnet_root)
    rows = gt_by_path(gt)
    errors = []
    for s in samples:
        row = rows[s.meta["source_path"]]
        if s.meta["labels"]["expression"] == 10:  # No-Face
            assert not s.meta["landmarks"]["mp"] and s.meta["box_source"] == "annotations"
            assert not s.meta["labels"]["expression_valid"]
            continue
        assert s.meta["landmarks"]["mp"] and s.meta["box_source"] == "mediapipe", s.key
        errors.append(mediapipe_error(s, gt.extras["landmarks_mp"][row], gt.extras["landmarks68"][row]))
        assert np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max() < AFFECTNET_TOL_PX
    assert errors and max(errors) < 0.08, errors  # fraction of the face size
    print(f"AffectNet MediaPipe: {len(errors)} faces, median error <= {max(errors):.3f} x face size")


def test_affectnet_malicious_and_malformed_rows_are_rejects(affectnet_root, tmp_path) -> None:
    import cv2

    root = tmp_path / "data" / "AffectNet"
    shutil.copytree(affectnet_root, root)
    outside = tmp_path / "data" / "secret.jpg"  # a perfectly readable image outside the root
    cv2.imwrite(str(outside), np.full((64, 64, 3), 128, np.uint8))
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    lines = csv_path.read_text().splitlines()
    good = next(line for line in lines[1:] if line.count(",") == 8)
    fields = good.split(",")

    def row(**changes) -> str:
        f = dict(zip(("path", "x", "y", "w", "h", "lm", "expression", "valence", "arousal"), fields))
        f.update(changes)
        return ",".join(f.values())

    extra = [row(path="../../secret.jpg"), row(path="/etc/passwd"), row(path="..\\..\\secret.jpg"),
             row(expression="11"), row(valence="1.5"), row(arousal="abc"), row(lm="1;2;3"), good]
    csv_path.write_text("\n".join(lines + extra) + "\n")
    prep_cli("affectnet", root, tmp_path / "out", "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path / "out", "affectnet")
    check_counts(manifest, samples, rejects)
    new = [r for r in rejects if r["id"].startswith("training-line") and int(r["id"][-7:]) > len(lines)]
    reasons = [r["reason"] for r in sorted(new, key=lambda r: r["id"])]
    assert len(reasons) == len(extra) - 1
    for reason in reasons[:3]:
        assert "unsafe image path" in reason
    assert "expression 11 is not a class 0-10" in reasons[3] and "valence 1.5 is outside [-1, 1]" in reasons[4]
    assert "arousal 'abc' is not a number" in reasons[5] and "expected 68 (x, y) points" in reasons[6]
    assert all(r["file"] == "Manually_Annotated_file_lists/training.csv" for r in new)
    duplicate = [r for r in rejects if "gives the same sample key" in r["reason"]]
    assert len(duplicate) == 1 and duplicate[0]["file"] == "Manually_Annotated_file_lists/training.csv"
    assert manifest["total"]["inputs"] == 12 + len(extra)
    assert not any("secret" in s.meta["source_path"] or "passwd" in s.meta["source_path"] for s in samples)


def test_affectnet_header_order_and_limits(tmp_path) -> None:
    from pipelines import affectnet

    lm = ";".join(["10.00"] * 136)
    (tmp_path / "Manually_Annotated_Images").mkdir()
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    # Columns in another order: read by header name.
    header = "expression,valence,arousal,subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks"
    rows = [f"{k % 11},-2,-2,{k}/img{k}.jpg,0,0,10,10,{lm}" for k in range(6)]
    for k in range(6):  # listing checks that the images exist (it never reads them)
        (tmp_path / "Manually_Annotated_Images" / str(k)).mkdir()
        (tmp_path / "Manually_Annotated_Images" / str(k) / f"img{k}.jpg").write_bytes(b"")
    (lists / "training.csv").write_text("\n".join([header, *rows]) + "\n")
    items = affectnet.AffectNetSource().items(tmp_path, SourceOptions())
    assert [i.labels["expression"] for i in items] == list(range(6)) and all(i.split == "train" for i in items)
    assert all(i.labels["va_valid"] is False and i.path.startswith("Manually_Annotated_Images/") for i in items)
    assert len(affectnet.AffectNetSource().items(tmp_path, SourceOptions(limit=2))) == 2
    assert affectnet.AffectNetSource().items(tmp_path, SourceOptions(splits=("val",))) == []
    (lists / "training.csv").write_text("subDirectory_filePath,expression\n")
    with pytest.raises(ValueError, match="header lacks column"):
        affectnet.AffectNetSource().items(tmp_path, SourceOptions())
