"""Contract tests generated from the registries (as timm tests every registered model): every
installed plugin goes through its protocol on the synthetic default, so a new plugin is gated
by the same checks as fbench's own.

- prep pipelines: name a synthetic writer; prepping its miniature gives samples + rejects = inputs;
- fit pipelines: name a synthetic writer; a pipeline with both stages (BP4D) preps its miniature
  with the fits its own fit stage made of it (`PREP_INPUTS`);
- methods: build from a tiny config, reconstruct a random batch into finite FlameParams of the
  right batch and widths, and round-trip a checkpoint to identical outputs;
- benchmarks: paired with the `oracle` method, score near-perfectly on their synthetic dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import shared_synthetic
from fbench.flame.params import FIXED_WIDTHS, FlameParams
from fbench.plugins import Reconstructor
from fbench.registry import registry
from fbench.synth import DATASETS as SYNTH_DATASETS
from pipelines_support import check_counts, load_prepped, prep_cli, shared_bp4d_fits

# The miniature each pipeline's contract preps: (n, seed, corrupt), the same as its own tests
# use, so each is written once per session. Pipelines not listed get (2, 0, 1).
MINIATURES = {"ffhq": (4, 1, 2), "celeba": (10, 0, 2), "affectnet": (12, 0, 2), "lrs3": (4, 3, 3), "mead": (1, 5, 2),
              "bp4d": (1, 0, 5)}
# Writers whose data span FLAME's full expression space (the others are written with 50 components).
FULL_EXPRESSION = {"bp4d"}


def _bp4d_fits(tmp_path_factory, root: Path, flame_dir: Path) -> list[str]:
    """`--fits` of the miniature: `fbench fit-flame bp4d` of it (few iterations), shared per session."""
    return ["--fits", str(shared_bp4d_fits(tmp_path_factory, root, flame_dir))]


# Extra prep arguments of pipelines whose prep reads another stage's output: name -> (factory, root, flame_dir) -> args.
PREP_INPUTS = {"bp4d": _bp4d_fits}

PIPELINES = [(name, registry("pipelines").get(name)) for name in registry("pipelines").names()]
METHODS = registry("methods").names()


@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import FLAME

    return FLAME(flame_dir, n_exp=50)


@pytest.mark.parametrize("name, plugin", PIPELINES, ids=[n for n, _ in PIPELINES])
def test_pipeline_names_its_synthetic_writer(name, plugin):
    assert plugin.synth in SYNTH_DATASETS, f"pipeline {name}: synth={plugin.synth!r} is not an `fbench synth` dataset"


PREP = [name for name, plugin in PIPELINES if "prep" in plugin.stages]


@pytest.mark.parametrize("name", PREP)
def test_prep_pipeline_accounts_for_every_input(name, flame, flame_dir, tmp_path_factory, tmp_path):
    from fbench.flame import FLAME

    plugin = registry("pipelines").get(name)
    n, seed, corrupt = MINIATURES.get(name, (2, 0, 1))
    writer_flame = FLAME(flame_dir) if name in FULL_EXPRESSION else flame
    data = shared_synthetic(tmp_path_factory, plugin.synth, writer_flame, n=n, seed=seed, corrupt=corrupt)
    inputs = PREP_INPUTS[name](tmp_path_factory, data.root, flame_dir) if name in PREP_INPUTS else []
    prep_cli(name, data.root, tmp_path, "--landmarks", "annotations", "--size", "64", *inputs)
    manifest, samples, rejects = load_prepped(tmp_path, name)
    check_counts(manifest, samples, rejects)
    assert manifest["total"]["samples"] > 0 and manifest["total"]["rejects"] >= 1  # the corrupted file is a reject
    assert (tmp_path / name / "config.yaml").is_file()  # the resolved config beside the shards


# ------------------------------------------------------------------------------------- methods


def _tiny_config(plugin):
    """The method's config with its `tiny` defaults when it declares them (fast contract runs)."""
    config = plugin.config()
    tiny = getattr(plugin.config, "tiny", None)
    return tiny() if callable(tiny) else config


def _check_params(params: FlameParams, batch: int, n_exp: int) -> None:
    assert isinstance(params, FlameParams) and params.batch_size == batch
    assert params.expression.shape == (batch, n_exp)
    for name, width in FIXED_WIDTHS.items():
        assert getattr(params, name).shape == (batch, width), name
    for name, value in params.as_dict().items():
        assert torch.isfinite(value).all(), name


@pytest.mark.parametrize("name", METHODS)
def test_method_reconstructs_and_round_trips_its_checkpoint(name, tmp_path, flame_dir, monkeypatch):
    plugin = registry("methods").get(name)
    config = _tiny_config(plugin)
    if "data_root" in {f.name for f in dataclasses.fields(config)}:
        pytest.skip(f"{name} reads ground truth (a reference method): covered by the benchmark contracts")
    torch.manual_seed(0)
    model = plugin.build(config)
    assert isinstance(model, Reconstructor)
    images = torch.rand(2, 3, model.crop.size, model.crop.size)
    with torch.no_grad():
        params = model.reconstruct(images)
    _check_params(params, 2, model.n_exp)
    if plugin.save is None:
        pytest.skip(f"{name} writes no checkpoints")
    path = plugin.save(model, tmp_path / "model.pt")
    again = plugin.from_checkpoint(Path(path))
    with torch.no_grad():
        reloaded = again.reconstruct(images)
    for key, value in params.as_dict().items():
        assert torch.equal(value, getattr(reloaded, key)), key
