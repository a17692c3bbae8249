"""TEASER checkpoints in the official layout: a flat dict of tensors keyed `teaser_encoder.*`
(and `teaser_generator.*`), as the released `TEASER.pt` and `TEASER_v1.pt` (the trainer's
save_model keeps these two prefixes, base_trainer.py:308-315; test_image.py:98, 108 splits a
file by them). Reading, size inference, strict checking and the named errors are SMIRK's
(`methods.smirk.checkpoint`, with TEASER's `CheckpointLayout`); the token decoder's image
size is read from its first Linear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from fbench.io import CheckpointError
from methods.smirk import checkpoint as smirk_ckpt
from methods.smirk.checkpoint import CheckpointLayout, need, save_checkpoint
from methods.teaser.model import TeaserEncoder, TeaserGenerator, TeaserModel

TOKEN_DECODER_FIRST = "teaser_generator.token_decoder.decoder_1.0.weight"


def _generator_sizes(path: Path, state: Mapping[str, Tensor], sizes: dict) -> dict:
    """image_size from the token decoder's Linear(1024, 8f x (S/16)^2) (generator.py:285)."""
    rows = need(path, state, TOKEN_DECODER_FIRST, 2).shape[0]
    cells = rows / (8 * sizes["init_features"])
    side = math.isqrt(int(cells)) if cells == int(cells) else -1
    if side < 1 or side * side != cells:
        raise CheckpointError(f"{path}: {TOKEN_DECODER_FIRST} has {rows} rows, not 8 x init_features "
                              f"({sizes['init_features']}) x a square")
    return {"image_size": side * 16}


def _build(sizes: dict) -> TeaserModel:
    gen = TeaserGenerator(**sizes["generator"]) if sizes["generator"] else None
    return TeaserModel(TeaserEncoder(n_exp=sizes["n_exp"], n_shape=sizes["n_shape"]), gen)


# generator.py:159-162: TEASER's blocks name their first convolution `conv1`
TEASER_LAYOUT = CheckpointLayout("TEASER", "teaser", _build, _generator_sizes, generator_first="encoder1.conv1.weight")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The flat tensor dict of a TEASER checkpoint (`torch.load(weights_only=True)`)."""
    return smirk_ckpt.read_state_dict(path, TEASER_LAYOUT)


def from_checkpoint(path: str | Path, generator: bool = True) -> TeaserModel:
    """A TeaserModel (eval mode, fp32) from an official-format checkpoint, loaded strictly.
    fp16 and fp32 files both load; an encoder-only file (or `generator=False`) gives a model
    whose `generator` is None."""
    return smirk_ckpt.from_checkpoint(path, generator=generator, layout=TEASER_LAYOUT)


__all__ = ["TEASER_LAYOUT", "CheckpointError", "from_checkpoint", "read_state_dict", "save_checkpoint"]
