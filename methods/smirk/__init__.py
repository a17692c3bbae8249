"""SMIRK (Retsinas et al., CVPR 2024; official code github.com/georgeretsi/smirk) as an fbench method.

- `model`: encoder and generator with the official state-dict names; `checkpoint`: official
  checkpoint files; `plugin`: the `fbench.methods` entry;
- `data`: SMIRK's per-sample preparation of fbench shards and its dataset mix;
- `augment`: SMIRK's training augmentations;
- `masking`: the generator's masked input (face hidden, ~1 % of its pixels kept at points
  sampled on the predicted mesh), for training and for `SmirkModel.generate`;
- `task`: the training recipe behind `fbench train smirk` (`--phase pretrain|core|both`,
  `--skip-missing`, `--official-optimizer-reset`, declared on the plugin).
"""

from methods.smirk.model import SMIRK_CROP, SmirkEncoder, SmirkGenerator, SmirkModel

__all__ = ["SMIRK_CROP", "SmirkEncoder", "SmirkGenerator", "SmirkModel"]
