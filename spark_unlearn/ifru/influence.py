"""Influence-function kernels: exact Hessian-vector products, conjugate gradient, gradients of U.

All functions are pure torch: they take tensors and return tensors (or small
result records), hold no state and never touch Spark.

The removal influence (IFRU, DESIGN §3) of the unusable data ``D_u`` is::

    delta = (1/n) (H + damping I)^-1 grad U(theta)
    U     = sum_{z in D_u} l(z; theta, G) + sum_{z in D_c} [l(z; theta, G) - l(z; theta, G')]

where ``H`` is the Hessian of the training objective
``L(theta) = (1/n) sum_{z in D} l(z; theta, G) + reg/2 ||theta||^2``.  ``U`` is
exactly ``n (L - L')`` with ``L'`` the objective without ``D_u`` (on ``G'``), so
``theta + delta`` is one Newton step from ``theta`` towards the minimiser of
``L'`` when ``theta`` minimises ``L``.

The problem is posed on a *subgraph* (:class:`ReducedProblem`): only the
embedding rows of the kept nodes ``S`` are variables; every other row is a
constant.  Because the models are linear in ``E0`` before the score, the
representation of a local node under graph ``g`` is::

    h_g = h0_g + M_g (E0[S] - theta0_S),   M_g = (I + A_g + ... + A_g^K) / (K + 1)

with ``h0_g`` the representation of the current model on the whole graph.  Only
the training terms with an endpoint within ``K`` hops of ``S`` depend on the
variables, so the Hessian and the gradient are exact on the subgraph.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import grad, vjp

from spark_unlearn.ifru.models import Graph, Terms, layer_mean, term_logits, term_losses

HVP = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- HVP


def make_hvp(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> HVP:
    """Exact Hessian-vector product ``v -> (d^2 f / d theta^2)(theta) v`` by ``torch.func``.

    Reverse-over-reverse: ``vjp`` of ``grad(f)`` at ``theta``.  The linearised
    gradient graph is built once and re-used for every product (the Hessian is
    symmetric, so the vector-Jacobian product of the gradient is ``H v``).
    """
    _, vjp_fn = vjp(grad(f), theta)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return vjp_fn(v)[0]

    return hvp


def make_hvp_fwd(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> HVP:
    """The same product forward-over-reverse (``jvp`` of ``grad``); slower here, kept as a cross-check."""
    from torch.func import jvp

    g = grad(f)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return jvp(g, (theta,), (v,))[1]

    return hvp


# --------------------------------------------------------------------------- CG


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    ``rel_residual`` is ``||b - (H + damping I) x|| / ||b||`` of the returned
    ``x`` (recursive residual, re-checked with one extra product at the end
    when ``verify`` is set).
    """

    x: torch.Tensor
    iterations: int
    hvps: int
    rel_residual: float
    converged: bool
    residual_history: list[float] = field(default_factory=list)


def conjugate_gradient(
    hvp: HVP,
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 500,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
    verify: bool = True,
) -> CGResult:
    """Solve ``(H + damping I) x = b`` by (preconditioned) conjugate gradient.

    Stops when the relative residual ``||r|| / ||b||`` falls to ``tol`` or after
    ``max_iter`` iterations.  ``H`` must be symmetric; CG needs ``H + damping I``
    positive definite on the Krylov space, and stops early (``converged=False``)
    if it meets a direction of non-positive curvature.  ``precond`` applies an
    approximation of ``(H + damping I)^-1`` (symmetric positive definite).
    """
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0:
        return CGResult(torch.zeros_like(b), 0, 0, 0.0, True, [0.0])

    def op(v: torch.Tensor) -> torch.Tensor:
        out = hvp(v)
        return out + damping * v if damping else out

    hvps = 0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - op(x)
        hvps += 1
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = float(torch.dot(r, z))
    history = [float(torch.linalg.vector_norm(r)) / bnorm]
    converged = history[-1] <= tol
    it = 0
    while not converged and it < max_iter:
        ap = op(p)
        hvps += 1
        curv = float(torch.dot(p, ap))
        if not math.isfinite(curv) or curv <= 0.0:
            break
        alpha = rz / curv
        x = x + alpha * p
        r = r - alpha * ap
        it += 1
        rel = float(torch.linalg.vector_norm(r)) / bnorm
        history.append(rel)
        if rel <= tol:
            converged = True
            break
        z = precond(r) if precond is not None else r
        rz_new = float(torch.dot(r, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    rel = history[-1]
    if verify:
        true_r = b - op(x)
        hvps += 1
        rel = float(torch.linalg.vector_norm(true_r)) / bnorm
        converged = converged and rel <= max(tol * 10, 1e-12)
    return CGResult(x, it, hvps, rel, converged, history)


# --------------------------------------------------------------------------- reduced problem


@dataclass
class ReducedProblem:
    """Everything the driver needs to compute an IFRU update on a subgraph.

    Local node ids ``0 .. num_local-1``; ``local_nodes[k]`` is the global node
    id (users first, then items) of local node ``k``.

    Attributes
    ----------
    kept
        Local ids of the variable rows ``S`` (sorted).
    theta0
        ``E0[S]`` at the current model (``len(kept)`` x ``dim``).
    h0_g, h0_gp
        Current representations of every local node on ``G`` and on ``G'``
        (equal to the base rows for MF).
    prop_g, prop_gp
        Local edge lists of ``A_G`` and ``A_G'`` reaching every node within
        ``layers`` hops of ``S`` (global degree normalisation).
    hess_terms
        Training terms (all of ``D``, including ``D_u``) with an endpoint
        within ``layers`` hops of ``S`` on ``G``.
    removed_terms
        The terms of ``D_u`` among them.
    remaining_terms
        The other ones (``hess_terms`` minus ``removed_terms``).
    spill_terms
        Remaining terms whose representation changes from ``G`` to ``G'``
        (``D_c``; empty for MF).
    n
        Number of training terms of the full objective (normaliser of ``L``).
    n_removed
        Number of removed terms ``|D_u|`` over the whole training set (not
        only those in the subgraph); ``n - n_removed`` normalises the retrain's
        objective.
    reg, layers, loss
        As in training.
    """

    local_nodes: torch.Tensor
    kept: torch.Tensor
    theta0: torch.Tensor
    h0_g: torch.Tensor
    h0_gp: torch.Tensor
    prop_g: Graph
    prop_gp: Graph
    hess_terms: Terms
    removed_terms: Terms
    spill_terms: Terms
    n: int
    reg: float
    layers: int
    loss: str = "bce"
    remaining_terms: Terms | None = None
    n_removed: int = 0

    @property
    def n_after(self) -> int:
        """Terms left after the removal (``n - |D_u|``, over the whole training set): the retrain's normaliser."""
        return max(self.n - self.n_removed, 1)

    @property
    def num_local(self) -> int:
        return int(self.local_nodes.numel())

    @property
    def dim(self) -> int:
        return int(self.theta0.shape[1])

    @property
    def num_params(self) -> int:
        return int(self.theta0.numel())

    def to(self, dtype: torch.dtype) -> "ReducedProblem":
        def tt(t: Terms) -> Terms:
            return Terms(t.u, t.i, None if t.label is None else t.label.to(dtype), t.j)

        return ReducedProblem(
            self.local_nodes,
            self.kept,
            self.theta0.to(dtype),
            self.h0_g.to(dtype),
            self.h0_gp.to(dtype),
            self.prop_g.to(dtype),
            self.prop_gp.to(dtype),
            tt(self.hess_terms),
            tt(self.removed_terms),
            tt(self.spill_terms),
            self.n,
            self.reg,
            self.layers,
            self.loss,
            None if self.remaining_terms is None else tt(self.remaining_terms),
            self.n_removed,
        )


def local_representation(problem: ReducedProblem, theta_flat: torch.Tensor, graph: str) -> torch.Tensor:
    """``h0 + M (theta - theta0)`` for every local node on ``G`` (``graph='g'``) or ``G'`` (``'gp'``)."""
    dim = problem.dim
    delta = theta_flat.view(-1, dim) - problem.theta0
    full = torch.zeros((problem.num_local, dim), dtype=theta_flat.dtype).index_add(0, problem.kept, delta)
    prop = problem.prop_g if graph == "g" else problem.prop_gp
    h0 = problem.h0_g if graph == "g" else problem.h0_gp
    return h0 + layer_mean(full, prop, problem.layers)


def _terms_loss_sum(problem: ReducedProblem, h: torch.Tensor, terms: Terms) -> torch.Tensor:
    if len(terms) == 0:
        return h.sum() * 0.0
    return term_losses(term_logits(h, terms.u, terms.i, terms.j), terms.label, problem.loss).sum()


HESSIANS = ("remaining", "full")
NORMALISERS = ("remaining", "training")


def reduced_objective(
    problem: ReducedProblem, hessian: str = "remaining", normaliser: str = "training"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta_S -> objective`` up to a constant, whose Hessian is the ``H`` of the update.

    Parameters
    ----------
    problem
        The reduced problem.
    hessian
        ``"full"``: the training objective ``L`` (all terms, graph ``G``), the
        classic influence function.  ``"remaining"``: the objective after the
        removal (remaining terms, graph ``G'``); then the update is exactly one
        Newton step on it from a minimiser of ``L``.
    normaliser
        For ``hessian="remaining"`` only: ``"training"`` averages the remaining
        terms over ``n`` (``L' = L - U/n``, the paper's convention);
        ``"remaining"`` (default) over ``n - |D_u|``, i.e. the objective a retrain with
        the same hyperparameters minimises.
    """
    if hessian not in HESSIANS:
        raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got {normaliser!r}")
    if hessian == "full":
        terms, graph, norm = problem.hess_terms, "g", problem.n
    else:
        terms, graph = problem.remaining_terms, "gp"
        norm = problem.n if normaliser == "training" else problem.n_after
        if terms is None:
            raise ValueError("the problem has no remaining_terms; build it with assemble_problem")

    def f(theta_flat: torch.Tensor) -> torch.Tensor:
        h = local_representation(problem, theta_flat, graph)
        return _terms_loss_sum(problem, h, terms) / norm + 0.5 * problem.reg * (theta_flat * theta_flat).sum()

    return f


def removal_objective(problem: ReducedProblem) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta_S -> U``: direct loss of ``D_u`` on ``G`` plus spillover ``D_c`` on ``G`` minus on ``G'``."""

    def u_fn(theta_flat: torch.Tensor) -> torch.Tensor:
        h_g = local_representation(problem, theta_flat, "g")
        total = _terms_loss_sum(problem, h_g, problem.removed_terms)
        if len(problem.spill_terms):
            h_gp = local_representation(problem, theta_flat, "gp")
            total = total + _terms_loss_sum(problem, h_g, problem.spill_terms) - _terms_loss_sum(
                problem, h_gp, problem.spill_terms
            )
        return total

    return u_fn


def block_jacobi_preconditioner(
    problem: ReducedProblem, damping: float, hessian: str = "remaining"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inverse of the per-node ``dim x dim`` Gauss-Newton diagonal blocks of ``H + damping I``.

    For MF the diagonal block of node ``v`` is exactly
    ``(1/n) sum_{t ∋ v} sigma'(s_t) h_other h_other^T + (reg + damping) I``;
    for LightGCN the same formula on the propagated representations, scaled by
    the self-weight ``1/(K+1)`` squared, is used as an approximation.  It only
    speeds CG up; the solution is judged by the true residual.  Cost: one
    ``deg(v) x dim`` Gram matrix per kept node.
    """
    dim = problem.dim
    if hessian == "full" or problem.remaining_terms is None:
        h, t = problem.h0_g, problem.hess_terms
    else:
        h, t = problem.h0_gp, problem.remaining_terms
    dtype = problem.theta0.dtype
    sig = torch.sigmoid(term_logits(h, t.u, t.i, t.j))
    root = torch.sqrt(sig * (1 - sig))
    if t.j is None:
        owner = torch.cat([t.u, t.i])
        other = torch.cat([h.index_select(0, t.i), h.index_select(0, t.u)]) * torch.cat([root, root]).unsqueeze(1)
    else:
        hu = h.index_select(0, t.u)
        owner = torch.cat([t.u, t.i, t.j])
        other = torch.cat([h.index_select(0, t.i) - h.index_select(0, t.j), hu, hu]) * torch.cat([root, root, root]).unsqueeze(1)
    slot = torch.full((problem.num_local,), -1, dtype=torch.long)
    slot[problem.kept] = torch.arange(problem.kept.numel())
    mine = slot[owner]
    keep = mine >= 0
    mine, other = mine[keep], other[keep]
    order = torch.argsort(mine, stable=True)
    mine, other = mine[order], other[order]
    counts = torch.bincount(mine, minlength=problem.kept.numel())
    scale = 1.0 / ((problem.layers + 1) ** 2 * problem.n)
    blocks = torch.empty((problem.kept.numel(), dim, dim), dtype=dtype)
    for k, x in enumerate(torch.split(other, counts.tolist())):
        blocks[k] = x.T @ x
    blocks = blocks * scale + (problem.reg + damping) * torch.eye(dim, dtype=dtype)
    chol = torch.linalg.cholesky(blocks)

    def apply(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.view(-1, dim, 1), chol).reshape(-1)

    return apply


@dataclass
class InfluenceUpdate:
    """A computed (not yet applied) IFRU update: ``E0[nodes] += delta``.

    ``cg`` is the solve of the last Newton step; ``hvps`` and
    ``cg_iterations`` count all steps.
    """

    nodes: torch.Tensor  # global node ids (int64)
    delta: torch.Tensor  # len(nodes) x dim
    cg: CGResult
    grad_norm: float
    timings: dict[str, float]
    num_params: int
    hess_terms: int
    removed_terms: int
    spill_terms: int
    hvps: int = 0
    cg_iterations: int = 0
    newton_steps: int = 1
    step_residuals: list[float] = field(default_factory=list)


def compute_update(
    problem: ReducedProblem,
    *,
    damping: float = 1e-4,
    tol: float = 1e-5,
    max_iter: int = 300,
    precondition: bool = True,
    dtype: torch.dtype = torch.float64,
    hessian: str = "remaining",
    newton_steps: int = 1,
    normaliser: str = "remaining",
) -> InfluenceUpdate:
    """IFRU update ``(1/n) (H_SS + damping I)^-1 grad_S U`` on the reduced problem (nothing is modified).

    ``hessian`` selects ``H``: ``"remaining"`` (default, Hessian of the
    objective without ``D_u``, on ``G'``) or ``"full"`` (of the training
    objective, the textbook influence function); see :func:`reduced_objective`.

    ``normaliser="training"`` (the paper's update) targets ``L' = L - U/n``;
    ``"remaining"`` (default) targets the retrain's objective, which averages the
    remaining terms over ``n - |D_u|``: the right-hand side becomes
    ``grad L(theta0) - grad L'(theta0) = (grad U - (|D_u|/n) grad D) / (n - |D_u|)``
    (``D``: the summed training loss), the removed terms' gradient minus their
    share of the average one, and ``H`` the Hessian of that objective.

    ``newton_steps > 1`` continues with Newton steps on the remaining
    objective restricted to ``S``, offset by the training gradient at
    ``theta0``: they solve ``grad_S L'(theta) = grad_S L(theta0)``, whose first
    Newton step is exactly the IFRU update (a model that was not trained to
    convergence is not pulled further than the removal asks; cf. the residual
    offsets of Unlearn-ALS, DESIGN §2).
    """
    if newton_steps < 1:
        raise ValueError(f"newton_steps must be >= 1, got {newton_steps}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prob = problem.to(dtype)
    theta = prob.theta0.reshape(-1).clone()
    if normaliser == "training":
        g_u = grad(removal_objective(prob))(theta) / prob.n
    else:
        g_u = grad(reduced_objective(prob, "full"))(theta) - grad(reduced_objective(prob, "remaining", normaliser))(theta)
    timings["grad_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    f_h = reduced_objective(prob, hessian, normaliser)
    hvp = make_hvp(f_h, theta)
    pre = block_jacobi_preconditioner(prob, damping, hessian) if precondition else None
    timings["setup_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = conjugate_gradient(hvp, g_u, damping=damping, tol=tol, max_iter=max_iter, precond=pre)
    timings["cg_s"] = time.perf_counter() - t2
    delta = res.x
    hvps, iters = res.hvps, res.iterations
    step_res = [float(torch.linalg.vector_norm(g_u))]
    if newton_steps > 1:
        t3 = time.perf_counter()
        offset = grad(reduced_objective(prob, "full"))(theta)
        g_rem = grad(reduced_objective(prob, "remaining", normaliser))
        for _ in range(newton_steps - 1):
            th = theta + delta
            rhs = offset - g_rem(th)
            step_res.append(float(torch.linalg.vector_norm(rhs)))
            res = conjugate_gradient(make_hvp(f_h, th), rhs, damping=damping, tol=tol, max_iter=max_iter, precond=pre)
            delta = delta + res.x
            hvps += res.hvps
            iters += res.iterations
        timings["extra_steps_s"] = time.perf_counter() - t3
    nodes = prob.local_nodes.index_select(0, prob.kept)
    return InfluenceUpdate(
        nodes=nodes,
        delta=delta.view(-1, prob.dim),
        cg=res,
        grad_norm=float(torch.linalg.vector_norm(g_u)),
        timings=timings,
        num_params=prob.num_params,
        hess_terms=len(prob.hess_terms),
        removed_terms=len(prob.removed_terms),
        spill_terms=len(prob.spill_terms),
        hvps=hvps,
        cg_iterations=iters,
        newton_steps=newton_steps,
        step_residuals=step_res,
    )


def apply_update(e0: torch.Tensor, update: InfluenceUpdate) -> torch.Tensor:
    """New base embeddings ``E0`` with ``update.delta`` added to the updated rows (input left untouched)."""
    out = e0.clone()
    out.index_add_(0, update.nodes, update.delta.to(out.dtype))
    return out
