"""Miniature datasets in each dataset's real on-disk layout, with known ground truth.

One module per dataset (`fbench.synth.<name>`), each with `DEFAULT_N` and
`write(out, n, seed, corrupt, flame) -> SynthResult`. The layout each writer follows is
described in `data_cards/<name>.yaml`; the ground truth goes to
`<out>/fbench_ground_truth.h5` (see `fbench.synth.ground_truth`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

DATASETS = ("ffhq", "celeba", "lrs3", "mead", "affectnet", "famos", "bp4d", "multiface")


@dataclass
class SynthResult:
    root: Path
    counts: dict[str, int]  # what was written, e.g. {"images": 20} or {"videos": 6, "frames": 150}
    corrupted: list[str] = field(default_factory=list)  # paths (relative to root) deliberately corrupted

    def summary(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        bad = f"; {len(self.corrupted)} corrupted on purpose" if self.corrupted else ""
        return f"{self.root}: {counts}{bad}"


def writer(name: str):
    if name not in DATASETS:
        raise KeyError(f"unknown synthetic dataset {name!r}; known: {', '.join(DATASETS)}")
    return importlib.import_module(f"fbench.synth.{name}")


def write_synthetic_dataset(name: str, out: str | Path, n: int | None = None, seed: int = 0, corrupt: int = 0,
                            flame=None) -> SynthResult:
    """Write a miniature copy of dataset `name` under `out` (deterministic for a seed)."""
    module = writer(name)
    if flame is None:
        from fbench.flame import load_flame

        flame = load_flame()
    return module.write(Path(out), n=module.DEFAULT_N if n is None else n, seed=seed, corrupt=corrupt, flame=flame)
