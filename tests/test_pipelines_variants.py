"""Copies of the datasets in the layouts they circulate in (issue 14): each variant written by
`fbench synth <dataset> --variant V` through the CLI, prepped by `fbench prep <dataset>` and checked
against the writer's ground truth (samples, labels, landmarks), plus the errors a wrong copy gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fbench.synth.ground_truth import read_ground_truth
from pipelines_support import check_counts, load_prepped, prep_cli, source_landmarks, synth_cli

AFFECTNET_TOL_PX = 0.005 + 1e-3  # two decimals in the CSV / the npy landmarks, float32 crop storage


def variant_writer(tmp_path_factory, flame_dir: Path, dataset: str, folder: str, *args: str):
    """A function variant -> root of `fbench synth DATASET ARGS --variant V`, written once per module."""
    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            root = tmp_path_factory.mktemp(f"{dataset}-{variant}") / folder
            synth_cli(dataset, root, flame_dir, *args, "--variant", variant)
            cache[variant] = root
        return cache[variant]
    return get


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -------------------------------------------------------------------------------------- AffectNet


@pytest.fixture(scope="module")
def affectnet_variants(tmp_path_factory, flame_dir):
    """One synthetic AffectNet per variant (10 images, 2 of them val rows, 2 corrupted), written on first use."""
    return variant_writer(tmp_path_factory, flame_dir, "affectnet", "AffectNet", "--n", "10", "--corrupt", "2")


def check_affectnet(root: Path, out: Path, npy: bool) -> dict:
    """Prep `root` and compare every sample with the ground truth; corrupted items are the only rejects."""
    output, _ = prep_cli("affectnet", root, out, "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(out, "affectnet")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(root)
    rows = {p: i for i, p in enumerate(gt.paths)}
    corrupted = {c["path"]: c for c in json.loads(gt.attrs["corrupted_items"])}
    assert len(samples) == len(gt) - len(corrupted) and len(rejects) == len(corrupted) == 2
    for s in samples:
        row = rows[s.meta["source_path"]]
        labels = s.meta["labels"]
        assert s.meta["split"] == text(gt.extras["split"][row])
        assert labels["expression"] == int(gt.extras["expression"][row])
        assert (labels["valence"], labels["arousal"]) == (float(gt.extras["valence"][row]),
                                                          float(gt.extras["arousal"][row]))
        assert labels["va_valid"] == (labels["valence"] != -2)
        assert labels["face_box"] == (None if npy else gt.extras["face_box"][row].tolist())
        assert np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max() < AFFECTNET_TOL_PX
    assert {s.meta["split"] for s in samples} == {"train", "val"}
    reasons = {r["file"]: r["reason"] for r in rejects}
    for path, c in corrupted.items():
        if c["kind"] == "truncated":
            assert "cannot decode image" in reasons[path]
        elif npy:  # the malformed landmark array: one reject naming the file
            assert reasons[path].startswith(c["file"]) and "expected 68 (x, y) points" in reasons[path]
        else:
            assert f"{c['file']} line {c['line']}: 6 fields, expected 9" in reasons[c["file"]]
    manifest["output"] = output
    return manifest


@pytest.mark.parametrize("variant, image_dir, lists", [
    ("compressed", "Manually_Annotated_compressed/Manually_Annotated_Images", "Manually_Annotated_file_lists/"),
    ("emoca", "Manually_Annotated/Manually_Annotated_Images", "Manually_Annotated/"),
    ("root-lists", "Manually_Annotated_Images", ""),
    ("headerless", "Manually_Annotated_Images", "Manually_Annotated_file_lists/"),
])
def test_affectnet_csv_variants_prep(affectnet_variants, tmp_path, variant, image_dir, lists) -> None:
    root = affectnet_variants(variant)
    assert (root / image_dir).is_dir() and (root / f"{lists}training.csv").is_file()
    first = (root / f"{lists}validation.csv").read_text().splitlines()[0]
    assert first.startswith("subDirectory_filePath") == (variant != "headerless")
    manifest = check_affectnet(root, tmp_path, npy=False)
    listing = manifest["listing"]
    assert listing["layout"] == "csv" and listing["image_dir"] == image_dir
    assert listing["lists"] == {"train": f"{lists}training.csv", "val": f"{lists}validation.csv"}
    assert f"affectnet: layout csv (images {image_dir}/" in manifest["output"]


def test_affectnet_npy_distribution_prep(affectnet_variants, tmp_path) -> None:
    root = affectnet_variants("npy")
    assert not (root / "Manually_Annotated_Images").exists() and (root / "val_set" / "annotations").is_dir()
    manifest = check_affectnet(root, tmp_path, npy=True)
    assert manifest["listing"]["layout"] == "npy"
    assert manifest["listing"]["folders"] == {"train": "train_set", "val": "val_set"}
    assert "affectnet: layout npy (train_set/images + train_set/annotations" in manifest["output"]


def test_affectnet_npy_bad_arrays_are_rejects(affectnet_variants, tmp_path) -> None:
    """A missing array, a pickled object array (never unpickled) and an out-of-range class are one
    reject each, naming the file; the rest of the run goes on."""
    import pickle

    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_variants("npy"), root)
    ann = root / "train_set" / "annotations"
    stems = sorted(p.name[: -len("_exp.npy")] for p in ann.glob("*_exp.npy"))
    gt = read_ground_truth(root)
    corrupted = {c["path"] for c in json.loads(gt.attrs["corrupted_items"])}
    good = [s for s in stems if f"train_set/images/{s}.jpg" not in corrupted]
    (ann / f"{good[0]}_aro.npy").unlink()
    np.save(ann / f"{good[1]}_val.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(ann / f"{good[2]}_exp.npy", np.array("12"))
    prep_cli("affectnet", root, tmp_path / "out", "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path / "out", "affectnet")
    check_counts(manifest, samples, rejects)
    reasons = {r["file"]: r["reason"] for r in rejects}
    assert reasons[f"train_set/images/{good[0]}.jpg"] == f"train_set/annotations/{good[0]}_aro.npy: missing"
    assert reasons[f"train_set/images/{good[1]}.jpg"].startswith(f"train_set/annotations/{good[1]}_val.npy: ")
    assert "12 is not a class 0-10" in reasons[f"train_set/images/{good[2]}.jpg"]
    assert len(rejects) == len(corrupted) + 3
    del pickle


def test_affectnet_missing_images_stop_with_where_it_looked(affectnet_variants, tmp_path) -> None:
    """The lists without their images (archive not extracted, or elsewhere): an error naming the folders
    searched, not a run of rejects; a few missing images are still only rejects."""
    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_variants("emoca"), root)
    images = root / "Manually_Annotated" / "Manually_Annotated_Images"
    shutil.rmtree(images)
    output, code = prep_cli("affectnet", root, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "no image folder; looked for Manually_Annotated_Images, Manually_Annotated_compressed/" \
        "Manually_Annotated_Images, Manually_Annotated/Manually_Annotated_Images" in output
    images.mkdir()  # the folder exists but is empty
    output, code = prep_cli("affectnet", root, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "checked rows of Manually_Annotated/training.csv are missing" in output
    assert "looked in Manually_Annotated/Manually_Annotated_Images/" in output


def test_synth_unknown_variant_is_a_clear_error(tmp_path, flame_dir) -> None:
    from fbench.cli import main

    result = CliRunner().invoke(main, ["synth", "affectnet", "--out", str(tmp_path / "a"), "--flame", str(flame_dir),
                                       "--variant", "nope"])
    assert result.exit_code != 0 and "synthetic affectnet has no variant 'nope'; choose from default" in result.output


# ----------------------------------------------------------------------------------------- CelebA


@pytest.fixture(scope="module")
def celeba_variants(tmp_path_factory, flame_dir):
    return variant_writer(tmp_path_factory, flame_dir, "celeba", "CelebA", "--n", "8", "--corrupt", "2")


@pytest.mark.parametrize("variant, sub, layout, identities", [
    ("torchvision", "", "torchvision", True),          # --root at torchvision's root (holding celeba/)
    ("torchvision", "celeba", "torchvision", True),    # --root at the celeba/ folder itself
    ("csv", "", "csv", False),                         # the CSV mirror: no identity file
])
def test_celeba_copy_layouts_prep(celeba_variants, tmp_path, variant, sub, layout, identities) -> None:
    base = celeba_variants(variant)
    root = base / sub if sub else base
    if variant == "torchvision":  # SMIRK's copy of identity_CelebA.txt: CRLF line endings
        assert b"\r\n" in (base / "celeba" / "identity_CelebA.txt").read_bytes()
    output, _ = prep_cli("celeba", root, tmp_path, "--landmarks", "annotations", "--size", "64")
    manifest, samples, rejects = load_prepped(tmp_path, "celeba")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(base)
    prefix = f"{sub}/" if sub else ""
    rows = {p.removeprefix(prefix): i for i, p in enumerate(gt.paths)}
    kinds = {c["path"].removeprefix(prefix): c for c in json.loads(gt.attrs["corrupted_items"])}
    assert len(samples) == len(gt) - len(kinds) and len(rejects) == len(kinds) == 2
    for s in samples:
        row = rows[s.meta["source_path"]]
        assert np.abs(source_landmarks(s) - gt.extras["landmarks5_int"][row]).max() < 1e-3
        assert s.meta["split"] == text(gt.extras["split"][row])
        assert s.meta["labels"]["identity"] == (int(gt.extras["identity"][row]) if identities else None)
    splits = {s.meta["split"] for s in samples}
    assert splits <= {"train", "val", "test"} and len(splits) >= 2
    for r in rejects:
        image = next(p for p in kinds if p.endswith(f"/{r['id']}.jpg"))
        if kinds[image]["kind"] == "truncated":
            assert r["file"] == image and "cannot decode image" in r["reason"]
        else:
            assert r["file"] == kinds[image]["file"].removeprefix(prefix) and " line " in r["reason"]
    assert manifest["listing"]["layout"] == layout
    identity_file = f"{'' if sub else 'celeba/'}identity_CelebA.txt"
    assert manifest["listing"]["identity"] == (identity_file if identities else None)
    assert f"celeba: layout {layout} (" in output


# ------------------------------------------------------------------------------------------- FFHQ


@pytest.fixture(scope="module")
def ffhq_flat(tmp_path_factory, flame_dir) -> Path:
    root = tmp_path_factory.mktemp("ffhq-flat") / "ffhq256"
    synth_cli("ffhq", root, flame_dir, "--n", "6", "--corrupt", "2", "--variant", "flat256")
    return root


def test_ffhq_flat_folder_without_json_preps_with_detected_landmarks(ffhq_flat, tmp_path) -> None:
    """SMIRK's copy: a flat folder of 256 px images, no JSON. Splits by index, landmarks detected
    (MediaPipe) near the ground truth; corrupt images are rejects; the layout is in the manifest."""
    from pipelines_support import mediapipe_error

    assert not (ffhq_flat / "ffhq-dataset-v2.json").exists() and sorted(p.name for p in ffhq_flat.glob("*.png"))
    output, _ = prep_cli("ffhq", ffhq_flat, tmp_path, "--fan", "off", "--mediapipe-backend", "facemesh",
                         "--size", "128")
    manifest, samples, rejects = load_prepped(tmp_path, "ffhq")
    check_counts(manifest, samples, rejects)
    gt = read_ground_truth(ffhq_flat)
    rows = {p: i for i, p in enumerate(gt.paths)}
    corrupted = set(json.loads(gt.attrs["corrupted"]))
    assert len(samples) == len(gt) - len(corrupted) and {r["file"] for r in rejects} == corrupted
    errors = []
    for s in samples:
        row = rows[s.meta["source_path"]]
        assert "/" not in s.meta["source_path"] and s.meta["labels"]["index"] == int(gt.extras["index"][row])
        assert s.meta["split"] == text(gt.extras["split"][row])
        assert s.meta["labels"]["category"] == text(gt.extras["category"][row])
        assert s.ann is None and s.meta["landmarks"]["mp"]
        errors.append(mediapipe_error(s, gt.extras["landmarks_mp"][row], gt.extras["landmarks68"][row]))
    assert errors and max(errors) < 0.08, errors
    assert manifest["listing"] == {"summary": manifest["listing"]["summary"], "layout": "flat", "json": False}
    assert "ffhq: layout flat (no ffhq-dataset-v2.json: splits by index, landmarks from the detectors" in output


def test_ffhq_json_for_another_resolution_is_refused(ffhq_flat, tmp_path) -> None:
    """The 1024 px JSON beside 256 px images: a clear error naming the image, both sizes and the way out."""
    root = tmp_path / "FFHQ"
    shutil.copytree(ffhq_flat, root)
    gt = read_ground_truth(root)
    entries = {}
    for row, index in enumerate(gt.extras["index"]):
        index = int(index)
        entries[str(index)] = {"category": "training" if index < 60000 else "validation",
                               "image": {"file_path": f"images1024x1024/{index // 1000 * 1000:05d}/{index:05d}.png",
                                         "pixel_size": [1024, 1024],
                                         "face_landmarks": (gt.extras["landmarks68"][row] * 4).tolist()}}
    (root / "ffhq-dataset-v2.json").write_text(json.dumps(entries))
    output, code = prep_cli("ffhq", root, tmp_path / "out", "--landmarks", "annotations", ok=False)
    assert code != 0 and "the image is 256x256 px but ffhq-dataset-v2.json gives image.pixel_size 1024x1024" in output
    assert "Move ffhq-dataset-v2.json away" in output
    # With the JSON's size the same copy is accepted (the check compares, it does not refuse flat copies).
    for entry in entries.values():
        entry["image"]["pixel_size"] = [256, 256]
        entry["image"]["face_landmarks"] = (np.asarray(entry["image"]["face_landmarks"]) / 4).tolist()
    (root / "ffhq-dataset-v2.json").write_text(json.dumps(entries))
    output, code = prep_cli("ffhq", root, tmp_path / "out2", "--landmarks", "annotations", "--size", "64")
    manifest, samples, _ = load_prepped(tmp_path / "out2", "ffhq")
    assert manifest["listing"]["layout"] == "json" and len(samples) == len(gt) - 2
    rows = {p: i for i, p in enumerate(gt.paths)}
    for s in samples:  # the JSON's landmarks, found for the flat images at the root
        assert np.abs(source_landmarks(s) - gt.extras["landmarks68"][rows[s.meta["source_path"]]]).max() < 1e-2


# ------------------------------------------------------------------------------------------- MEAD


@pytest.mark.parametrize("variant, form", [
    ("view-1", "{actor}/video/{view}/1/"),  # about 15 s each (seven videos written): the other two are slow
    pytest.param("video-1", "{actor}/video/1/{view}/", marks=pytest.mark.slow),
    pytest.param("1", "{actor}/1/{view}/", marks=pytest.mark.slow)])
def test_mead_path_variants_inferno_accepts_prep(tmp_path, flame_dir, variant, form) -> None:
    """Every path form inferno's MEAD reader tolerates: written by `fbench synth mead --variant`, prepped
    with the ground-truth landmark table, labels and landmarks checked against the ground truth."""
    root = tmp_path / "MEAD"
    synth_cli("mead", root, flame_dir, "--n", "1", "--variant", variant)
    gt = read_ground_truth(root)
    assert all(p.startswith(form.format(actor=p.split("/")[0], view=text(v)))
               for p, v in zip(gt.paths, gt.extras["view"]))
    prep_cli("mead", root, tmp_path / "out", "--landmarks", "annotations", "--annotations",
             str(root / "fbench_ground_truth.h5"), "--views", "front,left_30", "--size", "64", "--frame-stride", "4")
    manifest, samples, rejects = load_prepped(tmp_path / "out", "mead")
    check_counts(manifest, samples, rejects)
    assert not rejects
    rows = {(p, int(f)): i for i, (p, f) in enumerate(zip(gt.paths, gt.frames))}
    assert {s.meta["source_path"] for s in samples} == {p for p, v in zip(gt.paths, gt.extras["view"])
                                                        if text(v) in ("front", "left_30")}
    for s in samples:
        row = rows[(s.meta["source_path"], s.meta["frame_index"])]
        labels = s.meta["labels"]
        assert (labels["view"], labels["emotion"], labels["level"], labels["clip"]) == (
            text(gt.extras["view"][row]), text(gt.extras["emotion"][row]), int(gt.extras["level"][row]),
            text(gt.extras["clip"][row]))
        if gt.extras["face_visible"][row]:
            assert np.abs(source_landmarks(s) - gt.extras["landmarks68"][row]).max() < 2e-3
    assert "1_" in samples[0].key.removeprefix("mead_")  # the extra folder is kept in the key
