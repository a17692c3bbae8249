"""fbench.losses, each against a plain re-computation (numpy, or the formula written out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fbench import metrics
from fbench.io import CheckpointError, save_checkpoint
from fbench.losses import (
    VGGPerceptualLoss,
    ccc_loss,
    landmark_loss,
    load_vgg_perceptual,
    pcc_loss,
    photometric_l1,
    regulariser,
)


def _numpy_landmark_mse(pred: np.ndarray, target: np.ndarray, keep: np.ndarray, l1: bool = False) -> float:
    keep = keep & np.isfinite(target).all(-1)
    d = pred[keep] - target[keep]  # (n_kept, D)
    return float(np.abs(d).mean() if l1 else (d ** 2).mean())


def test_landmark_loss_with_validity_masks_matches_numpy():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
    target[2, 3, 1] = float("nan")  # an undetected point
    per_sample = torch.tensor([True, False, True, True])
    p, t = pred.detach().numpy(), target.numpy()
    all_rows = np.ones((4, 6), bool)
    want = _numpy_landmark_mse(p, t, all_rows & per_sample.numpy()[:, None])
    loss = landmark_loss(pred, target, per_sample)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[1] == 0).all() and (pred.grad[2, 3] == 0).all()
    per_point = torch.rand(4, 6, generator=g) > 0.3
    assert landmark_loss(pred, target, per_point, kind="l1").item() == pytest.approx(
        _numpy_landmark_mse(p, t, per_point.numpy(), l1=True), rel=1e-12)
    clean = torch.nan_to_num(target)
    assert landmark_loss(pred, clean).item() == pytest.approx(float(((p - clean.numpy()) ** 2).mean()), rel=1e-12)
    none = landmark_loss(pred, target, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_regulariser_against_zero_and_a_base_model():
    g = torch.Generator().manual_seed(1)
    params = torch.randn(3, 50, generator=g, requires_grad=True)
    base = torch.randn(3, 50, generator=g, requires_grad=True)
    p, b = params.detach().numpy().astype(np.float64), base.detach().numpy().astype(np.float64)
    assert regulariser(params).item() == pytest.approx(float((p ** 2).mean()), rel=1e-6)
    loss = regulariser(params, base)
    assert loss.item() == pytest.approx(float(((p - b) ** 2).mean()), rel=1e-6)
    loss.backward()
    assert base.grad is None  # the base model is not trained by its regulariser
    assert torch.allclose(params.grad, torch.from_numpy(2 * (p - b) / p.size).float(), atol=1e-7)


def test_photometric_l1_with_and_without_mask_matches_numpy():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    an, bn, mn = a.numpy().astype(np.float64), b.numpy().astype(np.float64), mask.numpy().astype(bool)
    assert float(photometric_l1(a, b)) == pytest.approx(float(np.abs(an - bn).mean()), rel=1e-6)
    inside = np.abs(an - bn)[np.broadcast_to(mn, an.shape)]
    assert float(photometric_l1(a, b, mask)) == pytest.approx(float(inside.mean()), rel=1e-6)


def test_pcc_and_ccc_losses_agree_with_fbench_metrics():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(40, 2))
    pred = 0.6 * target + rng.normal(scale=0.5, size=(40, 2)) + np.array([0.3, -0.2])
    tp, tt = torch.from_numpy(pred).requires_grad_(True), torch.from_numpy(target)
    want_pcc = np.mean([1 - metrics.pcc(target[:, k], pred[:, k]) for k in range(2)])
    want_ccc = np.mean([1 - metrics.ccc(target[:, k], pred[:, k]) for k in range(2)])
    assert pcc_loss(tp, tt).item() == pytest.approx(want_pcc, rel=1e-7)
    assert ccc_loss(tp, tt).item() == pytest.approx(want_ccc, rel=1e-7)
    assert ccc_loss(tp[:, 0], tt[:, 0]).item() == pytest.approx(1 - metrics.ccc(target[:, 0], pred[:, 0]), rel=1e-7)
    # a gradient step raises the concordance
    loss = ccc_loss(tp, tt)
    loss.backward()
    assert float(ccc_loss(tp.detach() - 0.1 * tp.grad, tt)) < loss.item()


# ---------------------------------------------------------------------------- perceptual

CONVS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21))  # VGG16 conv layers of SMIRK's four blocks
CHANNELS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
            17: (256, 512), 19: (512, 512), 21: (512, 512)}


def _fake_vgg_weights(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG16 file (the `features` part, He-initialised from a seed)."""
    g = torch.Generator().manual_seed(4)
    state = {}
    for i, (cin, cout) in CHANNELS.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
        state[f"features.{i}.bias"] = 0.01 * torch.randn(cout, generator=g)
    torch.save(state, path)
    return state


def _direct_perceptual(state, x, y, size, rescale=True):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def prep(img):
        img = img * 0.5 + 0.5 if rescale else img
        return F.interpolate((img - mean) / std, size=(size, size), mode="bilinear", align_corners=False)

    x, y, total = prep(x), prep(y), 0.0
    for n, block in enumerate(CONVS):
        if n:
            x, y = F.max_pool2d(x, 2), F.max_pool2d(y, 2)
        for i in block:
            w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
            x, y = F.relu(F.conv2d(x, w, b, padding=1)), F.relu(F.conv2d(y, w, b, padding=1))
        total += float((x - y).abs().mean())
    return total


def test_vgg_perceptual_loss_matches_the_network_written_out(tmp_path, one_torch_thread):
    weights = tmp_path / "vgg16.pth"
    state = _fake_vgg_weights(weights)
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 20, 20, generator=g), torch.rand(2, 3, 20, 20, generator=g)
    loss = VGGPerceptualLoss(weights, size=32)
    assert float(loss(x, y)) == pytest.approx(_direct_perceptual(state, x, y, 32), rel=1e-5)
    plain = VGGPerceptualLoss(weights, size=32, official_rescale=False)
    assert float(plain(x, y)) == pytest.approx(_direct_perceptual(state, x, y, 32, rescale=False), rel=1e-5)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training  # frozen even when a task switches its modules to training
    xg = x.clone().requires_grad_(True)
    loss(xg, y).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    save_checkpoint(tmp_path / "other.pt", {"weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="other.pt: not torchvision VGG16 weights"):
        VGGPerceptualLoss(tmp_path / "other.pt")


def test_vgg_perceptual_loss_is_disabled_and_recorded_when_the_weights_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    said, notes = [], {}
    assert load_vgg_perceptual(notes=notes, say=said.append) is None
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert len(said) == 1 and "perceptual loss DISABLED" in said[0] and str(expected) in said[0]
    assert notes["perceptual_loss"] == said[0]
    # present in torch's hub cache: loaded from there, and recorded
    expected.parent.mkdir(parents=True)
    _fake_vgg_weights(expected)
    loss = load_vgg_perceptual(notes=notes, say=said.append, size=32)
    assert isinstance(loss, VGGPerceptualLoss) and loss.weights == expected
    assert notes["perceptual_loss"] == f"VGG16 from {expected}" and len(said) == 1
