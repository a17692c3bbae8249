"""FIELDS checkpoints: the base method's flat release layout (`<base>_encoder.*`,
`<base>_generator.*`) plus the emotion head's `emotion_head.*` keys (its weights and its
`input_mask`). Loading is strict; sizes come from the tensors (the base's from its heads and
convolutions, the head's hidden sizes from its linear layers and its inputs from `input_mask`).

`base_state(path)` reads what `train.init_from` names: a release-layout file (TEASER.pt, or a
FIELDS.pt whose head is then ignored), or a run folder: its exported release checkpoint, else
its `checkpoints/last.pt` (the loop's format, modules named as the base trainer names them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from fbench.io import CheckpointError, atomic_write
from methods.fields.head import EmotionHead, EmotionHeadConfig, inputs_from_mask
from methods.fields.model import HEAD_PREFIX, FieldsModel
from methods.smirk import checkpoint as base_ckpt
from methods.teaser.checkpoint import TEASER_LAYOUT

BASE_LAYOUT = TEASER_LAYOUT
BASE_RELEASE = "TEASER.pt"  # what a `fbench train teaser` run folder exports


def base_state(path: str | Path, layout=None) -> dict[str, Tensor]:
    """The flat base-layout weights `train.init_from` names (module docstring)."""
    layout = layout or BASE_LAYOUT
    path = Path(path)
    if path.is_dir():
        for name in (BASE_RELEASE, "FIELDS.pt"):
            if (path / name).is_file():
                return base_state(path / name, layout)
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"{path}: a run folder without {BASE_RELEASE}, FIELDS.pt or checkpoints/last.pt")
        from fbench.train.loop import read_train_checkpoint

        modules = read_train_checkpoint(last)["modules"]
        prefixes = (layout.encoder_prefix, layout.generator_prefix)
        flat = {f"{name}.{k}": v for name, sd in modules.items() if f"{name}." in prefixes for k, v in sd.items()}
        if not any(k.startswith(layout.encoder_prefix) for k in flat):
            raise CheckpointError(f"{last}: no '{layout.encoder_prefix[:-1]}' module (modules: {sorted(modules)})")
        return flat
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    state = base_ckpt.read_state_dict(path, layout)
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}


def head_from_state(path: Path, state: Mapping[str, Tensor], n_exp: int, n_shape: int) -> EmotionHead:
    """The emotion head `emotion_head.*` describes: inputs from `input_mask`, hidden sizes from the
    linear layers (`mlp.<i>.weight`), loaded strictly."""
    head_state = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    if "input_mask" not in head_state:
        raise CheckpointError(f"{path}: not a FIELDS checkpoint, no '{HEAD_PREFIX}input_mask' key")
    try:
        inputs = inputs_from_mask(head_state["input_mask"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    linear = sorted((int(m.group(1)), v) for k, v in head_state.items()
                    if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)))
    if not linear:
        raise CheckpointError(f"{path}: no emotion head layers ('{HEAD_PREFIX}mlp.<i>.weight')")
    hidden = tuple(int(w.shape[0]) for _, w in linear[:-1])
    dropout = 0.0  # not stored; inference does not use it
    head = EmotionHead(EmotionHeadConfig(inputs=inputs, hidden=hidden, dropout=dropout), n_exp, n_shape)
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the emotion head does not match ({str(exc).splitlines()[0]})") from None
    return head


def from_checkpoint(path: str | Path) -> FieldsModel:
    """A FieldsModel (eval mode, fp32) from a FIELDS.pt, loaded strictly."""
    path = Path(path)
    layout = BASE_LAYOUT
    state = base_ckpt.read_state_dict(path, layout)
    base = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    sizes = base_ckpt.infer_config(path, base, layout)
    model = layout.build(sizes)
    base_ckpt.check_state_dict(path, model, base, layout)
    model.load_state_dict(base, strict=True)
    head = head_from_state(path, state, sizes["n_exp"], sizes["n_shape"])
    return FieldsModel(model.encoder, model.generator, head).eval()


def save_checkpoint(model: FieldsModel, path: str | Path) -> Path:
    """Write a FieldsModel in its flat layout, atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic_write(Path(path), lambda fh: torch.save(state, fh))

