"""FIELDS' model: the base model (TEASER's encoders and synthesizer) plus the emotion head.

`FieldsModel` is a `Reconstructor`: `reconstruct(images)` is the base model's (FlameParams from
the FLAME encoders); `predict_emotion(images)` runs the encoders and the head. Its state dict is
the base's flat release layout plus `emotion_head.*` (the head's weights and its `input_mask`),
so `FIELDS.pt` is a TEASER checkpoint with the head's keys added (`methods.fields.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fbench.plugins import ItemRef
from methods.fields.head import EmotionHead
from methods.teaser.model import TeaserModel as BaseModel

HEAD_PREFIX = "emotion_head."


class FieldsModel(BaseModel):
    """TEASER's model (`teaser_encoder`, `teaser_generator`) with `emotion_head` (an `EmotionHead`)."""

    def __init__(self, encoder, generator=None, emotion_head: EmotionHead | None = None) -> None:
        super().__init__(encoder, generator)
        if emotion_head is None:
            raise ValueError("FieldsModel needs its emotion head")
        self.emotion_head = emotion_head

    @torch.inference_mode()
    def predict_emotion(self, images: Tensor, items: Sequence[ItemRef] | None = None) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] cut with `crop` -> {"valence": (B,), "arousal": (B,),
        "probabilities": (B, 8) softmax over AffectNet's classes 0-7, "logits": (B, 8)} on the CPU."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIELDS needs (B, 3, H, W) RGB images, got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        try:
            out = self.emotion_head(self.encoder(images.to(self.device, torch.float32)))
        finally:
            self.train(was_training)
        return {"valence": out["valence"].cpu(), "arousal": out["arousal"].cpu(),
                "probabilities": torch.softmax(out["logits"], dim=1).cpu(), "logits": out["logits"].cpu()}
