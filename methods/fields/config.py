"""FIELDS settings: the base method's (SMIRK/TEASER) model and training settings plus every FIELDS
choice (emotion head, losses, data mix, the two steps). Each field marked "ours" is listed with
its reason in docs/methods/fields.md; `-o train.losses.gt3d=false` is the L_3D-GT ablation."""

from __future__ import annotations

from dataclasses import dataclass, field

from methods.fields.data import FieldsDataConfig
from methods.fields.head import EmotionHeadConfig
from methods.fields.losses import FieldsLossConfig
from methods.teaser.plugin import TeaserConfig as BaseConfig
from methods.teaser.plugin import TeaserTrainConfig as BaseTrainConfig

STEPS = ("1", "2")


@dataclass
class FieldsTrainConfig(BaseTrainConfig):
    """`fbench train fields` settings (section `train`): TEASER's trainer's, plus FIELDS'.

    The inherited 2D terms keep the base method's official weights (`weight(name)`); the base's
    `lr` is FIELDS' step-1 learning rate of the generator (when trained) and `encoder_lr_scale`
    x lr that of the encoder."""

    # FIELDS choice (ours): step 1 trains the encoders (pose frozen) and the emotion head with the synthesizer
    # frozen, so the new 3D supervision cannot be absorbed by the decoder ("decoder masking"); step 2 trains
    # everything but the pose encoder jointly at step2_lr_scale x the step-1 rates.
    step: str | int = "1"  # "1" or "2" (an int from `-o train.step=2` is read as its string)
    lr: float | None = 1e-4  # FIELDS choice (ours): fine-tuning a trained base, 10x below SMIRK's 1e-3
    step2_lr_scale: float = 0.1  # FIELDS choice (ours)
    head_lr: float = 1e-3  # FIELDS choice (ours): the head starts random, so it learns at a full rate
    freeze_pose: bool = True  # the paper: only the pose encoder is frozen
    init: str = ""  # the base checkpoint (TEASER.pt / a `fbench train teaser` run dir); "": fresh weights (said)
    bp4d_shards: str = ""  # `fbench prep bp4d --fits` output; "": <shards>/bp4d
    affectnet_shards: str = ""  # `fbench prep affectnet` output; "": <shards>/affectnet
    data: FieldsDataConfig = field(default_factory=FieldsDataConfig)
    losses: FieldsLossConfig = field(default_factory=FieldsLossConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.step = str(self.step)
        if self.step not in STEPS:
            raise ValueError(f"train.step must be one of {', '.join(STEPS)}, got {self.step!r}")
        if not self.step2_lr_scale > 0 or not self.head_lr > 0:
            raise ValueError("train.step2_lr_scale and train.head_lr must be > 0")

    def step_scale(self) -> float:
        """The learning-rate factor of this step (1 in step 1)."""
        return 1.0 if self.step == "1" else float(self.step2_lr_scale)


@dataclass
class FieldsConfig(BaseConfig):
    """TEASER's model sizes plus the emotion head's."""

    emotion_head: EmotionHeadConfig = field(default_factory=EmotionHeadConfig)
    train: FieldsTrainConfig = field(default_factory=FieldsTrainConfig)  # `fbench train fields` only

    @classmethod
    def tiny(cls) -> FieldsConfig:
        """A small generator for quick runs (contract tests); encoder and head as the default."""
        return cls(generator_init_features=8, generator_res_blocks=1)
