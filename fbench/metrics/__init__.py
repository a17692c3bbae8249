"""Emotion metrics and distance statistics, plain numpy (float64), one definition each.

Valence/arousal (EMOCA's names, inferno/utils/emotion_metrics.py):
- `pcc`: Pearson correlation. Scale-invariant, so sample and population statistics agree.
- `ccc`: Lin's concordance correlation with *population* statistics (divide by n):
  2 cov(x, y) / (var x + var y + (mean x - mean y)^2). EMOCA's `CCC_torch` (emotion_metrics.py:146-165)
  mixes Bessel-corrected standard deviations with the uncorrected mean difference; fbench uses
  Lin's definition throughout (the difference is O(1/n): below 2e-4 on AffectNet's 4,000
  validation rows).
- `rmse`: root mean squared error.
- `sagr`: sign agreement, mean(sign(x) == sign(y)) (EMOCA's `SAGR_torch`, emotion_metrics.py:93-98;
  numpy's sign, so 0 only agrees with 0).

Classification: `accuracy`, `confusion_matrix` (rows = true class, columns = predicted),
`per_class_accuracy` (recall of each class, NaN for a class absent from the labels) and
`macro_accuracy` (their mean over present classes: SMIRK supplementary Table 6's "mean").

Distances: `distance_stats(d)` -> mean, median, max (and n) of a set of point distances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["accuracy", "ccc", "confusion_matrix", "distance_stats", "macro_accuracy", "pcc", "per_class_accuracy",
           "rmse", "sagr", "va_metrics"]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label and prediction sizes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("no values")
    return a, b


def pcc(label, pred) -> float:
    """Pearson correlation; NaN when either side is constant (correlation undefined)."""
    a, b = _pair(label, pred)
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


def ccc(label, pred) -> float:
    """Lin's concordance correlation coefficient with population statistics."""
    a, b = _pair(label, pred)
    ma, mb = a.mean(), b.mean()
    cov = ((a - ma) * (b - mb)).mean()
    denom = a.var() + b.var() + (ma - mb) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def rmse(label, pred) -> float:
    a, b = _pair(label, pred)
    return float(np.sqrt(((a - b) ** 2).mean()))


def sagr(label, pred) -> float:
    a, b = _pair(label, pred)
    return float((np.sign(a) == np.sign(b)).mean())


def va_metrics(prefix: str, label, pred) -> dict[str, float]:
    """`{prefix}_pcc, _ccc, _rmse, _sagr` for one of valence ("v") or arousal ("a")."""
    return {f"{prefix}_pcc": pcc(label, pred), f"{prefix}_ccc": ccc(label, pred),
            f"{prefix}_rmse": rmse(label, pred), f"{prefix}_sagr": sagr(label, pred)}


def _labels(label, pred) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(label).ravel()
    b = np.asarray(pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label and prediction sizes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("no labels")
    return a.astype(np.int64), b.astype(np.int64)


def accuracy(label, pred) -> float:
    a, b = _labels(label, pred)
    return float((a == b).mean())


def confusion_matrix(label, pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; [i, j] = items of true class i predicted as j."""
    a, b = _labels(label, pred)
    if ((a < 0) | (a >= n_classes) | (b < 0) | (b >= n_classes)).any():
        raise ValueError(f"class index outside 0..{n_classes - 1}")
    return np.bincount(a * n_classes + b, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(label, pred, n_classes: int) -> np.ndarray:
    """(n_classes,) accuracy within each true class (recall); NaN for a class with no items."""
    cm = confusion_matrix(label, pred, n_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def macro_accuracy(label, pred, n_classes: int) -> float:
    """Mean of the per-class accuracies over the classes present in the labels."""
    return float(np.nanmean(per_class_accuracy(label, pred, n_classes)))


def distance_stats(distances: Sequence[float] | np.ndarray | Iterable[np.ndarray]) -> dict[str, float]:
    """mean, median, max and n of point distances (one array, or an iterable of arrays pooled)."""
    if isinstance(distances, np.ndarray):
        d = distances.astype(np.float64, copy=False).ravel()
    else:
        parts = [np.asarray(x, dtype=np.float64).ravel() for x in distances]
        d = np.concatenate(parts) if parts else np.zeros(0)
    if d.size == 0:
        raise ValueError("no distances")
    if not np.isfinite(d).all():
        raise ValueError("distances contain NaN or infinite values")
    return {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max()), "n": int(d.size)}
