"""The SMIRK method plugin: a MethodPlugin whose build/from_checkpoint give Reconstructors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from fbench.assets import get_asset
from fbench.plugins import MethodPlugin, Reconstructor
from methods.smirk.checkpoint import save_checkpoint
from methods.smirk.plugin import METHOD, SmirkConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_plugin_record_and_entry_point():
    assert isinstance(METHOD, MethodPlugin) and METHOD.name == "smirk" and METHOD.config is SmirkConfig
    assert get_asset(METHOD.checkpoint_asset).files == ("SMIRK_em1.pt",)
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["fbench.methods"]["smirk"] == "methods.smirk.plugin:METHOD"


def test_build_and_from_checkpoint_meet_the_protocol(tmp_path):
    config = SmirkConfig(n_exp=10, generator_init_features=4, generator_res_blocks=1)
    model = METHOD.build(config)
    assert isinstance(model, Reconstructor) and isinstance(model, torch.nn.Module)
    assert model.n_exp == 10 and model.generator is not None and len(model.generator.resnet_blocks) == 1
    assert METHOD.build(SmirkConfig(generator=False)).generator is None
    loaded = METHOD.from_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert isinstance(loaded, Reconstructor)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = model.reconstruct(images), loaded.reconstruct(images)
    assert all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


@pytest.mark.parametrize("bad", [{"n_exp": 0}, {"generator_init_features": 0}, {"generator_res_blocks": -1}])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SmirkConfig(**bad)
