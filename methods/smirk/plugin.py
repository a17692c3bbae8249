"""The SMIRK method plugin (entry point `smirk` in the `fbench.methods` group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fbench.plugins import MethodPlugin


@dataclass
class SmirkConfig:
    """SMIRK's model sizes. Defaults are the released model's (smirk_encoder.py:114 and demo.py:63)."""

    n_exp: int = 50  # FLAME expression components predicted
    n_shape: int = 300  # FLAME shape components predicted
    generator: bool = True  # build the image-to-image generator (not needed for reconstruction)
    generator_in_channels: int = 6  # rendered image + masked image
    generator_out_channels: int = 3
    generator_init_features: int = 32
    generator_res_blocks: int = 5
    pretrained_backbones: bool = False  # ImageNet MobileNetV3 weights, only from the local cache

    @classmethod
    def tiny(cls) -> "SmirkConfig":
        """A small generator for quick runs (contract tests, the demo); the encoder is always the official one."""
        return cls(generator_init_features=8, generator_res_blocks=1)

    def __post_init__(self) -> None:
        for name in ("n_exp", "n_shape", "generator_in_channels", "generator_out_channels",
                     "generator_init_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"SmirkConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.generator_res_blocks < 0:
            raise ValueError(f"SmirkConfig.generator_res_blocks must be >= 0, got {self.generator_res_blocks}")


def build(config: SmirkConfig | None = None):
    """A freshly initialised SmirkModel (the official initialisation)."""
    from methods.smirk.model import SmirkEncoder, SmirkGenerator, SmirkModel

    c = config or SmirkConfig()
    encoder = SmirkEncoder(n_exp=c.n_exp, n_shape=c.n_shape, pretrained=c.pretrained_backbones)
    generator = SmirkGenerator(c.generator_in_channels, c.generator_out_channels, c.generator_init_features,
                               c.generator_res_blocks) if c.generator else None
    return SmirkModel(encoder, generator).eval()


def save(model, path: Path) -> Path:
    """Write a SmirkModel in the official checkpoint layout."""
    from methods.smirk.checkpoint import save_checkpoint

    return save_checkpoint(model, path)


def from_checkpoint(path: Path):
    """A SmirkModel from an official-format checkpoint (e.g. the released SMIRK_em1.pt)."""
    from methods.smirk.checkpoint import from_checkpoint as load

    return load(path)


METHOD = MethodPlugin(
    name="smirk",
    summary="SMIRK (Retsinas et al., CVPR 2024): MobileNetV3 FLAME encoder with an analysis-by-neural-synthesis "
            "generator",
    config=SmirkConfig,
    build=build,
    from_checkpoint=from_checkpoint,
    task=None,  # training: a later issue
    checkpoint_asset="smirk-checkpoint",
    save=save,
)
