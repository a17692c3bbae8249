"""SMIRK's training recipe as a `fbench.plugins.TrainingTask` (`fbench train smirk`).

Official code: github.com/georgeretsi/smirk at c7de404: `src/smirk_trainer.py` (cited as
smirk_trainer.py:LINE), `src/base_trainer.py` (base_trainer.py:LINE), `train.py`,
`configs/config_pretrain.yaml` and `configs/config_train.yaml`. Own code; the weights and
constants are the official ones (methods/smirk/plugin.py OFFICIAL_WEIGHTS, SmirkTrainConfig).

Phases (`-o train.phase=pretrain|core`):
- pretrain (config_pretrain.yaml): encoder only (no generator, :54), all three encoders
  optimised (:28-30), FAN-68 jawline and MediaPipe-105 landmark losses x 100, expression
  regularisation x 1e-2; MICA's shape loss (x 10, :45) is DISABLED (fbench has no MICA model)
  and that is recorded in the run's config.yaml (`run.mica_loss`).
- core (config_train.yaml): the first path (smirk_trainer.py:34-179: landmarks, L1
  reconstruction and VGG perceptual loss of the generator's image from the masked input,
  expression/jaw regularisation; shape regularisation only counts when the shape encoder is
  optimised, :150, which the official core config does not do) with one backward and a step
  of both optimisers (:358-363); then the cycle path (:184-332, `cycle_step`): four
  augmentation groups of the detached encoder output, jaw and eyelid jitter, the augmented
  face rendered, the image's pixels moved onto it (`methods.smirk.masking.cycle_masked_image`),
  the generator's image re-encoded, and the cycle loss (expression MSE + 10 jaw MSE + 10
  eyelid MSE, + shape MSE when the generator trains, :307-314). On even steps the encoder is
  frozen in the cycle path and the generator learns with its gradient clipped to 0.1; on odd
  steps the generator is frozen and the encoder learns (base_trainer.py:258-268,
  smirk_trainer.py:365-391).

Optimisers (base_trainer.py:28-66): Adam on the optimised encoder parts at 0.25 x lr, Adam
on the generator at lr with betas (0.5, 0.999), created once. The official trainer's cosine
schedule restarted each epoch with eta_min 0.01 lr (base_trainer.py:54-66, train.py:48) is the
loop's `-o loop.schedule=cosine_epoch` (min_lr_factor 0.01 is the loop's default).
`--official-optimizer-reset` (`train.official_optimizer_reset`) reproduces the official
per-epoch re-creation of the generator's Adam (below): `on_epoch_start` clears its state.

Our choices (differences from the official code):
- the official `configure_optimizers`, called at every epoch start (train.py:47-48), keeps the
  encoder's Adam (base_trainer.py:39-41) but re-creates the generator's (it tests
  `hasattr(self, 'fuse_generator_optimizer')` but stores `smirk_generator_optimizer`,
  base_trainer.py:58-62), resetting its moments and step counts; fbench creates it once and
  keeps its state, unless `--official-optimizer-reset` is given (then its state is cleared at
  every epoch start, which equals a re-created Adam: its learning rate is the schedule's);
- the freezing alternates on the loop's global step (the official code uses the batch index
  within the epoch; the same parity when steps per epoch are even);
- encoder parts the phase does not optimise are frozen from the start (officially they get
  gradients that no optimiser applies, and `unfreeze_encoder` leaves them frozen after the
  first cycle step anyway, smirk_trainer.py:339-347);
- MediaPipe landmarks count only where the sample has them (the official loader lists only
  samples with MediaPipe landmarks, so this equals its plain MSE);
- without FaMoS templates the template group (the third) gets the random-expression recipe
  of the first group, said and recorded (`run.cycle_templates`);
- with Ke > 1 points are sampled independently on each copy (officially once and repeated);
- randomness of the cycle augmentation comes from torch's global generator, as officially,
  and the template choice from python's `random` (base_trainer.py:69-74); both are seeded and
  checkpointed by the loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fbench.flame.params import FlameParams
from fbench.train import RunContext, TaskBase, sync_gradients
from methods.smirk.model import flame_params
from methods.smirk.plugin import OFFICIAL_OPTIMIZE as OPT

# smirk_trainer.py:307-311: cycle loss = 1 x expression MSE + 10 x jaw MSE + 10 x eyelid MSE
CYCLE_JAW_WEIGHT = 10.0
CYCLE_EYELID_WEIGHT = 10.0
FAN_JAWLINE = 17  # smirk_trainer.py:58: only FAN's first 17 (jawline) points are supervised


# ------------------------------------------------------------------------------ cycle augmentation


def augment_expressions(feats: Mapping[str, Tensor], templates: list[np.ndarray] | None = None,
                        groups: list[Tensor] | None = None, use_eyelids: bool = True) -> tuple[dict[str, Tensor],
                                                                                               list[Tensor]]:
    """The cycle path's parameter augmentation (smirk_trainer.py:199-248) of detached encoder
    outputs `feats` (already repeated Ke times). Returns the augmented dict (detached copies)
    and the four index groups: random offsets, permutation, template injection (random
    offsets when `templates` is None or empty: ours), zero expression."""
    out = {k: v.detach().clone() for k, v in feats.items()}
    exp = out["expression_params"]
    n, e = exp.shape
    dev = exp.device
    if groups is None:
        perm = torch.randperm(n)  # smirk_trainer.py:200-202
        groups = [perm[:n // 4], perm[n // 4:2 * n // 4], perm[2 * n // 4:3 * n // 4], perm[3 * n // 4:]]
    groups = [g.to(dev) for g in groups]

    def small_noise(k: int) -> Tensor:  # (0 + 0.2 U) N(0, 1) per row, smirk_trainer.py:211, 216, 223, 239
        return 0.2 * torch.rand((k, 1), device=dev) * torch.randn((k, e), device=dev)

    def random_offsets(g: Tensor) -> None:  # smirk_trainer.py:208-211
        k = len(g)
        keep = torch.bernoulli(torch.full((k, e), 0.5, device=dev))
        new = torch.randn((k, e), device=dev) * (1 + 2 * torch.rand((k, 1), device=dev)) * keep + exp[g]
        exp[g] = torch.clamp(new, -4.0, 4.0) + small_noise(k)

    random_offsets(groups[0])
    g = groups[1]  # permutation within the group, scaled by U(0.25, 1.5), smirk_trainer.py:215-216
    exp[g] = (0.25 + 1.25 * torch.rand((len(g), 1), device=dev)) * exp[g][torch.randperm(len(g)).to(dev)] \
        + small_noise(len(g))
    g = groups[2]  # template injection, smirk_trainer.py:220-223
    if templates:
        for i in g.tolist():
            t = torch.as_tensor(random.choice(templates), dtype=exp.dtype, device=dev)[:e]  # base_trainer.py:69-74
            exp[i, :t.shape[0]] = (0.25 + 1.25 * torch.rand((1, 1), device=dev)) * t
        exp[g] += small_noise(len(g))
    else:
        random_offsets(g)
    # jaw jitter on every row: N(0, 0.2^2) x (1, .1, .1) on half the rows, opening clamped to [0, 0.5] (:226-228)
    scale = torch.tensor([1.0, 0.1, 0.1], device=dev).view(1, 3) * torch.bernoulli(torch.full((n,), 0.5, device=dev)).view(-1, 1)
    out["jaw_params"] = out["jaw_params"] + torch.randn_like(out["jaw_params"]) * 0.2 * scale
    out["jaw_params"][..., 0] = torch.clamp(out["jaw_params"][..., 0], 0.0, 0.5)
    if use_eyelids:  # U(-0.25, 0.25), clamped to [0, 1] (:231-233)
        out["eyelid_params"] = torch.clamp(out["eyelid_params"]
                                           + (-1 + 2 * torch.rand_like(out["eyelid_params"])) * 0.25, 0.0, 1.0)
    g = groups[3]  # zero expression plus small noise, jaw closed, eyelids U(0, 1) (:238-242)
    exp[g] = small_noise(len(g))
    out["jaw_params"][g] = 0.0
    out["eyelid_params"][g] = torch.rand_like(out["eyelid_params"][g])
    out["expression_params"] = exp
    return {k: v.detach() for k, v in out.items()}, groups


def cycle_loss(recon: Mapping[str, Tensor], target: Mapping[str, Tensor], use_eyelids: bool = True,
               with_shape: bool = False) -> Tensor:
    """smirk_trainer.py:307-314: MSE(expression) + 10 MSE(jaw) [+ 10 MSE(eyelids)] [+ MSE(shape)]."""
    loss = F.mse_loss(recon["expression_params"], target["expression_params"]) \
        + CYCLE_JAW_WEIGHT * F.mse_loss(recon["jaw_params"], target["jaw_params"])
    if use_eyelids:
        loss = loss + CYCLE_EYELID_WEIGHT * F.mse_loss(recon["eyelid_params"], target["eyelid_params"])
    if with_shape:
        loss = loss + F.mse_loss(recon["shape_params"], target["shape_params"])
    return loss


def load_templates(root: Path) -> list[np.ndarray]:
    """Every expression vector of SMIRK's template layout `DIR/<subject>/<class>/*.npy` for the
    official twelve classes (utils.py:5-20; `fbench fit-flame famos --export-templates` writes
    this layout). Read through fbench's pickle allow-list."""
    from fbench.safe_pickle import safe_load_npy

    classes = {"lips_back", "rolling_lips", "mouth_side", "kissing", "high_smile", "mouth_up", "mouth_middle",
               "mouth_down", "blow_cheeks", "cheeks_in", "jaw", "lips_up"}  # utils.py:7-8
    out = []
    for subject in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for seq in sorted(p for p in subject.iterdir() if p.is_dir() and p.name in classes):
            for f in sorted(seq.glob("*.npy")):
                value = safe_load_npy(f)
                record = value.item() if isinstance(value, np.ndarray) and value.dtype == object else value
                out.append(np.asarray(record["expression"], dtype=np.float32).reshape(-1))
    return out


# ------------------------------------------------------------------------------------- the task


def _freeze(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


class SmirkTask(TaskBase):
    """`fbench train smirk`: see the module docstring.

    Seams for methods built on SMIRK (TEASER, FIELDS), each defaulting to SMIRK's behaviour:
    `prefix` and `encoder_parts`/`optimiser_order` (module names and encoder parts),
    `make_encoder`/`make_generator`/`optimised_parts`, `checkpoint_layout`, `mix_sets` and
    `sample_transform` (the data), `first_path_masked`/`cycle_masked` (the generator's masked
    input), `generate` (the generator call), `first_path_extra` (extra first-path loss terms),
    `repeat_outputs` and `cycle_terms` (the cycle path).
    """

    prefix = "smirk"  # module names: <prefix>_encoder / <prefix>_generator (checkpoints, exports)
    encoder_parts: tuple[str, ...] = ("pose", "shape", "expression")  # <part>_encoder submodules
    optimiser_order: tuple[str, ...] = ("expression", "shape", "pose")  # base_trainer.py:43-51

    def __init__(self, config: Any) -> None:
        self.config = config
        self.t = config.train
        self.phase = self.t.phase
        self.encoder = self.make_encoder()
        # the generator only in core (config_pretrain.yaml:54 enable_fuse_generator False); sizes smirk_trainer.py:19
        self.generator = self.make_generator() if self.phase == "core" and config.generator else None
        self.optimised = self.optimised_parts()
        self.vgg = None
        self.templates: list[np.ndarray] = []

    def make_encoder(self) -> nn.Module:
        from methods.smirk.model import SmirkEncoder

        c = self.config
        return SmirkEncoder(n_exp=c.n_exp, n_shape=c.n_shape, pretrained=c.pretrained_backbones)

    def make_generator(self) -> nn.Module:
        from methods.smirk.model import SmirkGenerator

        c = self.config
        return SmirkGenerator(c.generator_in_channels, c.generator_out_channels, c.generator_init_features,
                              c.generator_res_blocks)

    def optimised_parts(self) -> dict[str, bool]:
        """Which encoder parts the phase optimises (config_*.yaml optimize_*)."""
        return {part: part in OPT[self.phase] for part in self.encoder_parts}

    def checkpoint_layout(self):
        from methods.smirk.checkpoint import SMIRK_LAYOUT

        return SMIRK_LAYOUT

    # -------------------------------------------------------------------------------- setup

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        from fbench.flame import load_flame
        from fbench.render.smirk import smirk_renderer_for
        from methods.smirk import masking

        c, t = self.config, self.t
        if t.init_from:
            self._load_initial(Path(t.init_from))
        self.flame = load_flame(run.flame, n_shape=c.n_shape, n_exp=c.n_exp).to(run.device)
        # image_size 224 and render.full_head False: config_train.yaml:5, 60
        self.renderer = smirk_renderer_for(self.flame, "face", image_size=224).to(run.device)
        for part in self.encoder_parts:
            _freeze(getattr(self.encoder, f"{part}_encoder"), not self.optimised[part])
        notes = run.notes
        if not c.pretrained_backbones and not t.init_from:
            notes["encoder_init"] = ("encoder backbones randomly initialised (official: ImageNet MobileNetV3, "
                                     "smirk_encoder.py:7; -o pretrained_backbones=true reads them from torch's cache)")
        if t.weight("mica_loss") > 0:
            notes["mica_loss"] = (f"MICA shape loss DISABLED (weight {t.weight('mica_loss')}, "
                                  "config_pretrain.yaml:45): fbench has no MICA model")
            _say(notes["mica_loss"])
        if self.generator is not None:
            self.probabilities = masking.face_probabilities(self.flame).to(run.device)
            if t.weight("perceptual_vgg_loss") > 0:
                from fbench.losses import load_vgg_perceptual

                self.vgg = load_vgg_perceptual(notes=notes)
                if self.vgg is not None:
                    self.vgg = self.vgg.to(run.device).eval()
            if t.weight("cycle_loss") > 0:
                self._setup_templates(notes)

    def _setup_templates(self, notes: dict[str, Any]) -> None:
        from fbench.assets import get_asset

        root = Path(self.t.templates) if self.t.templates else get_asset("famos-expression-templates").paths()[0]
        if root.is_dir():
            self.templates = load_templates(root)
        if self.templates:
            notes["cycle_templates"] = f"{len(self.templates)} FaMoS expression templates from {root}"
        else:
            notes["cycle_templates"] = (f"cycle template injection DISABLED: no FaMoS templates at {root} "
                                        "(`fbench fit-flame famos --export-templates DIR`, -o train.templates=DIR); "
                                        "its group gets random expression offsets")
            _say(notes["cycle_templates"])

    def _load_initial(self, path: Path) -> None:
        """train.py:38-39 with load_encoder/load_fuse_generator True (config_train.yaml:2-3)."""
        from methods.smirk.checkpoint import read_state_dict

        layout = self.checkpoint_layout()
        state = read_state_dict(path, layout)
        e, g = layout.encoder_prefix, layout.generator_prefix
        enc = {k[len(e):]: v for k, v in state.items() if k.startswith(e)}
        if not enc:
            raise ValueError(f"{path}: no {e}* weights to start from")
        self.encoder.load_state_dict({k: v.float() for k, v in enc.items()}, strict=True)
        gen = {k[len(g):]: v for k, v in state.items() if k.startswith(g)}
        if gen and self.generator is not None:
            self.generator.load_state_dict({k: v.float() for k, v in gen.items()}, strict=True)

    def modules(self) -> Mapping[str, nn.Module]:
        mods: dict[str, nn.Module] = {f"{self.prefix}_encoder": self.encoder}
        if self.generator is not None:
            mods[f"{self.prefix}_generator"] = self.generator
        return mods

    def configure_optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        lr = self.t.learning_rate()
        params = [p for part in self.optimiser_order if self.optimised[part]  # base_trainer.py:43-51
                  for p in getattr(self.encoder, f"{part}_encoder").parameters()]
        self.encoder_opt = torch.optim.Adam(params, lr=self.t.encoder_lr_scale * lr)
        opts: dict[str, torch.optim.Optimizer] = {"encoder": self.encoder_opt}
        if self.generator is not None:
            self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=tuple(self.t.generator_betas))
            opts["generator"] = self.generator_opt
        return opts

    def on_epoch_start(self, epoch: int) -> None:
        """`--official-optimizer-reset`: the generator's Adam starts every epoch afresh (base_trainer.py:57-62)."""
        from fbench.train import reset_optimizer_state

        if self.t.official_optimizer_reset and self.generator is not None:
            reset_optimizer_state(self.generator_opt)

    # --------------------------------------------------------------------------------- data

    def mix_sets(self) -> list[Any]:
        """The weighted shard sets of the data mix (SMIRK's, methods.smirk.data.smirk_mix)."""
        from methods.smirk.data import SMIRK_MIX, smirk_mix

        t, run = self.t, self.run
        if run.shards is None:
            raise FileNotFoundError(f"fbench train {self.prefix} needs --shards (the folder `fbench prep` wrote)")
        sets = smirk_mix(run.shards, skip_missing=t.skip_missing)
        present = {s.name for s in sets}
        if t.skip_missing and len(present) < len(SMIRK_MIX):
            total = sum(s.weight for s in sets)
            run.notes["data_mix"] = ("SMIRK mix without " + ", ".join(n for n, _ in SMIRK_MIX if n not in present)
                                     + " (skip_missing); renormalised weights: "
                                     + ", ".join(f"{s.name} {s.weight / total:.3f}" for s in sets))
        return sets

    def sample_transform(self) -> Any:
        """The per-sample preparation of the training shards (SMIRK's, methods.smirk.data)."""
        from methods.smirk.data import SmirkDataConfig, SmirkTransform

        return SmirkTransform(SmirkDataConfig(augment=self.t.augment), train=True)

    def train_loader(self, epoch: int) -> Iterable[Any]:
        from fbench.shards.stream import MixedShardDataset

        t, run = self.t, self.run
        data = MixedShardDataset(self.mix_sets(), self.sample_transform(),
                                 batch_size=t.batch_size, batches_per_epoch=t.samples_per_epoch // t.batch_size,
                                 seed=run.seed)
        data.set_epoch(epoch)
        return _Epoch(torch.utils.data.DataLoader(data, batch_size=None, num_workers=t.workers),
                      t.samples_per_epoch // t.batch_size)

    # --------------------------------------------------------------------------------- steps

    def render(self, feats: Mapping[str, Tensor], landmarks: bool = True) -> dict[str, Any]:
        """FLAME and the SMIRK renderer on encoder outputs with the encoder's camera."""
        params: FlameParams = flame_params(dict(feats))
        out = self.flame(params)
        lms = {"landmarks_fan": out.landmarks, "landmarks_mp": out.landmarks_mp} if landmarks else {}
        return self.renderer(out.vertices, params.cam, **lms)

    def first_path(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """smirk_trainer.py:34-179: the weighted first-path loss, its terms and the encoder output."""
        from fbench.losses import landmark_loss, photometric_l1, regulariser
        from methods.smirk import masking

        t = self.t
        img = batch["img"]
        enc = self.encoder(img)
        rend = self.render(enc)
        terms: dict[str, Tensor] = {}
        fan_valid = batch["flag_landmarks_fan"].bool()
        terms["landmark_loss_fan"] = landmark_loss(rend["landmarks_fan"][:, :FAN_JAWLINE],  # :57-58
                                                   batch["landmarks_fan"][:, :FAN_JAWLINE], fan_valid)
        terms["landmark_loss_mp"] = landmark_loss(rend["landmarks_mp"], batch["landmarks_mp"],  # :60
                                                  batch["flag_landmarks_mp"].bool())
        terms["expression_regularization"] = regulariser(enc["expression_params"])  # :64-72, to zero
        terms["shape_regularization"] = regulariser(enc["shape_params"])
        terms["jaw_regularization"] = regulariser(enc["jaw_params"])
        loss = t.weight("landmark_loss") * (terms["landmark_loss_fan"] + terms["landmark_loss_mp"])  # :140-141
        if self.optimised["shape"]:  # :134-135, 150 (MICA disabled)
            loss = loss + t.weight("shape_regularization") * terms["shape_regularization"]
        if self.optimised["expression"]:  # :137-138, 151
            loss = loss + t.weight("expression_regularization") * terms["expression_regularization"] \
                + t.weight("jaw_regularization") * terms["jaw_regularization"]
        recon = None
        if self.generator is not None:  # :75-101
            masked = self.first_path_masked(batch, rend)
            recon = self.generate(masking.generator_input(rend["rendered_img"], masked), enc)
            terms["reconstruction_loss"] = photometric_l1(recon, img)
            loss = loss + t.weight("reconstruction_loss") * terms["reconstruction_loss"]  # :144-146
            if self.vgg is not None:
                terms["perceptual_vgg_loss"] = self.vgg(recon, img)
                loss = loss + t.weight("perceptual_vgg_loss") * terms["perceptual_vgg_loss"]
            self._last = {"img": img, "rendered": rend["rendered_img"], "masked": masked, "recon": recon}
        extra, extra_terms = self.first_path_extra(batch, enc, rend, recon)
        terms.update(extra_terms)
        return loss + extra, terms, enc

    def first_path_masked(self, batch: Mapping[str, Any], rend: Mapping[str, Tensor]) -> Tensor:
        """The generator's masked image in the first path (smirk_trainer.py:75-96)."""
        from methods.smirk import masking

        return masking.masked_image(batch["img"], batch["mask"], rend["rendered_img"], rend["transformed_vertices"],
                                    self.flame.faces, self.probabilities, mask_ratio=self.t.mask_ratio,
                                    radius=self.t.mask_dilation_radius)

    def generate(self, x: Tensor, feats: Mapping[str, Tensor]) -> Tensor:
        """The generator on its input `x`; `feats` is the encoder output the input was made from."""
        return self.generator(x)

    def first_path_extra(self, batch: Mapping[str, Any], enc: Mapping[str, Tensor], rend: Mapping[str, Tensor],
                         recon: Tensor | None) -> tuple[Tensor | float, dict[str, Tensor]]:
        """Extra weighted loss and its logged terms in the first path (none for SMIRK). `recon`
        is the generator's image (None without a generator)."""
        return 0.0, {}

    def cycle_step(self, batch: Mapping[str, Any], enc: Mapping[str, Tensor], freeze_encoder: bool,
                   freeze_generator: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """smirk_trainer.py:184-317: the weighted cycle loss (before backward)."""
        from methods.smirk import masking

        t = self.t
        img, masks = batch["img"], batch["mask"]
        ke = t.Ke
        feats = self.repeat_outputs(enc, ke)  # :193-197
        aug, _ = augment_expressions(feats, self.templates, use_eyelids=t.use_eyelids)
        with torch.no_grad():  # :251-290
            first = self.render({k: v.detach() for k, v in enc.items()}, landmarks=False)
            second = self.render(aug, landmarks=False)
            masked = self.cycle_masked(img.repeat(ke, 1, 1, 1), masks.repeat(ke, 1, 1, 1), first, second)
        recon = self.generate(masking.generator_input(second["rendered_img"], masked).detach(), aug)  # :295
        if freeze_generator:
            recon = recon.detach()  # :296-297
        recon_feats = self.encoder(recon)  # :300
        loss = self.cycle_terms(recon_feats, aug, freeze_generator)
        self._last_cycle = {"rendered": second["rendered_img"], "masked": masked, "recon": recon}
        return t.weight("cycle_loss") * loss, {"cycle_loss": loss}

    def repeat_outputs(self, enc: Mapping[str, Tensor], ke: int) -> dict[str, Tensor]:
        """Detached encoder outputs repeated Ke times along the batch (smirk_trainer.py:193-197)."""
        return {k: torch.cat(ke * [v.detach()], dim=0) for k, v in enc.items()}

    def cycle_masked(self, img: Tensor, masks: Tensor, first: Mapping[str, Tensor],
                     second: Mapping[str, Tensor]) -> Tensor:
        """The cycle path's masked image: the image's pixels moved onto the augmented face
        (smirk_trainer.py:256-290); `first`/`second`: renders of the encoder's and the augmented
        parameters, img and masks already repeated Ke times."""
        from methods.smirk import masking

        ke = img.shape[0] // first["transformed_vertices"].shape[0]
        return masking.cycle_masked_image(img, masks, second["rendered_img"],
                                          first["transformed_vertices"].repeat(ke, 1, 1),
                                          second["transformed_vertices"], self.flame.faces, self.probabilities,
                                          mask_ratio=self.t.mask_ratio, radius=self.t.mask_dilation_radius)

    def cycle_terms(self, recon_feats: Mapping[str, Tensor], aug: Mapping[str, Tensor],
                    freeze_generator: bool) -> Tensor:
        """The unweighted cycle loss (smirk_trainer.py:307-314)."""
        return cycle_loss(recon_feats, aug, self.t.use_eyelids, with_shape=not freeze_generator)

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        batch = {k: (v.to(self.run.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        self.encoder.train()
        if self.generator is not None:
            self.generator.train()
        loss, terms, enc = self.first_path(batch)
        self._zero_grad()
        loss.backward()  # :360-363
        self.encoder_opt.step()
        if self.generator is not None:
            self.generator_opt.step()
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss_first_path"] = float(loss.detach())
        if self.generator is not None and self.t.weight("cycle_loss") > 0:
            # base_trainer.py:265-268: encoder frozen on even steps, generator on odd ones
            freeze_encoder = step % 2 == 0 if self.t.alternate_freezing else False
            freeze_generator = step % 2 == 1 if self.t.alternate_freezing else False
            if freeze_encoder:
                _freeze(self.encoder, True)
            if freeze_generator:
                _freeze(self.generator, True)
            try:
                loss2, terms2 = self.cycle_step(batch, enc, freeze_encoder, freeze_generator)
                self._zero_grad()
                loss2.backward()
                if not freeze_generator:  # :377-379
                    sync_gradients(self.generator.parameters())
                    torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.t.generator_clip)
                if not freeze_encoder:
                    self.encoder_opt.step()
                if not freeze_generator:
                    self.generator_opt.step()
            finally:
                _freeze(self.generator, False)
                for part in self.encoder_parts:
                    _freeze(getattr(self.encoder, f"{part}_encoder"), not self.optimised[part])
            logs.update({k: float(v.detach()) for k, v in terms2.items()})
        return logs

    def _zero_grad(self) -> None:
        self.encoder_opt.zero_grad()
        if self.generator is not None:
            self.generator_opt.zero_grad()

    def visualize(self, batch: Any, step: int) -> Tensor | None:
        last = getattr(self, "_last", None)
        if last is None:
            return None
        rows = [last["img"], last["rendered"], last["masked"], last["recon"]]
        cyc = getattr(self, "_last_cycle", None)
        if cyc is not None and cyc["recon"].shape[0] == last["img"].shape[0]:
            rows += [cyc["rendered"], cyc["masked"], cyc["recon"]]
        return torch.stack([r.detach().float().cpu().clamp(0, 1) for r in rows], 1).flatten(0, 1)

    def export(self, out: Path) -> list[Path]:
        """SMIRK.pt in the official layout (smirk_encoder.* / smirk_generator.*, base_trainer.py:226-233)."""
        from methods.smirk.checkpoint import save_checkpoint
        from methods.smirk.model import SmirkModel

        return [save_checkpoint(SmirkModel(self.encoder, self.generator), out / "SMIRK.pt")]


class _Epoch:
    """A loader with the epoch's length (SMIRK: samples_per_epoch // batch_size batches per rank)."""

    def __init__(self, loader: Iterable[Any], length: int) -> None:
        self.loader, self.length = loader, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(self.loader)


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr)

