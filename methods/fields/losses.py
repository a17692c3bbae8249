"""FIELDS' added losses: L_3D-GT, L_emo with its intensity-aware parts, and the base-model regulariser.

Public (REFERENCE.md): an expression-parameter loss against FLAME fits of BP4D's 4D scans
(L_3D-GT), an emotion loss on AffectNet labels (valence, arousal, classes) that is
"intensity-aware" so expressions carry the emotion without exaggeration (L_emo), and a
regularisation towards a stable base model. The norms, the parameters supervised, the weights
and the definition of "intensity-aware" are ours (`# FIELDS choice (ours)` below, the table in
docs/methods/fields.md, the fields of `FieldsLossConfig`).

Intensity-aware (ours), two parts, both driven by the label's intensity
s = min(1, |(valence, arousal)| / va_ref), the distance of the annotated affect from neutral on
the circumplex:
1. the classification term of each non-neutral sample is weighted by floor + (1 - floor) s, so
   weakly expressed emotions (whose class is the least certain and whose faces are the closest
   to neutral) do not push the expression parameters towards a caricature of their class;
   neutral samples keep weight 1 (low intensity is what defines them);
2. an exaggeration penalty (1 - s) relu(|Psi| - |Psi_base|)^2: on a weakly expressed face the
   expression may not grow beyond what the frozen base model sees, while a strong one may.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fbench.losses import ccc_loss, parameter_loss, regulariser
from fbench.losses.parameters import NORMS

NEUTRAL = 0  # AffectNet class 0


@dataclass
class FieldsLossConfig:
    """Weights and definitions of FIELDS' added losses (section `train.losses`); all ours."""

    # ---- L_3D-GT (BP4D samples only)
    gt3d: bool = True  # the ablation switch: False trains without L_3D-GT
    # FIELDS choice (ours): 100, the landmark loss's weight: L_3D-GT shares the first path's optimiser step with the
    # 2D terms (landmarks x 100, reconstruction x 10); at 1 it was drowned (flat over 120 steps, ablation round 1)
    gt3d_weight: float = 100.0
    gt3d_norm: str = "mse"  # FIELDS choice (ours): MSE as SMIRK's cycle loss (fits are least-squares estimates)
    gt3d_jaw_weight: float = 10.0  # FIELDS choice (ours): 10 x, SMIRK's cycle-loss jaw weight (smirk_trainer.py:307-311)
    # FIELDS choice (ours): 0, eyelids unsupervised: fbench's BP4D fits carry no eyelid fit (zeros,
    # pipelines/bp4d_frames.py); 10 (the cycle loss's) for fits that have them
    gt3d_eyelid_weight: float = 0.0
    # ---- L_emo (AffectNet samples only)
    emo_weight: float = 1.0  # FIELDS choice (ours)
    emo_class_weight: float = 1.0  # cross-entropy of the 8 classes
    emo_va_mse_weight: float = 1.0  # MSE of valence and arousal (EMOCA's v_mse, a_mse)
    emo_va_ccc_weight: float = 1.0  # 1 - CCC of valence and arousal (EMOCA's va_lccc)
    # ---- intensity-aware (ours, see the module docstring)
    intensity_aware: bool = True
    intensity_va_ref: float = 0.75  # |VA| at which an emotion counts as fully expressed
    intensity_floor: float = 0.25  # weight of the classification term at zero intensity (non-neutral classes)
    exaggeration_weight: float = 1.0  # (1 - s) relu(|Psi| - |Psi_base|)^2
    # ---- base-model regularisation (MSE to a frozen copy of the initial encoder)
    base_weight: float = 1.0  # FIELDS choice (ours)
    base_params: tuple[str, ...] = ("expression", "jaw", "eyelids")  # FIELDS choice (ours): what the decoder could mask

    def __post_init__(self) -> None:
        if self.gt3d_norm not in NORMS:
            raise ValueError(f"train.losses.gt3d_norm must be one of {NORMS}, got {self.gt3d_norm!r}")
        if not self.intensity_va_ref > 0 or not 0.0 <= self.intensity_floor <= 1.0:
            raise ValueError("train.losses: intensity_va_ref > 0 and 0 <= intensity_floor <= 1")
        bad = [p for p in self.base_params if p not in BASE_KEYS]
        if bad:
            raise ValueError(f"train.losses.base_params: names among {tuple(BASE_KEYS)}, got {bad}")
        for name in ("gt3d_weight", "gt3d_jaw_weight", "gt3d_eyelid_weight", "emo_weight", "emo_class_weight",
                     "emo_va_mse_weight", "emo_va_ccc_weight", "exaggeration_weight", "base_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.losses.{name} must be >= 0, got {getattr(self, name)}")


BASE_KEYS = {"expression": "expression_params", "jaw": "jaw_params", "eyelids": "eyelid_params",
             "shape": "shape_params"}


# ------------------------------------------------------------------------------------------ L_3D-GT


def gt3d_loss(enc: Mapping[str, Tensor], batch: Mapping[str, Tensor], config: FieldsLossConfig
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """L_3D-GT on the samples with `flag_gt3d`: expression + jaw_weight x jaw + eyelid_weight x eyelids,
    each `parameter_loss` with `config.gt3d_norm` against `gt_expression`, `gt_jaw`, `gt_eyelids`.
    The target expression is compared on the model's first n_exp components (the data recipe pads
    shorter fits with zeros, which is what FLAME with fewer components means). Unweighted total."""
    valid = batch["flag_gt3d"].bool()
    exp = enc["expression_params"]
    target = batch["gt_expression"][:, :exp.shape[1]]
    if target.shape[1] < exp.shape[1]:
        raise ValueError(f"gt_expression has {target.shape[1]} components, the encoder {exp.shape[1]}")
    terms = {"gt3d_expression": parameter_loss(exp, target, valid, config.gt3d_norm),
             "gt3d_jaw": parameter_loss(enc["jaw_params"], batch["gt_jaw"], valid, config.gt3d_norm)}
    total = terms["gt3d_expression"] + config.gt3d_jaw_weight * terms["gt3d_jaw"]
    if config.gt3d_eyelid_weight > 0 and "gt_eyelids" in batch:
        terms["gt3d_eyelids"] = parameter_loss(enc["eyelid_params"], batch["gt_eyelids"], valid, config.gt3d_norm)
        total = total + config.gt3d_eyelid_weight * terms["gt3d_eyelids"]
    return total, terms


# -------------------------------------------------------------------------------------------- L_emo


def label_intensity(valence: Tensor, arousal: Tensor, va_ref: float) -> Tensor:
    """s = min(1, |(valence, arousal)| / va_ref) per sample."""
    return torch.clamp(torch.sqrt(valence * valence + arousal * arousal) / va_ref, max=1.0)


def class_weights(classes: Tensor, intensity: Tensor, va_valid: Tensor, floor: float) -> Tensor:
    """Per-sample weight of the classification term: floor + (1 - floor) s for non-neutral classes
    with annotated valence/arousal; 1 for neutral and where valence/arousal is not annotated."""
    w = floor + (1.0 - floor) * intensity
    keep_one = (classes == NEUTRAL) | ~va_valid.bool()
    return torch.where(keep_one, torch.ones_like(w), w)


def emotion_loss(pred: Mapping[str, Tensor], batch: Mapping[str, Tensor], config: FieldsLossConfig
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """L_emo of the head's output on the samples with labels: class_weight x (weighted) cross-entropy
    over `flag_emotion_class` rows + over `flag_va` rows va_mse_weight x (MSE_v + MSE_a) / 2 +
    va_ccc_weight x ((1 - CCC_v) + (1 - CCC_a)) / 2 (the CCC terms need 2 rows). Unweighted total."""
    logits, v, a = pred["logits"], pred["valence"], pred["arousal"]
    has_class = batch["flag_emotion_class"].bool()
    has_va = batch["flag_va"].bool()
    zero = logits.sum() * 0.0
    terms: dict[str, Tensor] = {}
    if bool(has_class.any()):
        classes = batch["emotion_class"][has_class].long()
        ce = F.cross_entropy(logits[has_class], classes, reduction="none")
        if config.intensity_aware:
            s = label_intensity(batch["valence"][has_class].to(ce), batch["arousal"][has_class].to(ce),
                                config.intensity_va_ref)
            w = class_weights(classes, s, has_va[has_class], config.intensity_floor)
            terms["emo_class"] = (w * ce).sum() / w.sum()
        else:
            terms["emo_class"] = ce.mean()
    else:
        terms["emo_class"] = zero
    if bool(has_va.any()):
        tv, ta = batch["valence"][has_va].to(v), batch["arousal"][has_va].to(a)
        pv, pa = v[has_va], a[has_va]
        terms["emo_va_mse"] = 0.5 * (F.mse_loss(pv, tv) + F.mse_loss(pa, ta))
        terms["emo_va_ccc"] = 0.5 * (ccc_loss(pv, tv) + ccc_loss(pa, ta)) if int(has_va.sum()) >= 2 else zero
    else:
        terms["emo_va_mse"] = terms["emo_va_ccc"] = zero
    total = config.emo_class_weight * terms["emo_class"] + config.emo_va_mse_weight * terms["emo_va_mse"] \
        + config.emo_va_ccc_weight * terms["emo_va_ccc"]
    return total, terms


def exaggeration_loss(expression: Tensor, base_expression: Tensor, batch: Mapping[str, Tensor],
                      config: FieldsLossConfig) -> Tensor:
    """Mean over the rows with annotated valence/arousal of (1 - s) relu(|Psi| - |Psi_base|)^2
    (|.| the L2 norm of the expression vector; the base is not trained)."""
    has_va = batch["flag_va"].bool()
    if not bool(has_va.any()):
        return expression.sum() * 0.0
    s = label_intensity(batch["valence"][has_va].to(expression), batch["arousal"][has_va].to(expression),
                        config.intensity_va_ref)
    excess = F.relu(expression[has_va].norm(dim=1) - base_expression[has_va].detach().norm(dim=1))
    return ((1.0 - s) * excess * excess).mean()


# ------------------------------------------------------------------------------------ base model


def base_regulariser(enc: Mapping[str, Tensor], base: Mapping[str, Tensor], params: tuple[str, ...]) -> Tensor:
    """Sum over `params` of the mean squared distance to the frozen base model's prediction
    (`fbench.losses.regulariser`)."""
    total = None
    for name in params:
        key = BASE_KEYS[name]
        term = regulariser(enc[key], base[key])
        total = term if total is None else total + term
    if total is None:
        return enc["expression_params"].sum() * 0.0
    return total
