"""fbench's dataset pipelines, one module per dataset (BP4D: two, one per stage).

The registry entries (entry-point group `fbench.pipelines`, see pyproject.toml) are declared
here and are light: a pipeline's module (its readers, fitting code and command) is imported
only when its command is used, so listing pipelines or choosing one by stage imports nothing
heavy. Each module defines `command()`, built with `fbench.cli.prep.prep_command` (stage
"prep") or `fbench.cli.fit.fit_command` (stage "fit"); a record maps each stage it offers to
the module that builds that stage's command.
"""

from __future__ import annotations

from importlib import import_module

from fbench.plugins import PipelinePlugin


def _command(module: str):
    return lambda: import_module(f"pipelines.{module}").command()


def _pipeline(name: str, summary: str, **modules: str) -> PipelinePlugin:
    """The record of pipeline `name`: `prep=`/`fit=` name the module (under pipelines/) of each stage."""
    return PipelinePlugin(name=name, summary=summary, commands={stage: _command(m) for stage, m in modules.items()},
                          synth=name)


AFFECTNET = _pipeline("affectnet", "AffectNet faces with 68 landmarks, expression, valence, arousal -> face crops "
                                   "(train/val)", prep="affectnet")
CELEBA = _pipeline("celeba", "CelebA faces with 5 landmarks and identities -> face crops (train/val/test)",
                   prep="celeba")
FFHQ = _pipeline("ffhq", "FFHQ aligned portraits with 68 landmarks -> face crops (train/val)", prep="ffhq")
LRS3 = _pipeline("lrs3", "LRS3-TED talking-head clips -> per-frame face crops (train/val by speaker)", prep="lrs3")
MEAD = _pipeline("mead", "MEAD emotional talking faces, 7 views -> per-frame face crops (split by actor)", prep="mead")
FAMOS = _pipeline("famos", "FLAME fits of FaMoS registrations (SMIRK expression templates)", fit="famos")
BP4D = _pipeline("bp4d", "BP4D-Spontaneous: FLAME fits of the 3D scans (fit-flame); the 2D frames with their fits' "
                         "expression, jaw, eyelid targets -> face crops (prep; FIELDS supervision)",
                 fit="bp4d", prep="bp4d_frames")
