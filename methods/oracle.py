"""Reference methods that bracket every real method: `oracle` (ground truth) and `mean` (a constant).

- `oracle` returns, for each image, the ground-truth FLAME parameters that `fbench synth`
  wrote to `fbench_ground_truth.h5`, found through the `items` (ItemRef: path relative to the
  dataset root, video frame) that benchmarks pass beside the images. It never looks at pixels,
  so it scores the benchmark's ceiling: on synthetic MultiFace the residual is the float32
  storage of the tracked meshes plus the alignment's convergence tolerance; on synthetic
  AffectNet it is the label model's own noise (flipped classes, valence/arousal noise).
- `mean` returns one parameter set for every image: the mean over the ground-truth rows
  (every field: shape, expression, jaw, eyelids, pose) when the dataset has a ground-truth
  file, else FLAME's mean face (all zeros: FLAME's bases are PCA components around the mean).
  It knows nothing about the image, so it scores the floor.

Both are `MethodPlugin`s with a config dataclass holding the dataset root (`data_root`, which
`fbench eval` fills with the benchmark's root); `from_checkpoint` takes the ground-truth file
(or the dataset root) in place of a checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fbench.flame import FlameParams
from fbench.plugins import CropSpec, ItemRef, MethodPlugin
from fbench.synth.ground_truth import GROUND_TRUTH_FILE, read_ground_truth

log = logging.getLogger(__name__)


@dataclass
class ReferenceConfig:
    """`data_root`: the dataset root holding fbench_ground_truth.h5 (or the file itself)."""

    data_root: str = ""
    crop_size: int = 224
    crop_scale: float = 1.4


class OracleReconstructor:
    """Ground-truth FLAME parameters looked up by (path, frame) of each item."""

    def __init__(self, root: str | Path, crop: CropSpec | None = None) -> None:
        if not str(root):
            raise ValueError("the oracle needs the dataset root (config `data_root`) to find fbench_ground_truth.h5")
        self.gt = read_ground_truth(root)
        self.crop = crop or CropSpec()
        self.n_exp = int(self.gt.flame["expression"].shape[1])
        self._row = {(p, int(f)): i for i, (p, f) in enumerate(zip(self.gt.paths, self.gt.frames))}
        self._by_path = {p: i for i, p in enumerate(self.gt.paths)}

    def row(self, item: ItemRef) -> int:
        i = self._row.get((item.source, int(item.frame)))
        if i is None:
            i = self._by_path.get(item.source) if item.frame < 0 else None
        if i is None:
            raise KeyError(f"oracle: no ground-truth row for {item.source} frame {item.frame}")
        return i

    def reconstruct(self, images: torch.Tensor, items: Sequence[ItemRef] | None = None) -> FlameParams:
        if items is None or len(items) != images.shape[0]:
            raise ValueError("the oracle needs one ItemRef per image (benchmarks pass them as `items`)")
        return self.gt.params(np.array([self.row(item) for item in items]))


class MeanReconstructor:
    """The same parameters for every image: the dataset's mean (or FLAME's mean face)."""

    def __init__(self, root: str | Path | None = None, crop: CropSpec | None = None, n_exp: int = 50) -> None:
        self.crop = crop or CropSpec()
        gt_file = Path(root) / GROUND_TRUTH_FILE if root and Path(root).is_dir() else Path(root or "")
        if root and gt_file.is_file():
            gt = read_ground_truth(gt_file)
            self.params = FlameParams.from_dict({k: v.mean(0) for k, v in gt.flame.items()},
                                                n_shape=gt.flame["shape"].shape[1], n_exp=gt.flame["expression"].shape[1])
            self.source = f"mean of {len(gt)} ground-truth rows in {gt_file}"
        else:
            self.params = FlameParams.zeros(1, n_exp=n_exp)
            self.source = "FLAME's mean face (no ground-truth file)"
        self.n_exp = int(self.params.expression.shape[1])
        log.info("mean method: %s", self.source)

    def reconstruct(self, images: torch.Tensor, items: Sequence[ItemRef] | None = None) -> FlameParams:
        return FlameParams(**{k: v.expand(images.shape[0], -1).clone() for k, v in self.params.as_dict().items()})


def _crop(config: ReferenceConfig) -> CropSpec:
    return CropSpec(size=config.crop_size, scale=config.crop_scale)


ORACLE = MethodPlugin(
    name="oracle", summary="ground-truth FLAME parameters of synthetic data (the benchmark ceiling)",
    config=ReferenceConfig,
    build=lambda config: OracleReconstructor(config.data_root, _crop(config)),
    from_checkpoint=lambda path: OracleReconstructor(path))

MEAN = MethodPlugin(
    name="mean", summary="the dataset's mean FLAME parameters for every image (the benchmark floor)",
    config=ReferenceConfig,
    build=lambda config: MeanReconstructor(config.data_root or None, _crop(config)),
    from_checkpoint=lambda path: MeanReconstructor(path))
