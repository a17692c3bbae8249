"""Losses the trainers share (SMIRK, TEASER, FIELDS, the AffectNet probe), in torch.

- `landmark_loss`: squared (or absolute) 2D landmark error with validity masks (per sample or
  per point; NaN targets are invalid), SMIRK's `F.mse_loss` over valid samples.
- `photometric_l1`: L1 between images, optionally inside a mask.
- `VGGPerceptualLoss` / `load_vgg_perceptual`: SMIRK's VGG16 perceptual loss; the ImageNet
  weights are the `vgg16-weights` asset, and without them the loss is disabled (None), said
  and recorded, never run with random weights.
- `regulariser`: mean squared distance to zero or to a base model's prediction.
- `pcc_loss`, `ccc_loss`: 1 - Pearson / 1 - Lin's concordance correlation, per column.
- `parameter_loss`: MSE / L1 / smooth-L1 of parameters onto targets only some samples have.
"""

from fbench.losses.correlation import ccc_loss, pcc_loss
from fbench.losses.image import VGGPerceptualLoss, load_vgg_perceptual, photometric_l1
from fbench.losses.landmarks import landmark_loss, regulariser
from fbench.losses.parameters import parameter_loss

__all__ = ["VGGPerceptualLoss", "ccc_loss", "landmark_loss", "load_vgg_perceptual", "parameter_loss", "pcc_loss",
           "photometric_l1", "regulariser"]
