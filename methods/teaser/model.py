"""TEASER's encoder and token-conditioned generator, on SMIRK's parts.

Official code: github.com/Pixel-Talk/TEASER at c235716, `src/teaser_encoder.py` and
`src/teaser_generator.py` (cited as encoder.py:LINE and generator.py:LINE). TEASER's pose,
shape and expression encoders are SMIRK's (encoder.py:14-109 match smirk_encoder.py line for
line), so `TeaserEncoder` is a `SmirkEncoder` plus the token encoder; `TeaserGenerator` is
SMIRK's UNet (`SmirkGenerator`, same layout and residual blocks, generator.py:6-49) with token-modulated blocks,
a token decoder and four zero-initialised 1x1 convolutions. Submodule names are the official
ones, so `TeaserModel.state_dict()` has the keys of the released `TEASER.pt` and
`TEASER_v1.pt`: `teaser_encoder.*` and `teaser_generator.*` (the trainer's
`save_model` keeps exactly these prefixes of its own state dict, base_trainer.py:308-315,
and test_image.py:98, 108 splits a checkpoint by them).

Input: RGB in [0, 1], (B, 3, 224, 224), no normalisation (test_image.py:144).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.smirk.model import (
    POSE_BACKBONE,
    SMIRK_CROP,
    SmirkEncoder,
    SmirkGenerator,
    SmirkModel,
    create_backbone,
)

TOKEN_BACKBONE = POSE_BACKBONE  # encoder.py:115 tf_mobilenetv3_small_minimal_100
TOKEN_DIM = 256  # encoder.py:117 Linear(..., 256); generator.py:123 AdainBlock(..., 256)
N_TOKENS = 4  # encoder.py:117 four token heads
ADAIN_HIDDEN = 128  # generator.py:192
# The crop is SMIRK's: test_image.py:131 crops the MediaPipe box enlarged 1.4x to 224.
TEASER_CROP = SMIRK_CROP


def token_feature_sizes(channels: list[int]) -> list[int]:
    """Input sizes of the four token heads from the backbone's feature channels (shallow to
    deep): the last map pooled to 1x1, the 2nd, 3rd and 4th from last to 2x2, 4x4 and 8x8
    (encoder.py:140-154). For tf_mobilenetv3_small_minimal_100 (channels 16, 16, 24, 48, 576)
    these are the official hard-coded [576, 192, 384, 1024] (encoder.py:116)."""
    return [channels[-1]] + [channels[-i] * 4 ** (i - 1) for i in range(2, 5)]


class TokenEncoder(nn.Module):
    """Four 256-d appearance tokens from a MobileNetV3-small (encoder.py:111-156)."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder, _ = create_backbone(TOKEN_BACKBONE, pretrained)
        sizes = token_feature_sizes(self.encoder.feature_info.channels())
        self.token_layers = nn.ModuleList([nn.Sequential(nn.Linear(n, TOKEN_DIM)) for n in sizes])
        with torch.no_grad():  # encoder.py:122-128: the pose head's initialisation, kept as is
            for layer in self.token_layers:
                layer[-1].weight.mul_(0.001)
                layer[-1].bias.mul_(0.001)
                layer[-1].weight[3] = 0
                layer[-1].bias[3] = 7

    def forward(self, img: Tensor) -> Tensor:
        """(B, 3, H, W) -> (4, B, 256): token 0 from the deepest map, 3 from the shallowest."""
        feats = self.encoder(img)
        tokens = []
        for i, layer in enumerate(self.token_layers):  # encoder.py:140-155
            side = 2 ** i
            pooled = F.adaptive_avg_pool2d(feats[-1 - i], (side, side)).flatten(1)
            tokens.append(layer(pooled).reshape(img.size(0), -1))
        return torch.stack(tokens, dim=0)


class TeaserEncoder(SmirkEncoder):
    """SMIRK's three encoders plus `token_encoder` (encoder.py:158-182). forward returns the
    official dict: SMIRK's keys and `token`, a (4, B, 256) tensor."""

    def __init__(self, n_exp: int = 50, n_shape: int = 300, pretrained: bool = False) -> None:
        super().__init__(n_exp=n_exp, n_shape=n_shape, pretrained=pretrained)
        self.token_encoder = TokenEncoder(pretrained)

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        out = super().forward(img)
        out["token"] = self.token_encoder(img)
        return out


class AdaIN(nn.Module):
    """Instance norm (no affine) scaled by 1 + gamma(token) and shifted by beta(token), both from
    a shared Linear-ReLU of 128 units (generator.py:186-217, class `ADAIN`)."""

    def __init__(self, channels: int, token_dim: int = TOKEN_DIM) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Linear(token_dim, ADAIN_HIDDEN), nn.ReLU())
        self.mlp_gamma = nn.Linear(ADAIN_HIDDEN, channels)
        self.mlp_beta = nn.Linear(ADAIN_HIDDEN, channels)

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        actv = self.mlp_shared(token.reshape(token.size(0), -1))
        gamma = self.mlp_gamma(actv)[..., None, None]
        beta = self.mlp_beta(actv)[..., None, None]
        return self.param_free_norm(x) * (1 + gamma) + beta


class AdainBlock(nn.Module):
    """SMIRK's block (conv3x3, BN, ReLU, twice) with AdaIN between each BN and ReLU
    (generator.py:159-182)."""

    def __init__(self, in_channels: int, out_channels: int, token_dim: int = TOKEN_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.adain1 = AdaIN(out_channels, token_dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.adain2 = AdaIN(out_channels, token_dim)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        x = self.relu1(self.adain1(self.norm1(self.conv1(x)), token))
        return self.relu2(self.adain2(self.norm2(self.conv2(x)), token))


def _up_conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class TokenDecoder(nn.Module):
    """The concatenated tokens (B, 1024) decoded to feature maps at the four decoder scales
    (generator.py:279-331): (8f, S/8), (4f, S/4), (2f, S/2), (f, S) for init_features f and
    image side S. Official sizes: f = 32, S = 224 (a Linear to 256 x 14 x 14 upsampled to 28)."""

    def __init__(self, init_features: int = 32, image_size: int = 224, token_dim: int = TOKEN_DIM,
                 n_tokens: int = N_TOKENS) -> None:
        super().__init__()
        f, side = init_features, image_size // 16
        if image_size % 16:
            raise ValueError(f"TokenDecoder: image_size must be a multiple of 16, got {image_size}")
        self.decoder_1 = nn.Sequential(nn.Linear(n_tokens * token_dim, f * 8 * side * side),
                                       nn.Unflatten(1, (f * 8, side, side)), *_up_conv_bn_relu(f * 8, f * 8))
        self.decoder_2 = nn.Sequential(*_up_conv_bn_relu(f * 8, f * 4))
        self.decoder_3 = nn.Sequential(*_up_conv_bn_relu(f * 4, f * 2))
        self.decoder_4 = nn.Sequential(*_up_conv_bn_relu(f * 2, f),
                                       nn.Conv2d(f, f, kernel_size=3, padding=1), nn.Tanh())

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.decoder_1(x)]
        for dec in (self.decoder_2, self.decoder_3, self.decoder_4):
            feats.append(dec(feats[-1]))
        return feats


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)  # generator.py:53-60, 117-120
    nn.init.zeros_(conv.bias)
    return conv


class TeaserGenerator(SmirkGenerator):
    """SMIRK's UNet with AdaIN blocks driven by the tokens and the token decoder's maps added
    after each decoder block through zero-initialised 1x1 convs (generator.py:6-115).

    forward(x, tokens): x (B, in_channels, S, S) (rendered face and masked image), tokens
    (4, B, 256) as `TeaserEncoder` gives them -> (B, out_channels, S, S) in (0, 1). Defaults are
    the sizes test_image.py:106 uses for the released checkpoints (6, 3, 32, 5); `image_size`
    sizes the token decoder (ours: officially fixed to 224).
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 3, init_features: int = 32,
                 res_blocks: int = 5, image_size: int = 224) -> None:
        super().__init__(in_channels, out_channels, init_features, res_blocks)
        f = init_features
        self.image_size = image_size
        self.token_decoder = TokenDecoder(f, image_size)
        self.token_zero_conv_4 = _zero_conv(f * 8)
        self.token_zero_conv_3 = _zero_conv(f * 4)
        self.token_zero_conv_2 = _zero_conv(f * 2)
        self.token_zero_conv_1 = _zero_conv(f)

    def block(self, in_channels: int, features: int, name: str) -> nn.Module:
        return AdainBlock(in_channels, features)  # generator.py:122-123

    def forward(self, x: Tensor, tokens: Tensor | list[Tensor]) -> Tensor:
        if len(tokens) != N_TOKENS:
            raise ValueError(f"TeaserGenerator needs {N_TOKENS} tokens (4, B, {TOKEN_DIM}), got {len(tokens)}")
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"TeaserGenerator was built for {self.image_size}x{self.image_size} images "
                             f"(its token decoder), got {tuple(x.shape[-2:])}")
        t = tokens
        # generator.py:67-72: shallow encoder blocks take the shallow tokens (3), deep ones token 0
        enc1 = self.encoder1(x, t[3])
        enc2 = self.encoder2(self.pool1(enc1), t[2])
        enc3 = self.encoder3(self.pool2(enc2), t[1])
        enc4 = self.encoder4(self.pool3(enc3), t[0])
        y = self.bottleneck(self.pool4(enc4), t[0])
        for block in self.resnet_blocks:
            y = block(y)
        maps = self.token_decoder(torch.cat([t[3], t[2], t[1], t[0]], dim=1))  # generator.py:78-79
        for up, dec, skip, token, zero, tmap in (  # generator.py:82-105
                (self.upconv4, self.decoder4, enc4, t[0], self.token_zero_conv_4, maps[0]),
                (self.upconv3, self.decoder3, enc3, t[1], self.token_zero_conv_3, maps[1]),
                (self.upconv2, self.decoder2, enc2, t[2], self.token_zero_conv_2, maps[2]),
                (self.upconv1, self.decoder1, enc1, t[3], self.token_zero_conv_1, maps[3])):
            y = dec(torch.cat((up(y), skip), dim=1), token) + zero(tmap)
        return torch.sigmoid(self.conv(y))  # generator.py:107


def face_masked(img: Tensor, hull_mask: Tensor, rendered_img: Tensor, radius: int) -> Tensor:
    """TEASER's masked image (masking.py:104-116 `masking_face`): the image outside the hull
    mask (B, 1, H, W; 0 on the face) dilated by `radius` and outside the rendered face; unlike
    SMIRK no face pixels are kept (the tokens carry the appearance)."""
    from methods.smirk import masking

    return img * masking.dilate_face(hull_mask, radius) * (1 - masking.rendered_mask(rendered_img))


class TeaserModel(SmirkModel):
    """TEASER as a `Reconstructor`: `encoder` (TeaserEncoder) and, when present, `generator`
    (TeaserGenerator), registered as `teaser_encoder` / `teaser_generator` so the state dict has
    the released checkpoints' flat layout. `reconstruct` is SMIRK's (tokens are not FLAME
    parameters); `generate` renders, masks as test_image.py does and feeds the tokens."""

    crop = TEASER_CROP
    prefix = "teaser"

    def __init__(self, encoder: TeaserEncoder, generator: TeaserGenerator | None = None) -> None:
        super().__init__(encoder, generator)

    def _generate_from(self, images: Tensor, rendered: dict[str, Tensor], hull: Tensor, flame: nn.Module,
                       probabilities: Tensor, generator: torch.Generator | None) -> Tensor:
        """test_image.py:179-196: the hull mask dilated by 10 px, the rendered face removed, no
        sampled pixels (`masking_face`, masking.py:104-116), and the image's own tokens."""
        from methods.smirk import masking

        rendered_img = rendered["rendered_img"].to(images)
        masked = face_masked(images, hull, rendered_img, radius=10)  # test_image.py:181, 190
        tokens = self.encoder.token_encoder(images)
        return self.generator(masking.generator_input(rendered_img, masked), tokens)
