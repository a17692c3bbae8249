"""The ground-truth file written beside every synthetic dataset: `fbench_ground_truth.h5`.

Columnar HDF5, one row per image, video frame, scan or mesh:

    /key            (N,) str     unique row id (dataset item key, `_f<frame>` for video frames)
    /path           (N,) str     file relative to the dataset root
    /frame          (N,) int     frame index in a video, -1 otherwise
    /flame/<field>  (N, w)       FlameParams fields (shape, expression, jaw, eyelids, global_pose,
                                 neck, eyes, cam, translation), float64
    /<extra>        (N, ...)     per-writer arrays: camera intrinsics/extrinsics, 2D landmarks,
                                 mesh-to-FLAME similarity transforms, ...
    attrs           dataset, seed, generator, flame_model (path/description), synthetic=True,
                    plus per-writer notes (units, conventions)

Readers use `read_ground_truth`; the file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fbench.flame.params import FlameParams
from fbench.io import atomic_path

GROUND_TRUTH_FILE = "fbench_ground_truth.h5"


@dataclass
class GroundTruth:
    keys: list[str]
    paths: list[str]
    frames: np.ndarray
    flame: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def params(self, rows: int | slice | np.ndarray | None = None) -> FlameParams:
        rows = slice(None) if rows is None else rows
        return FlameParams.from_dict({k: np.atleast_2d(v[rows]) for k, v in self.flame.items()},
                                     n_shape=self.flame["shape"].shape[1], n_exp=self.flame["expression"].shape[1])


@dataclass
class GroundTruthWriter:
    """Collects rows in memory (synthetic datasets are small) and writes them in one go."""

    dataset: str
    seed: int
    attrs: dict[str, Any] = field(default_factory=dict)
    _rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, path: str, params: FlameParams, frame: int = -1, **extras: np.ndarray) -> None:
        if params.batch_size != 1:
            raise ValueError("one FlameParams row per ground-truth row")
        row = {"key": key, "path": path, "frame": frame,
               "flame": {k: v.detach().cpu().double().numpy()[0] for k, v in params.as_dict().items()},
               "extras": {k: np.asarray(v) for k, v in extras.items()}}
        if self._rows and set(row["extras"]) != set(self._rows[0]["extras"]):
            raise ValueError(f"row {key} has extras {sorted(row['extras'])}, earlier rows {sorted(self._rows[0]['extras'])}")
        self._rows.append(row)

    def write(self, root: str | Path) -> Path:
        path = Path(root) / GROUND_TRUTH_FILE
        strings = h5py.string_dtype()
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("key", data=np.array([r["key"] for r in self._rows], dtype=object), dtype=strings)
            f.create_dataset("path", data=np.array([r["path"] for r in self._rows], dtype=object), dtype=strings)
            f.create_dataset("frame", data=np.array([r["frame"] for r in self._rows], dtype=np.int64))
            if self._rows:
                for name in self._rows[0]["flame"]:
                    f.create_dataset(f"flame/{name}", data=np.stack([r["flame"][name] for r in self._rows]))
                for name in self._rows[0]["extras"]:
                    f.create_dataset(name, data=np.stack([r["extras"][name] for r in self._rows]))
            f.attrs.update({"dataset": self.dataset, "seed": self.seed, "generator": "fbench.synth",
                            "synthetic": True, **self.attrs})
        return path


def read_ground_truth(root_or_file: str | Path) -> GroundTruth:
    path = Path(root_or_file)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground-truth file (is this a synthetic dataset?)")
    with h5py.File(path, "r") as f:
        flame = {k: f["flame"][k][()] for k in f["flame"]} if "flame" in f else {}
        extras = {}
        f.visititems(lambda name, obj: extras.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) and not name.startswith("flame/")
                     and name not in ("key", "path", "frame") else None)
        return GroundTruth(keys=[k.decode() if isinstance(k, bytes) else k for k in f["key"][()]],
                           paths=[p.decode() if isinstance(p, bytes) else p for p in f["path"][()]],
                           frames=f["frame"][()], flame=flame, extras=extras, attrs=dict(f.attrs))
