"""FLAME: chumpy-free loading, batched LBS forward, landmarks, masks, and the synthetic model.

Which model a command uses (`--flame DIR` / `resolve_flame_dir`):
1. the directory given explicitly;
2. else `$FBENCH_FLAME_DIR`;
3. else a real FLAME configured under `$FBENCH_HOME/flame` (generic_model.pkl + SMIRK assets);
4. else the synthetic FLAME-format model in `$FBENCH_HOME/synthetic/flame`, generated on first use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fbench.assets import fbench_home, get_asset
from fbench.flame.io import FlameAssets, FlameFileError, find_flame_files, load_flame_assets
from fbench.flame.model import FLAME, FlameOutput
from fbench.flame.params import FlameParams

__all__ = ["FLAME", "FlameAssets", "FlameFileError", "FlameOutput", "FlameParams", "FlameSource",
           "load_flame", "load_flame_assets", "resolve_flame_dir", "synthetic_flame_dir"]

log = logging.getLogger(__name__)
SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class FlameSource:
    path: Path
    origin: str  # "--flame", "$FBENCH_FLAME_DIR", "$FBENCH_HOME" or "synthetic default"
    synthetic: bool

    def describe(self) -> str:
        kind = "synthetic FLAME-format model (not FLAME2020)" if self.synthetic else "FLAME model"
        return f"{kind} at {self.path} [{self.origin}]"


def _is_synthetic(path: Path) -> bool:
    from fbench.flame.synthetic import SYNTHETIC_MARKER

    return (path / SYNTHETIC_MARKER).is_file()


def synthetic_flame_dir(seed: int = SYNTHETIC_SEED) -> Path:
    """The synthetic model under $FBENCH_HOME, generated on first use (safe against concurrent callers)."""
    from fbench.flame.synthetic import SYNTHETIC_MARKER, write_synthetic_flame

    target = fbench_home() / "synthetic" / ("flame" if seed == SYNTHETIC_SEED else f"flame-seed{seed}")
    marker = target / SYNTHETIC_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("seed") == seed:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("generating the synthetic FLAME model in %s", target)
    tmp = Path(tempfile.mkdtemp(prefix=".flame-", dir=target.parent))
    try:
        write_synthetic_flame(tmp, seed=seed)
        try:
            os.replace(tmp, target)  # atomic when target is absent or empty
        except OSError:
            if not marker.is_file():  # an incomplete directory from an interrupted run: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_flame_dir(flame: str | Path | None = None) -> FlameSource:
    """Pick the FLAME directory by the precedence in this module's docstring."""
    if flame:
        path = Path(flame).expanduser()
        find_flame_files(path)  # fail early, naming what is missing
        return FlameSource(path, "--flame", _is_synthetic(path))
    env = os.environ.get("FBENCH_FLAME_DIR")
    if env:
        path = Path(env).expanduser()
        find_flame_files(path)
        return FlameSource(path, "$FBENCH_FLAME_DIR", _is_synthetic(path))
    home = get_asset("flame2020").directory()
    if (home / "generic_model.pkl").is_file() or (home / "generic_model.npz").is_file():
        find_flame_files(home)
        return FlameSource(home, "$FBENCH_HOME", _is_synthetic(home))
    return FlameSource(synthetic_flame_dir(), "synthetic default", True)


def load_flame(flame: str | Path | None = None, n_shape: int = 300, n_exp: int = 100,
               dtype: torch.dtype = torch.float32) -> FLAME:
    """Resolve and load a FLAME model; logs which one was used."""
    source = resolve_flame_dir(flame)
    log.debug("using %s", source.describe())
    model = FLAME(load_flame_assets(source.path), n_shape=n_shape, n_exp=n_exp, dtype=dtype)
    model.flame_source = source
    return model
