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

    ``cg`` is the last CG solve; ``hvps`` and ``cg_iterations`` count every
    trial.  ``newton_steps`` is the number of *accepted* trust-region steps.
    ``certificate`` is the per-request evidence (see :func:`compute_update`).
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
    certificate: dict = field(default_factory=dict)


def outside_gradient_change(problem: ReducedProblem, theta_before: torch.Tensor, theta_after: torch.Tensor,
                            normaliser: str = "remaining") -> float:
    """``||grad_h F(h(after)) - grad_h F(h(before))||`` over the local nodes that are *not* updated.

    ``F`` is the retained-data loss of the subgraph's remaining terms on
    ``G'`` as a function of the representations ``h``.  These terms are every
    term whose score the update can move, so the change is exact, not sampled.
    For MF ``h`` is ``E0``: the change of the retained-data gradient of the rows
    left out of the update (before: the trained model's, about 0).  For
    LightGCN it is a proxy, on the propagated representations.
    """
    terms = problem.remaining_terms
    if terms is None or len(terms) == 0:
        return 0.0
    norm = problem.n if normaliser == "training" else problem.n_after
    outside = torch.ones(problem.num_local, dtype=torch.bool)
    outside[problem.kept] = False
    if not bool(outside.any()):
        return 0.0

    def grad_h(theta: torch.Tensor) -> torch.Tensor:
        h = local_representation(problem, theta, "gp").detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_terms_loss_sum(problem, h, terms) / norm, h)
        return g[outside]

    with torch.enable_grad():
        return float(torch.linalg.vector_norm(grad_h(theta_after) - grad_h(theta_before)))


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
    first_order_steps: int = 10,
    validate: Callable[[torch.Tensor], float] | None = None,
    validate_baseline: float | None = None,
    validate_tolerance: float = 0.0,
) -> InfluenceUpdate:
    """The safeguarded IFRU update on the reduced problem (nothing is modified).

    The update minimises the retained-data merit, offset by the training
    gradient at ``theta0``::

        phi(theta) = L'(theta) - grad L(theta0)^T (theta - theta0)

    ``L'`` is the objective without ``D_u`` (remaining terms on ``G'``),
    averaged over ``n - |D_u|`` (``normaliser="remaining"``, the retrain's
    objective) or over ``n`` (``"training"``, the paper's ``L - U/n``).  Its
    gradient at ``theta0`` is ``-(grad L(theta0) - grad L'(theta0))``, minus the
    IFRU right-hand side, so the first Newton step on ``phi`` is exactly the
    IFRU update ``(H + damping I)^-1 (grad L - grad L')(theta0)``; the offset
    keeps a model that was not trained to convergence from being pulled
    further than the removal asks (cf. the residual offsets of Unlearn-ALS).
    ``hessian``: the model Hessian of ``L'`` (``"remaining"``) or ``L`` (``"full"``).

    Safeguards (:mod:`spark_unlearn.ifru.trust_region`): steps come from
    Steihaug-Toint truncated CG in a trust region and are accepted only if
    they lower ``phi``; without an accepted step, at most ``first_order_steps``
    gradient steps are taken.  Then the whole displacement is halved until
    the retained-data objective ``L'`` is not above its value at ``theta0`` and,
    with ``validate`` (``delta -> validation AUC`` of the updated model), the
    validation AUC is not below ``validate_baseline`` (default: ``validate``
    of a zero update) minus ``validate_tolerance``.  When no halving passes,
    the update is zero.

    ``certificate`` of the result: the merit gradient over the updated rows
    after and before (and their ratio), the change of ``L'``, the change of
    the retained-data gradient outside the updated rows
    (:func:`outside_gradient_change`), the validation AUC before and after,
    the trust-region trials and which safeguard decided (all in float64).
    """
    from spark_unlearn.ifru.trust_region import trust_region_newton

    if newton_steps < 1:
        raise ValueError(f"newton_steps must be >= 1, got {newton_steps}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prob = problem.to(dtype)
    exact = problem.to(torch.float64)
    theta = prob.theta0.reshape(-1).clone()
    theta64 = exact.theta0.reshape(-1).clone()
    l_rem64 = reduced_objective(exact, "remaining", normaliser)
    offset64 = grad(reduced_objective(exact, "full"))(theta64)
    g_rem64 = grad(l_rem64)
    offset = offset64.to(dtype)
    g_rem = grad(reduced_objective(prob, "remaining", normaliser))
    base64 = float(l_rem64(theta64))

    def merit(th: torch.Tensor) -> float:
        th64 = th.to(torch.float64)
        return float(l_rem64(th64) - base64 - torch.dot(offset64, th64 - theta64))

    def gradient(th: torch.Tensor) -> torch.Tensor:
        return g_rem(th) - offset

    g0 = gradient(theta)
    g_u = -g0
    timings["grad_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    f_h = reduced_objective(prob, hessian, normaliser)
    pre = block_jacobi_preconditioner(prob, damping, hessian) if precondition else None
    timings["setup_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    tr = trust_region_newton(
        merit, gradient, lambda th: make_hvp(f_h, th), theta, newton_steps=newton_steps, damping=damping, tol=tol,
        max_iter=max_iter, precond=pre, first_order_steps=first_order_steps, g0=g0,
    )
    timings["cg_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    delta, scale, decided = tr.delta, 1.0, "merit"
    base_auc = None
    if validate is not None:
        base_auc = validate_baseline if validate_baseline is not None else validate(torch.zeros_like(prob.theta0))
    auc_after = base_auc
    for _ in range(31):
        if not bool(delta.any()):
            break
        th64 = theta64 + delta.to(torch.float64)
        objective_ok = float(l_rem64(th64)) <= base64
        ok = objective_ok
        if ok and validate is not None:
            auc_after = validate(delta.view(-1, prob.dim))
            ok = not auc_after < base_auc - validate_tolerance
        if ok:
            break
        decided = "validation_auc" if objective_ok else "retained_objective"
        delta, scale = 0.5 * delta, 0.5 * scale
    else:
        delta, scale, auc_after = torch.zeros_like(delta), 0.0, base_auc
    if not bool(delta.any()):
        scale, auc_after = 0.0, base_auc
    theta1_64 = theta64 + delta.to(torch.float64)
    g_before = float(torch.linalg.vector_norm(g_rem64(theta64) - offset64))
    g_after = float(torch.linalg.vector_norm(g_rem64(theta1_64) - offset64))
    outside = outside_gradient_change(exact, theta64, theta1_64, normaliser)
    certificate = {
        "status": tr.status if scale > 0 else "unchanged",
        "updated_rows": int(prob.kept.numel()),
        "newton_steps_accepted": tr.newton_steps,
        "first_order_steps": tr.first_order_steps,
        "trials": [t.to_dict() for t in tr.trials],
        "negative_curvature_met": any(t.stop == "negative_curvature" for t in tr.trials),
        "scale": scale,
        "scaled_by": decided if scale < 1 else None,
        "merit_gradient_before": g_before,
        "merit_gradient_after": g_after,
        "merit_gradient_ratio": g_after / g_before if g_before else 0.0,
        "merit_change": merit(theta1_64),
        "retained_objective_change": float(l_rem64(theta1_64)) - base64,
        "outside_gradient_change": outside,
        "outside_gradient_change_ratio": outside / g_before if g_before else 0.0,
        "validation_auc_before": base_auc,
        "validation_auc_after": auc_after,
        "validation_auc_tolerance": validate_tolerance if validate is not None else None,
    }
    timings["safeguard_s"] = time.perf_counter() - t3
    last = tr.last_cg
    cg = CGResult(
        x=delta if last is None else last.p,
        iterations=0 if last is None else last.iterations,
        hvps=0 if last is None else last.hvps,
        rel_residual=0.0 if last is None else last.rel_residual,
        converged=last is None or last.stop == "converged",
    )
    nodes = prob.local_nodes.index_select(0, prob.kept)
    return InfluenceUpdate(
        nodes=nodes,
        delta=delta.view(-1, prob.dim),
        cg=cg,
        grad_norm=float(torch.linalg.vector_norm(g_u)),
        timings=timings,
        num_params=prob.num_params,
        hess_terms=len(prob.hess_terms),
        removed_terms=len(prob.removed_terms),
        spill_terms=len(prob.spill_terms),
        hvps=tr.hvps,
        cg_iterations=tr.cg_iterations,
        newton_steps=tr.newton_steps,
        step_residuals=tr.grad_norms,
        certificate=certificate,
    )


def apply_update(e0: torch.Tensor, update: InfluenceUpdate) -> torch.Tensor:
    """New base embeddings ``E0`` with ``update.delta`` added to the updated rows (input left untouched)."""
    out = e0.clone()
    out.index_add_(0, update.nodes, update.delta.to(out.dtype))
    return out
