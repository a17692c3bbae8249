"""FIELDS' data recipe: the base method's shard mix plus BP4D frames with FLAME-fit targets plus
labelled AffectNet crops, in fixed per-batch proportions, and the per-sample transform that adds
the targets to SMIRK's training dict.

All of it is ours (the paper names the datasets only; docs/methods/fields.md):
- FIELDS choice (ours): per batch, `base_fraction` of the samples come from the base mix (SMIRK's
  datasets and weights, `methods.smirk.data.smirk_mix`, scaled), `bp4d_fraction` from BP4D and
  `affectnet_fraction` from AffectNet (defaults 1/2, 1/4, 1/4), composed as every fbench mix
  (`fbench.shards.stream.batch_composition`: fixed counts, the first set takes the rest);
- AffectNet: the training split, rows with an emotion class 0-7 (`labels.expression_valid`, as
  EMOCA's `ignore_invalid`); valence/arousal count where annotated (`labels.va_valid`);
- BP4D: the training split of `fbench prep bp4d --fits fits.h5` shards; each sample's targets are
  its fit's `labels.flame` (`bp4d_targets`); fits that did not converge are skipped;
- the labelled sets keep samples without MediaPipe landmarks (their crop box then comes from FAN
  or the dataset's landmarks, as `methods.smirk.data.prepare_sample` does; their landmark loss is
  skipped by its flag), the base sets require them as SMIRK does.

Every sample gets the same keys, so a mixed batch collates: `emotion_class` (int64, -1 where
none), `valence`, `arousal` (float32, 0 where none), `flag_emotion_class`, `flag_va`,
`gt_expression` (n_exp), `gt_jaw` (3), `gt_eyelids` (2) (zeros where none) and `flag_gt3d`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbench.shards.reader import ShardReadError
from fbench.shards.schema import ShardSample
from fbench.shards.stream import ShardSet, shard_set
from methods.smirk.augment import SmirkAugment
from methods.smirk.data import SmirkDataConfig, prepare_sample, smirk_mix

BP4D, AFFECTNET = "bp4d", "affectnet"


@dataclass
class FieldsDataConfig:
    """The FIELDS mix (section `train.data`)."""

    base_fraction: float = 0.5  # FIELDS choice (ours): half of each batch keeps the base method's 2D data
    bp4d_fraction: float = 0.25  # FIELDS choice (ours)
    affectnet_fraction: float = 0.25  # FIELDS choice (ours)
    labelled_require_mediapipe: bool = False  # FIELDS choice (ours): labelled rows are too valuable to drop
    converged_fits_only: bool = True  # FIELDS choice (ours): a fit that did not converge is no ground truth

    def __post_init__(self) -> None:
        fr = (self.base_fraction, self.bp4d_fraction, self.affectnet_fraction)
        if min(fr) < 0 or sum(fr) <= 0:
            raise ValueError(f"train.data fractions must be >= 0 with a positive sum, got {fr}")


# ------------------------------------------------------------------------------------------- targets


def bp4d_targets(sample: ShardSample, converged_only: bool = True) -> dict[str, np.ndarray] | None:
    """The FLAME-fit targets of a `fbench prep bp4d --fits` sample (pipelines/bp4d_frames.py):
    {"expression": (E,), "jaw": (3,), "eyelids": (2,)} from `labels.flame` (the fits.h5 row that
    `labels.fit_key` names), or None when the sample has none or, with `converged_only`, when
    `labels.fit.converged` is false."""
    labels = sample.meta.get("labels") or {}
    flame = labels.get("flame")
    if not flame or flame.get("expression") is None or flame.get("jaw") is None:
        return None
    if converged_only and (labels.get("fit") or {}).get("converged") is False:
        return None
    out = {"expression": np.asarray(flame["expression"], np.float32).reshape(-1),
           "jaw": np.asarray(flame["jaw"], np.float32).reshape(-1)}
    if flame.get("eyelids") is not None:
        out["eyelids"] = np.asarray(flame["eyelids"], np.float32).reshape(-1)
    if out["jaw"].shape != (3,) or ("eyelids" in out and out["eyelids"].shape != (2,)):
        raise ValueError(f"{sample.key}: labels.flame jaw must have 3 values and eyelids 2")
    return out


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    k = min(n, values.shape[0])
    out[:k] = values[:k]  # a fit with fewer components: the missing ones are zero in FLAME
    return out


class FieldsTransform:
    """`methods.smirk.data.prepare_sample` plus FIELDS' targets (module docstring), as the
    per-sample transform of `fbench.shards.stream` (one per reader: it owns the augmentation)."""

    def __init__(self, n_exp: int, config: SmirkDataConfig = SmirkDataConfig(),
                 data: FieldsDataConfig = FieldsDataConfig(), train: bool = True) -> None:
        self.n_exp, self.config, self.data, self.train = n_exp, config, data, train
        self.labelled_config = replace(config, require_mediapipe=data.labelled_require_mediapipe)
        self.augment = SmirkAugment() if train and config.augment else None

    def __call__(self, sample: ShardSample, rng: np.random.Generator) -> dict[str, Any] | None:
        dataset = sample.meta.get("dataset", "")
        labels = sample.meta.get("labels") or {}
        labelled = dataset in (BP4D, AFFECTNET)
        if dataset == AFFECTNET and not labels.get("expression_valid", False) and not labels.get("va_valid", False):
            return None
        out = prepare_sample(sample, rng, self.labelled_config if labelled else self.config, self.train, self.augment)
        if out is None:
            return None
        has_class = dataset == AFFECTNET and bool(labels.get("expression_valid", False))
        has_va = dataset == AFFECTNET and bool(labels.get("va_valid", False))
        out["emotion_class"] = torch.tensor(int(labels["expression"]) if has_class else -1, dtype=torch.int64)
        out["flag_emotion_class"] = has_class
        out["valence"] = torch.tensor(float(labels["valence"]) if has_va else 0.0, dtype=torch.float32)
        out["arousal"] = torch.tensor(float(labels["arousal"]) if has_va else 0.0, dtype=torch.float32)
        out["flag_va"] = has_va
        targets = bp4d_targets(sample, self.data.converged_fits_only) if dataset == BP4D else None
        out["flag_gt3d"] = targets is not None
        out["gt_expression"] = torch.from_numpy(_pad(targets["expression"], self.n_exp) if targets
                                                else np.zeros(self.n_exp, np.float32))
        out["gt_jaw"] = torch.from_numpy(targets["jaw"] if targets else np.zeros(3, np.float32))
        # eyelids: a fit without them leaves them unsupervised (NaN rows are invalid in parameter_loss)
        eyelids = targets.get("eyelids") if targets else None
        out["gt_eyelids"] = torch.from_numpy(eyelids if eyelids is not None
                                             else np.full(2, np.nan if targets else 0.0, np.float32))
        return out


# ----------------------------------------------------------------------------------------- the mix


def fields_mix(shards: Path | str | None, bp4d: Path | str | None, affectnet: Path | str | None,
               data: FieldsDataConfig = FieldsDataConfig(), skip_missing: bool = False,
               base_mix=smirk_mix) -> tuple[list[ShardSet], list[str]]:
    """The FIELDS sets: the base mix from `shards` (`base_mix(root, skip_missing=...)`, its weights
    scaled to `base_fraction`), BP4D and AffectNet (training splits; AffectNet rows with a valid
    class). `bp4d` / `affectnet` default to `<shards>/bp4d` and `<shards>/affectnet`. A part whose
    fraction is 0 is left out; a missing part is an error naming it, or with `skip_missing` left
    out (the remaining fractions renormalised by the batch composition). Returns the sets and
    notes saying what was left out."""
    root = Path(shards) if shards else None
    sets: list[ShardSet] = []
    notes: list[str] = []
    missing: list[str] = []
    if data.base_fraction > 0:
        if root is None:
            missing.append("base mix (no --shards)")
        else:
            try:
                base = base_mix(root, skip_missing=skip_missing)
            except FileNotFoundError as exc:
                missing.append(f"base mix ({exc})")
            else:
                total = sum(s.weight for s in base)
                sets += [replace(s, weight=data.base_fraction * s.weight / total) for s in base]
    for name, location, fraction, labels in ((BP4D, bp4d, data.bp4d_fraction, None),
                                             (AFFECTNET, affectnet, data.affectnet_fraction,
                                              {"expression_valid": (True,)})):
        if fraction <= 0:
            notes.append(f"{name} left out (fraction 0)")
            continue
        where = Path(location) if location else (root / name if root is not None else None)
        if where is None:
            missing.append(f"{name} (no --{name}-shards and no --shards)")
            continue
        try:
            sets.append(shard_set(name, where, fraction, ("train",), labels))
        except (ShardReadError, OSError, ValueError) as exc:
            missing.append(f"{name} ({exc})")
    if missing and not skip_missing:
        raise FileNotFoundError("FIELDS mix needs: " + "; ".join(missing))
    notes += [f"left out: {m}" for m in missing]
    if not sets:
        raise FileNotFoundError("FIELDS mix: no dataset found (" + "; ".join(missing) + ")")
    return sets, notes

