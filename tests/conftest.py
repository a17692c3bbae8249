"""Shared fixtures. Every test runs with its own FBENCH_HOME so nothing touches ~/.cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis: derandomised by default, so CI and every rerun draw the same examples and a failure
# reproduces as-is (print_blob gives the @reproduce_failure line). No example database: nothing
# carried between runs. `HYPOTHESIS_PROFILE=explore pytest ...` draws fresh random examples locally.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


def shared_synthetic(tmp_path_factory: pytest.TempPathFactory, name: str, flame, n: int, seed: int, corrupt: int):
    """A synthetic dataset written once per session and shared by every test module that asks
    for the same (name, n, seed, corrupt); readers must not modify it. The writer's result is
    kept beside it in synth_result.json."""
    import json

    from fbench.synth import SynthResult, writer

    root = tmp_path_factory.getbasetemp() / f"shared-synth-{name}-n{n}-seed{seed}-corrupt{corrupt}"
    done = root / "synth_result.json"
    if not done.is_file():
        result = writer(name).write(root, n=n, seed=seed, corrupt=corrupt, flame=flame)
        done.write_text(json.dumps({"counts": result.counts, "corrupted": result.corrupted}))
    meta = json.loads(done.read_text())
    return SynthResult(root=root, counts=meta["counts"], corrupted=meta["corrupted"])


@pytest.fixture
def one_torch_thread():
    """Torch on one intra-op thread for the test (restored after): small networks gain nothing from
    more, and OpenMP busy-waiting on a shared 2-core machine made them several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def astronaut():
    """skimage's astronaut photograph (512 x 512 RGB): a real face that ships with a package."""
    from skimage.data import astronaut

    return astronaut()
