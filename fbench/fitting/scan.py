"""Fit FLAME to raw 3D scans (BP4D-Spontaneous): not in FLAME topology, noisy, with holes, any units.

Following flame-fitting (Li et al. 2017, ``fit_scan.py``):

1. **Landmark initialisation.** Per frame, Umeyama with scale between FLAME's 68 fixed
   3D landmarks on the mean head and the scan's 3D landmarks (the inner 51 by default:
   contour points on a scan are ill-defined) gives ``scan ~ s R flame + t``. With known
   units (``scan_units: mm``) the scale is fixed to the unit factor (1000 mm per metre)
   and only R, t are kept; with ``unknown`` units the subject's median scale is used and
   refined later (flame-fitting's ``compute_approx_scale``). Every scan is then mapped
   into FLAME's space (metres) by the inverse transform.
2. **Joint identity fit** on a few frames spread over the subject's tasks: one shape
   (and log-scale when units are unknown) shared by the frames, per-frame global pose,
   translation, neck, jaw, eyes and expression, minimising

       w_s2m mean_i rho_GM(n_i . (p_i - c_i)) + w_lmk mean_l |L_l - q_l|^2 + priors

   over scan points p_i whose closest fitted-mesh point c_i (normal n_i) lies on the
   face region and within ``max_distance_mm``; rho_GM is the Geman-McClure robustifier
   ``sigma^2 r^2 / (sigma^2 + r^2)`` (flame-fitting's ``GMOf``), distances in mm.
   Correspondences are recomputed each round (ICP-style) and held fixed within a round.
3. **Per-frame fits** of every frame with the shape fixed, batched and warm-started along
   each sequence, with the same objective.

Residuals are exact point-to-surface distances (``fbench.geometry``) from the scan's
face-region points to the fit, in the scan's units.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from fbench.checks import check_fields, limits
from fbench.fitting.fast_flame import FittingFlame
from fbench.fitting.flame_ops import Layout
from fbench.fitting.lbfgs import LbfgsOptions, Preconditioner, batched_lbfgs
from fbench.fitting.registration import (
    MM,
    PriorWeights,
    arrow_hessian,
    prior_diagonal,
    prior_energy,
    vertex_hessian,
)
from fbench.flame import FLAME, FlameParams
from fbench.geometry import ClosestPointIndex, MeshTopology, Similarity, umeyama

log = logging.getLogger(__name__)

INNER_LANDMARKS = tuple(range(17, 68))  # iBUG-68 without the 17 jaw-contour points
UNIT_SCALE = {"mm": 1000.0, "m": 1.0}


@dataclass
class ScanFitConfig:
    n_exp: int = field(default=100, metadata=limits(ge=1, le=100))
    scan_units: Literal["mm", "m", "unknown"] = "mm"
    init_landmarks: Literal["inner", "all"] = "inner"  # for the Umeyama initialisation
    fit_landmarks: Literal["inner", "all"] = "all"  # in the landmark term
    min_landmarks: int = field(default=6, metadata=limits(ge=3, le=68))  # fewer valid landmarks: the frame borrows its neighbour's transform
    # No frame of a subject with usable landmarks (e.g. BP4D+'s 83-point files without a 68-point map):
    # initialise each frame by rigid ICP of FLAME's mean face region onto the scan from several starting
    # poses (principal axes, each sign choice), keeping the best; False: such a subject is an error.
    landmark_free_init: bool = True
    icp_max_points: int = field(default=800, metadata=limits(ge=3))  # scan vertices used by that ICP (random subset, fixed seed)
    identity_frames: int = field(default=8, metadata=limits(ge=1))  # frames in the joint identity fit, spread over the subject's sequences
    identity_rounds: int = field(default=3, metadata=limits(ge=1))  # correspondence rounds of the identity fit
    frame_rounds: int = field(default=2, metadata=limits(ge=1))  # correspondence rounds per batch of frames
    batch_size: int = field(default=32, metadata=limits(ge=1))
    max_points: int = field(default=4000, metadata=limits(ge=1))  # scan vertices used per frame (random subset, fixed seed)
    robust_sigma_mm: float = field(default=2.0, metadata=limits(gt=0))  # Geman-McClure scale
    max_distance_mm: float = field(default=10.0, metadata=limits(gt=0))  # farther scan points are not face
    face_mask: str = "face"
    s2m_weight: float = field(default=1.0, metadata=limits(ge=0))
    landmark_weight: float = field(default=0.05, metadata=limits(ge=0))
    priors: PriorWeights = field(default_factory=lambda: PriorWeights(shape=1e-4, expression=1e-4, neck=1e-3,
                                                                       jaw=1e-3, eyes=1e-3))
    lbfgs: LbfgsOptions = field(default_factory=lambda: LbfgsOptions(max_iterations=30, ftol=1e-6))
    identity_lbfgs: LbfgsOptions = field(default_factory=lambda: LbfgsOptions(max_iterations=60, history=30,
                                                                               ftol=1e-7))
    seed: int = field(default=0, metadata=limits(ge=0))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ScanFrame:
    """One scan: vertices and faces in the scan's units, 68 landmarks (NaN rows where missing)."""

    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray | None
    source: str = ""


@dataclass
class ScanSubjectFit:
    shape: Tensor  # (n_shape,)
    log_scale: float  # refinement of the unit scale (0 unless scan_units is unknown)
    params: FlameParams  # (N,) in FLAME space (metres)
    scale: np.ndarray  # (N,) scan units per metre
    transforms: list[Similarity]  # per frame: FLAME space -> scan coordinates
    init_transforms: list[Similarity]  # the landmark initialisation (before any fitting)
    residual_mm: list[np.ndarray]  # per frame: face-region point-to-surface distances, scan units
    loss: np.ndarray  # (N,)
    converged: np.ndarray  # (N,) bool
    identity_frames: list[int]


def _landmark_ids(which: str) -> list[int]:
    return list(INNER_LANDMARKS) if which == "inner" else list(range(68))


def mean_head_landmarks(flame: FLAME) -> np.ndarray:
    """(68, 3) FLAME's fixed 3D landmarks on the mean head, metres."""
    model = FittingFlame(flame, n_exp=0)
    z = torch.zeros(1, 3, dtype=torch.float64)
    with torch.no_grad():
        v = model(z, z, z, z, torch.zeros(1, 6, dtype=torch.float64), torch.zeros(1, 0, dtype=torch.float64))
        return model.landmarks(v)[0].numpy()


def initial_transforms(flame: FLAME, frames: list[ScanFrame], config: ScanFitConfig) -> tuple[list[Similarity], float]:
    """Per-frame ``scan ~ s R flame + t`` from landmarks, with one scale for the subject (see module doc)."""
    model_lmk = mean_head_landmarks(flame)
    ids = _landmark_ids(config.init_landmarks)
    sims: list[Similarity | None] = []
    for frame in frames:
        lmk = frame.landmarks
        if lmk is None or lmk.shape != (68, 3):
            sims.append(None)
            continue
        ok = [i for i in ids if np.isfinite(lmk[i]).all()]
        if len(ok) < config.min_landmarks:
            sims.append(None)
            continue
        sims.append(umeyama(model_lmk[ok], lmk[ok], with_scale=True))
    known = [i for i, s in enumerate(sims) if s is not None]
    if not known and config.landmark_free_init and config.scan_units != "unknown":
        log.info("no frame has enough 3D landmarks: landmark-free (multi-start rigid ICP) initialisation")
        scale = UNIT_SCALE[config.scan_units]
        return icp_initial_transforms(flame, frames, scale, config), scale
    if not known:
        why = "" if config.scan_units != "unknown" else " (the landmark-free one needs known scan_units)"
        raise ValueError("no frame of this subject has enough 3D landmarks for the initialisation" + why)
    if config.scan_units == "unknown":
        scale = float(np.median([sims[i].scale for i in known]))
    else:
        scale = UNIT_SCALE[config.scan_units]
    out: list[Similarity] = []
    for i, frame in enumerate(frames):
        j = i if sims[i] is not None else min(known, key=lambda k: abs(k - i))
        lmk = frames[j].landmarks
        ok = [t for t in ids if np.isfinite(lmk[t]).all()]
        rigid = umeyama(scale * model_lmk[ok], lmk[ok], with_scale=False)
        out.append(Similarity(scale, rigid.rotation, rigid.translation))
    return out, scale


def _proper_axis_maps() -> list[np.ndarray]:
    """The 24 rotations that map the coordinate axes onto each other (signed permutations, det +1)."""
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def icp_initial_transforms(flame: FLAME, frames: list[ScanFrame], scale: float,
                           config: ScanFitConfig) -> list[Similarity]:
    """``scan ~ scale R flame + t`` per frame without landmarks: scan points (a subset, in metres) aligned
    to FLAME's mean head by trimmed rigid ICP. The first frame tries 24 starts (the principal axes of scan
    and head matched in every proper way, centroids matched) and keeps the lowest error; later frames of
    the subject start from the previous frame's result, and fall back to the 24 starts when that ends
    worse than twice the first frame's error."""
    from fbench.geometry import icp

    model = FittingFlame(flame, n_exp=0)
    z = torch.zeros(1, 3, dtype=torch.float64)
    with torch.no_grad():
        mean = model(z, z, z, z, torch.zeros(1, 6, dtype=torch.float64),
                     torch.zeros(1, 0, dtype=torch.float64))[0].numpy()
    faces = flame.faces.cpu().numpy()
    index = ClosestPointIndex(mean, faces)
    rng = np.random.default_rng(0)

    def axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centre = points.mean(axis=0)
        _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
        rot = vt.T
        if np.linalg.det(rot) < 0:
            rot[:, 2] *= -1
        return centre, rot

    def run(points: np.ndarray, start: Similarity, iterations: int = 40):
        r = icp(points, mean, faces, init=start, with_scale=False, robust="trimmed", trim_fraction=0.8,
                max_iterations=iterations, index=index)
        return float(r.history[-1]), r.transform

    c_head, a_head = axes(mean)
    out: list[Similarity] = []
    reference, previous = None, None
    for frame in frames:
        points = np.asarray(frame.vertices, dtype=np.float64) / scale
        if len(points) > config.icp_max_points:
            points = points[rng.choice(len(points), config.icp_max_points, replace=False)]
        best = None
        if previous is not None:
            best = run(points, previous)
        if best is None or best[0] > 2 * reference:
            # The 24 starts on a small subset and few iterations; the winner refined on all chosen points.
            few = points[: max(3, len(points) // 4)]
            c_scan, a_scan = axes(points)
            starts = []
            for g in _proper_axis_maps():
                rot = a_head @ g @ a_scan.T
                starts.append(run(few, Similarity(1.0, rot, c_head - rot @ c_scan), iterations=15))
            best = run(points, min(starts, key=lambda e: e[0])[1])
        if reference is None:
            reference = best[0]
        previous = best[1]
        inv = best[1].rotation.T  # scan -> head inverted: head -> scan, in scan units
        out.append(Similarity(scale, inv, -scale * (inv @ best[1].translation)))
    return out


@dataclass
class _Data:
    """Scan data of a batch of frames in FLAME space, padded to a common point count."""

    points: Tensor  # (B, N, 3) metres
    landmarks: Tensor  # (B, 68, 3) metres (0 where missing)
    lmk_mask: Tensor  # (B, 68)
    face_ids: Tensor  # (B, N) FLAME triangle of each point's correspondence
    bary: Tensor  # (B, N, 3)
    mask: Tensor  # (B, N) 1 for face-region correspondences


class ScanObjective:
    """Robust point-to-plane + landmark energy of fitted FLAME meshes against scans (see module doc)."""

    def __init__(self, model: FittingFlame, flame: FLAME, config: ScanFitConfig) -> None:
        self.model = model
        self.config = config
        faces = flame.faces.cpu().numpy()
        self.faces_np = faces
        self.faces = flame.faces
        self.topology = MeshTopology(faces, flame.num_vertices)
        masks = flame.masks
        if config.face_mask not in masks:
            raise ValueError(f"FLAME has no {config.face_mask!r} mask (has {sorted(masks)})")
        in_face = np.zeros(flame.num_vertices, dtype=bool)
        in_face[masks[config.face_mask].cpu().numpy()] = True
        self.face_vertices = torch.as_tensor(in_face)
        self.face_triangles = in_face[faces].all(axis=1)
        self.fit_lmk = torch.zeros(68, dtype=torch.float64)
        self.fit_lmk[_landmark_ids(config.fit_landmarks)] = 1.0

    def associate(self, vertices: Tensor, points: list[np.ndarray]) -> tuple[Tensor, Tensor, Tensor, list[np.ndarray]]:
        """Closest fitted-mesh points of every scan point; keeps face-region ones within range."""
        n = max(len(p) for p in points)
        b = len(points)
        fids = torch.zeros(b, n, dtype=torch.long)
        bary = torch.zeros(b, n, 3, dtype=torch.float64)
        mask = torch.zeros(b, n, dtype=torch.float64)
        dists = []
        limit = self.config.max_distance_mm / MM
        verts = vertices.detach().cpu().double().numpy()
        for i, (v, p) in enumerate(zip(verts, points)):
            q = ClosestPointIndex(v, self.faces_np, topology=self.topology).query(p)
            keep = self.face_triangles[q.face_ids] & (q.distances <= limit)
            m = len(p)
            fids[i, :m] = torch.as_tensor(q.face_ids)
            bary[i, :m] = torch.as_tensor(q.barycentric)
            mask[i, :m] = torch.as_tensor(keep, dtype=torch.float64)
            dists.append(q.distances)
        return fids, bary, mask, dists

    def data_energy(self, vertices: Tensor, data: _Data, rows: Tensor) -> Tensor:
        """(n,) weighted robust scan-to-mesh + landmark energy of planar vertices (n, 3, V) of ``rows``."""
        cfg = self.config
        fids, bary, mask, pts = data.face_ids[rows], data.bary[rows], data.mask[rows], data.points[rows]
        n, npts = fids.shape
        corner_ids = self.faces[fids].reshape(n, 1, -1).expand(-1, 3, -1)  # (n, 3, N*3)
        corners = torch.gather(vertices, 2, corner_ids).reshape(n, 3, npts, 3)  # coordinate, point, corner
        c0, c1, c2 = corners.unbind(-1)  # (n, 3, N) each
        b0, b1, b2 = bary[:, None].unbind(-1)
        closest = c0 * b0 + c1 * b1 + c2 * b2
        e1 = c1 - c0
        e2 = c2 - c0
        normal = torch.linalg.cross(e1, e2, dim=1)
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-20)
        r = ((pts.transpose(1, 2) - closest) * normal).sum(1) * MM  # (n, N)
        sigma2 = cfg.robust_sigma_mm ** 2
        rho = sigma2 * r * r / (sigma2 + r * r)
        s2m = (rho * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        lmk_ids = self.model.lmk_vertices.reshape(1, 1, -1).expand(n, 3, -1)
        lmk_corners = torch.gather(vertices, 2, lmk_ids).reshape(n, 3, -1, 3)
        lmk = (lmk_corners * self.model.lmk_bary[None, None]).sum(-1)  # (n, 3, 68)
        lmk_mask = data.lmk_mask[rows] * self.fit_lmk
        d2 = ((lmk - data.landmarks[rows].transpose(1, 2)) * MM).pow(2).sum(1)
        lmk_term = (d2 * lmk_mask).sum(-1) / lmk_mask.sum(-1).clamp_min(1.0)
        return cfg.s2m_weight * s2m + cfg.landmark_weight * lmk_term


def _normalised(frames: list[ScanFrame], transforms: list[Similarity], config: ScanFitConfig,
                ) -> tuple[list[np.ndarray], Tensor, Tensor]:
    """Scan points (subsampled) and landmarks mapped into FLAME space by each frame's inverse transform."""
    points, lmks, lmk_mask = [], [], []
    for i, (frame, sim) in enumerate(zip(frames, transforms)):
        inv = sim.inverse()
        v = frame.vertices
        if len(v) > config.max_points:
            rng = np.random.default_rng([config.seed, i, len(v)])
            v = v[np.sort(rng.choice(len(v), config.max_points, replace=False))]
        points.append(inv.apply(v))
        lmk = frame.landmarks if frame.landmarks is not None and frame.landmarks.shape == (68, 3) \
            else np.full((68, 3), np.nan)
        ok = np.isfinite(lmk).all(axis=1)
        lmks.append(np.where(ok[:, None], inv.apply(np.nan_to_num(lmk)), 0.0))
        lmk_mask.append(ok.astype(np.float64))
    return points, torch.as_tensor(np.stack(lmks)), torch.as_tensor(np.stack(lmk_mask))


def _pad_points(points: list[np.ndarray]) -> Tensor:
    n = max(len(p) for p in points)
    out = torch.zeros(len(points), n, 3, dtype=torch.float64)
    for i, p in enumerate(points):
        out[i, :len(p)] = torch.as_tensor(p)
    return out


def _face_weights(objective: ScanObjective) -> Tensor:
    w = torch.full((objective.model.num_vertices,), 1e-2, dtype=torch.float64)
    w[objective.face_vertices] = 1.0
    return w


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)})


def _fit_identity(flame: FLAME, config: ScanFitConfig, points: list[np.ndarray], lmks: Tensor, lmk_mask: Tensor,
                  ids: list[int], weights: Tensor) -> tuple[Tensor, float, Tensor]:
    """Joint fit of one shape (and log-scale for unknown units) to the frames ``ids``; returns
    (shape, log_scale, per-frame variables of those frames)."""
    dtype = torch.float64
    layout = Layout.frame(config.n_exp)
    sl = layout.slices()
    p = layout.size
    free_scale = config.scan_units == "unknown"
    prior_frame = prior_diagonal(layout, config.priors)
    k = len(ids)
    joint = FittingFlame(flame, n_exp=config.n_exp, free_shape=True)
    obj = ScanObjective(joint, flame, config)
    n_shape = joint.n_shape
    n_shared = n_shape + int(free_scale)
    frames0 = torch.zeros(k, p, dtype=dtype)
    x = torch.cat([torch.zeros(n_shared, dtype=dtype), frames0.reshape(-1)])[None]
    # Every frame starts at the neutral pose (the landmark transform aligned the scans): one block serves all.
    block = vertex_hessian(joint, layout, weights, with_shape=True, with_scale=free_scale)
    blocks = [block] * k
    shared_prior = torch.full((n_shared,), 2.0 * config.priors.shape, dtype=dtype)
    if free_scale:
        shared_prior[-1] = 2.0 * config.priors.shape
    precond = Preconditioner(arrow_hessian(blocks, n_shared, shared_prior, prior_frame))
    id_pts = [points[i] for i in ids]

    def joint_vertices(x: Tensor) -> Tensor:
        """Planar (k, 3, V) vertices of the identity frames."""
        fr = x[0, n_shared:].reshape(k, p)
        v = joint.from_vector(fr, sl, x[:, :n_shape], planar=True)
        return v * x[0, n_shape:n_shared].exp() if free_scale else v

    data = _Data(points=_pad_points(id_pts), landmarks=lmks[ids], lmk_mask=lmk_mask[ids],
                 face_ids=torch.zeros(0), bary=torch.zeros(0), mask=torch.zeros(0))
    all_rows = torch.arange(k)
    for _ in range(config.identity_rounds):
        with torch.no_grad():
            verts = joint_vertices(x).transpose(1, 2)
        data.face_ids, data.bary, data.mask, _ = obj.associate(verts, id_pts)

        def joint_loss(x: Tensor, rows: Tensor) -> Tensor:
            fr = x[0, n_shared:].reshape(k, p)
            e = obj.data_energy(joint_vertices(x), data, all_rows) + prior_energy(fr, layout, config.priors)
            return (e.sum() + config.priors.shape * (x[0, :n_shared] ** 2).sum())[None]

        x = batched_lbfgs(joint_loss, x, precond, config.identity_lbfgs).x
    shape = x[0, :n_shape].detach()
    log_scale = float(x[0, n_shape]) if free_scale else 0.0
    identity_x = x[0, n_shared:].reshape(k, p).detach()
    return shape, log_scale, identity_x


def fit_scan_subject(flame: FLAME, frames: list[ScanFrame], config: ScanFitConfig,
                     identity_ids: list[int] | None = None, identity: tuple[Tensor, float] | None = None,
                     progress: Callable[[int], None] | None = None) -> ScanSubjectFit:
    """Fit all scans of one subject (ordered along their sequences). See the module docstring.

    ``identity`` = (shape, log_scale) from an earlier fit of the subject skips the joint
    identity stage (resuming a subject's remaining tasks); ``identity_ids`` picks the
    frames of the joint stage (default: ``identity_frames`` spread over all).
    """
    if not frames:
        raise ValueError("no scans to fit")
    dtype = torch.float64
    layout = Layout.frame(config.n_exp)
    sl = layout.slices()
    p = layout.size
    init, _ = initial_transforms(flame, frames, config)
    points, lmks, lmk_mask = _normalised(frames, init, config)
    prior_frame = prior_diagonal(layout, config.priors)

    # --- joint identity fit
    ids = identity_ids if identity_ids is not None else spread(len(frames), config.identity_frames)
    weights = _face_weights(ScanObjective(FittingFlame(flame, n_exp=config.n_exp), flame, config))
    if identity is None:
        shape, log_scale, identity_x = _fit_identity(flame, config, points, lmks, lmk_mask, ids, weights)
    else:
        shape, log_scale = identity[0].to(dtype).reshape(-1), float(identity[1])
        identity_x = torch.zeros(0, p, dtype=dtype)
        ids = []

    # --- per-frame fits with the identity fixed
    model = FittingFlame(flame, shape, n_exp=config.n_exp)
    obj = ScanObjective(model, flame, config)
    frame_pre = Preconditioner(vertex_hessian(model, layout, weights) + torch.diag(prior_frame))
    factor = math.exp(log_scale)
    n = len(frames)
    xs, losses, conv = [], [], []
    nearest_identity = {i: identity_x[j:j + 1] for j, i in enumerate(ids)}
    if identity_x.shape[0]:
        warm = identity_x[0:1]
    else:  # resumed: start from the neutral pose (the landmark transform already aligned the scans)
        warm = torch.zeros(1, p, dtype=dtype)
    for start in range(0, n, max(1, config.batch_size)):
        rows_idx = list(range(start, min(n, start + config.batch_size)))
        x0 = torch.cat([nearest_identity.get(i, warm) for i in rows_idx])
        chunk_pts = [points[i] for i in rows_idx]
        data = _Data(points=_pad_points(chunk_pts), landmarks=lmks[rows_idx], lmk_mask=lmk_mask[rows_idx],
                     face_ids=torch.zeros(0), bary=torch.zeros(0), mask=torch.zeros(0))
        res = None
        for _ in range(config.frame_rounds):
            with torch.no_grad():
                verts = model.from_vector(x0, sl) * factor
            data.face_ids, data.bary, data.mask, _ = obj.associate(verts, chunk_pts)

            def frame_loss(x: Tensor, rows: Tensor, data: _Data = data) -> Tensor:
                return obj.data_energy(model.from_vector(x, sl, planar=True) * factor, data, rows) + \
                    prior_energy(x, layout, config.priors)

            res = batched_lbfgs(frame_loss, x0, frame_pre, config.lbfgs)
            x0 = res.x
        xs.append(x0)
        losses.append(res.loss)
        conv.append(res.converged)
        warm = x0[-1:]
        if progress is not None:
            progress(len(rows_idx))
    xall = torch.cat(xs)
    params = layout.unpack(xall, FlameParams.zeros(1, n_shape=shape.numel(), n_exp=config.n_exp, dtype=dtype))
    params.shape = shape[None].expand(n, -1).clone()

    # --- residuals: exact distances from all face-region scan points to the fit, scan units
    with torch.no_grad():
        verts = (model.from_vector(xall, sl) * factor).numpy()
    transforms, residuals = [], []
    limit = config.max_distance_mm / MM
    for i, (frame, sim) in enumerate(zip(frames, init)):
        pts = sim.inverse().apply(frame.vertices)
        q = ClosestPointIndex(verts[i], obj.faces_np, topology=obj.topology).query(pts)
        keep = obj.face_triangles[q.face_ids] & (q.distances <= limit)
        residuals.append(q.distances[keep] * sim.scale)
        transforms.append(Similarity(sim.scale * factor, sim.rotation, sim.translation))
    return ScanSubjectFit(shape=shape, log_scale=log_scale, params=params, scale=np.array([t.scale for t in transforms]),
                          transforms=transforms, init_transforms=init, residual_mm=residuals,
                          loss=torch.cat(losses).numpy(), converged=torch.cat(conv).numpy(), identity_frames=ids)
