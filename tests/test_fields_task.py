"""`fbench train fields` (methods/fields/task.py) on miniature shards: FFHQ (the base mix),
AffectNet with labels, and BP4D-style samples with their true FLAME parameters as fit targets."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from fbench.io import load_checkpoint
from fields_support import cli, prep, relabel_as_bp4d

SMALL = ["-o", "train.skip_missing=true", "-o", "train.batch_size=4", "-o", "train.workers=0",
         "-o", "train.samples_per_epoch=8", "-o", "generator_init_features=8", "-o", "generator_res_blocks=1",
         "-o", "loop.progress=false", "-o", "loop.log_every=1", "-o", "loop.device=cpu",
         "-o", "loop.checkpoint_every=1", "-o", "train.augment=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fields_task")
    out = root / "shards"
    prep("ffhq", root, out, 4)
    prep("affectnet", root, out, 12)
    relabel_as_bp4d(out / "ffhq", root / "FFHQ", out / "bp4d")
    return out


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _modules(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["modules"]


def test_two_steps_train_the_right_parts_with_every_fields_term(shards, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # per batch of 4: 2 FFHQ, 1 BP4D, 1 AffectNet (the default 1/2, 1/4, 1/4)
    run = tmp_path / "run"
    r = cli("train", "fields", "--shards", str(shards), "--out", str(run), *SMALL, "-o", "loop.max_steps=2",
            "-o", "train.lr=1e-3", "--step", "both")
    assert r.exit_code == 0, r.output
    step1, step2 = run / "1", run / "2"
    rows = _rows(step1)
    assert [row["step"] for row in rows] == ["1", "2"]
    for key in ("gt3d_expression", "gt3d_jaw", "gt3d_loss", "emo_class", "emo_va_mse", "emo_loss",
                "base_regularization", "exaggeration", "reconstruction_loss", "cycle_loss"):
        assert all(math.isfinite(float(row[key])) for row in rows), key
    assert float(rows[0]["gt3d_expression"]) > 0 and float(rows[0]["emo_class"]) > 0
    # the frozen base is the initial encoder: no distance to it at the first step
    assert float(rows[0]["base_regularization"]) == pytest.approx(0.0, abs=1e-10)
    assert float(rows[1]["base_regularization"]) > 0
    record = yaml.safe_load((step1 / "config.yaml").read_text())["run"]
    assert "ffhq 0.500" in record["data_mix"] and "bp4d 0.250" in record["data_mix"] \
        and "affectnet 0.250" in record["data_mix"]
    assert record["fields_step"].startswith("step 1: synthesizer frozen")

    # step 1: pose encoder and synthesizer unchanged, the rest trained; the base holds the initial encoder
    from methods.fields.config import FieldsConfig
    from methods.fields.task import FieldsTask

    torch.manual_seed(0)  # the loop's seed: the same initial weights
    initial = FieldsTask(FieldsConfig(generator_init_features=8, generator_res_blocks=1))
    init_enc, init_gen = initial.encoder.state_dict(), initial.generator.state_dict()
    trained = _modules(step1)
    enc, gen, base = trained["teaser_encoder"], trained["teaser_generator"], trained["fields_base_encoder"]
    floats = lambda sd, part: [k for k, v in sd.items() if k.startswith(part) and v.is_floating_point()]  # noqa: E731
    assert all(torch.equal(enc[k], init_enc[k]) for k in floats(enc, "pose_encoder."))  # and its statistics
    assert any(not torch.equal(enc[k], init_enc[k]) for k in floats(enc, "expression_encoder."))
    assert any(not torch.equal(enc[k], init_enc[k]) for k in floats(enc, "shape_encoder."))
    assert any(not torch.equal(enc[k], init_enc[k]) for k in floats(enc, "token_encoder."))  # TEASER's tokens
    assert all(torch.equal(gen[k], init_gen[k]) for k in gen)  # weights and BatchNorm statistics
    assert bool(base["ready"]) and all(torch.equal(base["encoder." + k], init_enc[k]) for k in floats(init_enc, ""))
    assert any(not torch.equal(v, initial.head.state_dict()[k]) for k, v in trained["fields_emotion_head"].items()
               if v.is_floating_point())

    # step 2 from step 1's weights (--step both): the synthesizer trains at 0.1 x, the base stays the original one
    ckpt = load_checkpoint(step2 / "checkpoints" / "last.pt")
    assert ckpt["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert ckpt["optimizers"]["encoder"]["param_groups"][0]["lr"] == pytest.approx(0.25e-4)
    after = ckpt["modules"]
    assert any(not torch.equal(after["teaser_generator"][k], gen[k]) for k in floats(gen, ""))
    assert all(torch.equal(after["fields_base_encoder"][k], base[k]) for k in floats(base, ""))

    # FIELDS.pt: the trained modules, read back by the plugin; predict_emotion gives probabilities
    from methods.fields.plugin import from_checkpoint

    model = from_checkpoint(step2 / "FIELDS.pt")
    assert all(torch.equal(v, after["fields_emotion_head"][k]) for k, v in model.emotion_head.state_dict().items())
    assert all(torch.equal(v, after["teaser_encoder"][k]) for k, v in model.encoder.state_dict().items())
    out = model.predict_emotion(torch.rand(2, 3, 224, 224))
    assert out["probabilities"].shape == (2, 8) and torch.allclose(out["probabilities"].sum(1), torch.ones(2))
    assert model.reconstruct(torch.rand(2, 3, 224, 224)).expression.shape == (2, 50)


def test_the_ablation_switch_removes_l3dgt(shards, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "ablation"
    r = cli("train", "fields", "--shards", str(shards), "--out", str(run), *SMALL, "-o", "loop.max_steps=1",
            "-o", "train.losses.gt3d=false", "-o", "train.cycle_loss=0")
    assert r.exit_code == 0, r.output
    row = _rows(run)[0]
    assert "gt3d_loss" not in row and "emo_loss" in row
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["gt3d_loss"].startswith("L_3D-GT DISABLED")


def test_missing_labelled_sets_are_named(shards, tmp_path, monkeypatch):
    r = cli("train", "fields", "--shards", str(shards / "ffhq"), "--out", str(tmp_path / "x"),
            "-o", "train.skip_missing=false", "-o", "loop.device=cpu", "-o", "loop.max_steps=1")
    assert r.exit_code != 0
    assert "FIELDS mix needs" in r.output or "SMIRK mix needs" in r.output
