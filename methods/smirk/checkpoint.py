"""SMIRK checkpoints in the official layout: a flat dict of tensors keyed `smirk_encoder.*`
(and `smirk_generator.*` when the generator is included), as the released `SMIRK_em1.pt`
(demo.py:55-66 splits it by these prefixes). fbench writes the same layout, so the official
code can load fbench's files too.

Loading is strict: every key of the model the file describes must be there with its shape,
and nothing else. Sizes are read from the tensors: `n_exp` and `n_shape` from the heads,
the generator's channels, `init_features` and `res_blocks` from its convolutions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from fbench.io import CheckpointError, atomic_write, load_checkpoint
from methods.smirk.model import N_EYELIDS, N_JAW, SmirkEncoder, SmirkGenerator, SmirkModel

ENCODER_PREFIX = "smirk_encoder."
GENERATOR_PREFIX = "smirk_generator."
EXPRESSION_HEAD = "smirk_encoder.expression_encoder.expression_layers.0.weight"
SHAPE_HEAD = "smirk_encoder.shape_encoder.shape_layers.0.weight"
GENERATOR_FIRST = "smirk_generator.encoder1.enc1conv1.weight"
GENERATOR_LAST = "smirk_generator.conv.weight"
SHOW = 5  # offending keys named in an error


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The flat tensor dict in a checkpoint file, read with `torch.load(weights_only=True)`."""
    path = Path(path)
    obj = load_checkpoint(path)  # torch.load(weights_only=True); a CheckpointError names the file
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a SMIRK checkpoint, entries that are not named tensors: {_names(bad)}")
    if not any(k.startswith(ENCODER_PREFIX) for k in obj):
        raise CheckpointError(f"{path}: not a SMIRK checkpoint, no '{ENCODER_PREFIX}*' key "
                              f"(first keys: {_names(list(obj))})")
    return dict(obj)


def _need(path: Path, state: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    t = state.get(key)
    if t is None or t.ndim != ndim:
        what = "missing" if t is None else f"has shape {tuple(t.shape)}"
        raise CheckpointError(f"{path}: cannot infer the model sizes, {key} {what}")
    return t


def infer_config(path: Path, state: Mapping[str, Tensor]) -> dict:
    """Model sizes from the tensors: n_exp, n_shape, and the generator's (or None)."""
    n_exp = _need(path, state, EXPRESSION_HEAD, 2).shape[0] - N_EYELIDS - N_JAW
    n_shape = _need(path, state, SHAPE_HEAD, 2).shape[0]
    if n_exp < 1:
        raise CheckpointError(f"{path}: {EXPRESSION_HEAD} has {n_exp + 5} outputs, fewer than 6")
    generator = None
    if any(k.startswith(GENERATOR_PREFIX) for k in state):
        first = _need(path, state, GENERATOR_FIRST, 4)
        last = _need(path, state, GENERATOR_LAST, 4)
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"smirk_generator\.resnet_blocks\.(\d+)\.", k))}
        generator = {"in_channels": first.shape[1], "out_channels": last.shape[0],
                     "init_features": first.shape[0], "res_blocks": len(blocks)}
    return {"n_exp": n_exp, "n_shape": n_shape, "generator": generator}


def check_state_dict(path: Path, model: SmirkModel, state: Mapping[str, Tensor]) -> None:
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
        raise CheckpointError(f"{path}: does not match the SMIRK model it describes; " + "; ".join(problems))


def from_checkpoint(path: str | Path, generator: bool = True) -> SmirkModel:
    """A SmirkModel (eval mode, fp32) from an official-format checkpoint, loaded strictly.

    fp16 and fp32 files both load; tensors are cast to the model's fp32. A file without
    `smirk_generator.*` keys gives a model whose `generator` is None; `generator=False`
    skips building the generator even when the file has one (its keys are still checked).
    """
    path = Path(path)
    state = read_state_dict(path)
    sizes = infer_config(path, state)
    gen = SmirkGenerator(**sizes["generator"]) if sizes["generator"] else None
    model = SmirkModel(SmirkEncoder(n_exp=sizes["n_exp"], n_shape=sizes["n_shape"]), gen)
    check_state_dict(path, model, state)
    model.load_state_dict(state, strict=True)  # copies into fp32 parameters
    if not generator:
        model.smirk_generator = None
    return model.eval()


def save_checkpoint(model: SmirkModel, path: str | Path, half: bool = False) -> Path:
    """Write `model` in the official flat layout, atomically (temp file + os.replace);
    `half` stores floating tensors as fp16, as the released file does."""
    path = Path(path)
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in model.state_dict().items()}
    return atomic_write(path, lambda fh: torch.save(state, fh))
