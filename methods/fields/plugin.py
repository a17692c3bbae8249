"""The FIELDS method plugin (entry point `fields` in the `fbench.methods` group)."""

from __future__ import annotations

from pathlib import Path

from fbench.plugins import MethodPlugin, TrainOption, TrainStages
from methods.fields.config import FieldsConfig


def build(config: FieldsConfig | None = None):
    """A freshly initialised FieldsModel (the base's initialisation, a random emotion head)."""
    from methods.fields.head import EmotionHead
    from methods.fields.model import FieldsModel
    from methods.teaser.plugin import build as build_base

    c = config or FieldsConfig()
    base = build_base(c)
    return FieldsModel(base.encoder, base.generator, EmotionHead(c.emotion_head, c.n_exp, c.n_shape)).eval()


def save(model, path: Path) -> Path:
    from methods.fields.checkpoint import save_checkpoint

    return save_checkpoint(model, path)


def from_checkpoint(path: Path):
    """A FieldsModel from a FIELDS.pt (`fbench train fields` exports it)."""
    from methods.fields.checkpoint import from_checkpoint as load

    return load(path)


def _task(config: FieldsConfig):
    from methods.fields.task import FieldsTask

    return FieldsTask(config)


METHOD = MethodPlugin(
    name="fields",
    summary="FIELDS (Ling, Shi, Kjellström, arXiv 2511.21245): TEASER with direct 3D expression supervision "
            "(BP4D FLAME fits) and an intensity-aware emotion head (AffectNet); no public code, our design",
    config=FieldsConfig,
    build=build,
    from_checkpoint=from_checkpoint,
    task=_task,
    checkpoint_asset=None,  # no released FIELDS weights
    save=save,
    train_options=(
        TrainOption("--bp4d-shards", "train.bp4d_shards",
                    "BP4D frames with FLAME-fit targets (`fbench prep bp4d --fits`); default SHARDS/bp4d.", path=True),
        TrainOption("--affectnet-shards", "train.affectnet_shards",
                    "AffectNet crops with labels (`fbench prep affectnet`); default SHARDS/affectnet.", path=True),
        TrainOption("--skip-missing", "train.skip_missing",
                    "Train on the parts of the mix that have shards (recorded in config.yaml); without it a "
                    "missing part is an error naming it.", is_flag=True),
    ),
    # FIELDS choice (ours): step 1 synthesizer frozen, step 2 joint at a lower rate; both: RUN/1, RUN/2
    train_stages=TrainStages("--step", "train.step", ("1", "2")),
)
