"""FIELDS' training recipe as a `fbench.plugins.TrainingTask` (`fbench train fields`).

FIELDS (Ling, Shi, Kjellström, arXiv 2511.21245) has no public code: what the paper states is in
REFERENCE.md ("FIELDS — what is public"); everything else here is ours, marked
`# FIELDS choice (ours)` and listed with its reason in docs/methods/fields.md.

The task is the base trainer (TEASER's, itself SMIRK's with tokens) with:
- the emotion head (`methods.fields.head`), trained from random initialisation;
- L_3D-GT on BP4D samples, L_emo with its intensity-aware parts on AffectNet samples, and the
  base-model regulariser (`methods.fields.losses`), added to the base's first-path loss (the
  inherited 2D terms and the cycle path stay as the base trains them);
- the pose encoder frozen (the paper), every other encoder part trained;
- two steps (ours): step 1 with the synthesizer frozen (no optimiser, eval-mode normalisation),
  step 2 everything but the pose encoder jointly at `step2_lr_scale` x the rates;
- the data recipe of `methods.fields.data` (base mix + BP4D + AffectNet, fixed per-batch shares).

The frozen base model for the regulariser is a module, `fields_base_encoder`, copied from the
encoder at the first training step of a run unless it was loaded (its `ready` flag): so it is the
initial encoder after `-o train.init_from=...` or the loop's `--init`, it is checkpointed and
resumed with the run, and step 2 initialised from step 1 keeps step 1's base.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from methods.fields.head import EmotionHead
from methods.fields.losses import base_regulariser, emotion_loss, exaggeration_loss, gt3d_loss
from methods.teaser.task import TeaserTask as BaseTask


class FrozenBase(nn.Module):
    """A frozen copy of the initial encoder; `ready` says whether it holds the initial weights yet.

    Its forward runs in the mode it is given: in training, the trained encoder normalises with
    batch statistics, so the base does too (else the two differ by their normalisation alone,
    a large gap for an encoder whose running statistics are still the defaults); its BatchNorm
    momentum is 0, so its running statistics never move."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.encoder.requires_grad_(False)
        for m in self.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def copy_from(self, encoder: nn.Module) -> None:
        self.encoder.load_state_dict(encoder.state_dict())
        self.ready.fill_(True)

    @torch.no_grad()
    def forward(self, img: Tensor, batch_statistics: bool = True) -> dict[str, Tensor]:
        was = self.encoder.training
        self.encoder.train(batch_statistics)
        try:
            return self.encoder(img)
        finally:
            self.encoder.train(was)


class _NoStep:
    """The synthesizer's optimiser in step 1: it is frozen, so the shared training step's
    `generator_opt.step()` / `zero_grad()` leave it as it is."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.params = list(params)
        self.state: dict = {}  # nothing to forget (`-o train.official_optimizer_reset=true` clears it)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        pass


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    module.eval()


class FieldsTask(BaseTask):
    """`fbench train fields`: see the module docstring."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.head = EmotionHead(config.emotion_head, config.n_exp, config.n_shape)
        self.base = FrozenBase(self.encoder)
        self.losses = self.t.losses

    def optimised_parts(self) -> dict[str, bool]:
        """The paper: only the pose encoder is frozen; TEASER's token encoder trains too (it has a use
        only with the synthesizer, as in TEASER's trainer)."""
        parts = {part: part != "pose" or not self.t.freeze_pose for part in self.encoder_parts}
        parts["token"] = self.generator is not None
        return parts

    # -------------------------------------------------------------------------------- setup

    def setup(self, run) -> None:
        super().setup(run)
        notes = run.notes
        notes["fields_step"] = (f"step {self.t.step}: " + (
            "synthesizer frozen; encoders (pose frozen) and emotion head trained" if self.t.step == "1" else
            f"encoders (pose frozen), synthesizer and head jointly at {self.t.step2_lr_scale} x the rates"))
        if not self.losses.gt3d:
            notes["gt3d_loss"] = "L_3D-GT DISABLED (train.losses.gt3d false: the ablation)"
        # frozen = fixed weights and fixed normalisation statistics; the shared step puts modules in train mode
        if self.generator is not None and self.t.step == "1":
            self.generator.register_forward_pre_hook(_keep_eval)
        if not self.optimised["pose"]:  # FIELDS choice (ours): the frozen pose encoder keeps its statistics too
            self.encoder.pose_encoder.register_forward_pre_hook(_keep_eval)

    def _load_initial(self, path: Path) -> None:
        """`train.init_from`: a release-layout checkpoint of the base (TEASER.pt; a FIELDS.pt's
        head is ignored), or a run folder (its exported release checkpoint, else its
        checkpoints/last.pt)."""
        from methods.fields.checkpoint import base_state

        layout = self.checkpoint_layout()
        state = base_state(path, layout)
        e, g = layout.encoder_prefix, layout.generator_prefix
        enc = {k[len(e):]: v for k, v in state.items() if k.startswith(e)}
        self.encoder.load_state_dict({k: v.float() for k, v in enc.items()}, strict=True)
        gen = {k[len(g):]: v for k, v in state.items() if k.startswith(g)}
        if gen and self.generator is not None:
            self.generator.load_state_dict({k: v.float() for k, v in gen.items()}, strict=True)

    def modules(self) -> Mapping[str, nn.Module]:
        mods = dict(super().modules())
        mods["fields_emotion_head"] = self.head
        mods["fields_base_encoder"] = self.base
        return mods

    def _encoder_parameters(self) -> list[nn.Parameter]:
        """The optimised encoder parts' parameters, in the base's optimiser order."""
        return [p for part in self.optimiser_order if self.optimised[part]
                for p in getattr(self.encoder, f"{part}_encoder").parameters()]

    def configure_optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        t = self.t
        scale = t.step_scale()
        lr = t.learning_rate() * scale
        self.encoder_opt = torch.optim.Adam(self._encoder_parameters(), lr=t.encoder_lr_scale * lr)
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=t.head_lr * scale)
        opts: dict[str, torch.optim.Optimizer] = {"encoder": self.encoder_opt, "emotion_head": self.head_opt}
        if self.generator is not None:
            if t.step == "1":
                self.generator_opt = _NoStep(self.generator.parameters())  # type: ignore[assignment]
            else:
                self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=lr,
                                                      betas=tuple(t.generator_betas))
                opts["generator"] = self.generator_opt
        return opts

    # --------------------------------------------------------------------------------- data

    def mix_sets(self) -> list[Any]:
        """The base mix plus BP4D and AffectNet in fixed per-batch shares (methods.fields.data)."""
        from methods.fields.data import fields_mix

        t, run = self.t, self.run
        sets, notes = fields_mix(run.shards, t.bp4d_shards or None, t.affectnet_shards or None, t.data,
                                 skip_missing=t.skip_missing, base_mix=self._base_mix)
        total = sum(s.weight for s in sets)
        run.notes["data_mix"] = ", ".join(f"{s.name} {s.weight / total:.3f}" for s in sets) \
            + ("; " + "; ".join(notes) if notes else "")
        return sets

    def _base_mix(self, root: Path, skip_missing: bool = False) -> list[Any]:
        """The base trainer's mix from `root` (its notes land in the run's notes)."""
        import dataclasses

        saved = self.run
        self.run = dataclasses.replace(saved, shards=root)  # the same notes dict
        try:
            return super().mix_sets()
        finally:
            self.run = saved

    def sample_transform(self) -> Any:
        from methods.fields.data import FieldsTransform
        from methods.smirk.data import SmirkDataConfig

        return FieldsTransform(self.config.n_exp, SmirkDataConfig(augment=self.t.augment), self.t.data, train=True)

    # --------------------------------------------------------------------------------- steps

    def fields_losses(self, batch: Mapping[str, Any], enc: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """FIELDS' added terms (weighted total, unweighted terms) on the encoder output of `batch`."""
        c = self.losses
        total = enc["expression_params"].sum() * 0.0
        terms: dict[str, Tensor] = {}
        if c.gt3d and c.gt3d_weight > 0:
            loss, parts = gt3d_loss(enc, batch, c)
            terms.update(parts, gt3d_loss=loss)
            total = total + c.gt3d_weight * loss
        if c.emo_weight > 0:
            loss, parts = emotion_loss(self.head(enc), batch, c)
            terms.update(parts, emo_loss=loss)
            total = total + c.emo_weight * loss
        need_base = c.base_weight > 0 or (c.intensity_aware and c.exaggeration_weight > 0)
        if need_base:
            base = self.base(batch["img"], batch_statistics=self.encoder.training)
            if c.base_weight > 0:
                terms["base_regularization"] = base_regulariser(enc, base, c.base_params)
                total = total + c.base_weight * terms["base_regularization"]
            if c.intensity_aware and c.exaggeration_weight > 0:
                terms["exaggeration"] = exaggeration_loss(enc["expression_params"], base["expression_params"], batch, c)
                total = total + c.exaggeration_weight * terms["exaggeration"]
        return total, terms

    def first_path_extra(self, batch: Mapping[str, Any], enc: Mapping[str, Tensor], rend: Mapping[str, Tensor],
                         recon: Tensor | None) -> tuple[Tensor | float, dict[str, Tensor]]:
        """The base's extra terms (TEASER's) plus FIELDS'."""
        loss, terms = super().first_path_extra(batch, enc, rend, recon)
        extra, more = self.fields_losses(batch, enc)
        return loss + extra, {**terms, **more}

    def training_step(self, batch: Any, step: int) -> Mapping[str, float]:
        if not bool(self.base.ready):  # the initial encoder, once per run (module docstring)
            self.base.copy_from(self.encoder)
        self.head.train()
        self.head_opt.zero_grad()
        logs = dict(super().training_step(batch, step))
        # the head is only in the first path, whose backward filled its gradients (the cycle path's
        # zero_grad is the base's, which does not touch the head)
        self.head_opt.step()
        return logs

    def export(self, out: Path) -> list[Path]:
        """FIELDS.pt: the base's release layout plus `emotion_head.*` (methods.fields.checkpoint)."""
        from methods.fields.checkpoint import save_checkpoint
        from methods.fields.model import FieldsModel

        return [save_checkpoint(FieldsModel(self.encoder, self.generator, self.head), out / "FIELDS.pt")]

