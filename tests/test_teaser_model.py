"""TEASER model and checkpoints: the official state-dict layout and sizes, the token encoder's
output, the token-modulated generator, and strict loading of official-format files (no
released weights here: files written by fbench)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from methods.teaser.checkpoint import CheckpointError, from_checkpoint, save_checkpoint
from methods.teaser.model import (
    AdaIN,
    TeaserEncoder,
    TeaserGenerator,
    TeaserModel,
    token_feature_sizes,
)
from test_smirk_model import OFFICIAL_KEYS, _expected_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = Path(__file__).parent / "fixtures" / "teaser_state_dict.txt"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def encoder() -> TeaserEncoder:
    torch.manual_seed(0)
    return TeaserEncoder().eval()


@pytest.fixture(scope="module")
def small_model() -> TeaserModel:
    """A small generator (any size must load) with non-zero token paths and BN statistics."""
    torch.manual_seed(1)
    model = TeaserModel(TeaserEncoder(n_exp=20), TeaserGenerator(init_features=4, res_blocks=2, image_size=64))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for i in range(1, 5):  # the zero-initialised convs would hide the token decoder
            getattr(model.generator, f"token_zero_conv_{i}").weight.normal_(0, 0.1)
        model.encoder.shape_encoder.shape_layers[0].weight.normal_(0, 0.01)
    return model.eval()


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model: TeaserModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = dict(model.encoder(images))
        if model.generator is not None:
            out["generated"] = model.generator(torch.cat([images, images.flip(-1)], 1), out["token"])
    return out


def test_state_dict_names_and_shapes_are_the_official_ones(encoder):
    # the fixture lists the keys of the official modules (see its header), sizes as test_image.py:96, 106
    expected = _expected_layout(FIXTURE)
    got = {k: tuple(v.shape) for k, v in TeaserModel(encoder, TeaserGenerator()).state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_parameter_counts_at_the_released_size(encoder):
    # Derived by reading teaser_encoder.py / teaser_generator.py (and equal to what the official
    # modules report, the fixture's header):
    # encoder = SMIRK's 3,599,921 (test_smirk_model) + the token backbone (the pose encoder's
    #   tf_mobilenetv3_small_minimal_100: 432,350 - its 576x6+6 head = 428,888)
    #   + four Linear(n, 256) heads, n = 576, 192, 384, 1024: 256 x (577 + 193 + 385 + 1025) = 558,080
    assert token_feature_sizes(encoder.token_encoder.encoder.feature_info.channels()) == [576, 192, 384, 1024]
    assert _count(encoder.token_encoder) == 428_888 + 558_080
    assert _count(encoder) == 3_599_921 + 428_888 + 558_080 == 4_586_889
    # generator = SMIRK's UNet at (6, 3, 32, 5): 31,367,171
    #   + 2 AdaIN per block, AdaIN(c) = Linear(256,128) + 2 Linear(128,c) = 32,896 + 258 c, over the
    #     nine blocks of widths 32+64+128+256+512+256+128+64+32 = 1472: 9 x 65,792 + 516 x 1472 = 1,351,680
    #   + token decoder: Linear(1024, 256x14x14) 51,430,400; convs 256->256, 256->128, 128->64, 64->32,
    #     32->32 (3x3, bias) 590,080 + 295,040 + 73,792 + 18,464 + 9,248; BN 512 + 256 + 128 + 64: 52,417,984
    #   + zero 1x1 convs 256, 128, 64, 32 (bias): 65,792 + 16,512 + 4,160 + 1,056 = 87,520
    gen = TeaserGenerator(6, 3, 32, 5)
    assert _count(gen.token_decoder) == 52_417_984
    assert _count(gen) == 31_367_171 + 1_351_680 + 52_417_984 + 87_520 == 85_224_355


def test_encoder_returns_the_official_dict_with_tokens(encoder):
    images = _images(3)
    with torch.no_grad():
        out = encoder(images)
        tokens = encoder.token_encoder(images)
        feats = encoder.token_encoder.encoder(images)
    assert list(out) == [*OFFICIAL_KEYS, "token"]
    assert out["token"].shape == (4, 3, 256) and torch.equal(out["token"], tokens)
    # token i: the (i+1)-th deepest map average-pooled to 2^i x 2^i, flattened, through head i (encoder.py:140-154)
    for i in range(4):
        pooled = F.adaptive_avg_pool2d(feats[-1 - i], 2 ** i).flatten(1)
        head = encoder.token_encoder.token_layers[i][0]
        assert torch.allclose(out["token"][i], pooled @ head.weight.T + head.bias, atol=1e-5), i
    # official initialisation: every token head x 0.001, row 3 zero weight and bias 7 (encoder.py:122-128)
    assert torch.all(out["token"][:, :, 3] == 7)


def test_adain_against_a_plain_computation():
    torch.manual_seed(3)
    layer = AdaIN(5).eval()
    x, token = torch.randn(2, 5, 6, 6), torch.randn(2, 256)
    hidden = torch.relu(token @ layer.mlp_shared[0].weight.T + layer.mlp_shared[0].bias)
    gamma = hidden @ layer.mlp_gamma.weight.T + layer.mlp_gamma.bias
    beta = hidden @ layer.mlp_beta.weight.T + layer.mlp_beta.bias
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * (1 + gamma[..., None, None]) + beta[..., None, None]
    with torch.no_grad():
        assert torch.allclose(layer(x, token), want, atol=1e-5)


def test_generator_uses_the_tokens_and_starts_with_the_decoder_path_closed():
    torch.manual_seed(4)
    gen = TeaserGenerator(init_features=4, res_blocks=1, image_size=32).eval()
    x = torch.rand(2, 6, 32, 32)
    tokens = torch.randn(4, 2, 256)
    with torch.no_grad():
        out = gen(x, tokens)
        assert out.shape == (2, 3, 32, 32) and 0 < float(out.min()) and float(out.max()) < 1
        for i in range(4):  # each token changes the image (through its AdaIN blocks)
            other = tokens.clone()
            other[i] += 1.0
            assert not torch.allclose(gen(x, other), out), i
        # zero-initialised 1x1 convs (generator.py:53-60): the token decoder adds nothing yet
        for p in gen.token_decoder.parameters():
            p.add_(torch.randn_like(p))
        assert torch.equal(gen(x, tokens), out)
        gen.token_zero_conv_1.weight.fill_(0.5)
        assert not torch.equal(gen(x, tokens), out)
    with pytest.raises(ValueError, match="built for 32x32"):
        gen(torch.rand(1, 6, 64, 64), tokens[:, :1])


def test_generator_routes_the_tokens_as_the_official_forward():
    """generator.py:62-115 re-composed from the blocks: encoder blocks 1-4 take tokens 3, 2, 1, 0,
    the bottleneck token 0, decoder blocks 4-1 tokens 0-3, the token decoder [t3, t2, t1, t0]."""
    torch.manual_seed(6)
    gen = TeaserGenerator(init_features=4, res_blocks=1, image_size=32).eval()
    with torch.no_grad():
        for i in range(1, 5):
            getattr(gen, f"token_zero_conv_{i}").weight.normal_(0, 0.5)
        x, t = torch.rand(2, 6, 32, 32), torch.randn(4, 2, 256)
        e1 = gen.encoder1(x, t[3])
        e2 = gen.encoder2(gen.pool1(e1), t[2])
        e3 = gen.encoder3(gen.pool2(e2), t[1])
        e4 = gen.encoder4(gen.pool3(e3), t[0])
        b = gen.resnet_blocks[0](gen.bottleneck(gen.pool4(e4), t[0]))
        maps = gen.token_decoder(torch.cat([t[3], t[2], t[1], t[0]], dim=1))
        d4 = gen.decoder4(torch.cat((gen.upconv4(b), e4), 1), t[0]) + gen.token_zero_conv_4(maps[0])
        d3 = gen.decoder3(torch.cat((gen.upconv3(d4), e3), 1), t[1]) + gen.token_zero_conv_3(maps[1])
        d2 = gen.decoder2(torch.cat((gen.upconv2(d3), e2), 1), t[2]) + gen.token_zero_conv_2(maps[2])
        d1 = gen.decoder1(torch.cat((gen.upconv1(d2), e1), 1), t[3]) + gen.token_zero_conv_1(maps[3])
        assert torch.allclose(gen(x, t), torch.sigmoid(gen.conv(d1)), atol=1e-6)
    assert [m.shape[1:] for m in maps] == [(32, 4, 4), (16, 8, 8), (8, 16, 16), (4, 32, 32)]


def test_generate_masks_as_the_official_test_script(small_model):
    """test_image.py:179-196: image x dilated hull x (1 - rendered mask), no sampled pixels."""
    from methods.smirk import masking

    images = _images(1, 64)
    rendered = torch.zeros(1, 3, 64, 64)
    rendered[..., 20:40, 20:40] = 0.5
    hull = torch.ones(1, 1, 64, 64)
    hull[..., 10:50, 10:50] = 0
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, tokens):
            seen["x"], seen["tokens"] = x, tokens
            return x[:, :3]

    model = TeaserModel(small_model.encoder, Spy())
    with torch.no_grad():
        model._generate_from(images, {"rendered_img": rendered}, hull, None, None, None)
        want = images * masking.dilate_face(hull, 10) * (1 - masking.rendered_mask(rendered))
        assert torch.equal(seen["x"][:, :3], rendered) and torch.equal(seen["x"][:, 3:], want)
        assert torch.equal(seen["tokens"], small_model.encoder.token_encoder(images))
    assert float(want[..., 0:2, :].abs().sum()) > 0 and float(want[..., 5:55, 5:55].abs().sum()) == 0


# ------------------------------------------------------------------------------------ checkpoints


def test_save_load_round_trip_is_identical(small_model, tmp_path):
    path = save_checkpoint(small_model, tmp_path / "ckpt" / "teaser.pt")
    loaded = from_checkpoint(path)
    assert isinstance(loaded, TeaserModel) and loaded.n_exp == 20 and not loaded.training
    assert loaded.generator.image_size == 64 and len(loaded.generator.resnet_blocks) == 2
    ref, got = _outputs(small_model, _images()), _outputs(loaded, _images())
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    state = torch.load(path, weights_only=True)
    assert all(k.startswith(("teaser_encoder.", "teaser_generator.")) for k in state)
    assert any(k.startswith("teaser_encoder.token_encoder.") for k in state)


def test_fp16_files_load_into_fp32(small_model, tmp_path):
    full = from_checkpoint(save_checkpoint(small_model, tmp_path / "fp32.pt"))
    half = from_checkpoint(save_checkpoint(small_model, tmp_path / "fp16.pt", half=True))
    assert torch.load(tmp_path / "fp16.pt", weights_only=True)[
        "teaser_encoder.token_encoder.token_layers.0.0.weight"].dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in half.parameters())
    a, b = _outputs(full, _images()), _outputs(half, _images())
    for k in a:
        scale = max(1.0, float(a[k].abs().max()))
        assert float((a[k] - b[k]).abs().max()) <= 1e-2 * scale, k
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_encoder_only_file(small_model, tmp_path):
    model = from_checkpoint(save_checkpoint(TeaserModel(small_model.encoder), tmp_path / "enc.pt"))
    assert model.generator is None and isinstance(model.encoder, TeaserEncoder)
    images = _images()
    assert torch.equal(model.reconstruct(images).expression, small_model.reconstruct(images).expression)
    both = save_checkpoint(small_model, tmp_path / "both.pt")
    assert from_checkpoint(both, generator=False).generator is None


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "smirk", "decoder"])
def test_bad_files_are_refused_with_a_named_error(small_model, tmp_path, case):
    s = {k: v.clone() for k, v in small_model.state_dict().items()}
    needle = {
        "missing": "missing key(s): teaser_encoder.token_encoder.token_layers.2.0.bias",
        "unexpected": "unexpected key(s): teaser_generator.extra.weight",
        "shape": "wrong shape(s): teaser_generator.decoder1.adain2.mlp_beta.weight (3, 128) != (4, 128)",
        "smirk": "not a TEASER checkpoint, no 'teaser_encoder.*' key",
        "decoder": "token_decoder.decoder_1.0.weight has 100 rows, not 8 x init_features (4) x a square",
    }[case]
    if case == "missing":
        del s["teaser_encoder.token_encoder.token_layers.2.0.bias"]
    elif case == "unexpected":
        s["teaser_generator.extra.weight"] = torch.zeros(1)
    elif case == "shape":
        s["teaser_generator.decoder1.adain2.mlp_beta.weight"] = torch.zeros(3, 128)
    elif case == "smirk":  # a SMIRK file is not a TEASER file
        s = {k.replace("teaser_", "smirk_"): v for k, v in s.items()}
    else:
        s["teaser_generator.token_decoder.decoder_1.0.weight"] = torch.zeros(100, 1024)
    torch.save(s, tmp_path / f"{case}.pt")
    with pytest.raises(CheckpointError) as err:
        from_checkpoint(tmp_path / f"{case}.pt")
    message = str(err.value)
    assert message.startswith(str(tmp_path / f"{case}.pt")) and needle in message, message


# ----------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_eval_multiface_and_reconstruct_run_with_a_saved_teaser_checkpoint(tmp_path, tmp_path_factory, flame_dir,
                                                                          one_torch_thread):
    """(fast variant: the contract test, tests/test_contracts.py, reconstructs through the plugin.)"""
    import json

    from click.testing import CliRunner

    from conftest import shared_synthetic
    from fbench.cli import main
    from fbench.flame import FLAME
    from methods.teaser.plugin import METHOD, TeaserConfig

    ckpt = METHOD.save(METHOD.build(TeaserConfig.tiny()), tmp_path / "teaser_tiny.pt")
    data = shared_synthetic(tmp_path_factory, "multiface", FLAME(flame_dir, n_exp=50), 1, 0, 0).root
    runner = CliRunner()
    r = runner.invoke(main, ["eval", "multiface", "--method", "teaser", "--checkpoint", str(ckpt), "--root", str(data),
                             "--out", str(tmp_path / "eval"), "--flame", str(flame_dir)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "multiface / teaser" in r.output and metrics
    image = next(p for p in sorted(data.rglob("*.png")) if "images" in p.parts)
    r = runner.invoke(main, ["reconstruct", str(image), "--method", "teaser", "--checkpoint", str(ckpt), "--out",
                             str(tmp_path / "recon"), "--generator", "--no-progress", "--flame", str(flame_dir)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "recon" / image.stem / "params.npz").is_file()
    assert (tmp_path / "recon" / image.stem / "generator.png").is_file()
