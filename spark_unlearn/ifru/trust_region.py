"""Safeguarded Newton for the IFRU update: Steihaug-Toint truncated CG inside a trust region.

Pure torch on flat vectors; no Spark, no model.  The objective ``phi`` and its
Hessian-vector products come from the caller
(:func:`spark_unlearn.ifru.influence.compute_update`).

Why a safeguard.  The IFRU update is one Newton step ``p = -(H + lambda I)^-1 g``
on the retained-data objective.  The BCE Hessian of MF and LightGCN is
indefinite away from a minimum: plain CG on an indefinite ``H`` can walk along
a direction of negative curvature, and a step that nobody checks can raise the
objective it is meant to lower (issue 27: a model destroyed by two steps).
Here every step is

* computed by truncated CG that stops at negative curvature or at the trust
  radius (Steihaug 1983, Toint 1981; Conn, Gould & Toint 2000, Alg. 7.5.1,
  preconditioned, the radius measured in the preconditioner's norm
  ``||p||_M = sqrt(p^T M p)``);
* accepted only if it lowers ``phi``, with the ratio
  ``rho = (phi(x) - phi(x + p)) / (m(0) - m(p))`` of the actual to the predicted
  decrease of the quadratic model ``m(p) = g^T p + 1/2 p^T (H + lambda I) p``
  driving the radius (shrink when ``rho < 1/4``, grow when ``rho > 3/4`` on the
  boundary, Nocedal & Wright Alg. 4.1);
* replaced, when no trial is accepted, by a bounded number of preconditioned
  gradient steps with Armijo backtracking, which always lower ``phi`` when its
  gradient is not zero.

The first trial has no radius, so on a positive-definite problem the first
accepted step is exactly the plain IFRU update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

Vector = torch.Tensor
Operator = Callable[[Vector], Vector]

#: Smallest ratio of actual to predicted decrease for which a step is accepted.
ETA = 1e-4
#: Armijo constant of the first-order fallback.
ARMIJO = 1e-4


@dataclass
class SteihaugResult:
    """A trust-region step ``p`` and how CG ended.

    ``stop`` is ``converged`` (relative residual at ``tol``), ``negative_curvature``
    (a direction with ``d^T B d <= 0`` was met), ``boundary`` (the radius was
    reached) or ``max_iter``.  ``predicted_decrease`` is ``m(0) - m(p) >= 0``;
    ``m_norm`` is ``||p||_M``.
    """

    p: Vector
    stop: str
    iterations: int
    hvps: int
    predicted_decrease: float
    m_norm: float
    rel_residual: float


def _boundary_root(pmp: float, pmd: float, dmd: float, radius: float) -> float:
    """The ``sigma >= 0`` with ``||p + sigma d||_M = radius`` (``||p||_M <= radius``)."""
    disc = max(pmd * pmd + dmd * (radius * radius - pmp), 0.0)
    return (-pmd + math.sqrt(disc)) / dmd


def steihaug_cg(
    hvp: Operator,
    g: Vector,
    radius: float = math.inf,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 500,
    precond: Operator | None = None,
) -> SteihaugResult:
    """Approximately minimise ``m(p) = g^T p + 1/2 p^T (H + damping I) p`` subject to ``||p||_M <= radius``.

    Preconditioned conjugate gradient from ``p = 0`` (``precond`` applies
    ``M^-1``, symmetric positive definite; ``None`` is ``M = I``).  The
    M-norms of the iterates are carried by the recurrences of Conn, Gould &
    Toint (2000, section 7.5.1), so the boundary costs no extra product::

        ||p + a d||_M^2 = p'Mp + 2 a p'Md + a^2 d'Md
        p'Md <- beta (p'Md + alpha d'Md),   d'Md <- r'z + beta^2 d'Md

    On a direction of non-positive curvature the step goes to the boundary
    along it; with an infinite radius it stops where it is (the model is
    unbounded there, the caller sets a radius and tries again).
    """
    gnorm = float(torch.linalg.vector_norm(g))
    p = torch.zeros_like(g)
    if gnorm == 0.0:
        return SteihaugResult(p, "converged", 0, 0, 0.0, 0.0, 0.0)

    def op(v: Vector) -> Vector:
        out = hvp(v)
        return out + damping * v if damping else out

    r = g.clone()  # gradient of the model at p: g + B p
    z = precond(r) if precond is not None else r
    d = -z
    rz = float(torch.dot(r, z))
    pmp, pmd, dmd = 0.0, 0.0, rz
    stop, hvps, it = "max_iter", 0, 0
    while it < max_iter:
        bd = op(d)
        hvps += 1
        kappa = float(torch.dot(d, bd))
        if not math.isfinite(kappa) or kappa <= 0.0:
            stop = "negative_curvature"
            if math.isfinite(radius):
                sigma = _boundary_root(pmp, pmd, dmd, radius)
                p, r = p + sigma * d, r + sigma * bd
                pmp = radius * radius
            break
        alpha = rz / kappa
        step_sq = pmp + 2 * alpha * pmd + alpha * alpha * dmd
        if step_sq >= radius * radius:
            sigma = _boundary_root(pmp, pmd, dmd, radius)
            p, r = p + sigma * d, r + sigma * bd
            pmp, stop = radius * radius, "boundary"
            break
        p, r = p + alpha * d, r + alpha * bd
        pmp = step_sq
        it += 1
        if float(torch.linalg.vector_norm(r)) <= tol * gnorm:
            stop = "converged"
            break
        z = precond(r) if precond is not None else r
        rz_new = float(torch.dot(r, z))
        beta = rz_new / rz
        d = -z + beta * d
        pmd = beta * (pmd + alpha * dmd)
        dmd = rz_new + beta * beta * dmd
        rz = rz_new
    # r = g + B p, so m(p) = g'p + 1/2 p'(r - g) = (g'p + r'p) / 2
    predicted = -0.5 * float(torch.dot(g, p) + torch.dot(r, p))
    rel = float(torch.linalg.vector_norm(r)) / gnorm
    return SteihaugResult(p, stop, it, hvps, predicted, math.sqrt(max(pmp, 0.0)), rel)


@dataclass
class Trial:
    """One trust-region trial: the radius it ran with and what became of its step."""

    radius: float
    stop: str
    cg_iterations: int
    predicted: float
    actual: float
    ratio: float
    accepted: bool

    def to_dict(self) -> dict:
        return {"radius": self.radius if math.isfinite(self.radius) else None, "cg_stop": self.stop,
                "cg_iterations": self.cg_iterations, "predicted_decrease": self.predicted,
                "actual_decrease": self.actual, "ratio": self.ratio, "accepted": self.accepted}


@dataclass
class SafeguardedResult:
    """Outcome of :func:`trust_region_newton`: ``x = x0 + delta`` with ``phi(x) <= phi(x0)``.

    ``status``: ``newton`` (at least one trust-region step accepted),
    ``first_order`` (none was; the fallback's gradient steps were taken) or
    ``unchanged`` (nothing lowered ``phi``: ``delta = 0``).
    """

    delta: Vector
    status: str
    newton_steps: int
    first_order_steps: int
    trials: list[Trial] = field(default_factory=list)
    hvps: int = 0
    cg_iterations: int = 0
    merit_before: float = 0.0
    merit_after: float = 0.0
    grad_norm_before: float = 0.0
    grad_norm_after: float = 0.0
    last_cg: SteihaugResult | None = None
    grad_norms: list[float] = field(default_factory=list)


def trust_region_newton(
    merit: Callable[[Vector], float],
    gradient: Callable[[Vector], Vector],
    hvp_at: Callable[[Vector], Operator],
    x0: Vector,
    *,
    newton_steps: int = 1,
    max_trials: int | None = None,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 500,
    precond: Operator | None = None,
    first_order_steps: int = 10,
    g0: Vector | None = None,
) -> SafeguardedResult:
    """Minimise ``merit`` from ``x0`` by at most ``newton_steps`` accepted trust-region Newton steps.

    Parameters
    ----------
    merit, gradient
        ``phi`` and its gradient.
    hvp_at
        ``x -> (v -> H(x) v)``: the Hessian (or the model Hessian the caller
        chooses) at ``x``.
    newton_steps
        Accepted steps wanted.  ``max_trials`` (default ``newton_steps + 8``)
        bounds all CG solves, accepted or not.
    damping, tol, max_iter, precond
        Passed to :func:`steihaug_cg`.
    first_order_steps
        Gradient steps of the fallback when no trial is accepted.
    g0
        ``gradient(x0)`` when the caller has it already.
    """
    max_trials = newton_steps + 8 if max_trials is None else max_trials
    x = x0.clone()
    g = gradient(x) if g0 is None else g0
    f = merit(x)
    out = SafeguardedResult(torch.zeros_like(x0), "unchanged", 0, 0, merit_before=f,
                            grad_norm_before=float(torch.linalg.vector_norm(g)))
    out.grad_norms.append(out.grad_norm_before)
    radius = math.inf
    while out.newton_steps < newton_steps and len(out.trials) < max_trials:
        if float(torch.linalg.vector_norm(g)) == 0.0:
            break
        step = steihaug_cg(hvp_at(x), g, radius, damping=damping, tol=tol, max_iter=max_iter, precond=precond)
        out.hvps += step.hvps
        out.cg_iterations += step.iterations
        out.last_cg = step
        if step.m_norm == 0.0:
            # negative curvature at once with no radius: the model is unbounded; give it the preconditioned
            # gradient's length (the block-Jacobi Newton step) and try again
            z = precond(g) if precond is not None else g
            radius = math.sqrt(max(float(torch.dot(g, z)), 0.0))
            out.trials.append(Trial(math.inf, step.stop, step.iterations, 0.0, 0.0, float("nan"), False))
            continue
        f_new = merit(x + step.p)
        actual = f - f_new if math.isfinite(f_new) else -math.inf
        ratio = actual / step.predicted_decrease if step.predicted_decrease > 0 else -math.inf
        accepted = actual > 0 and ratio >= ETA
        out.trials.append(Trial(radius, step.stop, step.iterations, step.predicted_decrease, actual, ratio, accepted))
        if ratio < 0.25:
            radius = 0.25 * step.m_norm
        elif ratio > 0.75 and step.stop in ("boundary", "negative_curvature") and math.isfinite(radius):
            radius = 2.0 * radius
        if accepted:
            x, f = x + step.p, f_new
            g = gradient(x)
            out.grad_norms.append(float(torch.linalg.vector_norm(g)))
            out.newton_steps += 1
    if out.newton_steps == 0:
        x, f, g, taken = _first_order(merit, gradient, x, f, g, precond, first_order_steps)
        out.first_order_steps = taken
        out.grad_norms.append(float(torch.linalg.vector_norm(g)))
    out.delta = x - x0
    out.status = "newton" if out.newton_steps else ("first_order" if out.first_order_steps else "unchanged")
    out.merit_after = f
    out.grad_norm_after = float(torch.linalg.vector_norm(g))
    return out


def _first_order(merit, gradient, x, f, g, precond, steps: int):
    """Up to ``steps`` preconditioned gradient steps ``x - t M^-1 g``, ``t`` halved from 1 until Armijo holds."""
    taken = 0
    for _ in range(steps):
        d = -(precond(g) if precond is not None else g)
        slope = float(torch.dot(g, d))
        if not slope < 0:
            break
        t, moved = 1.0, False
        for _ in range(40):
            f_new = merit(x + t * d)
            if math.isfinite(f_new) and f_new <= f + ARMIJO * t * slope:
                x, f, moved = x + t * d, f_new, True
                break
            t *= 0.5
        if not moved:
            break
        g = gradient(x)
        taken += 1
    return x, f, g, taken
