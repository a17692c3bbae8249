"""SMIRK model and checkpoints: the official layout, sizes, initialisation, activations, and
strict loading of official-format files (no released weights here: files written by fbench)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from methods.smirk.checkpoint import CheckpointError, from_checkpoint, save_checkpoint
from methods.smirk.model import SmirkEncoder, SmirkGenerator, SmirkModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = Path(__file__).parent / "fixtures" / "smirk_state_dict.txt"
OFFICIAL_KEYS = ("pose_params", "cam", "shape_params", "expression_params", "eyelid_params", "jaw_params")


@pytest.fixture(scope="module")
def encoder() -> SmirkEncoder:
    torch.manual_seed(0)
    return SmirkEncoder().eval()


@pytest.fixture(scope="module")
def small_model() -> SmirkModel:
    """Encoder with a small generator (any size must load); BN statistics made non-trivial."""
    torch.manual_seed(1)
    model = SmirkModel(SmirkEncoder(n_exp=20), SmirkGenerator(init_features=4, res_blocks=2))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.encoder.shape_encoder.shape_layers[0].weight.normal_(0, 0.01)
    return model.eval()


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model: SmirkModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = dict(model.encoder(images))
        if model.generator is not None:
            out["generated"] = model.generator(torch.cat([images, images.flip(-1)], 1))
    return out


def test_encoder_has_the_published_parameter_count(encoder):
    assert sum(p.numel() for p in encoder.parameters()) == 3_599_921  # supp. Table 1: 3.6M


def test_generator_parameter_count_at_the_released_size():
    # demo.py:63 sizes; the supplementary says ~30M.
    assert sum(p.numel() for p in SmirkGenerator(6, 3, 32, 5).parameters()) == 31_367_171


def _expected_layout(fixture: Path = FIXTURE) -> dict[str, tuple[int, ...]]:
    """name -> shape from a layout fixture (also TEASER's, tests/test_teaser_model.py)."""
    import timm

    expected = {}
    for line in fixture.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] == "backbone":  # the official create_backbone: timm features_only
            _, prefix, name, count = parts
            sd = timm.create_model(name, pretrained=False, features_only=True).state_dict()
            assert len(sd) == int(count), f"{name}: timm gives {len(sd)} keys, the layout has {count}"
            expected.update({f"{prefix}.{k}": tuple(v.shape) for k, v in sd.items()})
        else:
            expected[parts[0]] = () if parts[1] == "-" else tuple(int(x) for x in parts[1].split(","))
    return expected


def test_state_dict_names_and_shapes_are_the_official_ones(encoder):
    expected = _expected_layout()
    got = {k: tuple(v.shape) for k, v in SmirkModel(encoder, SmirkGenerator()).state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_official_initialisation(encoder):
    pose = encoder.pose_encoder.pose_cam_layers[0].requires_grad_(False)
    assert float(pose.bias[3]) == 7 and float(pose.weight[3].abs().max()) == 0  # smirk_encoder.py:30-31
    assert float(pose.weight.abs().max()) < 1e-2  # x 0.001 of the default init
    shape = encoder.shape_encoder.shape_layers[0].requires_grad_(False)
    assert float(shape.weight.abs().max()) == 0 and float(shape.bias.abs().max()) == 0
    with torch.no_grad():
        out = encoder(_images())
    assert list(out) == list(OFFICIAL_KEYS)
    assert torch.all(out["cam"][:, 0] == 7) and torch.all(out["shape_params"] == 0)


def test_output_activations(encoder):
    head = encoder.expression_encoder.expression_layers[0]
    n = encoder.n_exp
    saved = head.bias.detach().clone()
    try:
        with torch.no_grad():  # push every raw output far past the limits, both ways
            head.bias.copy_(torch.tensor([5.0, -5.0] * ((n + 5) // 2) + [5.0] * ((n + 5) % 2)))
            up = encoder(_images(1))
            head.bias.neg_()
            down = encoder(_images(1))
    finally:
        with torch.no_grad():
            head.bias.copy_(saved)
    for out in (up, down):
        assert out["expression_params"].shape == (1, n) and out["expression_params"].abs().max() > 4  # unclamped
        assert out["eyelid_params"].shape == (1, 2) and out["jaw_params"].shape == (1, 3)
    # raw eyelids (+5, -5) / (-5, +5) -> clamped to [0, 1]
    assert torch.equal(up["eyelid_params"].sort().values, torch.tensor([[0.0, 1.0]]))
    assert torch.equal(down["eyelid_params"].sort().values, torch.tensor([[0.0, 1.0]]))
    jaws = torch.cat([up["jaw_params"], down["jaw_params"]])
    assert torch.all(jaws[:, 0] >= 0) and jaws[:, 0].max() > 4  # ReLU: open mouth unbounded above
    assert torch.all(jaws[:, 1:].abs() == 0.2)  # the other two clamped to +-0.2


def test_reconstruct_returns_flame_params(encoder):
    model = SmirkModel(encoder).eval()
    images = _images(3)
    params = model.reconstruct(images)
    assert not model.training and not encoder.training
    with torch.no_grad():
        out = encoder(images)
    assert params.batch_size == 3 and params.expression.shape == (3, 50) and params.shape.shape == (3, 300)
    for field, key in (("global_pose", "pose_params"), ("cam", "cam"), ("expression", "expression_params"),
                       ("jaw", "jaw_params"), ("eyelids", "eyelid_params"), ("shape", "shape_params")):
        assert torch.allclose(getattr(params, field), out[key], atol=1e-6), field
    assert not params.neck.any() and not params.eyes.any() and params.cam.device.type == "cpu"
    assert model.generator is None and model.crop.scale == 1.4 and model.crop.size == 224


def test_save_load_round_trip_is_identical(small_model, tmp_path):
    path = save_checkpoint(small_model, tmp_path / "ckpt" / "smirk.pt")
    loaded = from_checkpoint(path)
    assert loaded.n_exp == 20 and loaded.generator is not None and not loaded.training
    assert len(loaded.generator.resnet_blocks) == 2 and loaded.generator.encoder1.enc1conv1.out_channels == 4
    ref, got = _outputs(small_model, _images()), _outputs(loaded, _images())
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    state = torch.load(path, weights_only=True)
    assert all(k.startswith(("smirk_encoder.", "smirk_generator.")) for k in state)
    assert not list(tmp_path.glob("ckpt/.*")), "no temporary file left behind"


def test_fp16_and_fp32_files_agree_to_fp16_precision(small_model, tmp_path):
    full = from_checkpoint(save_checkpoint(small_model, tmp_path / "fp32.pt"))
    half = from_checkpoint(save_checkpoint(small_model, tmp_path / "fp16.pt", half=True))
    assert torch.load(tmp_path / "fp16.pt", weights_only=True)[
        "smirk_encoder.shape_encoder.shape_layers.0.weight"].dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in half.parameters())  # computed in fp32
    a, b = _outputs(full, _images()), _outputs(half, _images())
    for k in a:
        scale = max(1.0, float(a[k].abs().max()))
        err = float((a[k] - b[k]).abs().max())
        assert err <= 1e-2 * scale, (k, err)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # really rounded


def test_encoder_only_file(small_model, tmp_path):
    path = save_checkpoint(SmirkModel(small_model.encoder), tmp_path / "enc.pt")
    model = from_checkpoint(path)
    assert model.generator is None
    images = _images()
    assert torch.equal(model.reconstruct(images).expression, small_model.reconstruct(images).expression)
    assert from_checkpoint(save_checkpoint(small_model, tmp_path / "both.pt"), generator=False).generator is None


def _state(model: SmirkModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _bad_files(model: SmirkModel, d: Path) -> dict[str, tuple[Path, str]]:
    good = save_checkpoint(model, d / "good.pt")
    files = {}

    def put(name, obj, needle):
        torch.save(obj, d / name)
        files[name] = (d / name, needle)

    s = _state(model)
    del s["smirk_encoder.pose_encoder.pose_cam_layers.0.bias"]
    put("missing.pt", s, "missing key(s): smirk_encoder.pose_encoder.pose_cam_layers.0.bias")
    s = _state(model)
    s["smirk_encoder.extra.weight"] = torch.zeros(1)
    put("unexpected.pt", s, "unexpected key(s): smirk_encoder.extra.weight")
    s = _state(model)
    s["smirk_generator.decoder1.dec1conv2.weight"] = torch.zeros(4, 4, 1, 1)
    put("shape.pt", s, "wrong shape(s): smirk_generator.decoder1.dec1conv2.weight (4, 4, 1, 1) != (4, 4, 3, 3)")
    s = _state(model)
    del s["smirk_encoder.expression_encoder.expression_layers.0.weight"]
    put("nohead.pt", s, "expression_layers.0.weight missing")
    put("other.pt", {"model.fc.weight": torch.zeros(2, 2)}, "not a SMIRK checkpoint, no 'smirk_encoder.*' key")
    put("list.pt", [torch.zeros(1)], "expected a dict of tensors, found list")
    put("nested.pt", {"smirk_encoder.a": {"b": torch.zeros(1)}}, "entries that are not named tensors: smirk_encoder.a")
    data = good.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    files["truncated.pt"] = (d / "truncated.pt", "truncated or corrupt")
    (d / "evil.pt").write_bytes(pickle.dumps({"smirk_encoder.x": Evil()}))
    files["evil.pt"] = (d / "evil.pt", "refused: not a plain tensor file")
    with open(d / "evil_zip.pt", "wb") as fh:
        torch.save({"smirk_encoder.x": Evil()}, fh)
    files["evil_zip.pt"] = (d / "evil_zip.pt", "refused: not a plain tensor file")
    files["absent.pt"] = (d / "absent.pt", "no such checkpoint file")
    return files


@pytest.fixture(scope="module")
def bad_files(small_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return _bad_files(small_model, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["missing.pt", "unexpected.pt", "shape.pt", "nohead.pt", "other.pt", "list.pt",
                                  "nested.pt", "truncated.pt", "evil.pt", "evil_zip.pt", "absent.pt"])
def test_bad_files_are_refused_with_a_named_error(bad_files, case, capfd):
    path, needle = bad_files[case]
    with pytest.raises(CheckpointError) as err:
        from_checkpoint(path)
    message = str(err.value)
    assert message.startswith(str(path)) and needle in message, message
    assert "\n" not in message
    assert "should-never-run" not in capfd.readouterr().out


def test_imagenet_backbones_only_from_the_local_cache(tmp_path, monkeypatch, caplog):
    import timm

    import methods.smirk.model as model_mod
    from fbench.assets import get_asset

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    names = (model_mod.POSE_BACKBONE, model_mod.SHAPE_BACKBONE)
    if any(model_mod.cached_imagenet_weights(n) for n in names):
        pytest.skip("ImageNet weights are in this machine's Hugging Face cache")
    with caplog.at_level("WARNING"):
        model_mod.create_backbone(model_mod.POSE_BACKBONE, pretrained=True)
    assert "not in the local timm/Hugging Face cache" in caplog.text
    # a file in torch's hub cache under timm's release name (the asset) is used, never downloaded
    torch.manual_seed(3)
    reference = timm.create_model(model_mod.POSE_BACKBONE, pretrained=False)
    asset = get_asset("mobilenetv3-imagenet")
    target = asset.directory() / asset.files[0]
    assert target.parent == tmp_path / "torch" / "hub" / "checkpoints"
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    assert model_mod.cached_imagenet_weights(model_mod.POSE_BACKBONE) == target
    backbone, width = model_mod.create_backbone(model_mod.POSE_BACKBONE, pretrained=True)
    assert width == 576 and torch.equal(backbone.conv_stem.weight, reference.conv_stem.weight)
