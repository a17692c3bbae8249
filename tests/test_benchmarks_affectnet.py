"""AffectNet benchmark contract: the oracle reaches the synthetic label model's ceiling, the mean
method is the floor, EMOCA's row filtering, skipped rows counted, features cached."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks.affectnet import BENCHMARK, AffectNetConfig
from benchmarks.affectnet.probe import EmotionMLP, ProbeConfig
from fbench import metrics as M
from fbench.synth.ground_truth import read_ground_truth
from methods.oracle import MEAN, ORACLE, ReferenceConfig

N = 200
# A small, quick probe for tests (EMOCA's defaults: 4 x 2048, lr 1e-4, 50 epochs).
FAST = dict(mlp_layers=2, mlp_dim=256, learning_rate=1e-3, max_epochs=60, patience=40, threads=1)


@pytest.fixture(scope="session")
def an_root(tmp_path_factory, flame_dir):
    from conftest import shared_synthetic

    from fbench.flame import load_flame

    return shared_synthetic(tmp_path_factory, "affectnet", load_flame(flame_dir), N, 0, 0).root


def _ceiling(root):
    """The synthetic label model's own limits on the validation rows EMOCA keeps."""
    gt = read_ground_truth(root)
    x = gt.extras
    keep = (x["split"] == b"val") & (x["expression"] < 8) & (x["valence"] != -2) & (x["arousal"] != -2)
    return {"e_acc": 1 - x["flipped"][keep].mean(),
            "v_pcc": M.pcc(x["valence"][keep], x["valence_clean"][keep]),
            "a_pcc": M.pcc(x["arousal"][keep], x["arousal_clean"][keep])}


def test_emoca_mlp_shape():
    mlp = EmotionMLP(53, 4, 2048)  # EMOCA: 4 hidden layers of 2048, BatchNorm1d, LeakyReLU(0.2)
    linears = [m for m in mlp.net if isinstance(m, __import__("torch").nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(53, 2048)] + [(2048, 2048)] * 3 + [(2048, 10)]
    assert sum(type(m).__name__ == "BatchNorm1d" for m in mlp.net) == 4
    assert all(m.negative_slope == 0.2 for m in mlp.net if type(m).__name__ == "LeakyReLU")


def test_oracle_reaches_the_ceiling_and_mean_is_the_floor(an_root, tmp_path):
    gt = read_ground_truth(an_root)
    ceiling = _ceiling(an_root)
    res = {}
    for plugin in (ORACLE, MEAN):
        method = plugin.build(ReferenceConfig(data_root=str(an_root)))
        res[plugin.name] = BENCHMARK.evaluate(method, an_root, tmp_path / plugin.name,
                                              AffectNetConfig(method_name=plugin.name, probe=ProbeConfig(**FAST)))
    oracle, mean = res["oracle"], res["mean"]
    n_val = int(((gt.extras["split"] == b"val") & (gt.extras["expression"] < 8) & (gt.extras["valence"] != -2)).sum())
    assert oracle["n_items"] == n_val and oracle["n_skipped"] == 0  # EMOCA's filter: classes 8-10, V/A -2 dropped
    assert oracle["e_acc"] >= 0.6 and oracle["e_acc"] <= ceiling["e_acc"] + 0.1
    assert oracle["v_pcc"] >= 0.8 and oracle["a_pcc"] >= 0.6
    assert mean["e_acc"] <= 0.35 and mean["v_ccc"] == pytest.approx(0.0, abs=1e-6)
    assert oracle["v_ccc"] > mean["v_ccc"] + 0.5 and oracle["macro_acc"] > mean["macro_acc"] + 0.3
    with open(tmp_path / "oracle" / "per_item.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["key", "label_expression", "pred_expression", "label_valence", "pred_valence",
                             "label_arousal", "pred_arousal"]
    le = np.array([int(r["label_expression"]) for r in rows])
    pe = np.array([int(r["pred_expression"]) for r in rows])
    lv, pv = (np.array([float(r[c]) for r in rows]) for c in ("label_valence", "pred_valence"))
    assert oracle["e_acc"] == pytest.approx(np.mean(le == pe))  # the CSV recomputes the metrics
    assert oracle["v_ccc"] == pytest.approx(M.ccc(lv, pv), abs=1e-5)
    saved = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert set(saved["per_class_acc"]) == {"Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"}
    assert (tmp_path / "oracle" / "plots" / "confusion_matrix.png").is_file()
    table = (tmp_path / "oracle" / "table.md").read_text()
    assert table.index("| oracle |") < table.index("Table 5 (reference") and "EMOCA v1" in table


class _Counting:
    def __init__(self, inner):
        self.crop, self.n_exp, self.inner, self.images = inner.crop, inner.n_exp, inner, 0

    def reconstruct(self, images, items=None):
        self.images += images.shape[0]
        return self.inner.reconstruct(images, items)


def test_bad_rows_skipped_and_features_cached(an_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(an_root, root)
    val_csv = root / "Manually_Annotated_file_lists" / "validation.csv"
    lines = val_csv.read_text().splitlines()
    first = lines[1].split(",")[0]
    (root / "Manually_Annotated_Images" / first).write_bytes(b"\xff\xd8 not a jpeg")  # corrupt image
    lines[2] = lines[2][:60]  # malformed row (cut inside the landmarks)
    fields = lines[3].split(",")
    assert int(fields[6]) < 8 and float(fields[7]) != -2  # an emotion row with valence: make it "not annotated"
    lines[3] = ",".join(fields[:7] + ["-2"] + fields[8:])
    val_csv.write_text("\n".join(lines) + "\n")
    method = _Counting(ORACLE.build(ReferenceConfig(data_root=str(root))))
    config = AffectNetConfig(method_name="oracle", probe=ProbeConfig(**{**FAST, "max_epochs": 5}))
    first_run = BENCHMARK.evaluate(method, root, tmp_path / "out", config)
    assert first_run["n_skipped"] == 2 and first_run["skipped"] == {"bad_row": 1, "bad_image": 1}
    x = read_ground_truth(an_root).extras
    invalid = int(((x["split"] == b"val") & ((x["expression"] >= 8) | (x["valence"] == -2))).sum())
    assert first_run["dropped_invalid_labels"]["val"] == invalid + 1  # EMOCA drops valence -2 rows too
    seen = method.images
    # The cached features are EMOCA's: the method's expression, then its jaw pose.
    gt = read_ground_truth(root)
    (chunk,) = (tmp_path / "out" / "cache").rglob("chunk-*.npz")
    with np.load(chunk) as z:
        keys, feats = list(z["keys"]), z["features"]
    row = gt.paths.index(keys[0])
    assert feats.shape[1] == gt.flame["expression"].shape[1] + 3
    np.testing.assert_allclose(feats[0], np.r_[gt.flame["expression"][row], gt.flame["jaw"][row]], rtol=1e-5, atol=1e-6)
    second = BENCHMARK.evaluate(method, root, tmp_path / "out", config)
    assert method.images == seen and second["e_acc"] == first_run["e_acc"]  # cached features, fixed seeds


def _write_shards(root, out, rows_per_split):
    """Shards in `fbench prep affectnet`'s schema, cut from the raw layout around its CSV landmarks
    (as prep does with annotation landmarks; detectors are not run here)."""
    from fbench.landmarks.crop import crop_square, landmark_box, transform_points
    from fbench.shards.schema import encode_jpeg, encode_sample
    from fbench.shards.writer import ShardFile
    from pipelines.affectnet import parse_row

    for split, name in (("train", "training.csv"), ("val", "validation.csv")):
        shard = ShardFile(out / "affectnet" / split / f"affectnet-{split}-000000.tar")
        with open(root / "Manually_Annotated_file_lists" / name) as f:
            for i, fields in enumerate(csv.DictReader(f)):
                if i == rows_per_split:
                    break
                path, points, labels = parse_row(fields, "Manually_Annotated_Images")
                from PIL import Image

                image = np.asarray(Image.open(root / path).convert("RGB"))
                crop = crop_square(image, landmark_box(points, 2.2), 448)
                key = f"affectnet_{split}{i:05d}"
                meta = {"dataset": "affectnet", "key": key, "split": split, "source_path": path, "labels": labels,
                        "affine": crop.affine.tolist()}
                shard.write(encode_sample(key, encode_jpeg(crop.image, 95), np.full((478, 3), np.nan),
                                          transform_points(crop.affine, points), None, meta))
        shard.commit()
    return out / "affectnet"


def test_shard_input_matches_the_raw_layout(an_root, tmp_path):
    shards = _write_shards(an_root, tmp_path / "shards", 38)
    oracle = ORACLE.build(ReferenceConfig(data_root=str(an_root)))
    config = AffectNetConfig(method_name="oracle", limit=30, probe=ProbeConfig(**{**FAST, "max_epochs": 5}))
    from_shards = BENCHMARK.evaluate(oracle, shards, tmp_path / "s", config)
    from_raw = BENCHMARK.evaluate(oracle, an_root, tmp_path / "r", config)
    assert from_shards["input"] == "shards" and from_raw["input"] == "raw"
    assert from_shards["n_items"] == from_raw["n_items"] == 30 and from_shards["n_train"] == from_raw["n_train"]
    for k in ("e_acc", "v_pcc", "a_ccc"):  # same rows, same features (the oracle ignores pixels), same seed
        assert from_shards[k] == pytest.approx(from_raw[k], abs=1e-6)
