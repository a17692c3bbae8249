"""TEASER's training task (methods/teaser/task.py): its added losses against plain
re-computations of the official code (Pixel-Talk/TEASER c235716, src/teaser_trainer.py and
datasets/base_dataset.py), the first path with every term on (a stand-in 203-point detector),
and `fbench train teaser` on miniature FFHQ shards with export and resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from fbench.io import load_checkpoint
from methods.smirk.task import cycle_loss
from methods.teaser.task import (
    TeaserTask,
    box_masks,
    landmark_203_loss,
    region_masks,
    region_reconstruction_loss,
    token_cycle_loss,
)
from test_smirk_task import SMALL, _cli, _rows, _same_parameters, ffhq_shards  # noqa: F401 (a fixture)


# --------------------------------------------------------------------- against the official formulas


def _official_box(fan_px: np.ndarray, indices: list[int], grow: float, size: int) -> np.ndarray:
    """base_dataset.py:125-153 / 156-184 (the box and its create_mask), transcribed; returns
    1 - mask (1 inside the box)."""
    import cv2

    kp = fan_px[indices]
    x_min, y_min = int(np.min(kp[:, 0])), int(np.min(kp[:, 1]))
    x_max, y_max = int(np.max(kp[:, 0])), int(np.max(kp[:, 1]))
    width, height = x_max - x_min, y_max - y_min
    x_min = max(0, x_min - int(width * grow))
    y_min = max(0, y_min - int(height * grow))
    x_max = min(size, x_max + int(width * grow))
    y_max = min(size, y_max + int(height * grow))
    corners = np.array([(x_min, y_min), (x_min, y_max), (x_max, y_min), (x_max, y_max)]).astype(np.int32)
    mask = np.ones((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(corners), 0)
    return 1 - mask.astype(np.float32)


def _fan(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    centre = g.uniform(0.3, 0.7, size=(n, 1, 2)) * size
    return torch.from_numpy(centre + g.normal(scale=size / 10, size=(n, 68, 2))).float() / size * 2 - 1


def test_region_masks_match_the_official_boxes():
    size = 64
    fan = _fan(5, size)
    fan[4, 48:61] += 0.9  # a mouth box running off the image: clipped
    valid = torch.tensor([True, True, True, True, True])
    got = region_masks(fan, valid, size)
    for i in range(5):
        px = ((fan[i].numpy() + 1) / 2 * size).astype(np.float64)
        want = _official_box(px, list(range(48, 61)), 0.5, size) + _official_box(px, list(range(36, 48)), 0.2, size)
        assert np.array_equal(got[i, 0].numpy(), want), i
    assert float(got.max()) == 2  # overlapping boxes count twice, as (1 - mouth) + (1 - eyes)
    off = box_masks(fan, torch.tensor([True, False, True, True, True]), list(range(36, 48)), 0.2, size)
    assert float(off[1].abs().sum()) == 0 and float(off[0].sum()) > 0


def test_region_reconstruction_loss_is_the_official_masked_l1():
    g = torch.Generator().manual_seed(0)
    recon, img = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    region = torch.randint(0, 3, (2, 1, 16, 16), generator=g).float()
    want = F.l1_loss(recon * region, img * region, reduction="none").mean()  # trainer.py:151
    assert torch.allclose(region_reconstruction_loss(recon, img, region), want)
    assert float(region_reconstruction_loss(recon, img, torch.zeros_like(region))) == 0


def test_token_cycle_loss_sums_the_four_token_mses():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 256, generator=g), torch.randn(4, 3, 256, generator=g)
    total, levels = token_cycle_loss(a, b)
    plain = [((a[i] - b[i]) ** 2).mean() for i in range(4)]
    assert all(torch.allclose(x, y) for x, y in zip(levels, plain))
    assert torch.allclose(total, sum(plain))


def test_landmark_203_loss_follows_the_yaw_subsets():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(4, 203, 2, generator=g), torch.randn(4, 203, 2, generator=g)
    yaw = torch.tensor([-0.3, 0.3, 0.0, -0.05])  # left, right, front, front (the bounds are strict)
    subsets = {"front": torch.arange(0, 91), "left": torch.arange(50, 146), "right": torch.arange(100, 197)}
    want = 0.0
    for i, side in enumerate(["left", "right", "front", "front"]):  # trainer.py:99-123, per sample
        idx = subsets[side]
        want += ((pred[i, idx] - target[i, idx]) ** 2).mean()
    assert torch.allclose(landmark_203_loss(pred, target, yaw, subsets), want / 4)


def test_cycle_terms_add_the_first_token():
    from methods.teaser.plugin import TeaserConfig

    task = TeaserTask(TeaserConfig.tiny())
    g = torch.Generator().manual_seed(3)
    feats = lambda: {"expression_params": torch.randn(2, 50, generator=g), "jaw_params": torch.randn(2, 3, generator=g),
                     "eyelid_params": torch.rand(2, 2, generator=g), "shape_params": torch.randn(2, 300, generator=g),
                     "token": torch.randn(4, 2, 256, generator=g)}
    a, b = feats(), feats()
    for freeze in (True, False):
        want = cycle_loss(a, b, True, with_shape=not freeze) + ((a["token"][0] - b["token"][0]) ** 2).mean()
        assert torch.allclose(task.cycle_terms(a, b, freeze), want)  # trainer.py:360-368
    # the cycle path's masked input: masking_face of the augmented render (trainer.py:343-345), no moved pixels
    from methods.smirk import masking

    img, hull = torch.rand(2, 3, 64, 64, generator=g), torch.ones(2, 1, 64, 64)
    hull[..., 24:40, 24:40] = 0
    render = torch.zeros(2, 3, 64, 64)
    render[..., 4:10, 2:60] = 0.6  # outside the dilated hull
    got = task.cycle_masked(img, hull, {"transformed_vertices": torch.zeros(2, 5, 3)}, {"rendered_img": render})
    want = img * masking.dilate_face(hull, config_radius := task.t.mask_dilation_radius) * (render == 0).all(1, True)
    assert config_radius == 10 and torch.equal(got, want)
    assert float(got[..., 4:10, 2:60].abs().sum()) == 0 and float(got[..., 14:50, 14:50].abs().sum()) == 0
    assert float(got.abs().sum()) > 0
    rep = task.repeat_outputs(a, 2)
    assert rep["token"].shape == (4, 4, 256) and rep["expression_params"].shape == (4, 50)
    assert torch.equal(rep["token"][:, 2:], a["token"]) and not rep["token"].requires_grad


# --------------------------------------------------------------------------- the first path, all on


class _StandInDetector(torch.nn.Module):
    """Returns the official output list shape: item 2 a (1, B x 203 x 2) tensor of points in [0, 1]."""

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        b = img.shape[0]
        pts = torch.linspace(0.2, 0.8, 203 * 2).repeat(b) + img.mean() * 0
        return [img, img, pts.reshape(1, -1)]


def _batch(n: int = 2, size: int = 224) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(n, 1, size, size)
    mask[..., 60:170, 60:170] = 0  # the face hull
    return {"img": torch.rand(n, 3, size, size, generator=g), "landmarks_fan": _fan(n, size, seed=6),
            "flag_landmarks_fan": torch.tensor([True, False][:n]), "landmarks_mp": torch.rand(n, 105, 2, generator=g) - 0.5,
            "flag_landmarks_mp": torch.ones(n, dtype=torch.bool), "mask": mask}


def test_first_path_terms_with_every_teaser_loss_on(flame_dir, tmp_path, monkeypatch, one_torch_thread):
    import methods.teaser.task as task_mod
    from fbench.train.loop import RunContext
    from methods.teaser.plugin import TeaserConfig

    # a stand-in detector and an embedding on the synthetic FLAME's triangles
    rng = np.random.default_rng(0)
    asset = tmp_path / "lm203"
    asset.mkdir()
    (asset / "landmark.onnx").write_bytes(b"stand-in")
    np.savez(asset / "203_landmark_embeding_new.npz", lmk_face_idx=rng.integers(0, 500, 203),
             lmk_b_coords=rng.dirichlet(np.ones(3), 203), landmark_indices=np.arange(203),
             landmark_front_indices=np.arange(0, 91), landmark_left_indices=np.arange(50, 146),
             landmark_right_indices=np.arange(100, 197))
    monkeypatch.setattr(task_mod, "load_detector", lambda path: _StandInDetector())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = TeaserConfig.tiny()
    config.train.landmarks_203 = str(asset)
    task = TeaserTask(config)
    run = RunContext(out=tmp_path, device=torch.device("cpu"), seed=0, flame=flame_dir)
    task.setup(run)
    assert run.notes["landmark_loss_203"] == f"203-landmark loss from {asset}"
    assert task.optimised == {"pose": False, "shape": False, "expression": True, "token": True}
    with torch.no_grad():  # tokens that differ between images (at init they are nearly constant)
        for layer in task.encoder.token_encoder.token_layers:
            layer[0].weight.normal_(0, 0.5)
    batch = _batch()
    torch.manual_seed(0)
    loss, terms, enc = task.first_path(batch)
    assert float(terms["token_cycle_loss"].detach()) > 1e-3 * float(loss.detach())  # visible in the sum
    t = config.train
    recon = task._last["recon"]
    from methods.smirk import masking

    with torch.no_grad():  # the generator got the image's own tokens (trainer.py:147)
        again_recon = task.generator(masking.generator_input(task._last["rendered"], task._last["masked"]),
                                     enc["token"])
    assert torch.allclose(again_recon, recon, atol=1e-6)
    # TEASER's masked input: no face pixels kept (masking.py:104-116)
    assert float(task._last["masked"][..., 90:140, 90:140].abs().sum()) == 0
    region = region_masks(batch["landmarks_fan"], batch["flag_landmarks_fan"], 224)
    assert float(region[1].sum()) == 0 and float(region[0].sum()) > 0  # sample 1 has no FAN landmarks
    assert torch.allclose(terms["region_reconstruction_loss"], F.l1_loss(recon * region, batch["img"] * region))
    with torch.no_grad():
        again = task.encoder(recon)["token"]
    assert torch.allclose(terms["token_cycle_loss"], ((again - enc["token"]) ** 2).mean(dim=(1, 2)).sum(), rtol=1e-4)
    rend = task.render(enc)
    pred = task.landmarks_203.flame_points(rend["transformed_vertices"], task.flame.faces)
    target = torch.linspace(0.2, 0.8, 406).reshape(203, 2).expand(2, -1, -1) * 2 - 1
    want203 = landmark_203_loss(pred, target, enc["pose_params"][:, 1], task.landmarks_203.subsets)
    assert torch.allclose(terms["landmark_loss_203"], want203, rtol=1e-5)
    # the weighted sum (trainer.py:200-223; the core phase does not optimise shape)
    total = t.weight("landmark_loss") * (terms["landmark_loss_fan"] + terms["landmark_loss_mp"]) \
        + t.weight("landmark_loss_203") * terms["landmark_loss_203"] \
        + t.weight("expression_regularization") * terms["expression_regularization"] \
        + t.weight("jaw_regularization") * terms["jaw_regularization"] \
        + t.weight("reconstruction_loss") * terms["reconstruction_loss"] \
        + t.weight("region_reconstruction_loss") * terms["region_reconstruction_loss"] \
        + t.weight("token_cycle_loss") * terms["token_cycle_loss"]
    assert torch.allclose(loss, total, rtol=1e-5)
    loss.backward()  # the token encoder learns from the first path
    assert task.encoder.token_encoder.token_layers[3][0].weight.grad.abs().sum() > 0


def test_203_loss_is_disabled_and_says_why(tmp_path, flame_dir):
    from methods.teaser.task import load_landmarks_203

    assert load_landmarks_203(str(tmp_path), 9976)[0] is None
    note = load_landmarks_203(str(tmp_path), 9976)[1]
    assert note.startswith("203-landmark loss DISABLED: landmark.onnx, 203_landmark_embeding_new.npz not in")
    (tmp_path / "landmark.onnx").write_bytes(b"x")
    np.savez(tmp_path / "203_landmark_embeding_new.npz", lmk_face_idx=np.array([9000]), lmk_b_coords=np.ones((1, 3)),
             landmark_front_indices=np.arange(1), landmark_left_indices=np.arange(1), landmark_right_indices=np.arange(1))
    model, note = load_landmarks_203(str(tmp_path), 500)
    assert model is None and "refers to FLAME triangle 9000, the FLAME in use has 500" in note
    model, note = load_landmarks_203(str(tmp_path), 9976)
    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        assert model is None and "needs the onnx2torch package" in note


# --------------------------------------------------------------------------------- the CLI


def test_core_phase_trains_two_steps_and_exports(ffhq_shards, tmp_path, monkeypatch,  # noqa: F811
                                                 one_torch_thread):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FBENCH_HOME", str(tmp_path / "home"))  # no 203-landmark asset: recorded off
    run = tmp_path / "run"
    r = _cli("train", "teaser", "--shards", str(ffhq_shards), *SMALL, "--out", str(run), "-o", "loop.max_steps=2")
    assert r.exit_code == 0, r.output
    rows = _rows(run)
    assert [row["step"] for row in rows] == ["1", "2"]
    for key in ("reconstruction_loss", "region_reconstruction_loss", "token_cycle_loss", "cycle_loss"):
        assert all(math.isfinite(float(row[key])) for row in rows), key
    assert float(rows[0]["token_cycle_loss"]) > 0 and float(rows[0]["cycle_loss"]) > 0
    record = yaml.safe_load((run / "config.yaml").read_text())["run"]
    assert record["landmark_loss_203"].startswith("203-landmark loss DISABLED")
    assert record["emotion_loss"].startswith("emotion loss DISABLED")
    # the encoder's Adam holds the expression and token encoders (config_train.yaml:49-52)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(ckpt["modules"]) == {"teaser_encoder", "teaser_generator"}
    from methods.teaser.model import TeaserEncoder

    enc = TeaserEncoder()
    n = len(list(enc.expression_encoder.parameters())) + len(list(enc.token_encoder.parameters()))
    assert len(ckpt["optimizers"]["encoder"]["param_groups"][0]["params"]) == n
    from methods.teaser.plugin import from_checkpoint

    model = from_checkpoint(run / "TEASER.pt")
    trained = ckpt["modules"]["teaser_encoder"]
    assert all(torch.equal(v, trained[k]) for k, v in model.encoder.state_dict().items())
    assert model.reconstruct(torch.rand(1, 3, 224, 224)).expression.shape == (1, 50)


@pytest.mark.slow
def test_core_resume_gives_the_parameters_of_an_uninterrupted_run(ffhq_shards, tmp_path, monkeypatch,  # noqa: F811
                                                                  one_torch_thread):
    # (fast variant: the pretrain test.) The core phase: generator, tokens and the cycle; stopped after step 1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FBENCH_HOME", str(tmp_path / "home"))
    common = ["train", "teaser", "--shards", str(ffhq_shards), *SMALL]
    assert _cli(*common, "--out", str(tmp_path / "full"), "-o", "loop.max_steps=2").exit_code == 0
    assert _cli(*common, "--out", str(tmp_path / "part"), "-o", "loop.max_steps=1").exit_code == 0
    r = _cli("train", "teaser", "--out", str(tmp_path / "part"), "--resume", "-o", "loop.max_steps=2")
    assert r.exit_code == 0 and "at step 1 (epoch 0, batch 1)" in r.output, r.output
    _same_parameters(tmp_path / "full", tmp_path / "part")


def test_init_from_a_teaser_checkpoint(tmp_path, one_torch_thread):
    """train.init_from reads the official layout with TEASER's prefixes (train.py resume)."""
    from methods.teaser.checkpoint import save_checkpoint
    from methods.teaser.plugin import TeaserConfig, build

    start = build(TeaserConfig.tiny())
    with torch.no_grad():
        start.encoder.token_encoder.token_layers[0][0].bias.fill_(0.25)
    path = save_checkpoint(start, tmp_path / "start.pt")
    from methods.teaser.task import TeaserTask

    task = TeaserTask(TeaserConfig.tiny())
    task._load_initial(Path(path))
    assert torch.equal(task.encoder.token_encoder.token_layers[0][0].bias, torch.full((256,), 0.25))
    assert all(torch.equal(a, b) for a, b in zip(task.generator.state_dict().values(),
                                                 start.generator.state_dict().values()))


def test_pretrain_phase_resumes_exactly(ffhq_shards, tmp_path, monkeypatch,  # noqa: F811
                                        one_torch_thread):
    """Encoder only (config_pretrain.yaml: no generator, so no tokens to learn); stop after 1 step, resume to 2."""
    common = ["train", "teaser", "--shards", str(ffhq_shards), *SMALL, "-o", "train.phase=pretrain"]
    assert _cli(*common, "--out", str(tmp_path / "full"), "-o", "loop.max_steps=2").exit_code == 0
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert set(ckpt["modules"]) == {"teaser_encoder"}
    n_token = sum(1 for k in ckpt["modules"]["teaser_encoder"] if k.startswith("token_encoder."))
    n_all = len(ckpt["modules"]["teaser_encoder"])
    n_stats = sum(1 for k in ckpt["modules"]["teaser_encoder"]
                  if k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    n_token_stats = sum(1 for k in ckpt["modules"]["teaser_encoder"] if k.startswith("token_encoder.")
                        and k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    # pose, shape and expression optimised, not the token encoder
    assert len(ckpt["optimizers"]["encoder"]["param_groups"][0]["params"]) == \
        (n_all - n_stats) - (n_token - n_token_stats)
    assert _cli(*common, "--out", str(tmp_path / "part"), "-o", "loop.max_steps=1").exit_code == 0
    r = _cli("train", "teaser", "--out", str(tmp_path / "part"), "--resume", "-o", "loop.max_steps=2")
    assert r.exit_code == 0 and "at step 1 (epoch 0, batch 1)" in r.output, r.output
    _same_parameters(tmp_path / "full", tmp_path / "part")


def test_cycle_path_freezes_the_flame_encoders_but_not_the_token_encoder(flame_dir, tmp_path, one_torch_thread):
    # teaser_trainer.py:388-391: freeze_encoder puts the pose, shape and expression encoders in eval
    # mode (utils.freeze_module); the token encoder keeps training mode, its BatchNorm statistics move
    from fbench.train.loop import RunContext
    from methods.teaser.plugin import TeaserConfig

    task = TeaserTask(TeaserConfig.tiny())
    task.setup(RunContext(out=tmp_path, device=torch.device("cpu"), seed=0, flame=flame_dir))
    task.configure_optimizers()
    modes: dict[str, list[bool]] = {"token": [], "expression": []}
    for name in modes:
        getattr(task.encoder, f"{name}_encoder").register_forward_pre_hook(
            lambda m, args, _n=name: modes[_n].append(m.training))
    torch.manual_seed(0)
    task.training_step(_batch(), 0)  # even step: the encoder is frozen in the cycle path
    # the first path runs the encoder twice (the image, then its reconstruction for the token cycle)
    assert modes == {"token": [True, True, True], "expression": [True, True, False]}
    assert all(m.training for m in task.encoder.modules())  # and every step ends in train mode


def test_init_takes_a_released_checkpoint_or_a_run_folder(ffhq_shards, tmp_path, monkeypatch,  # noqa: F811
                                                          one_torch_thread):
    # `--init TEASER.pt` (released layout) is read by the method (train.init_from); `--init RUN` is that
    # run's checkpoints/last.pt, loaded by the loop module by module
    from methods.teaser.plugin import TeaserConfig, build, save

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FBENCH_HOME", str(tmp_path / "home"))
    torch.manual_seed(7)
    release = save(build(TeaserConfig.tiny()), tmp_path / "TEASER.pt")
    common = ["train", "teaser", "--shards", str(ffhq_shards), *SMALL, "-o", "train.phase=pretrain",
              "-o", "loop.max_steps=1"]
    r = _cli(*common, "--init", str(release), "--out", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["train"]["init_from"] == str(release)
    # pretraining does not optimise the token encoder: its weights are still the released ones (its
    # BatchNorm statistics move in train mode)
    released = load_checkpoint(release)
    trained = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["modules"]["teaser_encoder"]
    tokens = [k for k in trained if k.startswith("token_encoder.") and "running_" not in k and "num_batches" not in k]
    assert tokens and all(torch.equal(trained[k], released[f"teaser_encoder.{k}"].float()) for k in tokens)
    r = _cli(*common, "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert r.exit_code == 0 and "initial weights from" in r.output and "last.pt" in r.output, r.output
    r = _cli(*common, "--init", str(tmp_path / "home"), "--out", str(tmp_path / "c"))
    assert r.exit_code != 0 and "checkpoints/last.pt" in r.output
