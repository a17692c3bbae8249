"""The SMIRK method plugin (entry point `smirk` in the `fbench.methods` group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from fbench.plugins import MethodPlugin, TrainOption, TrainStages

# Official loss weights per phase: configs/config_pretrain.yaml:36-45 and configs/config_train.yaml:30-39
# (georgeretsi/smirk at c7de404). MICA stays listed; fbench has no MICA model, so its weight is
# recorded as disabled in the run's config.yaml whatever it is set to.
OFFICIAL_WEIGHTS: dict[str, dict[str, float]] = {
    "pretrain": {"landmark_loss": 100.0, "perceptual_vgg_loss": 0.0, "reconstruction_loss": 0.0,
                 "jaw_regularization": 0.0, "expression_regularization": 1e-2, "shape_regularization": 0.0,
                 "cycle_loss": 0.0, "mica_loss": 10.0},
    "core": {"landmark_loss": 100.0, "perceptual_vgg_loss": 10.0, "reconstruction_loss": 10.0,
             "jaw_regularization": 1e-2, "expression_regularization": 1e-3, "shape_regularization": 100.0,
             "cycle_loss": 1.0, "mica_loss": 0.0},
}
# learning rates: config_pretrain.yaml:9 (2e-4), config_train.yaml:11 (1e-3)
OFFICIAL_LR = {"pretrain": 2e-4, "core": 1e-3}
# which encoder parts are optimised: config_pretrain.yaml:28-30 (all), config_train.yaml:41-43 (expression only)
OFFICIAL_OPTIMIZE = {"pretrain": ("pose", "shape", "expression"), "core": ("expression",)}


@dataclass
class SmirkTrainConfig:
    """`fbench train smirk` settings (section `train`). A None weight or lr takes the phase's
    official value (OFFICIAL_WEIGHTS, OFFICIAL_LR above; a subclass such as TEASER's sets its own)."""

    official_weights: ClassVar[dict[str, dict[str, float]]] = OFFICIAL_WEIGHTS
    official_lr: ClassVar[dict[str, float]] = OFFICIAL_LR

    phase: str = "core"  # pretrain (encoder only, config_pretrain.yaml) or core (config_train.yaml)
    lr: float | None = None  # generator lr; the encoder's is encoder_lr_scale x lr
    encoder_lr_scale: float = 0.25  # base_trainer.py:36
    generator_betas: tuple[float, float] = (0.5, 0.999)  # base_trainer.py:62
    generator_clip: float = 0.1  # cycle path, generator gradient norm (smirk_trainer.py:379)
    batch_size: int = 32  # config_train.yaml:13
    workers: int = 8  # config_train.yaml:14
    samples_per_epoch: int = 50000  # config_train.yaml:23 (an epoch is samples_per_epoch // batch_size steps)
    skip_missing: bool = False  # ours: train on the datasets present, weights renormalised (recorded)
    # the official trainer re-creates the generator's Adam every epoch (base_trainer.py:57-62, train.py:48);
    # fbench creates optimisers once unless this is set
    official_optimizer_reset: bool = False
    augment: bool = True  # SMIRK's image augmentations (methods.smirk.augment)
    mask_ratio: float = 0.01  # config_train.yaml:18
    mask_dilation_radius: int = 10  # config_train.yaml:19
    Ke: int = 1  # copies per image in the cycle path, config_train.yaml:22
    use_eyelids: bool = True  # config_train.yaml:56
    alternate_freezing: bool = True  # base_trainer.py:258-268: encoder frozen in the cycle on even steps, generator on odd
    templates: str = ""  # FaMoS expression templates (`fbench fit-flame famos --export-templates DIR`); "": the asset
    init_from: str = ""  # official-layout SMIRK .pt to start from (train.py:38-39 `resume`), e.g. a pretrain run's
    landmark_loss: float | None = None
    perceptual_vgg_loss: float | None = None
    reconstruction_loss: float | None = None
    jaw_regularization: float | None = None
    expression_regularization: float | None = None
    shape_regularization: float | None = None
    cycle_loss: float | None = None
    mica_loss: float | None = None

    def __post_init__(self) -> None:
        if self.phase not in self.official_weights:
            raise ValueError(f"train.phase must be one of {', '.join(self.official_weights)}, got {self.phase!r}")
        if self.batch_size < 1 or self.Ke < 1 or self.samples_per_epoch < self.batch_size or self.workers < 0:
            raise ValueError("train: batch_size, Ke >= 1, workers >= 0 and samples_per_epoch >= batch_size")

    def weight(self, name: str) -> float:
        value = getattr(self, name)
        return self.official_weights[self.phase][name] if value is None else float(value)

    def learning_rate(self) -> float:
        return self.official_lr[self.phase] if self.lr is None else float(self.lr)


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
    train: SmirkTrainConfig = field(default_factory=SmirkTrainConfig)  # `fbench train smirk` only

    @classmethod
    def tiny(cls) -> SmirkConfig:
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


def _task(config: SmirkConfig):
    from methods.smirk.task import SmirkTask

    return SmirkTask(config)


METHOD = MethodPlugin(
    name="smirk",
    summary="SMIRK (Retsinas et al., CVPR 2024): MobileNetV3 FLAME encoder with an analysis-by-neural-synthesis "
            "generator",
    config=SmirkConfig,
    build=build,
    from_checkpoint=from_checkpoint,
    task=_task,
    checkpoint_asset="smirk-checkpoint",
    save=save,
    train_options=(
        TrainOption("--skip-missing", "train.skip_missing",
                    "Train on the datasets of the SMIRK mix that have shards, their weights renormalised "
                    "(recorded in config.yaml); without it a missing dataset is an error naming it.", is_flag=True),
        TrainOption("--official-optimizer-reset", "train.official_optimizer_reset",
                    "Reset the generator's Adam state at every epoch start, as the official trainer does by "
                    "re-creating it (fbench keeps it by default).", is_flag=True),
    ),
    # pretraining (config_pretrain.yaml) then core training (config_train.yaml); both: RUN/pretrain, RUN/core
    train_stages=TrainStages("--phase", "train.phase", ("pretrain", "core")),
)
