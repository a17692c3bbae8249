"""Fit FLAME to registrations: meshes already in FLAME topology (FaMoS), vertex to vertex.

Objective per frame (TF_FLAME's ``fit_3D_mesh``: squared vertex distances plus L2 priors
on expression, neck, jaw and eyeball pose, rigid stage first):

    E = mean_v w_v |1000 (v_v(x) - t_v)|^2  +  sum_f lambda_f |x_f|^2

in mm^2 per vertex. TF_FLAME weighs the summed squared distance in metres by 1000 and
every prior by 1e-4; per vertex in mm^2 that is a prior weight of 1e-4 / (1e-3 V), i.e.
2e-5 for FLAME2020's 5023 vertices, our default.

Identity: a subject's shape is fitted once, jointly on its neutral frames (the first frame
of every FaMoS sequence starts from the neutral face), with per-frame pose and a stronger
expression prior so that the shared shape explains what the neutral frames have in
common. SMIRK instead used each subject's neutral template as FLAME's template; a fitted
shape keeps the templates in FLAME's identity space and costs one small joint fit.

Frames: batched over consecutive frames of a sequence (independent problems solved in
lockstep by :func:`batched_lbfgs`), each batch warm-started from the last fitted frame of
the previous one. Stage 1 (rigid): closed-form Umeyama (no scale) of the head's rigid
vertices, composed onto FLAME's global rotation and translation. Stage 2: all per-frame
variables (global rotation, translation, neck, jaw, eyes, expression) by preconditioned
L-BFGS in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from fbench.checks import check_fields, limits
from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout, compose_rigid, finite_difference_jacobian, rigid_vertex_ids
from fbench.fitting.lbfgs import LbfgsOptions, Preconditioner, batched_lbfgs
from fbench.flame import FLAME, FlameParams
from fbench.geometry import umeyama

MM = 1000.0


@dataclass
class PriorWeights:
    """L2 prior weights (loss units: mean squared vertex error in mm^2 per unit^2)."""

    shape: float = field(default=2e-5, metadata=limits(ge=0))
    expression: float = field(default=2e-5, metadata=limits(ge=0))
    neck: float = field(default=2e-5, metadata=limits(ge=0))
    jaw: float = field(default=2e-5, metadata=limits(ge=0))
    eyes: float = field(default=2e-5, metadata=limits(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class RegistrationFitConfig:
    n_exp: int = field(default=100, metadata=limits(ge=1, le=100))  # expression components fitted (SMIRK's templates use the first 50)
    batch_size: int = field(default=50, metadata=limits(ge=1))  # frames solved together (50 is about where CPU caches stop helping)
    priors: PriorWeights = field(default_factory=PriorWeights)
    rigid_stage: bool = True
    lbfgs: LbfgsOptions = field(default_factory=LbfgsOptions)
    # Identity (shape) from the subject's neutral frames.
    identity_max_frames: int = field(default=16, metadata=limits(ge=1))
    identity_expression_weight: float = field(default=1e-2, metadata=limits(ge=0))
    identity_lbfgs: LbfgsOptions = field(default_factory=lambda: LbfgsOptions(max_iterations=100, history=50))
    identity_rounds: int = field(default=3, metadata=limits(ge=1))  # L-BFGS restarts with the preconditioner rebuilt at the current poses

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class FrameFit:
    params: FlameParams  # (N,) fitted parameters (shape included), float64
    loss: Tensor  # (N,)
    iterations: Tensor  # (N,)
    converged: Tensor  # (N,) bool
    vertices: Tensor  # (N, V, 3) fitted meshes, metres


@dataclass
class IdentityFit:
    shape: Tensor  # (n_shape,)
    frames: FrameFit  # the neutral frames' fits


def prior_energy(x: Tensor, layout: Layout, priors: PriorWeights, expression_weight: float | None = None) -> Tensor:
    sl = layout.slices()
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for name, weight in (("neck", priors.neck), ("jaw", priors.jaw), ("eyes", priors.eyes),
                         ("expression", priors.expression if expression_weight is None else expression_weight)):
        if name in sl and weight:
            total = total + weight * (x[:, sl[name]] ** 2).sum(-1)
    return total


def prior_diagonal(layout: Layout, priors: PriorWeights, expression_weight: float | None = None) -> Tensor:
    diag = torch.zeros(layout.size, dtype=torch.float64)
    sl = layout.slices()
    for name, weight in (("neck", priors.neck), ("jaw", priors.jaw), ("eyes", priors.eyes),
                         ("expression", priors.expression if expression_weight is None else expression_weight)):
        if name in sl:
            diag[sl[name]] = 2.0 * weight
    return diag


def vertex_hessian(model: FittingFlame, layout: Layout, vertex_weights: Tensor | None = None,
                   with_shape: bool = False, at: Tensor | None = None, with_scale: bool = False) -> Tensor:
    """Gauss-Newton Hessian 2 J^T W J / V of the mean squared vertex error (mm).

    Columns: the shape (when ``with_shape``), a log-scale of the whole mesh (when
    ``with_scale``), then ``layout``; evaluated at the frame variables ``at`` (P,), the
    neutral pose by default. The expression and pose blocks barely depend on the global
    rotation (J^T J is invariant when all residuals rotate together), so one matrix at
    the neutral pose serves every frame of a subject as the L-BFGS preconditioner. Joint
    identity fits evaluate it per frame instead: there the shape's near-rigid components
    trade off against the global pose, which does depend on the pose.
    """
    sl = layout.slices()
    n_shape = model.n_shape if with_shape else 0
    w = vertex_weights.to(torch.float64) if vertex_weights is not None else torch.ones(model.num_vertices,
                                                                                      dtype=torch.float64)
    w = (w / w.mean()).repeat(3)  # planar order: all x, all y, all z
    x0 = torch.zeros(1, layout.size, dtype=torch.float64)
    if at is not None:
        x0[0] = at.to(torch.float64)
    shape0 = torch.zeros(1, n_shape, dtype=torch.float64) if n_shape else None
    pose_names = [name for name, _ in layout.fields if name != "expression"]
    pose_cols = torch.cat([torch.arange(sl[name].start, sl[name].stop) for name in pose_names])

    def verts(xp: Tensor) -> Tensor:
        full = x0.expand(xp.shape[0], -1).clone()
        full[:, pose_cols] = xp
        return model.from_vector(full, sl, shape0, planar=True).reshape(xp.shape[0], -1)

    cols = []
    if n_shape:
        cols.append(model.linear_jacobian(x0, sl, "shape"))
    if with_scale:
        with torch.no_grad():
            cols.append(model.from_vector(x0, sl, shape0, planar=True).reshape(-1, 1))
    pose_jac = finite_difference_jacobian(verts, x0[0, pose_cols])
    frame = torch.zeros(3 * model.num_vertices, layout.size, dtype=torch.float64)
    frame[:, pose_cols] = pose_jac
    frame[:, sl["expression"]] = model.linear_jacobian(x0, sl, "expression")
    cols.append(frame)
    jac = torch.cat(cols, dim=1) * MM * w.sqrt()[:, None]
    return 2.0 * jac.T @ jac / model.num_vertices


def frame_preconditioner(model: FittingFlame, layout: Layout, priors: PriorWeights,
                         vertex_weights: Tensor | None = None) -> Preconditioner:
    return Preconditioner(vertex_hessian(model, layout, vertex_weights) + torch.diag(prior_diagonal(layout, priors)))


def rigid_align(model: FittingFlame, x: Tensor, layout: Layout, targets: Tensor, rigid_ids: Tensor,
                shape: Tensor | None = None) -> Tensor:
    """Stage 1: per row, move frame variables ``x`` rigidly so the head's rigid vertices best match ``targets``."""
    sl = layout.slices()
    with torch.no_grad():
        current = model.from_vector(x, sl, shape)[:, rigid_ids].double().cpu().numpy()
    goal = targets[:, rigid_ids].double().cpu().numpy()
    rots, offsets = [], []
    for src, dst in zip(current, goal):
        sim = umeyama(src, dst, with_scale=False)
        rots.append(sim.rotation)
        offsets.append(sim.translation)
    root = model.root
    if shape is not None:
        root = root + (shape[:1, :model.n_shape] @ model.shape_joint_dirs)[0, :3]
    pose, trans = compose_rigid(x[:, sl["global_pose"]], x[:, sl["translation"]],
                                torch.as_tensor(np.stack(rots), dtype=x.dtype),
                                torch.as_tensor(np.stack(offsets), dtype=x.dtype), root)
    out = x.clone()
    out[:, sl["global_pose"]] = pose
    out[:, sl["translation"]] = trans
    return out


def fit_frames(model: FittingFlame, targets: Tensor, init: FlameParams, config: RegistrationFitConfig,
               masks: dict[str, Tensor] | None = None, precond: Preconditioner | None = None,
               vertex_weights: Tensor | None = None, progress: Callable[[int], None] | None = None) -> FrameFit:
    """Fit consecutive frames of one subject whose identity ``model`` carries (see FittingFlame).

    Args:
        model: the subject's FittingFlame (float64).
        targets: (N, V, 3) registered vertices in metres.
        init: one row of starting parameters for the first batch (e.g. the sequence's neutral fit).
        masks: FLAME vertex masks (fallback for the rigid stage's vertex choice).
        precond: reuse a preconditioner across sequences of the subject (built if None).
        progress: called with the number of frames finished after each batch.
    """
    n_frames, n_verts = targets.shape[0], targets.shape[1]
    if n_verts != model.num_vertices:
        raise ValueError(f"registrations have {n_verts} vertices, the FLAME model {model.num_vertices}")
    dtype = torch.float64
    targets = targets.to(dtype)
    layout = Layout.frame(config.n_exp)
    sl = layout.slices()
    if precond is None:
        precond = frame_preconditioner(model, layout, config.priors, vertex_weights)
    w = (vertex_weights if vertex_weights is not None else torch.ones(n_verts, dtype=dtype)).to(dtype)
    w = w / w.mean()
    uniform = vertex_weights is None
    rigid_ids = rigid_vertex_ids(model, masks or {})
    warm = layout.pack(init.to(dtype=dtype))[:1]
    xs, losses, iters, conv = [], [], [], []
    for start in range(0, n_frames, max(1, config.batch_size)):
        chunk = targets[start:start + config.batch_size]
        x0 = warm.expand(chunk.shape[0], -1).clone()
        if config.rigid_stage:
            x0 = rigid_align(model, x0, layout, chunk, rigid_ids)

        goal = chunk.transpose(1, 2).contiguous()  # planar, like the model's output

        def loss(x: Tensor, rows: Tensor, goal: Tensor = goal) -> Tensor:
            diff = model.from_vector(x, sl, planar=True) - goal[rows]
            sq = diff * diff if uniform else diff * diff * w
            return sq.sum((1, 2)) * (MM * MM / n_verts) + prior_energy(x, layout, config.priors)

        res = batched_lbfgs(loss, x0, precond, config.lbfgs)
        xs.append(res.x)
        losses.append(res.loss)
        iters.append(res.iterations)
        conv.append(res.converged)
        warm = res.x[-1:]
        if progress is not None:
            progress(chunk.shape[0])
    x = torch.cat(xs)
    with torch.no_grad():
        vertices = model.from_vector(x, sl)
    return FrameFit(params=layout.unpack(x, FlameParams.zeros(1, n_shape=0, n_exp=config.n_exp, dtype=dtype)),
                    loss=torch.cat(losses), iterations=torch.cat(iters), converged=torch.cat(conv),
                    vertices=vertices)


def arrow_hessian(blocks: list[Tensor], n_shared: int, shared_prior: Tensor, frame_prior: Tensor) -> Tensor:
    """Hessian of shared variables (first ``n_shared``) plus per-frame ones, from per-frame blocks.

    ``blocks[k]`` is frame k's Hessian over [shared | frame k]; the result is the arrow
    matrix over [shared | frame 0 | frame 1 | ...] with the given prior diagonals added.
    """
    k = len(blocks)
    p = blocks[0].shape[0] - n_shared
    size = n_shared + k * p
    big = torch.zeros(size, size, dtype=blocks[0].dtype)
    big[:n_shared, :n_shared] = torch.diag(shared_prior)
    for i, h in enumerate(blocks):
        block = slice(n_shared + i * p, n_shared + (i + 1) * p)
        big[:n_shared, :n_shared] += h[:n_shared, :n_shared]
        big[:n_shared, block] = h[:n_shared, n_shared:]
        big[block, :n_shared] = h[n_shared:, :n_shared]
        big[block, block] = h[n_shared:, n_shared:] + torch.diag(frame_prior)
    return big


def fit_identity(flame: FLAME, targets: Tensor, config: RegistrationFitConfig,
                 vertex_weights: Tensor | None = None) -> IdentityFit:
    """Fit one shape shared by the neutral frames ``targets`` (K, V, 3), with per-frame pose and expression."""
    dtype = torch.float64
    k, n_verts = targets.shape[0], targets.shape[1]
    if n_verts != flame.num_vertices:
        raise ValueError(f"registrations have {n_verts} vertices, the FLAME model {flame.num_vertices}")
    targets = targets.to(dtype)
    model = FittingFlame(flame, n_exp=config.n_exp, free_shape=True)
    layout = Layout.frame(config.n_exp)
    sl = layout.slices()
    n_shape = model.n_shape
    p = layout.size
    w = (vertex_weights if vertex_weights is not None else torch.ones(n_verts, dtype=dtype)).to(dtype)
    w = w / w.mean()

    frames0 = torch.zeros(k, p, dtype=dtype)
    if config.rigid_stage:
        frames0 = rigid_align(model, frames0, layout, targets, rigid_vertex_ids(model, flame.masks))
    x0 = torch.cat([torch.zeros(n_shape, dtype=dtype), frames0.reshape(-1)])[None]

    def loss(x: Tensor, rows: Tensor) -> Tensor:
        frames = x[0, n_shape:].reshape(k, p)
        v = model.from_vector(frames, sl, x[:, :n_shape])
        d2 = ((v - targets) * MM).pow(2).sum(-1)
        data = (d2 * w).mean(-1) + prior_energy(frames, layout, config.priors, config.identity_expression_weight)
        return (data.sum() + config.priors.shape * (x[0, :n_shape] ** 2).sum())[None]

    # Arrow-shaped Gauss-Newton preconditioner from J_k = [J_shape | J_frame] of every frame at its
    # rigidly aligned start.
    # The preconditioner is rebuilt at the current poses every round: the synthetic model's
    # near-rigid shape components trade off against the global pose along a curved valley.
    x = x0
    for _ in range(max(1, config.identity_rounds)):
        frames_now = x[0, n_shape:].reshape(k, p)
        blocks = [vertex_hessian(model, layout, vertex_weights, with_shape=True, at=frames_now[i]) for i in range(k)]
        big = arrow_hessian(blocks, n_shape, torch.full((n_shape,), 2.0 * config.priors.shape, dtype=dtype),
                            prior_diagonal(layout, config.priors, config.identity_expression_weight))
        res = batched_lbfgs(loss, x, Preconditioner(big), config.identity_lbfgs)
        x = res.x
        if bool(res.converged.all()):
            break
    shape = res.x[0, :n_shape].detach()
    frames = res.x[0, n_shape:].reshape(k, p)
    with torch.no_grad():
        vertices = model.from_vector(frames, sl, shape[None])
    frame_loss = ((vertices - targets) * MM).pow(2).sum(-1).mul(w).mean(-1)
    params = layout.unpack(frames, FlameParams.zeros(1, n_shape=n_shape, n_exp=config.n_exp, dtype=dtype))
    params.shape = shape[None].expand(k, -1).clone()
    fit = FrameFit(params=params, loss=frame_loss, iterations=res.iterations.expand(k),
                   converged=res.converged.expand(k), vertices=vertices)
    return IdentityFit(shape=shape, frames=fit)


def fit_subject_frames(flame: FLAME, shape: Tensor, targets: Tensor, init: FlameParams,
                       config: RegistrationFitConfig, **kwargs) -> FrameFit:
    """Convenience: fit ``targets`` of a subject with identity ``shape``; the result's params carry the shape."""
    model = FittingFlame(flame, shape, n_exp=config.n_exp)
    kwargs.setdefault("masks", flame.masks)
    fit = fit_frames(model, targets, init, config, **kwargs)
    fit.params.shape = shape.reshape(1, -1).to(torch.float64).expand(targets.shape[0], -1).clone()
    return fit


def vertex_errors_mm(pred: Tensor, target: Tensor) -> Tensor:
    """(N, V) per-vertex Euclidean distances in mm between meshes in metres."""
    return (pred.double() - target.double()).norm(dim=-1) * MM
