"""SMIRK's encoder and image-to-image generator, module for module as the official code.

Official code: github.com/georgeretsi/smirk at c7de404, `src/smirk_encoder.py` and
`src/smirk_generator.py` (cited below as encoder.py:LINE and generator.py:LINE). Submodule
names are the official ones, so `SmirkModel.state_dict()` has exactly the keys of the
released `SMIRK_em1.pt`: `smirk_encoder.*` and `smirk_generator.*`.

Input: RGB in [0, 1], (B, 3, 224, 224), no normalisation (demo.py:104 divides by 255 only).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fbench.flame.params import FlameParams
from fbench.plugins import CropSpec, ItemRef

log = logging.getLogger(__name__)

POSE_BACKBONE = "tf_mobilenetv3_small_minimal_100"  # encoder.py:18
SHAPE_BACKBONE = "tf_mobilenetv3_large_minimal_100"  # encoder.py:52
EXPRESSION_BACKBONE = "tf_mobilenetv3_large_minimal_100"  # encoder.py:80
N_EYELIDS, N_JAW = 2, 3  # encoder.py:83 "num expressions + jaw + eyelid"
# demo.py:91 crops the MediaPipe landmark box enlarged 1.4x and resizes to 224 (demo.py:50).
SMIRK_CROP = CropSpec(size=224, scale=1.4, landmarks="mediapipe")


def cached_imagenet_weights(backbone: str) -> Path | None:
    """The ImageNet weights of a timm backbone when already in the local Hugging Face or torch
    hub cache, else None. Never downloads."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with timm
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(hit, str):
                    return Path(hit)
    if cfg.url:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if hub.is_file():
            return hub
    return None


def create_backbone(name: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """timm backbone with `features_only=True` and the channels of its last feature map
    (encoder.py:7-12). `pretrained` uses ImageNet weights only from the local cache; when they
    are absent it says so and keeps the random initialisation (ours: the official code downloads)."""
    import timm

    path = cached_imagenet_weights(name) if pretrained else None
    if pretrained and path is None:
        log.warning("ImageNet weights for %s are not in the local timm/Hugging Face cache; "
                    "starting from random initialisation", name)
    if path is not None:
        backbone = timm.create_model(name, pretrained=True, features_only=True,
                                     pretrained_cfg_overlay={"file": str(path)})
    else:
        backbone = timm.create_model(name, pretrained=False, features_only=True)
    return backbone, backbone.feature_info[-1]["num_chs"]


def _pooled(backbone: nn.Module, img: Tensor) -> Tensor:
    # encoder.py:35-37: last feature map, global average pooling.
    return F.adaptive_avg_pool2d(backbone(img)[-1], (1, 1)).flatten(1)


class PoseEncoder(nn.Module):
    """Global pose (3) and camera (3: scale, tx, ty)."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder, feature_dim = create_backbone(POSE_BACKBONE, pretrained)
        self.pose_cam_layers = nn.Sequential(nn.Linear(feature_dim, 6))
        head = self.pose_cam_layers[-1]
        with torch.no_grad():  # encoder.py:26-31
            head.weight.mul_(0.001)
            head.bias.mul_(0.001)
            head.weight[3] = 0
            head.bias[3] = 7  # camera scale starts at 7

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        pose_cam = self.pose_cam_layers(_pooled(self.encoder, img)).reshape(img.size(0), -1)
        return {"pose_params": pose_cam[..., :3], "cam": pose_cam[..., 3:]}  # encoder.py:42-43


class ShapeEncoder(nn.Module):
    def __init__(self, n_shape: int = 300, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder, feature_dim = create_backbone(SHAPE_BACKBONE, pretrained)
        self.shape_layers = nn.Sequential(nn.Linear(feature_dim, n_shape))
        with torch.no_grad():  # encoder.py:61-63: the shape head starts at zero
            self.shape_layers[-1].weight.zero_()
            self.shape_layers[-1].bias.zero_()

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        return {"shape_params": self.shape_layers(_pooled(self.encoder, img)).reshape(img.size(0), -1)}


class ExpressionEncoder(nn.Module):
    def __init__(self, n_exp: int = 50, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder, feature_dim = create_backbone(EXPRESSION_BACKBONE, pretrained)
        self.expression_layers = nn.Sequential(nn.Linear(feature_dim, n_exp + N_EYELIDS + N_JAW))
        self.n_exp = n_exp
        with torch.no_grad():  # encoder.py:90-92
            self.expression_layers[-1].weight.mul_(0.1)
            self.expression_layers[-1].bias.mul_(0.1)

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        p = self.expression_layers(_pooled(self.encoder, img)).reshape(img.size(0), -1)
        n = self.n_exp
        # encoder.py:105-108: eyelids clamped to [0, 1]; jaw opening ReLU, the other two
        # jaw components clamped to +-0.2.
        return {"expression_params": p[..., :n],
                "eyelid_params": torch.clamp(p[..., n:n + 2], 0, 1),
                "jaw_params": torch.cat([F.relu(p[..., n + 2:n + 3]), torch.clamp(p[..., n + 3:n + 5], -.2, .2)], -1)}


class SmirkEncoder(nn.Module):
    """Three MobileNetV3 encoders (encoder.py:113-133); forward returns the official keys
    pose_params, cam, shape_params, expression_params, eyelid_params, jaw_params."""

    def __init__(self, n_exp: int = 50, n_shape: int = 300, pretrained: bool = False) -> None:
        super().__init__()
        self.pose_encoder = PoseEncoder(pretrained)
        self.shape_encoder = ShapeEncoder(n_shape=n_shape, pretrained=pretrained)
        self.expression_encoder = ExpressionEncoder(n_exp=n_exp, pretrained=pretrained)

    @property
    def n_exp(self) -> int:
        return self.expression_encoder.n_exp

    def forward(self, img: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for part in (self.pose_encoder, self.shape_encoder, self.expression_encoder):
            out.update(part(img))
        return out


def _block(in_channels: int, features: int, name: str) -> nn.Sequential:
    """Two 3x3 conv (no bias) + BatchNorm + ReLU, named as generator.py:89-119."""
    layers: list[tuple[str, nn.Module]] = []
    for i, c_in in ((1, in_channels), (2, features)):
        layers += [(f"{name}conv{i}", nn.Conv2d(c_in, features, kernel_size=3, padding=1, bias=False)),
                   (f"{name}norm{i}", nn.BatchNorm2d(features)),
                   (f"{name}relu{i}", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(layers))


class ResnetBlock(nn.Module):
    """x + [reflect pad, conv3x3, BN, ReLU, reflect pad, conv3x3, BN](x) (generator.py:121-178,
    as built there with padding 'reflect', BatchNorm, no dropout, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class SmirkGenerator(nn.Module):
    """SMIRK's UNet translator (generator.py:6-86). Defaults are the sizes the demo and the
    released checkpoint use (demo.py:63); the official class's own defaults are 3/1/16/3."""

    def __init__(self, in_channels: int = 6, out_channels: int = 3, init_features: int = 32,
                 res_blocks: int = 5) -> None:
        super().__init__()
        f = init_features
        self.encoder1 = self.block(in_channels, f, "enc1")
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.encoder2 = self.block(f, f * 2, "enc2")
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.encoder3 = self.block(f * 2, f * 4, "enc3")
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.encoder4 = self.block(f * 4, f * 8, "enc4")
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = self.block(f * 8, f * 16, "bottleneck")
        self.resnet_blocks = nn.ModuleList([ResnetBlock(f * 16) for _ in range(res_blocks)])
        self.upconv4 = nn.ConvTranspose2d(f * 16, f * 8, kernel_size=2, stride=2)
        self.decoder4 = self.block(f * 8 * 2, f * 8, "dec4")
        self.upconv3 = nn.ConvTranspose2d(f * 8, f * 4, kernel_size=2, stride=2)
        self.decoder3 = self.block(f * 4 * 2, f * 4, "dec3")
        self.upconv2 = nn.ConvTranspose2d(f * 4, f * 2, kernel_size=2, stride=2)
        self.decoder2 = self.block(f * 2 * 2, f * 2, "dec2")
        self.upconv1 = nn.ConvTranspose2d(f * 2, f, kernel_size=2, stride=2)
        self.decoder1 = self.block(f * 2, f, "dec1")
        self.conv = nn.Conv2d(f, out_channels, kernel_size=1)

    def block(self, in_channels: int, features: int, name: str) -> nn.Module:
        """One UNet block; a subclass may build another kind (TEASER: token-modulated blocks)."""
        return _block(in_channels, features, name)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W), H and W multiples of 16 -> (B, out_channels, H, W) in (0, 1)."""
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(self.pool1(enc1))
        enc3 = self.encoder3(self.pool2(enc2))
        enc4 = self.encoder4(self.pool3(enc3))
        x = self.bottleneck(self.pool4(enc4))
        for block in self.resnet_blocks:
            x = block(x)
        for up, dec, skip in ((self.upconv4, self.decoder4, enc4), (self.upconv3, self.decoder3, enc3),
                              (self.upconv2, self.decoder2, enc2), (self.upconv1, self.decoder1, enc1)):
            x = dec(torch.cat((up(x), skip), dim=1))
        return torch.sigmoid(self.conv(x))  # generator.py:78


def flame_params(outputs: dict[str, Tensor]) -> FlameParams:
    """The encoder's dict as FlameParams (neck, eyes and translation zero)."""
    shape = outputs["shape_params"]
    z = lambda n: shape.new_zeros(shape.shape[0], n)
    return FlameParams(shape=shape, expression=outputs["expression_params"], jaw=outputs["jaw_params"],
                       eyelids=outputs["eyelid_params"], global_pose=outputs["pose_params"], neck=z(3), eyes=z(6),
                       cam=outputs["cam"], translation=z(3))


class SmirkModel(nn.Module):
    """SMIRK as a `Reconstructor`: the encoder and, when present, the generator.

    The submodules are named `smirk_encoder` and `smirk_generator` (`<prefix>_encoder` and
    `<prefix>_generator`; a subclass such as TEASER's sets `prefix`) so the state dict has the
    released checkpoint's flat layout; `encoder` and `generator` are the same modules.
    """

    crop: CropSpec = SMIRK_CROP
    prefix: str = "smirk"

    def __init__(self, encoder: SmirkEncoder, generator: SmirkGenerator | None = None) -> None:
        super().__init__()
        setattr(self, f"{self.prefix}_encoder", encoder)
        setattr(self, f"{self.prefix}_generator", generator)

    @property
    def encoder(self) -> SmirkEncoder:
        return getattr(self, f"{self.prefix}_encoder")

    @property
    def generator(self) -> SmirkGenerator | None:
        return getattr(self, f"{self.prefix}_generator")

    @property
    def n_exp(self) -> int:
        return self.encoder.n_exp

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.encoder(images)

    @torch.inference_mode()
    def reconstruct(self, images: Tensor, items: Sequence[ItemRef] | None = None) -> FlameParams:
        """(B, 3, H, W) RGB in [0, 1] cut with `crop` -> FlameParams on the CPU (eval mode,
        fp32). `items` is ignored: SMIRK sees pixels only."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"SMIRK needs (B, 3, H, W) RGB images, got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        try:
            out = self.encoder(images.to(self.device, torch.float32))
        finally:
            self.train(was_training)
        return flame_params(out).to("cpu")

    @torch.inference_mode()
    def generate(self, images: Tensor, params: FlameParams, landmarks: Tensor, flame: nn.Module,
                 generator: torch.Generator | None = None) -> Tensor:
        """The generator's reconstruction of crops, as the official demo makes it (demo.py:132-169).

        images: (B, 3, S, S) RGB crops in [0, 1] (`crop`); params: their FlameParams;
        landmarks: (B, N, >=2) MediaPipe points in crop pixels (the face hull); flame: a fbench
        FLAME with the encoder's expression size. The FLAME face is rendered with fbench's SMIRK
        renderer, the crop masked in the demo's inference mode
        (`methods.smirk.masking.demo_masked_image`, randomness from `generator`), and the
        6-channel input run through `generator` in eval mode. Returns (B, 3, S, S) in [0, 1].
        """
        from fbench.render.smirk import render_flame, smirk_renderer_for
        from methods.smirk import masking

        if self.generator is None:
            raise ValueError("this SMIRK model has no generator (its checkpoint holds no smirk_generator.* weights)")
        size = int(images.shape[-1])
        cache = self.__dict__.setdefault("_generate_cache", {})
        if cache.get("flame") is not flame or cache.get("size") != size:  # ours: built once per FLAME and size
            cache.update(flame=flame, size=size, probabilities=masking.face_probabilities(flame),
                         renderer=smirk_renderer_for(flame, "face", image_size=size))
        device = self.device
        images = images.to(device, torch.float32)
        flame.to(device)
        rendered = render_flame(flame, params.to(device=device), cache["renderer"].to(device))
        hull = masking.hull_masks(landmarks, size).to(device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self._generate_from(images, rendered, hull, flame, cache["probabilities"], generator)
        finally:
            self.generator.train(was_training)

    def _generate_from(self, images: Tensor, rendered: dict[str, Tensor], hull: Tensor, flame: nn.Module,
                       probabilities: Tensor, generator: torch.Generator | None) -> Tensor:
        """The masked input and the generator's image (demo.py:150-169); TEASER overrides it."""
        from methods.smirk import masking

        masked = masking.demo_masked_image(images, hull, rendered["rendered_img"], rendered["transformed_vertices"],
                                           flame.faces, probabilities, generator=generator)
        return self.generator(masking.generator_input(rendered["rendered_img"].to(images), masked))
