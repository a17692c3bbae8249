"""fbench's dataset pipelines, one module per dataset.

The registry entries (entry-point group `fbench.pipelines`, see pyproject.toml) are declared
here and are light: a pipeline's module (its readers, fitting code and command) is imported
only when its command is used, so listing pipelines or choosing one by stage imports nothing
heavy. Each module defines `command()`, built with `fbench.cli.prep.prep_command` (stage
"prep") or `fbench.cli.fit.fit_command` (stage "fit").
"""

from __future__ import annotations

from importlib import import_module

from fbench.plugins import PipelinePlugin


def _command(module: str):
    return lambda: import_module(f"pipelines.{module}").command()


def _pipeline(name: str, stage: str, summary: str) -> PipelinePlugin:
    return PipelinePlugin(name=name, summary=summary, stage=stage, make_command=_command(name), synth=name)


AFFECTNET = _pipeline("affectnet", "prep", "AffectNet faces with 68 landmarks, expression, valence, arousal -> "
                                           "face crops (train/val)")
CELEBA = _pipeline("celeba", "prep", "CelebA faces with 5 landmarks and identities -> face crops (train/val/test)")
FFHQ = _pipeline("ffhq", "prep", "FFHQ aligned portraits with 68 landmarks -> face crops (train/val)")
LRS3 = _pipeline("lrs3", "prep", "LRS3-TED talking-head clips -> per-frame face crops (train/val by speaker)")
MEAD = _pipeline("mead", "prep", "MEAD emotional talking faces, 7 views -> per-frame face crops (split by actor)")
FAMOS = _pipeline("famos", "fit", "FLAME fits of FaMoS registrations (SMIRK expression templates)")
BP4D = _pipeline("bp4d", "fit", "FLAME fits of BP4D-Spontaneous 3D scans (FIELDS supervision)")
