"""TEASER's training recipe (`fbench train teaser`): SMIRK's task (methods/smirk/task.py) with
what TEASER changes, through SmirkTask's seams.

Official code: github.com/Pixel-Talk/TEASER at c235716, `src/teaser_trainer.py` (cited as
trainer.py:LINE), `src/base_trainer.py`, `configs/config_train.yaml`; weights in
methods/teaser/plugin.py OFFICIAL_WEIGHTS. Everything not listed here is SMIRK's (phases,
landmark and regularisation losses, VGG and L1 reconstruction, the cycle path's parameter
augmentation, the alternating freezing, the optimisers, the data mix and its transform).

What TEASER adds or changes:
- the token encoder is optimised with the expression encoder in core (config_train.yaml:52,
  base_trainer.py:114-115); pretrain is SMIRK's (no generator, so no tokens to learn);
- the generator takes the image's tokens (trainer.py:147, 346: detached in the cycle path);
- masked input without sampled face pixels: the hull mask dilated by `mask_dilation_radius`
  with the rendered face removed (masking.py:104-116 `masking_face`; trainer.py:144-146, 343-345);
- token cycle loss (x5): the generator's image re-encoded, MSE of each of the four tokens to the
  image's, summed (trainer.py:155-160);
- region reconstruction loss: L1 of the generator's image over the mouth and eye boxes
  (trainer.py:150-151; boxes from the FAN landmarks as base_dataset.py:125-185; weight OURS, the
  released config lacks it, see plugin.py);
- 203-landmark loss (x1000): FLAME's 203 embedded points, projected, against the 203-point
  detector's, on the side-dependent subset chosen by the predicted yaw (trainer.py:84-125);
  enabled only when the `teaser-landmarks-203` asset (detector + embedding) is present and
  `onnx2torch` can read the detector, else disabled and recorded (`run.landmark_loss_203`);
- the cycle loss gains MSE(token 0 of the re-encoded image, token 0 of the image) (trainer.py:362).

Our choices (differences from the official code):
- emotion loss (config_train.yaml:35, x1) DISABLED, recorded: fbench does not run EMOCA's
  emotion network in training;
- the 203-landmark sum is divided by the batch size (officially by 16, config_train.yaml's
  batch size: trainer.py:125), and the detector's points are reshaped by the batch size
  (officially 16, trainer.py:88);
- the region boxes are computed from the batch's FAN landmarks in the task (officially by the
  dataset) and are empty for samples without FAN landmarks;
- with Ke > 1 the tokens are repeated with the images (officially the cycle path works for
  Ke = 1 only: trainer.py:276, 346);
- the cycle path's render mask is `1 - (render == 0).all(channels)` as in the first path
  (officially `(render > 0).all(channels)`, trainer.py:343: the same on the grey shading).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.smirk.task import SmirkTask, _say
from methods.teaser.model import face_masked

TOKEN_CYCLE_IN_CYCLE = 1.0  # trainer.py:362: 1.0 x MSE(token 0)
YAW_SIDE = 0.05  # trainer.py:100, 108: pose_params[:, 1] < -0.05 left subset, > 0.05 right subset
MOUTH = list(range(48, 61))  # base_dataset.py:47 kp_mouth_indices (FAN 48..60)
EYES = list(range(36, 48))  # base_dataset.py:48 kp_eyes_indicis (FAN 36..47)
MOUTH_GROW, EYES_GROW = 0.5, 0.2  # base_dataset.py:137-140, 170-173


# ---------------------------------------------------------------------------------- the losses


def box_masks(landmarks_fan: Tensor, valid: Tensor, indices: list[int], grow: float, size: int) -> Tensor:
    """(B, 1, size, size): 1 inside the box of the FAN points `indices` grown by `grow` x its
    width/height on each side, as base_dataset.py:125-153 cuts it (integer pixel bounds,
    clipped to the image, both ends included as cv2.fillConvexPoly fills them); 0 elsewhere
    and for samples whose FAN landmarks are not `valid`. landmarks_fan: (B, 68, 2) in [-1, 1]."""
    pts = (landmarks_fan[:, indices].detach().float() + 1) / 2 * size  # back to crop pixels
    lo, hi = torch.trunc(pts.amin(1)), torch.trunc(pts.amax(1))  # int() of base_dataset.py:128-131
    extent = torch.trunc((hi - lo) * grow)
    lo = torch.clamp(lo - extent, min=0)
    hi = torch.clamp(hi + extent, max=size)
    grid = torch.arange(size, device=landmarks_fan.device, dtype=pts.dtype)
    inside_x = (grid[None] >= lo[:, 0:1]) & (grid[None] <= hi[:, 0:1])  # (B, W)
    inside_y = (grid[None] >= lo[:, 1:2]) & (grid[None] <= hi[:, 1:2])  # (B, H)
    box = (inside_y[:, :, None] & inside_x[:, None, :]).float()
    return (box * valid.float().view(-1, 1, 1))[:, None]


def region_masks(landmarks_fan: Tensor, valid: Tensor, size: int) -> Tensor:
    """(1 - mask_mouth) + (1 - mask_eyes) of trainer.py:150: 1 in the mouth or eye box, 2 where
    they overlap, 0 elsewhere."""
    return box_masks(landmarks_fan, valid, MOUTH, MOUTH_GROW, size) + box_masks(landmarks_fan, valid, EYES,
                                                                                 EYES_GROW, size)


def region_reconstruction_loss(recon: Tensor, img: Tensor, region: Tensor) -> Tensor:
    """trainer.py:151: mean over every pixel and channel of |recon x region - img x region|."""
    return (recon * region - img * region).abs().mean()


def token_cycle_loss(recon_tokens: Tensor, tokens: Tensor) -> tuple[Tensor, list[Tensor]]:
    """trainer.py:156-160: the sum over the four tokens of MSE(re-encoded, original), and each."""
    levels = [F.mse_loss(recon_tokens[i], tokens[i]) for i in range(tokens.shape[0])]
    return torch.stack(levels).sum(), levels


def landmark_203_loss(pred: Tensor, target: Tensor, yaw: Tensor, subsets: Mapping[str, Tensor]) -> Tensor:
    """trainer.py:96-125: per sample the MSE of the 203-point subset its yaw selects ('left'
    below -0.05, 'right' above 0.05, else 'front'), averaged over the batch (ours: officially
    summed and divided by 16). pred, target: (B, 203, 2) in [-1, 1]; yaw: (B,)."""
    losses = []
    left, right = (yaw < -YAW_SIDE).tolist(), (yaw > YAW_SIDE).tolist()  # compared in yaw's dtype, as officially
    for i in range(pred.shape[0]):
        side = "left" if left[i] else "right" if right[i] else "front"
        idx = subsets[side].to(pred.device)
        losses.append(F.mse_loss(pred[i, idx], target[i, idx]))
    return torch.stack(losses).mean()


# ------------------------------------------------------------------------- the 203-point asset


class Landmarks203(nn.Module):
    """TEASER's 203-landmark supervision: the FLAME embedding (triangle + barycentric
    coordinates of each point, and the front/left/right subsets) and the detector, a module
    mapping (B, 3, H, W) RGB in [0, 1] to its official output list whose item 2 holds the
    points in [0, 1] (base_trainer.py:155-159, trainer.py:86-89)."""

    def __init__(self, embedding: Mapping[str, np.ndarray], detector: nn.Module) -> None:
        super().__init__()
        self.register_buffer("face_idx", torch.as_tensor(np.asarray(embedding["lmk_face_idx"]), dtype=torch.long),
                             persistent=False)
        self.register_buffer("bary", torch.as_tensor(np.asarray(embedding["lmk_b_coords"]), dtype=torch.float32),
                             persistent=False)
        self.subsets = {side: torch.as_tensor(np.asarray(embedding[f"landmark_{side}_indices"]), dtype=torch.long)
                        for side in ("front", "left", "right")}
        self.detector = detector.eval()
        for p in self.detector.parameters():
            p.requires_grad_(False)

    def flame_points(self, transformed_vertices: Tensor, faces: Tensor) -> Tensor:
        """(B, 203, 2) image-space points from the renderer's projected vertices (projection is
        affine, so embedding after projecting equals projecting the embedded points)."""
        from fbench.flame.model import barycentric_points

        return barycentric_points(transformed_vertices, faces[self.face_idx], self.bary.to(transformed_vertices))[..., :2]

    @torch.no_grad()
    def detect(self, img: Tensor) -> Tensor:
        """(B, 203, 2) detected points in [-1, 1] (trainer.py:86-89)."""
        out = self.detector(img)
        return out[2][0].reshape(img.shape[0], -1, 2).float() * 2 - 1


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without pickles."""
    import io

    from fbench.safe_read import read_regular_file

    with np.load(io.BytesIO(read_regular_file(path)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_detector(path: Path) -> nn.Module:
    """The ONNX detector as a torch module (base_trainer.py:155-157 uses onnx2torch.convert)."""
    from onnx2torch import convert  # ImportError when not installed: the caller disables the loss

    return convert(str(path))


def load_landmarks_203(folder: str, num_faces: int) -> tuple[Landmarks203 | None, str]:
    """The 203-landmark supervision and a note, or None and the reason it is disabled."""
    from fbench.assets import get_asset

    asset = get_asset("teaser-landmarks-203")
    root = Path(folder) if folder else asset.directory()
    files = [root / name for name in asset.files]
    missing = [p.name for p in files if not p.is_file()]
    off = "203-landmark loss DISABLED"
    if missing:
        return None, (f"{off}: {', '.join(missing)} not in {root} (`fbench assets check teaser-landmarks-203`; "
                      "-o train.landmarks_203=DIR)")
    try:
        embedding = read_npz(files[1])
    except ValueError as err:
        return None, f"{off}: {files[1]} is not a plain .npz ({err})"
    need = {"lmk_face_idx", "lmk_b_coords", "landmark_front_indices", "landmark_left_indices",
            "landmark_right_indices"}
    if need - set(embedding):
        return None, f"{off}: {files[1]} lacks {', '.join(sorted(need - set(embedding)))}"
    if int(np.max(embedding["lmk_face_idx"])) >= num_faces:
        return None, (f"{off}: {files[1]} refers to FLAME triangle {int(np.max(embedding['lmk_face_idx']))}, "
                      f"the FLAME in use has {num_faces} (a real FLAME2020 is needed)")
    try:
        detector = load_detector(files[0])
    except ImportError:
        return None, f"{off}: reading {files[0]} needs the onnx2torch package (pip install onnx2torch)"
    return Landmarks203(embedding, detector), f"203-landmark loss from {root}"


# ------------------------------------------------------------------------------------- the task


class TeaserTask(SmirkTask):
    """`fbench train teaser`: see the module docstring. Hooks for methods built on TEASER
    (FIELDS) are SmirkTask's; `first_path_extra` here returns TEASER's terms, so a subclass adds
    its own to `super().first_path_extra(...)`."""

    prefix = "teaser"
    encoder_parts = ("pose", "shape", "expression", "token")
    optimiser_order = ("expression", "shape", "pose", "token")  # base_trainer.py:107-115

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.landmarks_203: Landmarks203 | None = None

    def make_encoder(self) -> nn.Module:
        from methods.teaser.model import TeaserEncoder

        c = self.config
        return TeaserEncoder(n_exp=c.n_exp, n_shape=c.n_shape, pretrained=c.pretrained_backbones)

    def make_generator(self) -> nn.Module:
        from methods.teaser.model import TeaserGenerator

        c = self.config
        return TeaserGenerator(c.generator_in_channels, c.generator_out_channels, c.generator_init_features,
                               c.generator_res_blocks, c.generator_image_size)

    def optimised_parts(self) -> dict[str, bool]:
        parts = super().optimised_parts()  # "token" is not in SMIRK's lists: False
        parts["token"] = bool(self.t.optimize_token) and self.generator is not None
        return parts

    def checkpoint_layout(self):
        from methods.teaser.checkpoint import TEASER_LAYOUT

        return TEASER_LAYOUT

    def setup(self, run) -> None:
        super().setup(run)
        notes, t = run.notes, self.t
        if t.weight("emotion_loss") > 0 and self.generator is not None:
            notes["emotion_loss"] = (f"emotion loss DISABLED (weight {t.weight('emotion_loss')}, config_train.yaml:35): "
                                     "fbench does not run EMOCA's emotion network in training")
            _say(notes["emotion_loss"])
        if t.weight("landmark_loss_203") > 0:
            self.landmarks_203, note = load_landmarks_203(t.landmarks_203, int(self.flame.faces.shape[0]))
            notes["landmark_loss_203"] = note
            if self.landmarks_203 is None:
                _say(note)
            else:
                self.landmarks_203.to(run.device)

    # ------------------------------------------------------------------------------ seams

    def first_path_masked(self, batch: Mapping[str, Any], rend: Mapping[str, Tensor]) -> Tensor:
        return face_masked(batch["img"], batch["mask"], rend["rendered_img"], self.t.mask_dilation_radius)

    def cycle_masked(self, img: Tensor, masks: Tensor, first: Mapping[str, Tensor],
                     second: Mapping[str, Tensor]) -> Tensor:
        return face_masked(img, masks, second["rendered_img"], self.t.mask_dilation_radius)

    def generate(self, x: Tensor, feats: Mapping[str, Tensor]) -> Tensor:
        return self.generator(x, feats["token"])

    def repeat_outputs(self, enc: Mapping[str, Tensor], ke: int) -> dict[str, Tensor]:
        out = super().repeat_outputs({k: v for k, v in enc.items() if k != "token"}, ke)
        out["token"] = torch.cat(ke * [enc["token"].detach()], dim=1)  # (4, Ke B, 256)
        return out

    def cycle_terms(self, recon_feats: Mapping[str, Tensor], aug: Mapping[str, Tensor],
                    freeze_generator: bool) -> Tensor:
        return super().cycle_terms(recon_feats, aug, freeze_generator) \
            + TOKEN_CYCLE_IN_CYCLE * F.mse_loss(recon_feats["token"][0], aug["token"][0])

    def first_path_extra(self, batch: Mapping[str, Any], enc: Mapping[str, Tensor], rend: Mapping[str, Tensor],
                         recon: Tensor | None) -> tuple[Tensor | float, dict[str, Tensor]]:
        t = self.t
        loss: Tensor | float = 0.0
        terms: dict[str, Tensor] = {}
        img = batch["img"]
        if self.landmarks_203 is not None:  # trainer.py:84-125, weighted with the landmark losses (:206-208)
            pred = self.landmarks_203.flame_points(rend["transformed_vertices"], self.flame.faces)
            target = self.landmarks_203.detect(img)
            terms["landmark_loss_203"] = landmark_203_loss(pred, target, enc["pose_params"][:, 1].detach(),
                                                           self.landmarks_203.subsets)
            loss = loss + t.weight("landmark_loss_203") * terms["landmark_loss_203"]
        if recon is not None:
            region = region_masks(batch["landmarks_fan"], batch["flag_landmarks_fan"].bool(), img.shape[-1])
            terms["region_reconstruction_loss"] = region_reconstruction_loss(recon, img, region)  # :150-151
            again = self.encoder(recon)  # :155-160
            terms["token_cycle_loss"], levels = token_cycle_loss(again["token"], enc["token"])
            for i, level in enumerate(levels):
                terms[f"token_cycle_loss_{i}"] = level
            loss = loss + t.weight("region_reconstruction_loss") * terms["region_reconstruction_loss"] \
                + t.weight("token_cycle_loss") * terms["token_cycle_loss"]  # :211-215
        return loss, terms

    def export(self, out: Path) -> list[Path]:
        """TEASER.pt in the official layout (teaser_encoder.* / teaser_generator.*, base_trainer.py:308-315)."""
        from methods.teaser.checkpoint import save_checkpoint
        from methods.teaser.model import TeaserModel

        return [save_checkpoint(TeaserModel(self.encoder, self.generator), out / "TEASER.pt")]

