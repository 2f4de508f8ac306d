"""IFRU torch kernels against slow, obvious references (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from spark_unlearn.ifru.evaluate import auc, membership_auc, recall_at_k
from spark_unlearn.ifru.influence import (
    compute_update,
    conjugate_gradient,
    make_hvp,
    reduced_objective,
    removal_objective,
)
from spark_unlearn.ifru.models import build_graph, layer_mean, objective, propagate, term_logits
from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
from spark_unlearn.ifru.pruning import kept_from_scores, node_scores_torch, subgraph_torch



@pytest.fixture(autouse=True)
def _double_precision():
    """These references compare in float64; restore the default afterwards (no leak into other modules)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_hvp_fwd(f, theta):
    """Forward-over-reverse HVP (``jvp`` of ``grad``): an independent cross-check of ``make_hvp``."""
    from torch.func import jvp

    g = grad(f)
    return lambda v: jvp(g, (theta,), (v,))[1]


def tiny_data(n_users=7, n_items=9, n_terms=40, seed=0, n_removed=4):
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, size=n_terms, replace=False)
    u = torch.tensor(pairs // n_items)
    i = torch.tensor(pairs % n_items)
    label = torch.tensor(rng.random(n_terms) < 0.6, dtype=torch.float64)
    removed = torch.zeros(n_terms, dtype=torch.bool)
    removed[torch.tensor(rng.choice(n_terms, size=n_removed, replace=False))] = True
    return u, i, label, removed


# --------------------------------------------------------------------------- models


def test_membership_auc_is_the_per_label_pair_count_weighted_by_members():
    rng = np.random.default_rng(3)
    n_users, n_items = 5, 7
    # integer embeddings: many tied confidences, which count one half
    h = torch.tensor(rng.integers(-2, 3, (n_users + n_items, 2)).astype(float))

    def pairs(n):
        return (torch.tensor(rng.integers(0, n_users, n)), torch.tensor(rng.integers(0, n_items, n)),
                torch.tensor(rng.random(n) < 0.6).long())

    members, nonmembers = pairs(23), pairs(31)

    def conf(u, i, y):
        s = float(h[u] @ h[n_users + i])
        return s if y else -s

    ref, weight = 0.0, 0
    for cls in (0, 1):
        m = [conf(u, i, y) for u, i, y in zip(*members) if y == cls]
        n = [conf(u, i, y) for u, i, y in zip(*nonmembers) if y == cls]
        ref += len(m) * sum(float(a > b) + 0.5 * float(a == b) for a in m for b in n) / (len(m) * len(n))
        weight += len(m)
    assert membership_auc(h, n_users, members, nonmembers) == pytest.approx(ref / weight)
    # a label class that exists on one side only cannot be compared: no memorisation claimed from the label mix
    pos_members = tuple(t[members[2] > 0] for t in members)
    neg_nonmembers = tuple(t[nonmembers[2] == 0] for t in nonmembers)
    assert np.isnan(membership_auc(h, n_users, pos_members, neg_nonmembers))


def test_build_graph_is_symmetric_normalised_adjacency():
    u = torch.tensor([0, 0, 1, 2])
    i = torch.tensor([0, 1, 1, 0])
    g = build_graph(u, i, 3, 2, torch.float64)
    dense = torch.zeros(5, 5)
    dense[g.dst, g.src] = g.weight
    a = torch.zeros(5, 5)
    for uu, ii in zip(u.tolist(), i.tolist()):
        a[uu, 3 + ii] = a[3 + ii, uu] = 1
    d = a.sum(1)
    ref = torch.diag(d.clamp(min=1).rsqrt()) @ a @ torch.diag(d.clamp(min=1).rsqrt())
    assert torch.allclose(dense, ref)
    x = torch.randn(5, 2)
    assert torch.allclose(propagate(x, g), ref @ x)
    # mean of layers
    assert torch.allclose(layer_mean(x, g, 2), (x + ref @ x + ref @ ref @ x) / 3)


def test_auc_matches_pair_counting_and_recall():
    rng = np.random.default_rng(1)
    s = torch.tensor(rng.integers(0, 5, 60).astype(float))
    y = torch.tensor(rng.random(60) < 0.4)
    pos, neg = s[y], s[~y]
    ref = sum(float(p > q) + 0.5 * float(p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert auc(s, y) == pytest.approx(ref)
    h = torch.randn(3 + 6, 4)
    test_u, test_i = torch.tensor([0, 0, 2]), torch.tensor([1, 5, 3])
    ex_u, ex_i = torch.tensor([0]), torch.tensor([2])
    got = recall_at_k(h, 3, test_u, test_i, ex_u, ex_i, k=2)
    vals = []
    for user in (0, 2):
        sc = (h[user] * h[3:]).sum(1)
        if user == 0:
            sc[2] = -float("inf")
        top = set(torch.topk(sc, 2).indices.tolist())
        rel = {1, 5} if user == 0 else {3}
        vals.append(len(top & rel) / len(rel))
    assert got == pytest.approx(sum(vals) / 2)


# --------------------------------------------------------------------------- HVP and CG


def full_problem(layers, kept=None, seed=0, dim=3):
    n_users, n_items = 7, 9
    u, i, label, removed = tiny_data(n_users, n_items, seed=seed)
    e0 = torch.randn(n_users + n_items, dim, generator=torch.Generator().manual_seed(seed)) * 0.5
    sub = subgraph_torch(u, i, label, removed, n_users, n_items, layers, kept)
    pos = label > 0
    g, gp = graphs_before_after(u[pos], i[pos], u[removed], i[removed], n_users, n_items)
    prob = assemble_problem(
        sub, e0, g if layers else None, gp if layers else None, n_users=n_users, n_items=n_items, layers=layers, reg=0.01, n=len(u)
    )
    return prob, (u, i, label, removed, e0, g, gp, n_users, n_items)


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("which", ["remaining", "full"])
def test_hvp_equals_dense_hessian(layers, which):
    prob, _ = full_problem(layers)
    f = reduced_objective(prob, which)
    theta = prob.theta0.reshape(-1).clone()
    h = hessian(f)(theta)
    v = torch.randn_like(theta)
    assert torch.allclose(make_hvp(f, theta)(v), h @ v, atol=1e-10)
    assert torch.allclose(make_hvp_fwd(f, theta)(v), h @ v, atol=1e-10)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_pruned_problem_is_the_restriction_of_the_full_one(layers):
    """Hessian block and grad U of the subgraph problem equal the full model's, restricted to the kept rows."""
    kept = torch.tensor([1, 4, 8, 12])
    prob, (u, i, label, removed, e0, g, gp, nu, ni) = full_problem(layers, kept=kept)
    n = len(u)
    d = e0.shape[1]
    gg, ggp = (g, gp) if layers else (None, None)

    def full_l(x):
        return objective(x.view(-1, d), gg, layers, u, i + nu, label, reg=0.01, n=n)

    def full_u(x):
        e = x.view(-1, d)
        hg = layer_mean(e, gg, layers)
        hgp = layer_mean(e, ggp, layers)
        keep = ~removed
        lg = torch.nn.functional.binary_cross_entropy_with_logits(term_logits(hg, u, i + nu), label, reduction="none")
        lgp = torch.nn.functional.binary_cross_entropy_with_logits(term_logits(hgp, u, i + nu), label, reduction="none")
        return lg[removed].sum() + (lg[keep] - lgp[keep]).sum()

    def leave_out_l(x):
        keep = ~removed
        return objective(x.view(-1, d), ggp, layers, u[keep], i[keep] + nu, label[keep], reg=0.01, n=n)

    x = e0.reshape(-1).clone()
    idx = (kept[:, None] * d + torch.arange(d)).reshape(-1)
    h_full = hessian(full_l)(x)[idx][:, idx]
    h_rem = hessian(leave_out_l)(x)[idx][:, idx]
    g_full = grad(full_u)(x)[idx]
    theta = prob.theta0.reshape(-1).clone()
    assert torch.allclose(hessian(reduced_objective(prob, "full"))(theta), h_full, atol=1e-10)
    assert torch.allclose(hessian(reduced_objective(prob, "remaining"))(theta), h_rem, atol=1e-10)
    assert torch.allclose(grad(removal_objective(prob))(theta), g_full, atol=1e-10)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_kept_hessian_terms_sum_only_the_terms_with_a_kept_endpoint(layers):
    """``hessian_terms="kept"``: the Hessian of the remaining terms touching a kept row, grad U unchanged."""
    kept = torch.tensor([1, 4, 8, 12])
    exact, (u, i, label, removed, e0, g, gp, nu, ni) = full_problem(layers, kept=kept)
    sub = subgraph_torch(u, i, label, removed, nu, ni, layers, kept)
    gg, ggp = (g, gp) if layers else (None, None)
    prob = assemble_problem(sub, e0, gg, ggp, n_users=nu, n_items=ni, layers=layers, reg=0.01, n=len(u),
                            hessian_terms="kept")
    d = e0.shape[1]
    touches = torch.isin(u, kept) | torch.isin(i + nu, kept)
    keep = ~removed & touches

    def brute(x):
        return objective(x.view(-1, d), ggp, layers, u[keep], i[keep] + nu, label[keep], reg=0.01, n=len(u))

    idx = (kept[:, None] * d + torch.arange(d)).reshape(-1)
    theta = prob.theta0.reshape(-1).clone()
    h_kept = hessian(reduced_objective(prob, "remaining"))(theta)
    assert torch.allclose(h_kept, hessian(brute)(e0.reshape(-1).clone())[idx][:, idx], atol=1e-10)
    assert torch.allclose(grad(removal_objective(prob))(theta), grad(removal_objective(exact))(theta), atol=1e-12)
    h_exact = hessian(reduced_objective(exact, "remaining"))(theta)
    if layers == 0:  # MF: every term of the subgraph has a kept endpoint already
        assert torch.equal(h_kept, h_exact)
    else:  # terms reached only through aggregation are what was dropped
        assert len(prob.hess_terms) < len(exact.hess_terms)
        assert not torch.allclose(h_kept, h_exact, atol=1e-8)


def test_cg_equals_dense_solve_on_tiny_model():
    prob, _ = full_problem(1)
    f = reduced_objective(prob)
    theta = prob.theta0.reshape(-1).clone()
    h = hessian(f)(theta)
    b = torch.randn_like(theta)
    # random (untrained) parameters: damp enough to make H + damping I positive definite
    damping = max(1e-2, 1e-2 - float(torch.linalg.eigvalsh(h).min()))
    ref = torch.linalg.solve(h + damping * torch.eye(h.shape[0]), b)
    res = conjugate_gradient(make_hvp(f, theta), b, damping=damping, tol=1e-11, max_iter=2000)
    assert res.converged
    assert torch.allclose(res.x, ref, rtol=1e-7, atol=1e-8)
    assert res.rel_residual <= 1e-10


def test_preconditioned_cg_equals_dense_solve():
    rng = torch.Generator().manual_seed(3)
    a = torch.randn(30, 30, generator=rng)
    h = a @ a.T + 0.1 * torch.eye(30)
    b = torch.randn(30, generator=rng)
    diag = torch.diag(h)
    res = conjugate_gradient(lambda v: h @ v, b, damping=0.5, tol=1e-12, max_iter=500, precond=lambda r: r / (diag + 0.5))
    assert torch.allclose(res.x, torch.linalg.solve(h + 0.5 * torch.eye(30), b), atol=1e-9)
    assert res.hvps == res.iterations + 1


def test_cg_stops_at_tolerance_and_reports_residual():
    h = torch.diag(torch.logspace(-3, 0, 200))
    b = torch.ones(200)
    res = conjugate_gradient(lambda v: h @ v, b, tol=1e-3, max_iter=1000)
    true = float(torch.linalg.vector_norm(b - h @ res.x) / torch.linalg.vector_norm(b))
    assert res.converged and true <= 1e-3 and res.rel_residual == pytest.approx(true)
    capped = conjugate_gradient(lambda v: h @ v, b, tol=1e-12, max_iter=3)
    assert not capped.converged and capped.iterations == 3


def test_cg_zero_rhs():
    res = conjugate_gradient(lambda v: v, torch.zeros(5))
    assert res.converged and res.hvps == 0 and torch.all(res.x == 0)


# --------------------------------------------------------------------------- oracle: leave-out retrain


def _lbfgs(fun, x0, iters=200):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=iters, tolerance_grad=1e-13, tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        val = fun(x)
        val.backward()
        return val

    for _ in range(20):
        opt.step(closure)
        if x.grad is not None and float(x.grad.norm()) < 1e-11:
            break
    return x.detach()


def newton_reaches_retrain(prob, theta, retrained, n_users, damping, which, norm, steps) -> float:
    """Assert that ``steps`` Newton steps reproduce the leave-out retrain's scores of all MF pairs to < 1e-3 (relative).

    Compared on scores: MF's optimum is only unique up to a rotation of P and Q.  Returns the relative error.
    """
    d = prob.dim
    more = compute_update(prob, damping=damping, tol=1e-10, max_iter=5000, hessian=which, newton_steps=steps, normaliser=norm)
    assert more.step_residuals[-1] < 1e-3 * more.step_residuals[0]

    def all_scores(x):
        e = x.view(-1, d)
        return e[:n_users] @ e[n_users:].T

    s0, s_re = all_scores(theta), all_scores(retrained)
    err = float((all_scores(theta + more.delta.reshape(-1)) - s_re).norm() / (s_re - s0).norm())
    assert err < 1e-3, err
    return err


@pytest.mark.parametrize("layers,which,norm", [
    (0, "remaining", "training"), (0, "full", "training"), (1, "remaining", "training"), (1, "full", "training"),
    (0, "remaining", "remaining"), (1, "remaining", "remaining"),
])
def test_influence_matches_leave_out_retrain(layers, which, norm):
    """Near its optimum, the predicted change of removing a few interactions matches a converged leave-out retrain.

    ``norm="training"``: the leave-out objective keeps the normaliser ``n`` (the
    paper's ``L - U/n``); ``"remaining"``: it re-averages over ``n - |D_u|`` like
    a retrain with the same hyperparameters, and the update targets that.
    """
    # LightGCN's propagation shrinks the scores: a weaker L2 keeps it away from the trivial optimum 0
    n_users, n_items, d, reg = 12, 15, 4, (0.02 if layers == 0 else 0.005)
    rng = np.random.default_rng(7)
    pairs = rng.choice(n_users * n_items, size=110, replace=False)
    u, i = torch.tensor(pairs // n_items), torch.tensor(pairs % n_items)
    true_p = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    label = torch.tensor(true_p[u.numpy(), i.numpy()] + 0.5 * rng.normal(size=110) > 0, dtype=torch.float64)
    removed = torch.zeros(110, dtype=torch.bool)
    removed[torch.tensor([3, 17, 58])] = True
    n = len(u)
    pos = label > 0
    g, gp = graphs_before_after(u[pos], i[pos], u[removed], i[removed], n_users, n_items)
    gg, ggp = (g, gp) if layers else (None, None)
    keep = ~removed

    def full(x):
        return objective(x.view(-1, d), gg, layers, u, i + n_users, label, reg=reg, n=n)

    n_after = n if norm == "training" else int(keep.sum())

    def leave_out(x):  # D_u's terms removed from the objective, G -> G'
        return objective(x.view(-1, d), ggp, layers, u[keep], i[keep] + n_users, label[keep], reg=reg, n=n_after)

    x0 = torch.randn((n_users + n_items) * d, generator=torch.Generator().manual_seed(0)) * 0.3
    theta = _lbfgs(full, x0)
    assert float(grad(full)(theta).norm()) < 1e-8
    assert float(full(theta)) < 0.688  # a real optimum, not the all-zero one (log 2 = 0.693)
    retrained = _lbfgs(leave_out, theta)
    true_delta = retrained - theta

    sub = subgraph_torch(u, i, label, removed, n_users, n_items, layers, None)
    prob = assemble_problem(sub, theta.view(-1, d), gg, ggp, n_users=n_users, n_items=n_items, layers=layers, reg=reg, n=n)
    # L' is not stationary at theta, so its Hessian can be slightly indefinite along
    # the (rotation) symmetry directions of LightGCN: damp above that.
    # With the normaliser n - |D_u| the data term's curvature along those symmetry
    # directions is scaled by n / (n - |D_u|) and is no longer cancelled by the L2
    # term: -reg |D_u| / (n - |D_u|).  Damp above that too.
    damping = (1e-9 if layers == 0 else 5e-4) + (2 * reg * (n - n_after) / n_after)
    upd = compute_update(prob, damping=damping, tol=1e-9, max_iter=5000, hessian=which, normaliser=norm)
    assert upd.cg.converged
    pred = upd.delta.reshape(-1)
    cos = float(torch.dot(pred, true_delta) / (pred.norm() * true_delta.norm()))
    print(f"layers={layers} hessian={which} normaliser={norm}: cosine {cos:.4f}, norm ratio {float(pred.norm() / true_delta.norm()):.3f}")
    ratio = float(pred.norm() / true_delta.norm())
    if layers == 0:  # the acceptance oracle: L2-regularised MF near its optimum
        assert cos >= 0.95, cos
        assert ratio == pytest.approx(1.0, abs=0.2)
    else:  # LightGCN: the graph changes too (G -> G'); measured 0.95 / 0.96, damped
        assert cos >= 0.9, cos
        assert 0.5 <= ratio <= 1.5, ratio
    if layers == 0 and which == "remaining":
        # further Newton steps on the remaining objective converge to the leave-out optimum itself
        # (compared on the scores of all pairs: MF's optimum is only unique up to a rotation of P and Q)
        newton_reaches_retrain(prob, theta, retrained, n_users, damping, which, norm, 5 if norm == "training" else 12)

    # Note: on 110 terms the two normalisers differ by 3 %, which alone moves the
    # optimum about as much as the removal, so each variant is checked against its
    # own leave-out objective (see docs/IFRU.md).


# --------------------------------------------------------------------------- pruning scores


def _scores_bruteforce(u, i, removed, n_users, n_items, hops):
    n = n_users + n_items
    nbrs = {v: set() for v in range(n)}
    rem = [0] * n
    for a, b, r in zip(u.tolist(), i.tolist(), removed.tolist()):
        nbrs[a].add(n_users + b)
        nbrs[n_users + b].add(a)
        if r:
            rem[a] += 1
            rem[n_users + b] += 1
    deg = [len(nbrs[v]) for v in range(n)]
    s = [rem[v] / deg[v] if deg[v] else 0.0 for v in range(n)]
    for _ in range(hops):
        s = [(s[w] + sum(s[v] for v in nbrs[w])) / deg[w] if deg[w] else 0.0 for w in range(n)]
    return s


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_node_scores_match_bruteforce(hops):
    u, i, _, removed = tiny_data(seed=hops)
    s = node_scores_torch(u, i, removed, 7, 9, hops)
    assert s.tolist() == pytest.approx(_scores_bruteforce(u, i, removed, 7, 9, hops))


def test_kept_nodes_are_exactly_those_above_the_quantile():
    u, i, _, removed = tiny_data(seed=5)
    s = node_scores_torch(u, i, removed, 7, 9, 1)
    has = torch.bincount(torch.cat([u, i + 7]), minlength=16) > 0
    for q in (0.0, 0.3, 0.5, 0.8, 0.95):
        kept = kept_from_scores(s, has, q)
        vals = sorted(s[has].tolist())
        thr = np.quantile(vals, q)
        want = [v for v in range(16) if has[v] and s[v] > thr and s[v] > 0]
        assert kept.tolist() == want


def test_subgraph_torch_locality():
    """MF: terms touching the kept nodes only; LightGCN: the kept nodes' 1-hop neighbourhood decides."""
    u, i, label, removed = tiny_data(seed=2)
    kept = torch.tensor([0, 10])
    sub = subgraph_torch(u, i, label, removed, 7, 9, 0, kept)
    want = {(a, b + 7) for a, b in zip(u.tolist(), i.tolist()) if a == 0 or b + 7 == 10}
    assert set(zip(sub.term_u.tolist(), sub.term_i.tolist())) == want
    assert sub.edges_g[0].numel() == 0 and not bool(sub.term_changed.any())
    sub1 = subgraph_torch(u, i, label, removed, 7, 9, 1, kept)
    pos = [(a, b + 7) for a, b, y in zip(u.tolist(), i.tolist(), label.tolist()) if y > 0]
    reach = {0, 10} | {b for a, b in pos if a in (0, 10)} | {a for a, b in pos if b in (0, 10)}
    want1 = {(a, b + 7) for a, b in zip(u.tolist(), i.tolist()) if a in reach or b + 7 in reach}
    assert set(zip(sub1.term_u.tolist(), sub1.term_i.tolist())) == want1
    assert set(sub1.edges_g[0].tolist()) <= {0, 10}


# --------------------------------------------------------------------------- training with early stopping


def test_early_stopping_returns_the_best_monitored_epoch():
    """A monitor peaking at epoch 3 with patience 2: training stops after epoch 5 and returns epoch 3's table."""
    from spark_unlearn.ifru.models import Terms
    from spark_unlearn.ifru.train import train

    u, i, label, _ = tiny_data()
    terms = Terms(u, i + 7, label)
    e0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    values = iter([1.0, 2.0, 5.0, 4.0, 4.5, 9.0, 9.0])
    res = train(e0, None, 0, terms, epochs=50, batch_size=8, lr=0.05, monitor=lambda e: next(values), patience=2)
    ref = train(e0, None, 0, terms, epochs=3, batch_size=8, lr=0.05)
    assert res.best_epoch == 3 and res.epochs == 5 and res.monitor_history == [1.0, 2.0, 5.0, 4.0, 4.5]
    assert res.steps == 5 * 5  # 40 terms in batches of 8
    assert torch.equal(res.e0, ref.e0)
    assert not torch.equal(ref.e0, train(e0, None, 0, terms, epochs=5, batch_size=8, lr=0.05).e0)
