"""The safeguarded IFRU update: Steihaug-Toint CG and the trust region against dense references (no Spark)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import hessian

from spark_unlearn.ifru.evaluate import auc
from spark_unlearn.ifru.influence import compute_update, reduced_objective
from spark_unlearn.ifru.models import objective
from spark_unlearn.ifru.problem import assemble_problem
from spark_unlearn.ifru.pruning import subgraph_torch
from spark_unlearn.ifru.trust_region import steihaug_cg, trust_region_newton


from test_ifru_kernels import _double_precision  # noqa: E402  float64 references, shared with the other kernels

pytestmark = pytest.mark.usefixtures(_double_precision.__name__)


def sym(eigs, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def model_value(h, g, p):
    return float(g @ p + 0.5 * p @ h @ p)


def cauchy_decrease(h, g, m_diag, radius):
    """Slow reference: the best decrease of the model along -M^-1 g inside ||p||_M <= radius (grid + closed form)."""
    d = -g / m_diag
    dn = math.sqrt(float(d @ (m_diag * d)))
    t_max = radius / dn
    curv = float(d @ h @ d)
    t = t_max if curv <= 0 else min(t_max, -float(g @ d) / curv)
    return -model_value(h, g, t * d)


def test_interior_step_is_the_dense_solve():
    h = sym([0.5, 1, 2, 3, 5, 8, 9, 11])
    g = torch.randn(8, generator=torch.Generator().manual_seed(1))
    m_diag = torch.diag(h) + 0.1
    res = steihaug_cg(lambda v: h @ v, g, damping=0.1, tol=1e-12, precond=lambda r: r / m_diag)
    ref = -torch.linalg.solve(h + 0.1 * torch.eye(8), g)
    assert res.stop == "converged"
    assert torch.allclose(res.p, ref, atol=1e-9)
    assert res.predicted_decrease == pytest.approx(-model_value(h + 0.1 * torch.eye(8), g, ref), rel=1e-9)
    assert res.m_norm == pytest.approx(math.sqrt(float(ref @ (m_diag * ref))), rel=1e-9)


def test_boundary_step_has_the_radius_in_the_preconditioner_norm():
    h = sym([1, 2, 3, 4, 6, 7], seed=2)
    g = torch.randn(6, generator=torch.Generator().manual_seed(3))
    m_diag = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 1.0])
    full = -torch.linalg.solve(h, g)
    radius = 0.3 * math.sqrt(float(full @ (m_diag * full)))
    res = steihaug_cg(lambda v: h @ v, g, radius, tol=1e-12, precond=lambda r: r / m_diag)
    assert res.stop == "boundary"
    assert math.sqrt(float(res.p @ (m_diag * res.p))) == pytest.approx(radius, rel=1e-9)
    assert res.m_norm == pytest.approx(radius, rel=1e-9)
    assert res.predicted_decrease == pytest.approx(-model_value(h, g, res.p), rel=1e-9)
    # Steihaug's step does at least as well as the Cauchy point (its first CG step)
    assert res.predicted_decrease >= cauchy_decrease(h, g, m_diag, radius) * (1 - 1e-12)


def test_negative_curvature_stops_on_the_boundary_and_still_decreases_the_model():
    h = sym([-3, -0.5, 1, 2, 4], seed=4)
    g = torch.randn(5, generator=torch.Generator().manual_seed(5))
    m_diag = torch.ones(5)
    res = steihaug_cg(lambda v: h @ v, g, 2.0, tol=1e-12)
    assert res.stop in ("negative_curvature", "boundary")
    assert float(res.p.norm()) == pytest.approx(2.0, rel=1e-9)
    assert res.predicted_decrease == pytest.approx(-model_value(h, g, res.p), rel=1e-9)
    assert res.predicted_decrease >= cauchy_decrease(h, g, m_diag, 2.0) * (1 - 1e-12) > 0
    # no radius, negative curvature at once: the model is unbounded, CG stops where it is
    first = steihaug_cg(lambda v: -v, g)
    assert first.stop == "negative_curvature" and float(first.p.norm()) == 0.0 and first.m_norm == 0.0


def test_trust_region_goes_downhill_where_newton_goes_uphill():
    """phi = sum (x^2 - 1)^2 + x'Cx / 10 from near its local maximum 0: Newton's step climbs to it."""
    c = sym([1, 2, 3, 4], seed=6)

    def phi(x):
        return ((x * x - 1) ** 2).sum() + 0.1 * x @ c @ x

    x0 = torch.tensor([0.05, -0.03, 0.02, 0.04])
    g = torch.func.grad(phi)
    newton = x0 - torch.linalg.solve(hessian(phi)(x0), g(x0))
    assert float(phi(newton)) > float(phi(x0))  # the unguarded step raises the objective
    res = trust_region_newton(lambda x: float(phi(x)), g, lambda x: (lambda v: hessian(phi)(x) @ v), x0, newton_steps=3,
                              tol=1e-12)
    assert res.status == "newton" and res.newton_steps == 3
    assert any(t.stop == "negative_curvature" for t in res.trials)
    assert res.merit_after < res.merit_before - 0.1
    assert all(t.actual > 0 for t in res.trials if t.accepted)
    assert float(phi(x0 + res.delta)) == pytest.approx(res.merit_after)


def test_no_accepted_step_falls_back_to_first_order_steps():
    """A Hessian model that is far too flat gives a huge step; with one trial allowed, gradient steps take over."""
    h = sym([1, 2, 3], seed=7)
    b = torch.tensor([1.0, -2.0, 0.5])

    def phi(x):
        return 0.5 * x @ h @ x - b @ x

    x0 = torch.zeros(3)
    res = trust_region_newton(lambda x: float(phi(x)), torch.func.grad(phi), lambda x: (lambda v: 1e-6 * v), x0,
                              newton_steps=1, max_trials=1, first_order_steps=5)
    assert res.trials[0].accepted is False and res.trials[0].actual < 0
    assert res.status == "first_order" and res.first_order_steps == 5
    assert res.merit_after < res.merit_before
    assert float(phi(x0 + res.delta)) == pytest.approx(res.merit_after)


def indefinite_mf(seed=3, n_users=10, n_items=12, dim=3, flip=0.3):
    """A small MF far from its optimum (random table) with a large fraction of flipped labels removed."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, size=90, replace=False)
    u, i = torch.tensor(pairs // n_items), torch.tensor(pairs % n_items)
    truth = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    label = torch.tensor(truth[u.numpy(), i.numpy()] > 0, dtype=torch.float64)
    removed = torch.tensor(rng.random(90) < flip)
    label = torch.where(removed, 1 - label, label)  # the removed pairs carry wrong labels
    theta = torch.tensor(rng.normal(scale=1.0, size=((n_users + n_items) * dim)))
    reg = 1e-3
    sub = subgraph_torch(u, i, label, removed, n_users, n_items, 0, None)
    prob = assemble_problem(sub, theta.view(-1, dim), None, None, n_users=n_users, n_items=n_items, layers=0, reg=reg,
                            n=len(u))
    vpairs = rng.choice(n_users * n_items, size=60, replace=False)
    vu, vi = torch.tensor(vpairs // n_items), torch.tensor(vpairs % n_items)
    vlabel = torch.tensor(truth[vu.numpy(), vi.numpy()] > 0, dtype=torch.float64)
    return prob, theta, (u, i, label, removed), (vu, vi, vlabel), n_users, dim, reg


def test_indefinite_hessian_never_makes_the_model_worse():
    prob, theta, (u, i, label, removed), (vu, vi, vlabel), n_users, dim, reg = indefinite_mf()
    f_rem = reduced_objective(prob, "remaining", "remaining")
    x = prob.theta0.reshape(-1)
    assert float(torch.linalg.eigvalsh(hessian(f_rem)(x)).min()) < 0  # the retained Hessian is indefinite here
    nodes = prob.local_nodes.index_select(0, prob.kept)

    def val_auc(delta):
        e = theta.view(-1, dim).clone()
        e[nodes] += delta.view(-1, dim)
        return auc((e[vu] * e[vi + n_users]).sum(1), vlabel)

    def retained(delta):  # the whole retained-data objective, computed from scratch on every pair
        e = theta.view(-1, dim).clone()
        e[nodes] += delta.view(-1, dim)
        keep = ~removed
        return float(objective(e, None, 0, u[keep], i[keep] + n_users, label[keep], reg=reg, n=int(keep.sum())))

    # the unguarded update (one plain Newton step, as before the safeguard) is worse on the retained objective
    g_u = torch.func.grad(reduced_objective(prob, "full"))(x) - torch.func.grad(f_rem)(x)
    plain = torch.linalg.solve(hessian(f_rem)(x) + 1e-5 * torch.eye(len(x)), g_u)
    assert retained(plain) > retained(torch.zeros_like(plain))
    for steps in (1, 2, 3):
        upd = compute_update(prob, damping=1e-5, tol=1e-8, max_iter=500, newton_steps=steps, dtype=torch.float64,
                             validate=val_auc)
        cert = upd.certificate
        assert cert["negative_curvature_met"], cert["trials"]
        assert retained(upd.delta) <= retained(torch.zeros_like(upd.delta)) + 1e-12
        assert cert["retained_objective_change"] == pytest.approx(
            retained(upd.delta) - retained(torch.zeros_like(upd.delta)), abs=1e-12)
        assert val_auc(upd.delta) >= cert["validation_auc_before"]
        assert cert["validation_auc_after"] == pytest.approx(val_auc(upd.delta))
        assert cert["merit_change"] <= 0
        assert bool(upd.delta.any()), "the safeguard found no step at all"


def test_auc_standard_error_matches_the_bootstrap():
    from spark_unlearn.ifru.evaluate import auc_standard_error

    gen = torch.Generator().manual_seed(11)
    pos, neg = torch.randn(200, generator=gen) + 0.8, torch.randn(300, generator=gen)
    scores, labels = torch.cat([pos, neg]), torch.cat([torch.ones(200), torch.zeros(300)])
    value = auc(scores, labels)
    boot = []
    for _ in range(400):
        p = pos[torch.randint(0, 200, (200,), generator=gen)]
        q = neg[torch.randint(0, 300, (300,), generator=gen)]
        boot.append(auc(torch.cat([p, q]), labels))
    ref = float(torch.tensor(boot).std())
    assert auc_standard_error(value, 200, 300) == pytest.approx(ref, rel=0.15)
    assert math.isnan(auc_standard_error(value, 0, 300))


def test_tensor_mib_counts_every_reachable_tensor_once():
    from dataclasses import dataclass as _dc

    from spark_unlearn.ifru.unlearn import peak_rss_mib, tensor_mib

    shared = torch.zeros(1024, 256, dtype=torch.float32)  # 1 MiB

    @_dc
    class Inner:
        a: torch.Tensor
        b: list

    @_dc
    class Outer:
        inner: Inner
        again: torch.Tensor
        extra: dict

    obj = Outer(Inner(shared, [torch.zeros(512, 512, dtype=torch.float64)]), shared, {"x": torch.zeros(256, 1024, dtype=torch.float32)})
    assert tensor_mib(obj) == pytest.approx(1 + 2 + 1)  # the shared tensor once; float64 512x512 = 2 MiB
    assert peak_rss_mib() > 10
