"""SMIRK checkpoints in the official layout: a flat dict of tensors keyed `smirk_encoder.*`
(and `smirk_generator.*` when the generator is included), as the released `SMIRK_em1.pt`
(demo.py:55-66 splits it by these prefixes). fbench writes the same layout, so the official
code can load fbench's files too.

Loading is strict: every key of the model the file describes must be there with its shape,
and nothing else. Sizes are read from the tensors: `n_exp` and `n_shape` from the heads,
the generator's channels, `init_features` and `res_blocks` from its convolutions.
`CheckpointLayout` holds what is SMIRK's (the key prefix, the model built), so TEASER's
checkpoints (methods/teaser/checkpoint.py) go through the same reading and checking.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fbench.io import CheckpointError, atomic_write, load_checkpoint
from methods.smirk.model import N_EYELIDS, N_JAW, SmirkEncoder, SmirkGenerator, SmirkModel

SHOW = 5  # offending keys named in an error
# the keys the sizes are read from, relative to the encoder / generator prefix
EXPRESSION_HEAD = "expression_encoder.expression_layers.0.weight"
SHAPE_HEAD = "shape_encoder.shape_layers.0.weight"
GENERATOR_FIRST = "encoder1.enc1conv1.weight"
GENERATOR_LAST = "conv.weight"


@dataclass(frozen=True)
class CheckpointLayout:
    """A method's flat checkpoint layout: `<prefix>_encoder.*` and `<prefix>_generator.*` keys,
    SMIRK's heads, and how to build the model a file describes (TEASER reuses all of this with
    its own prefix and model)."""

    method: str  # in error messages: "not a SMIRK checkpoint"
    prefix: str  # "smirk": keys smirk_encoder.* / smirk_generator.*
    build: Callable[[dict], Any]  # sizes (infer_config) -> an untrained model
    generator_sizes: Callable[[Path, Mapping[str, Tensor], dict], dict] | None = None  # extra generator sizes
    generator_first: str = GENERATOR_FIRST  # the first convolution (in_channels, init_features)

    @property
    def encoder_prefix(self) -> str:
        return f"{self.prefix}_encoder."

    @property
    def generator_prefix(self) -> str:
        return f"{self.prefix}_generator."


def _build_smirk(sizes: dict) -> SmirkModel:
    gen = SmirkGenerator(**sizes["generator"]) if sizes["generator"] else None
    return SmirkModel(SmirkEncoder(n_exp=sizes["n_exp"], n_shape=sizes["n_shape"]), gen)


SMIRK_LAYOUT = CheckpointLayout("SMIRK", "smirk", _build_smirk)
ENCODER_PREFIX = SMIRK_LAYOUT.encoder_prefix
GENERATOR_PREFIX = SMIRK_LAYOUT.generator_prefix


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def read_state_dict(path: str | Path, layout: CheckpointLayout = SMIRK_LAYOUT) -> dict[str, Tensor]:
    """The flat tensor dict in a checkpoint file, read with `torch.load(weights_only=True)`."""
    path = Path(path)
    obj = load_checkpoint(path)  # torch.load(weights_only=True); a CheckpointError names the file
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a {layout.method} checkpoint, entries that are not named tensors: "
                              f"{_names(bad)}")
    if not any(k.startswith(layout.encoder_prefix) for k in obj):
        raise CheckpointError(f"{path}: not a {layout.method} checkpoint, no '{layout.encoder_prefix}*' key "
                              f"(first keys: {_names(list(obj))})")
    return dict(obj)


def need(path: Path, state: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    """state[key] with `ndim` dimensions, else a CheckpointError saying the sizes cannot be read."""
    t = state.get(key)
    if t is None or t.ndim != ndim:
        what = "missing" if t is None else f"has shape {tuple(t.shape)}"
        raise CheckpointError(f"{path}: cannot infer the model sizes, {key} {what}")
    return t


def infer_config(path: Path, state: Mapping[str, Tensor], layout: CheckpointLayout = SMIRK_LAYOUT) -> dict:
    """Model sizes from the tensors: n_exp, n_shape, and the generator's (or None)."""
    enc, gen = layout.encoder_prefix, layout.generator_prefix
    n_exp = need(path, state, enc + EXPRESSION_HEAD, 2).shape[0] - N_EYELIDS - N_JAW
    n_shape = need(path, state, enc + SHAPE_HEAD, 2).shape[0]
    if n_exp < 1:
        raise CheckpointError(f"{path}: {enc + EXPRESSION_HEAD} has {n_exp + 5} outputs, fewer than 6")
    generator = None
    if any(k.startswith(gen) for k in state):
        first = need(path, state, gen + layout.generator_first, 4)
        last = need(path, state, gen + GENERATOR_LAST, 4)
        pattern = re.compile(re.escape(gen) + r"resnet_blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        generator = {"in_channels": first.shape[1], "out_channels": last.shape[0],
                     "init_features": first.shape[0], "res_blocks": len(blocks)}
        if layout.generator_sizes is not None:
            generator.update(layout.generator_sizes(path, state, generator))
    return {"n_exp": n_exp, "n_shape": n_shape, "generator": generator}


def check_state_dict(path: Path, model: torch.nn.Module, state: Mapping[str, Tensor],
                     layout: CheckpointLayout = SMIRK_LAYOUT) -> None:
    """Raise CheckpointError naming the first missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s): {_names(shapes)}")
    if problems:
        raise CheckpointError(f"{path}: does not match the {layout.method} model it describes; "
                              + "; ".join(problems))


def from_checkpoint(path: str | Path, generator: bool = True, layout: CheckpointLayout = SMIRK_LAYOUT):
    """A model (eval mode, fp32) from an official-format checkpoint, loaded strictly: a
    SmirkModel for SMIRK's layout, `layout.build`'s model for another.

    fp16 and fp32 files both load; tensors are cast to the model's fp32. A file without
    generator keys gives a model whose `generator` is None; `generator=False` skips building
    the generator even when the file has one (its keys are still checked).
    """
    path = Path(path)
    state = read_state_dict(path, layout)
    model = layout.build(infer_config(path, state, layout))
    check_state_dict(path, model, state, layout)
    model.load_state_dict(state, strict=True)  # copies into fp32 parameters
    if not generator:
        setattr(model, f"{layout.prefix}_generator", None)
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: str | Path, half: bool = False) -> Path:
    """Write `model` in the official flat layout, atomically (temp file + os.replace);
    `half` stores floating tensors as fp16, as the released file does."""
    path = Path(path)
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in model.state_dict().items()}
    return atomic_write(path, lambda fh: torch.save(state, fh))
