"""FlameParams: the common currency between methods, fitting and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

# Width of each field; shape and expression widths vary per model and method.
FIXED_WIDTHS = {"jaw": 3, "eyelids": 2, "global_pose": 3, "neck": 3, "eyes": 6, "cam": 3, "translation": 3}


@dataclass
class FlameParams:
    """FLAME parameters, batch first.

    `cam` is SMIRK's orthographic camera (scale, tx, ty); `translation` is the
    metric head translation used by fitting (zeros for image-based methods).
    """

    shape: Tensor  # (B, n_shape <= 300)
    expression: Tensor  # (B, n_exp <= 100)
    jaw: Tensor  # (B, 3) axis-angle
    eyelids: Tensor  # (B, 2) left, right
    global_pose: Tensor  # (B, 3) axis-angle
    neck: Tensor  # (B, 3) axis-angle
    eyes: Tensor  # (B, 6) left eye, right eye axis-angle
    cam: Tensor  # (B, 3) scale, tx, ty
    translation: Tensor  # (B, 3) metres

    @property
    def batch_size(self) -> int:
        return self.shape.shape[0]

    @classmethod
    def zeros(cls, batch_size: int, n_shape: int = 300, n_exp: int = 50,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "FlameParams":
        z = lambda n: torch.zeros(batch_size, n, dtype=dtype, device=device)  # noqa: E731
        return cls(shape=z(n_shape), expression=z(n_exp), **{k: z(n) for k, n in FIXED_WIDTHS.items()})

    @classmethod
    def from_dict(cls, values: Mapping[str, np.ndarray | Tensor], n_shape: int = 300, n_exp: int = 50,
                  dtype: torch.dtype = torch.float32) -> "FlameParams":
        """Build from arrays keyed by field name; a missing key is zero.

        A 1-D array is one parameter set (batch of one). Unknown keys raise, so a
        typo in a parameter file is not silently ignored.
        """
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise KeyError(f"unknown FLAME parameter(s) {sorted(unknown)}; expected some of {sorted(names)}")
        tensors = {}
        for name, value in values.items():
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value, dtype=dtype)
            if t.ndim == 1:
                t = t[None]
            if t.ndim != 2:
                raise ValueError(f"FLAME parameter {name!r} must be (B, n) or (n,), got shape {tuple(t.shape)}")
            width = FIXED_WIDTHS.get(name)
            if width is not None and t.shape[1] != width:
                raise ValueError(f"FLAME parameter {name!r} must have {width} columns, got {t.shape[1]}")
            tensors[name] = t
        batch = {t.shape[0] for t in tensors.values()}
        if len(batch) > 1:
            raise ValueError(f"FLAME parameters disagree on batch size: {sorted(batch)}")
        out = cls.zeros(batch.pop() if batch else 1, n_shape, n_exp, dtype=dtype)
        for name, t in tensors.items():
            setattr(out, name, t)
        return out

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, *args, **kwargs) -> "FlameParams":
        return FlameParams(**{k: v.to(*args, **kwargs) for k, v in self.as_dict().items()})

    def detach(self) -> "FlameParams":
        return FlameParams(**{k: v.detach() for k, v in self.as_dict().items()})

    def __getitem__(self, index) -> "FlameParams":
        """Select batch items (int, slice or index tensor); keeps the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return FlameParams(**{k: v[index] for k, v in self.as_dict().items()})

    @staticmethod
    def cat(items: list["FlameParams"]) -> "FlameParams":
        return FlameParams(**{f.name: torch.cat([getattr(p, f.name) for p in items]) for f in fields(FlameParams)})


def load_params_npz(path: str | Path, n_shape: int = 300, n_exp: int = 50,
                    dtype: torch.dtype = torch.float32) -> FlameParams:
    """Read FlameParams from an .npz keyed by field name (missing keys are zero); errors name the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            values = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such parameter file") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz parameter file ({exc})") from exc
    bad = sorted(k for k, v in values.items() if v.dtype.kind in "fc" and not np.isfinite(v).all())
    if bad:
        raise ValueError(f"{path}: {', '.join(bad)} contain(s) NaN or infinite values")
    widths = {k: np.atleast_2d(v).shape[1] for k, v in values.items() if k in ("shape", "expression")}
    try:
        return FlameParams.from_dict(values, n_shape=widths.get("shape", n_shape),
                                     n_exp=widths.get("expression", n_exp), dtype=dtype)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
