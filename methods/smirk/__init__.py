"""SMIRK (Retsinas et al., CVPR 2024): encoder, generator, official checkpoints, plugin."""

from methods.smirk.model import SMIRK_CROP, SmirkEncoder, SmirkGenerator, SmirkModel

__all__ = ["SMIRK_CROP", "SmirkEncoder", "SmirkGenerator", "SmirkModel"]
