"""Miniature datasets in each dataset's real on-disk layout, with known ground truth.

One module per dataset (`fbench.synth.<name>`), each with `DEFAULT_N` and
`write(out, n, seed, corrupt, flame) -> SynthResult`; a writer that can produce several on-disk
variants of its dataset (copies in other layouts) lists them in `VARIANTS` (the first is the
default) and takes `variant=`. The layout each writer follows is
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


def variants(name: str) -> tuple[str, ...]:
    """The layout variants writer `name` can produce (its VARIANTS; the first is the default)."""
    return tuple(getattr(writer(name), "VARIANTS", ("default",)))


def write_synthetic_dataset(name: str, out: str | Path, n: int | None = None, seed: int = 0, corrupt: int = 0,
                            flame=None, variant: str | None = None) -> SynthResult:
    """Write a miniature copy of dataset `name` under `out` (deterministic for a seed), in layout
    `variant` (one of `variants(name)`; None: the writer's default)."""
    module = writer(name)
    if variant is not None and variant not in variants(name):
        raise ValueError(f"synthetic {name} has no variant {variant!r}; choose from {', '.join(variants(name))}")
    extra = {"variant": variant} if variant is not None and hasattr(module, "VARIANTS") else {}
    if flame is None:
        from fbench.flame import load_flame

        flame = load_flame()
    return module.write(Path(out), n=module.DEFAULT_N if n is None else n, seed=seed, corrupt=corrupt, flame=flame,
                        **extra)
