"""Batched, preconditioned L-BFGS in torch: many independent problems solved in lockstep.

Row ``i`` of ``x`` (B, P) is its own minimisation problem ``f_i(x_i)`` (one frame of a
sequence); ``fun(x, rows)`` returns the (n,) losses of the rows ``rows``. Every row keeps
its own L-BFGS history, step length and convergence state, so the iterates of a row
are the same whether it is solved alone (B = 1) or in a batch; batching only shares the
tensor operations (one FLAME forward/backward for the whole batch instead of one per
frame). Rows that have converged are frozen and no longer evaluated.

Preconditioning: the initial inverse Hessian of the two-loop recursion is ``H0^{-1}``
(a Cholesky solve) instead of the identity, with H0 a Gauss-Newton approximation of the
Hessian (fitting uses J^T J of the FLAME vertices at the subject's neutral pose). FLAME's
variables live on very different scales (radians with ~0.1 m lever arms, millimetre-sized
expression components, metres of translation), and plain L-BFGS would spend hundreds of
iterations learning that; with H0 it converges in tens. Each row's H0 is rescaled by
the usual ``s^T y / y^T H0^{-1} y`` so that robust or landmark terms that change the true
curvature are followed.

Line search: backtracking from step 1 with the Armijo condition and a safeguarded
quadratic interpolation; a row whose line search fails restarts from ``-H0^{-1} g``
once, and is reported as stalled if that fails too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from fbench.checks import check_fields, limits

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LbfgsOptions:
    """Optimiser settings (the same settings give the same iterates per row at any batch size)."""

    max_iterations: int = field(default=100, metadata=limits(ge=1))
    history: int = field(default=10, metadata=limits(ge=1))
    # Converged when the last decrease is below ftol * |f| + ftol_abs for `patience`
    # consecutive iterations, or when the Newton decrement g^T H0^{-1} g / 2 < gtol.
    ftol: float = field(default=1e-10, metadata=limits(ge=0))
    ftol_abs: float = field(default=1e-14, metadata=limits(ge=0))
    gtol: float = field(default=1e-14, metadata=limits(ge=0))
    patience: int = field(default=2, metadata=limits(ge=1))
    max_line_search: int = field(default=20, metadata=limits(ge=1))
    armijo: float = field(default=1e-4, metadata=limits(gt=0, lt=1))
    rescale: bool = True  # scale H0^{-1} by s^T y / y^T H0^{-1} y (per row)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class LbfgsResult:
    x: Tensor  # (B, P) solution
    loss: Tensor  # (B,) final losses
    iterations: Tensor  # (B,) iterations taken per row
    converged: Tensor  # (B,) bool: met a convergence test (False: iteration cap or stalled)
    stalled: Tensor  # (B,) bool: no decrease possible along the search direction
    evaluations: int  # batched loss evaluations (forward + backward passes)


class Preconditioner:
    """H0^{-1} from a symmetric positive definite H0: (P, P) shared by all rows or (B, P, P)."""

    def __init__(self, hessian: Tensor, jitter: float = 1e-12) -> None:
        h = 0.5 * (hessian + hessian.transpose(-1, -2))
        scale = h.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True).clamp_min(1e-300)
        eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
        for attempt in range(9):  # no jitter first; then 1e-12, 1e-10, ... of the largest diagonal entry
            shift = 0.0 if attempt == 0 else jitter * 10.0 ** (2 * (attempt - 1))
            factor, info = torch.linalg.cholesky_ex(h + shift * scale[..., None] * eye)
            if not bool((info != 0).any()):
                break
        else:
            raise ValueError("preconditioner Hessian is not positive definite (even with jitter)")
        self.factor = factor
        self.shared = factor.ndim == 2

    @classmethod
    def identity(cls, size: int, dtype: torch.dtype = torch.float64) -> "Preconditioner":
        return cls(torch.eye(size, dtype=dtype))

    def solve(self, v: Tensor, rows: Tensor) -> Tensor:
        """H0^{-1} v for rows ``rows`` of the batch; v is (n, P)."""
        if self.shared:
            return torch.cholesky_solve(v.T, self.factor).T
        return torch.cholesky_solve(v[..., None], self.factor[rows])[..., 0]


def _evaluate(fun: LossFn, x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        f = fun(xr, rows)
        if f.shape != (x.shape[0],):
            raise ValueError(f"loss function must return ({x.shape[0]},) losses, got {tuple(f.shape)}")
        (g,) = torch.autograd.grad(f.sum(), xr)
    return f.detach(), g.detach()


def batched_lbfgs(fun: LossFn, x0: Tensor, precond: Preconditioner | None = None,
                  options: LbfgsOptions | None = None) -> LbfgsResult:
    """Minimise every row of ``x0`` independently (see the module docstring)."""
    opt = options or LbfgsOptions()
    x = x0.detach().clone()
    batch, size = x.shape
    dtype, device = x.dtype, x.device
    precond = precond or Preconditioner.identity(size, dtype)
    m = max(1, opt.history)
    hist_s = torch.zeros(batch, m, size, dtype=dtype, device=device)
    hist_y = torch.zeros_like(hist_s)
    rho = torch.zeros(batch, m, dtype=dtype, device=device)
    gamma = torch.ones(batch, dtype=dtype, device=device)
    calm = torch.zeros(batch, dtype=torch.long, device=device)
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=device)
    restarted = torch.zeros(batch, dtype=torch.bool, device=device)
    all_rows = torch.arange(batch, device=device)

    f, g = _evaluate(fun, x, all_rows)
    evaluations = 1
    bad = ~torch.isfinite(f) | ~torch.isfinite(g).all(-1)
    stalled |= bad  # a non-finite start cannot be optimised

    for k in range(opt.max_iterations):
        active = all_rows[~(converged | stalled)]
        if active.numel() == 0:
            break
        ga = g[active]
        # Two-loop recursion, newest pair first (slot order is shared: rows advance in lockstep).
        order = [(k - 1 - j) % m for j in range(min(k, m))]
        q = ga.clone()
        alphas = []
        for slot in order:
            a = rho[active, slot] * (hist_s[active, slot] * q).sum(-1)
            q -= a[:, None] * hist_y[active, slot]
            alphas.append(a)
        r = precond.solve(q, active) * (gamma[active, None] if opt.rescale else 1.0)
        for slot, a in zip(reversed(order), reversed(alphas)):
            b = rho[active, slot] * (hist_y[active, slot] * r).sum(-1)
            r += (a - b)[:, None] * hist_s[active, slot]
        d = -r
        slope = (ga * d).sum(-1)
        not_descent = ~(slope < 0) | ~torch.isfinite(slope)
        if bool(not_descent.any()):  # reset those rows to the preconditioned gradient
            rows = active[not_descent]
            rho[rows] = 0.0
            gamma[rows] = 1.0
            d[not_descent] = -precond.solve(ga[not_descent], rows)
            slope[not_descent] = (ga[not_descent] * d[not_descent]).sum(-1)

        # Backtracking line search, per row.
        step = torch.ones(active.numel(), dtype=dtype, device=device)
        done = torch.zeros(active.numel(), dtype=torch.bool, device=device)
        f_new = f[active].clone()
        g_new = ga.clone()
        x_act = x[active]
        f_act = f[active]
        for _ in range(max(1, opt.max_line_search)):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            trial = x_act[todo] + step[todo, None] * d[todo]
            ft, gt = _evaluate(fun, trial, active[todo])
            evaluations += 1
            ok = torch.isfinite(ft) & torch.isfinite(gt).all(-1) & (
                ft <= f_act[todo] + opt.armijo * step[todo] * slope[todo])
            acc = todo[ok]
            f_new[acc], g_new[acc] = ft[ok], gt[ok]
            done[acc] = True
            rej = todo[~ok]
            if rej.numel():
                # Safeguarded quadratic interpolation of f along d, else halving.
                t = step[rej]
                fr = torch.where(torch.isfinite(ft[~ok]), ft[~ok], torch.full_like(t, float("inf")))
                denom = 2.0 * (fr - f_act[rej] - slope[rej] * t)
                t_q = -slope[rej] * t * t / denom
                t_q = torch.where(torch.isfinite(t_q), t_q, 0.5 * t)
                step[rej] = torch.minimum(torch.maximum(t_q, 0.1 * t), 0.5 * t)
        failed = ~done
        if bool(failed.any()):
            rows = active[failed]
            retry = rows[~restarted[rows]]
            restarted[retry] = True
            rho[retry] = 0.0  # forget the history and try the preconditioned gradient next time
            gamma[retry] = 1.0
            stalled[rows[restarted[rows] & ~torch.isin(rows, retry)]] = True
        ok_rows = active[done]
        if ok_rows.numel() == 0:
            continue
        s = step[done, None] * d[done]
        y = g_new[done] - ga[done]
        sy = (s * y).sum(-1)
        yy_h = (y * precond.solve(y, ok_rows)).sum(-1)
        good = (sy > 1e-12 * torch.sqrt((s * s).sum(-1) * (y * y).sum(-1))) & (yy_h > 0)
        slot = k % m
        rho[ok_rows, slot] = torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        hist_s[ok_rows, slot] = s
        hist_y[ok_rows, slot] = y
        gamma[ok_rows] = torch.where(good, sy / torch.where(good, yy_h, torch.ones_like(yy_h)), gamma[ok_rows])
        restarted[ok_rows] = False

        decrease = f[ok_rows] - f_new[done]
        x[ok_rows] = x_act[done] + s
        f[ok_rows] = f_new[done]
        g[ok_rows] = g_new[done]
        iterations[ok_rows] += 1
        small = decrease <= opt.ftol * f_new[done].abs() + opt.ftol_abs
        calm[ok_rows] = torch.where(small, calm[ok_rows] + 1, torch.zeros_like(calm[ok_rows]))
        decrement = 0.5 * (g_new[done] * precond.solve(g_new[done], ok_rows)).sum(-1)
        converged[ok_rows] = (calm[ok_rows] >= opt.patience) | (decrement <= opt.gtol)
    return LbfgsResult(x=x, loss=f, iterations=iterations, converged=converged, stalled=stalled & ~converged,
                       evaluations=evaluations)
