"""Shared fixtures. Every test runs with its own FBENCH_HOME so nothing touches ~/.cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ["FBENCH_HOME"] = tempfile.mkdtemp(prefix="fbench-home-")
    os.environ.pop("FBENCH_FLAME_DIR", None)


@pytest.fixture(scope="session")
def flame_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic FLAME-format model (seed 0), written once per session."""
    from fbench.flame.synthetic import write_synthetic_flame

    return write_synthetic_flame(tmp_path_factory.mktemp("flame") / "synthetic", seed=0)


@pytest.fixture(scope="session")
def flame_assets(flame_dir: Path):
    from fbench.flame import load_flame_assets

    return load_flame_assets(flame_dir)
