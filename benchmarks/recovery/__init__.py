"""Parameter-recovery benchmark: a method's expression and jaw on images with known FLAME parameters.

`fbench eval recovery --method M --checkpoint X --root DIR` scores any method on a dataset
whose root holds `fbench_ground_truth.h5` (every `fbench synth` image dataset: ffhq, celeba,
affectnet, ...): each still-image row (frame -1, an image file) is read, cut with the
method's `CropSpec` and reconstructed; the errors are `fbench.metrics.recovery`'s

- `offset_*_mm`: expression-driven vertex-offset error, mm: the offsets that expression, jaw
  and eyelids (when the FLAME model has eyelid blendshapes) make from the neutral head, true
  against predicted, both on the TRUE identity with zero head pose, averaged over the FLAME
  region `region` (default "face");
- `jaw_*_deg`: the angle between the true and predicted jaw rotations, degrees;
- `neutral_offset_*_mm`: the offset error of a neutral prediction (the offsets' own size);

each as mean and median over images. A root without ground truth is refused: the benchmark
has nothing to compare with.

Landmarks for the crop (`landmarks`): "detector" (default) runs the detector the crop spec
names (MediaPipe's 478 points, or FAN's 68), as `fbench reconstruct` and SMIRK's own data
preparation do; "ground_truth" takes the exact projected landmarks of the ground truth (the
68, or FLAME's 105 MediaPipe-embedded points, whose box differs from the 478's). Images where
the detector finds no face are skipped and counted (`skipped.csv`); more than
`max_skip_fraction` skipped stops the run.

Outputs in OUT: metrics.json, per_item.csv (key, path, offset_mm, jaw_deg, neutral_mm),
predictions.npz (the predicted FlameParams fields and the keys), table.md, reference.json
(the report's columns; no published rows: these are synthetic numbers), skipped.csv,
config.yaml.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks._common import check_failures, save_npz, write_config, write_csv, write_json
from fbench.flame import load_flame
from fbench.io import atomic_write_text
from fbench.landmarks.crop import crop_for_method
from fbench.metrics.recovery import RecoveryErrors, recovery_errors, reconstruct_all
from fbench.plugins import BenchmarkPlugin, ItemRef, Reconstructor
from fbench.report import Table, to_markdown
from fbench.safe_read import read_image_file
from fbench.shards.media import IMAGE_SUFFIXES
from fbench.synth.ground_truth import GROUND_TRUTH_FILE, GroundTruth, read_ground_truth

log = logging.getLogger(__name__)

COLUMNS = ["offset_mean_mm", "offset_median_mm", "jaw_mean_deg", "jaw_median_deg", "neutral_offset_mean_mm",
           "n_items", "n_skipped"]
PER_ITEM_COLUMNS = ("key", "path", "offset_mm", "jaw_deg", "neutral_mm")


@dataclass
class RecoveryConfig:
    method_name: str = "method"  # the name results are filed under (the CLI passes --method)
    checkpoint: str = ""  # recorded
    flame: str = ""  # FLAME model directory: the one the ground truth was made with ("" = fbench's default)
    landmarks: str = "detector"  # detector | ground_truth (see the module doc)
    region: str = "face"  # FLAME mask the offsets are averaged over, or "all"
    batch_size: int = 16
    limit: int = 0  # at most this many images (the first in ground-truth order); 0 = all
    max_skip_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.landmarks not in ("detector", "ground_truth"):
            raise ValueError(f"recovery: landmarks must be detector or ground_truth, got {self.landmarks!r}")
        if self.batch_size < 1 or self.limit < 0:
            raise ValueError("recovery: batch_size >= 1 and limit >= 0")


def image_rows(root: Path, gt: GroundTruth) -> list[int]:
    """Ground-truth rows that are still images present under `root`."""
    return [i for i, (path, frame) in enumerate(zip(gt.paths, gt.frames))
            if int(frame) < 0 and Path(path).suffix.lower() in IMAGE_SUFFIXES and (root / path).is_file()]


def load_ground_truth(root: Path) -> GroundTruth:
    if not (root / GROUND_TRUTH_FILE).is_file():
        raise FileNotFoundError(
            f"{root}: no {GROUND_TRUTH_FILE}; the recovery benchmark needs images with known FLAME parameters "
            "(a synthetic dataset, e.g. `fbench synth ffhq --out DIR`), and this root has none")
    gt = read_ground_truth(root)
    if "expression" not in gt.flame or "jaw" not in gt.flame:
        raise ValueError(f"{root / GROUND_TRUTH_FILE}: no flame/expression and flame/jaw columns to compare with")
    return gt


class _Landmarks:
    """The crop's landmarks for one image: the detector the crop spec names, or the ground truth's."""

    def __init__(self, gt: GroundTruth, mode: str, kind: str) -> None:
        self.gt, self.mode, self.kind = gt, mode, kind
        self.column = "landmarks68" if kind == "fan" else "landmarks_mp"
        if mode == "ground_truth" and self.column not in gt.extras:
            raise ValueError(f"landmarks=ground_truth but the ground truth has no {self.column} column")
        self._detector: Any = None

    def describe(self) -> str:
        if self.mode == "ground_truth":
            return f"ground truth ({self.column})"
        return "FAN 68 (detector)" if self.kind == "fan" else "MediaPipe 478 (detector)"

    def __call__(self, row: int, image: np.ndarray) -> np.ndarray:
        if self.mode == "ground_truth":
            return np.asarray(self.gt.extras[self.column][row], dtype=np.float64)[:, :2]
        if self._detector is None:
            if self.kind == "fan":
                from fbench.landmarks.fan import FanDetector

                self._detector = FanDetector()
            else:
                from fbench.landmarks.mediapipe_detector import MediaPipeDetector

                self._detector = MediaPipeDetector()
        return np.asarray(self._detector.detect(image), dtype=np.float64)[:, :2]

    def close(self) -> None:
        close = getattr(self._detector, "close", None)
        if callable(close):
            close()


def _crops(method: Reconstructor, root: Path, gt: GroundTruth, rows: list[int], landmarks: _Landmarks,
           skipped: Counter, skip_rows: list[dict[str, str]]) -> tuple[list[int], torch.Tensor]:
    ok, crops = [], []
    for row in tqdm(rows, desc="recovery crops", unit="image", disable=None):
        path = gt.paths[row]
        try:
            image = read_image_file(root / path)
            points = landmarks(row, image)
            if not np.isfinite(points).any():
                raise LookupError("no face found")
            crop, _ = crop_for_method(image, points, method.crop)
        except LookupError as exc:
            reason = "no_face"
            detail = str(exc)
        except (OSError, ValueError) as exc:
            reason, detail = "bad_image", str(exc)
        else:
            ok.append(row)
            crops.append(crop)
            continue
        skipped[reason] += 1
        skip_rows.append({"key": gt.keys[row], "path": path, "reason": reason, "detail": detail})
        log.warning("recovery: skipping %s (%s: %s)", path, reason, detail)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous() if crops else torch.zeros(0)
    return ok, images


def evaluate(method: Reconstructor, data_root: Path, out_dir: Path, config: RecoveryConfig) -> dict[str, Any]:
    root, out_dir = Path(data_root), Path(out_dir)
    started = time.time()
    gt = load_ground_truth(root)
    rows = image_rows(root, gt)
    if not rows:
        raise ValueError(f"{root}: the ground truth lists no still images present under the root (video frames and "
                         "scans are not scored by this benchmark)")
    if config.limit:
        rows = rows[:config.limit]
    dataset = str(gt.attrs.get("dataset", root.name))
    n_exp = max(int(gt.flame["expression"].shape[1]), int(method.n_exp))
    flame = load_flame(config.flame or None, n_exp=n_exp, dtype=torch.float64)
    made_with = str(gt.attrs.get("flame_model", ""))
    if made_with and Path(made_with) != Path(flame.source):
        log.warning("recovery: the ground truth was made with %s, scoring with %s (pass --flame to match)",
                    made_with, flame.source)
    landmarks = _Landmarks(gt, config.landmarks, "fan" if method.crop.landmarks == "fan" else "mediapipe")
    skipped: Counter = Counter()
    skip_rows: list[dict[str, str]] = []
    try:
        ok, images = _crops(method, root, gt, rows, landmarks, skipped, skip_rows)
    finally:
        landmarks.close()
    check_failures(len(ok), skipped, config.max_skip_fraction, "recovery")
    items = [ItemRef(dataset, gt.paths[r], -1) for r in ok]
    pred = reconstruct_all(method, images, items, config.batch_size)
    true = gt.params(np.array(ok))
    errors = recovery_errors(flame, true, pred, region=config.region)

    metrics = {"benchmark": "recovery", "method": config.method_name, "synthetic": bool(gt.attrs.get("synthetic")),
               "dataset": dataset, **errors.summary(), "n_skipped": int(sum(skipped.values())),
               "skipped": dict(skipped), "landmarks": landmarks.describe(), "flame": str(flame.source),
               "seconds": round(time.time() - started, 1)}
    _write(out_dir, metrics, errors, gt, ok, pred, skip_rows)
    write_config(out_dir / "config.yaml", config, data_root=str(root), crop=asdict(method.crop),
                 flame=str(flame.source), ground_truth_flame=made_with)
    return metrics


def _write(out_dir: Path, metrics: dict[str, Any], errors: RecoveryErrors, gt: GroundTruth, ok: list[int],
           pred: Any, skip_rows: list[dict[str, str]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "reference.json", {"title": "No published rows: synthetic parameter recovery",
                                            "columns": COLUMNS, "rows": []})
    write_csv(out_dir / "per_item.csv", PER_ITEM_COLUMNS, [
        {"key": gt.keys[r], "path": gt.paths[r], "offset_mm": float(o), "jaw_deg": float(j), "neutral_mm": float(n)}
        for r, o, j, n in zip(ok, errors.offset_mm, errors.jaw_deg, errors.neutral_mm)])
    write_csv(out_dir / "skipped.csv", ("key", "path", "reason", "detail"), skip_rows)
    save_npz(out_dir / "predictions.npz", keys=np.array([gt.keys[r] for r in ok]),
             **{k: v.numpy() for k, v in pred.as_dict().items()})
    table = Table(f"Parameter recovery on {metrics['dataset']}" + (" (synthetic data)" if metrics["synthetic"] else ""),
                  COLUMNS, rows=[{"method": metrics["method"], **metrics}],
                  note=(f"Expression-driven vertex offsets over FLAME region '{errors.region}' "
                        f"({errors.n_vertices} vertices{', eyelids included' if errors.eyelids else ''}), "
                        "on the true identity; jaw: rotation angle error."))
    atomic_write_text(out_dir / "table.md", to_markdown(table, digits=3) + "\n")


BENCHMARK = BenchmarkPlugin(
    name="recovery",
    summary="expression-offset (mm) and jaw (degrees) errors against known FLAME parameters of a synthetic "
            "dataset's images",
    config=RecoveryConfig, evaluate=evaluate, dataset=None)
