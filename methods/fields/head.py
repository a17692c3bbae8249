"""The FIELDS emotion head: an MLP on FLAME parameters that predicts valence, arousal and the
eight AffectNet emotion logits.

The paper states only "an auxiliary emotion head on (Psi, beta)" trained on AffectNet labels
(REFERENCE.md, "FIELDS — what is public"). Everything else is ours, marked below and listed in
docs/methods/fields.md; the sizes are `EmotionHeadConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# AffectNet's emotion classes 0-7 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt): the
# same eight as pipelines/affectnet.py CLASSES[:8], benchmarks/affectnet N_CLASSES and fbench.metrics' tables
# (methods may not import benchmarks or pipelines; tests/test_fields_losses.py holds them equal).
N_EMOTIONS = 8
HEAD_INPUTS = ("expression", "jaw", "shape", "eyelids")
# encoder output key of each input (methods/smirk/model.py SmirkEncoder.forward)
_ENCODER_KEY = {"expression": "expression_params", "jaw": "jaw_params", "shape": "shape_params",
                "eyelids": "eyelid_params"}


@dataclass
class EmotionHeadConfig:
    # FIELDS choice (ours): [Psi, jaw, beta]. The paper says (Psi, beta); SMIRK's Psi excludes the jaw,
    # which carries emotion content (surprise, fear open the mouth); ["expression", "shape"] is the literal reading.
    inputs: tuple[str, ...] = ("expression", "jaw", "shape")
    # FIELDS choice (ours): two hidden layers of 256, LeakyReLU(0.2), no normalisation (only the AffectNet
    # share of a batch reaches the head, too few rows for BatchNorm statistics).
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        bad = [i for i in self.inputs if i not in HEAD_INPUTS]
        if bad or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"emotion_head.inputs: distinct names among {HEAD_INPUTS}, got {list(self.inputs)}")
        if any(h < 1 for h in self.hidden) or not 0.0 <= self.dropout < 1.0:
            raise ValueError("emotion_head: hidden sizes >= 1 and 0 <= dropout < 1")


def inputs_from_mask(mask: Tensor) -> tuple[str, ...]:
    """The head inputs an `input_mask` buffer (from a checkpoint) names."""
    if mask.shape != (len(HEAD_INPUTS),) or not bool(((mask == 0) | (mask == 1)).all()) or not bool(mask.any()):
        raise ValueError(f"emotion head input_mask must be {len(HEAD_INPUTS)} zeros/ones (not all zero), "
                         f"got {mask.tolist()}")
    return tuple(name for name, used in zip(HEAD_INPUTS, mask.tolist()) if used)


def input_size(config: EmotionHeadConfig, n_exp: int, n_shape: int) -> int:
    sizes = {"expression": n_exp, "jaw": 3, "shape": n_shape, "eyelids": 2}
    return sum(sizes[i] for i in config.inputs)


class EmotionHead(nn.Module):
    """MLP: concatenated parameters -> (valence, arousal, 8 logits). `forward` takes the encoder's
    output dict (`expression_params`, `jaw_params`, `shape_params`, ...) and returns
    {"valence": (B,), "arousal": (B,), "logits": (B, 8)}.

    The inputs are concatenated in HEAD_INPUTS order whatever order the config lists them in, and
    the buffer `input_mask` (1 per HEAD_INPUTS entry used) records them in the state dict, so a
    checkpoint says which parameters its head reads (`inputs_from_mask`)."""

    def __init__(self, config: EmotionHeadConfig, n_exp: int, n_shape: int) -> None:
        super().__init__()
        self.config = config
        self.inputs = tuple(i for i in HEAD_INPUTS if i in config.inputs)
        self.in_size = input_size(config, n_exp, n_shape)
        self.register_buffer("input_mask", torch.tensor([float(i in self.inputs) for i in HEAD_INPUTS]))
        layers: list[nn.Module] = []
        prev = self.in_size
        for h in config.hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2)]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            prev = h
        layers.append(nn.Linear(prev, 2 + N_EMOTIONS))
        self.mlp = nn.Sequential(*layers)

    def features(self, params: Mapping[str, Tensor]) -> Tensor:
        missing = [_ENCODER_KEY[i] for i in self.inputs if _ENCODER_KEY[i] not in params]
        if missing:
            raise KeyError(f"emotion head needs {missing} from the encoder output (has {sorted(params)})")
        x = torch.cat([params[_ENCODER_KEY[i]] for i in self.inputs], dim=-1)
        if x.shape[-1] != self.in_size:
            raise ValueError(f"emotion head built for {self.in_size} inputs ({', '.join(self.inputs)}), got {x.shape[-1]}")
        return x

    def forward(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        y = self.mlp(self.features(params))
        return {"valence": y[:, 0], "arousal": y[:, 1], "logits": y[:, 2:]}
