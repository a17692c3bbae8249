"""TEASER (Liu et al., ICLR 2025; official code github.com/Pixel-Talk/TEASER) as an fbench method,
built on the SMIRK plugin (TEASER is SMIRK plus appearance tokens).

- `model`: TeaserEncoder (SMIRK's encoders + the token encoder), TeaserGenerator (SMIRK's UNet
  with token-modulated AdaIN blocks and a token decoder), TeaserModel; official state-dict names;
- `checkpoint`: official checkpoint files (SMIRK's strict loader with TEASER's layout);
- `plugin`: the `fbench.methods` entry, TeaserConfig / TeaserTrainConfig;
- `task`: `fbench train teaser` (TeaserTask, a SmirkTask).
"""

from methods.teaser.model import TEASER_CROP, TeaserEncoder, TeaserGenerator, TeaserModel

__all__ = ["TEASER_CROP", "TeaserEncoder", "TeaserGenerator", "TeaserModel"]
