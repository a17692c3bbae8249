"""Image losses: photometric L1 and SMIRK's VGG16 perceptual loss."""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VGG_ASSET = "vgg16-weights"
# SMIRK's VGGPerceptualLoss.py:11-14: VGG16 `features` cut after relu1_2, relu2_2, relu3_3, relu4_3.
VGG_BLOCKS = ((0, 4), (4, 9), (9, 16), (16, 23))
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # VGGPerceptualLoss.py:20-21
IMAGENET_STD = (0.229, 0.224, 0.225)


def photometric_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute difference of (B, C, H, W) images; with a (B, 1, H, W) or (B, C, H, W) mask,
    the mean inside it (SMIRK's reconstruction loss is the unmasked mean, smirk_trainer.py:97-101)."""
    if pred.shape != target.shape:
        raise ValueError(f"photometric_l1: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = (pred - target).abs()
    if mask is None:
        return diff.mean()
    weight = mask.to(pred.dtype).expand_as(diff)
    total = weight.sum()
    return (diff * weight).sum() / total if total > 0 else pred.sum() * 0.0


class VGGPerceptualLoss(nn.Module):
    """SMIRK's perceptual loss (src/losses/VGGPerceptualLoss.py): the sum over four VGG16
    blocks of the mean L1 distance between the features of two images, resized to 224 and
    ImageNet-normalised; the network is frozen.

    `official_rescale` reproduces the official input mapping x * 0.5 + 0.5 (lines 24-25),
    written for [-1, 1] images although SMIRK passes [0, 1] ones (so its VGG sees [0.5, 1]);
    fbench follows the code by default, and `official_rescale=False` feeds [0, 1] images as they are.

    Built only from weights on disk: `load_vgg_perceptual` finds them or disables the loss.
    """

    def __init__(self, weights: str | Path, size: int = 224, official_rescale: bool = True) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        from fbench.io import CheckpointError, load_checkpoint

        path = Path(weights)
        state = load_checkpoint(path)
        prefix = "features."
        wanted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        features = make_layers(cfgs["D"])[: VGG_BLOCKS[-1][1]]
        needed = set(features.state_dict())
        if not needed <= set(wanted):
            raise CheckpointError(f"{path}: not torchvision VGG16 weights (missing "
                                  f"{sorted(prefix + k for k in needed - set(wanted))[:4]})")
        features.load_state_dict({k: wanted[k] for k in needed}, strict=True)
        self.blocks = nn.ModuleList(features[a:b] for a, b in VGG_BLOCKS)
        self.requires_grad_(False)
        self.eval()
        self.size, self.official_rescale, self.weights = size, official_rescale, path
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # always frozen, also inside a task's train()

    def _prepare(self, x: Tensor) -> Tensor:
        if self.official_rescale:
            x = x * 0.5 + 0.5
        x = (x - self.mean) / self.std
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        x, y = self._prepare(pred), self._prepare(target)
        loss = pred.new_zeros(())
        for block in self.blocks:
            x, y = block(x), block(y)
            loss = loss + F.l1_loss(x, y)
        return loss


def load_vgg_perceptual(weights: str | Path | None = None, notes: MutableMapping[str, str] | None = None,
                        say: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                        **kwargs: object) -> VGGPerceptualLoss | None:
    """The perceptual loss from `weights` (default: the `vgg16-weights` asset in torch's hub
    cache), or None when the file is absent: then the loss is DISABLED, which is said through
    `say` and recorded in `notes["perceptual_loss"]` (pass a run's `RunContext.notes` to have it
    in its config.yaml). Never a randomly initialised VGG, and nothing is downloaded."""
    from fbench.assets import get_asset

    asset = get_asset(VGG_ASSET)
    path = Path(weights) if weights is not None else asset.paths()[0]
    if not path.is_file():
        message = (f"perceptual loss DISABLED: no VGG16 weights at {path} (the {VGG_ASSET} asset; "
                   f"obtain: {asset.source})")
        say(message)
        if notes is not None:
            notes["perceptual_loss"] = message
        return None
    loss = VGGPerceptualLoss(path, **kwargs)  # type: ignore[arg-type]
    if notes is not None:
        notes["perceptual_loss"] = f"VGG16 from {path}"
    return loss
