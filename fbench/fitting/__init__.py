"""FLAME-to-mesh and FLAME-to-scan optimisation.

* :mod:`fbench.fitting.registration`: meshes in FLAME topology (FaMoS registrations),
  vertex to vertex, TF_FLAME-style priors, identity from neutral frames.
* :mod:`fbench.fitting.scan`: raw scans (BP4D), landmark initialisation, robust
  Geman-McClure scan-to-mesh + landmark terms, flame-fitting-style.
* :mod:`fbench.fitting.lbfgs`: batched, preconditioned L-BFGS (one problem per frame).
* :mod:`fbench.fitting.fast_flame`: the lean float64 FLAME forward used by both.
* :mod:`fbench.fitting.store`: ``fits.h5``, resumable parts, SMIRK template export.
"""

from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout
from fbench.fitting.lbfgs import LbfgsOptions, LbfgsResult, Preconditioner, batched_lbfgs
from fbench.fitting.registration import (
    FrameFit,
    IdentityFit,
    PriorWeights,
    RegistrationFitConfig,
    fit_frames,
    fit_identity,
    fit_subject_frames,
    vertex_errors_mm,
)
from fbench.fitting.scan import ScanFitConfig, ScanFrame, ScanSubjectFit, fit_scan_subject, initial_transforms
from fbench.fitting.store import FitStore, SequenceFit, export_templates, read_fits

__all__ = [
    "FitStore", "FittingFlame", "FrameFit", "IdentityFit", "Layout", "LbfgsOptions", "LbfgsResult",
    "Preconditioner", "PriorWeights", "RegistrationFitConfig", "ScanFitConfig", "ScanFrame", "ScanSubjectFit",
    "SequenceFit", "batched_lbfgs", "export_templates", "fit_frames", "fit_identity", "fit_scan_subject",
    "fit_subject_frames", "initial_transforms", "read_fits", "vertex_errors_mm",
]
