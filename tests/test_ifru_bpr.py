"""IFRU with the BPR loss: fixed seeded triples, exactly the removed positives' triples, and the leave-out oracle (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from spark_unlearn.errors import ConfigError
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.influence import compute_update, make_hvp, reduced_objective, removal_objective
from spark_unlearn.ifru.models import bpr_negatives, bpr_terms, layer_mean, objective, term_logits
from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
from spark_unlearn.ifru.pruning import subgraph_triples_torch
from spark_unlearn.ifru.state import IFRUModel
from test_ifru_kernels import _double_precision, _lbfgs, newton_reaches_retrain  # shared with the BCE tests

pytestmark = pytest.mark.usefixtures(_double_precision.__name__)  # float64 references (autouse there too)


def positives(n_users, n_items, per_user, seed):
    """Each user's ``per_user`` favourite items under a noisy rank-2 taste (dense ids), so that BPR has structure to learn."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items)) + 0.5 * rng.normal(size=(n_users, n_items))
    top = np.argsort(-taste, axis=1, kind="stable")[:, :per_user]
    return torch.tensor(np.repeat(np.arange(n_users), per_user)), torch.tensor(top.reshape(-1))


def triple_set(u, i, j):
    """Multiset of triples as a sorted list."""
    return sorted(zip(u.tolist(), i.tolist(), j.tolist()))


# --------------------------------------------------------------------------- the fixed triples


def test_bpr_negatives_are_seeded_fixed_and_never_a_positive_of_the_user():
    pu, pi = positives(10, 11, 4, seed=1)
    u, i, j = bpr_negatives(pu, pi, 11, 3, seed=5)
    assert j.shape == (40, 3)
    assert torch.equal(u * 11 + i, torch.sort(pu * 11 + pi).values)  # distinct positives, sorted by (u, i)
    own = {(a, b) for a, b in zip(pu.tolist(), pi.tolist())}
    assert all((a, c) not in own for a, row in zip(u.tolist(), j.tolist()) for c in row)
    assert bool(((j >= 0) & (j < 11)).all())
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    again = bpr_negatives(torch.cat([pu[perm], pu[:3]]), torch.cat([pi[perm], pi[:3]]), 11, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip((u, i, j), again))  # independent of order and duplicates
    assert not torch.equal(j, bpr_negatives(pu, pi, 11, 3, seed=6)[2])
    # uniform over the user's non-positive items (exact inverse-CDF draw, no rejection)
    one_u, one_i = torch.tensor([0, 0, 0]), torch.tensor([1, 3, 4])
    draws = bpr_negatives(one_u, one_i, 6, 6000, seed=0)[2].reshape(-1)
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert freq[[1, 3, 4]].sum() == 0
    assert torch.allclose(freq[[0, 2, 5]], torch.full((3,), 1 / 3), atol=0.01)
    with pytest.raises(ValueError, match="every item"):
        bpr_negatives(torch.tensor([0, 0]), torch.tensor([0, 1]), 2, 1, seed=0)


def _bpr_model(layers, seed=0, n_users=8, n_items=10, per_user=4, m=2, dim=3):
    pu, pi = positives(n_users, n_items, per_user, seed)
    pu, pi, nj = bpr_negatives(pu, pi, n_items, m, seed)
    cfg = IFRUConfig(model_type="lightgcn" if layers else "mf", layers=max(layers, 1), dim=dim, loss="bpr", bpr_negatives=m,
                     reg=0.01, damping=1e-1, cg_tol=1e-10, influence_dtype="float64")
    e0 = torch.randn(n_users + n_items, dim, generator=torch.Generator().manual_seed(seed)) * 0.5
    model = IFRUModel(cfg, e0.float(), np.arange(n_users), np.arange(n_items), pu, pi, torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, dtype=torch.long), int(nj.numel()), neg_j=nj)
    return model, e0


@pytest.mark.parametrize("layers,prune", [(0, None), (1, None), (1, 0.5)])
def test_removed_triples_are_exactly_those_whose_positive_is_removed(layers, prune):
    """Subgraph, reduced problem and the unlearned model: D_u = every triple of a removed positive, nothing else."""
    from spark_unlearn.ifru.unlearn import apply_unlearning, plan_from_subgraph, select_subgraph_bpr

    model, _ = _bpr_model(layers)
    cfg = model.config.replace(prune_quantile=prune)
    nu, ni, m = model.n_users, model.n_items, 2
    gone = torch.tensor([2, 11, 12, 25])
    req_u = torch.cat([model.pos_u[gone], torch.tensor([0])])
    req_i = torch.cat([model.pos_i[gone], torch.tensor([int(model.neg_j[0, 0])])])  # (0, j) is a negative, not a term
    sub, _ = select_subgraph_bpr(model, req_u, req_i, cfg)
    everything = bpr_terms(model.pos_u, model.pos_i, model.neg_j, nu)
    rem_pairs = {(int(model.pos_u[r]), int(model.pos_i[r]) + nu) for r in gone.tolist()}
    want_removed = [t for t in triple_set(everything.u, everything.i, everything.j) if t[:2] in rem_pairs]
    assert len(want_removed) == len(gone) * m == sub.removed_terms
    assert set(zip(sub.removed_u.tolist(), sub.removed_i.tolist())) == rem_pairs
    flag = sub.term_removed.bool()
    assert triple_set(sub.term_u[flag], sub.term_i[flag], sub.term_j[flag]) == want_removed  # all in the subgraph
    kept_t = triple_set(sub.term_u[~flag], sub.term_i[~flag], sub.term_j[~flag])
    assert all(t[:2] not in rem_pairs for t in kept_t)
    if prune is None:
        assert len(kept_t) + len(want_removed) == len(everything)

    prob = assemble_problem(sub, model.e0, *(graphs_before_after(model.pos_u, model.pos_i, sub.removed_u, sub.removed_i - nu, nu, ni)
                                            if layers else (None, None)),
                            n_users=nu, n_items=ni, layers=layers, reg=cfg.reg, n=model.n_terms, loss="bpr")
    glob = prob.local_nodes
    rt = prob.removed_terms
    assert triple_set(glob[rt.u], glob[rt.i], glob[rt.j]) == want_removed
    assert prob.n_removed == len(want_removed) and prob.n_after == model.n_terms - len(want_removed)

    new = apply_unlearning(model, plan_from_subgraph(model, sub, cfg))
    left = new.bpr_terms()
    assert triple_set(left.u, left.i, left.j) == [
        t for t in triple_set(everything.u, everything.i, everything.j) if t[:2] not in rem_pairs
    ]
    assert new.n_terms == model.n_terms - len(want_removed) == len(left)
    assert new.pos_u.numel() == model.pos_u.numel() - len(gone)


# --------------------------------------------------------------------------- kernels against dense references


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_bpr_pruned_problem_is_the_restriction_of_the_full_one(layers):
    """Hessians (both) and grad U of the BPR subgraph problem = the full model's, restricted to the kept rows; HVP = dense."""
    model, e0 = _bpr_model(layers)
    nu, ni, d = model.n_users, model.n_items, e0.shape[1]
    removed = torch.zeros(model.pos_u.numel(), dtype=torch.bool)
    removed[torch.tensor([4, 20, 21])] = True  # of 32 positives
    kept = torch.tensor([1, 4, 9, 12])
    sub = subgraph_triples_torch(model.pos_u, model.pos_i, model.neg_j, removed, nu, ni, layers, kept)
    g, gp = graphs_before_after(model.pos_u, model.pos_i, model.pos_u[removed], model.pos_i[removed], nu, ni)
    gg, ggp = (g, gp) if layers else (None, None)
    prob = assemble_problem(sub, e0, gg, ggp, n_users=nu, n_items=ni, layers=layers, reg=0.01, n=model.n_terms, loss="bpr")
    t = model.bpr_terms()
    t_removed = removed.repeat_interleave(2)
    n = len(t)

    def full_l(x):
        return objective(x.view(-1, d), gg, layers, t.u, t.i, None, loss="bpr", reg=0.01, j=t.j, n=n)

    def leave_out_l(x):
        k = ~t_removed
        return objective(x.view(-1, d), ggp, layers, t.u[k], t.i[k], None, loss="bpr", reg=0.01, j=t.j[k], n=n)

    def full_u(x):
        e = x.view(-1, d)
        lg = -torch.nn.functional.logsigmoid(term_logits(layer_mean(e, gg, layers), t.u, t.i, t.j))
        lgp = -torch.nn.functional.logsigmoid(term_logits(layer_mean(e, ggp, layers), t.u, t.i, t.j))
        return lg[t_removed].sum() + (lg[~t_removed] - lgp[~t_removed]).sum()

    x = e0.reshape(-1).clone()
    idx = (kept[:, None] * d + torch.arange(d)).reshape(-1)
    theta = prob.theta0.reshape(-1).clone()
    assert torch.allclose(hessian(reduced_objective(prob, "full"))(theta), hessian(full_l)(x)[idx][:, idx], atol=1e-10)
    h_rem = hessian(reduced_objective(prob, "remaining"))(theta)
    assert torch.allclose(h_rem, hessian(leave_out_l)(x)[idx][:, idx], atol=1e-10)
    assert torch.allclose(grad(removal_objective(prob))(theta), grad(full_u)(x)[idx], atol=1e-10)
    v = torch.randn_like(theta)
    assert torch.allclose(make_hvp(reduced_objective(prob, "remaining"), theta)(v), h_rem @ v, atol=1e-10)


# --------------------------------------------------------------------------- oracle: leave-out retrain


@pytest.mark.parametrize("layers,which,norm", [
    (0, "remaining", "training"), (0, "full", "training"), (0, "remaining", "remaining"), (0, "full", "remaining"),
    (1, "remaining", "remaining"),
])
def test_bpr_influence_matches_leave_out_retrain(layers, which, norm):
    """Near its optimum, the predicted change of removing 3 positives (all their triples) matches a converged retrain.

    Same conventions as the BCE oracle in test_ifru_kernels.py: ``norm="training"``
    keeps the normaliser ``n`` (number of triples) in the leave-out objective,
    ``"remaining"`` re-averages over ``n - |D_u|``; the retrain keeps the
    remaining triples with their negatives.  20 users x 25 items, 10
    positives per user, 2 negatives each (400 triples); the removed positives'
    items keep >= 3 other positives (an item losing its last positives becomes
    a pure negative and moves far: not the small-perturbation regime of an
    influence function, see docs/IFRU.md §6).
    """
    n_users, n_items, d, m = 20, 25, 4, 2
    reg = 0.02 if layers == 0 else 0.005
    pu, pi = positives(n_users, n_items, 10, seed=7)
    pu, pi, nj = bpr_negatives(pu, pi, n_items, m, seed=3)
    t = bpr_terms(pu, pi, nj, n_users)
    deg_i = torch.bincount(pi, minlength=n_items)
    ok = torch.nonzero(deg_i[pi] >= 4).reshape(-1)
    removed = torch.zeros(pu.numel(), dtype=torch.bool)
    removed[ok[torch.randperm(ok.numel(), generator=torch.Generator().manual_seed(0))[:3]]] = True
    t_removed = removed.repeat_interleave(m)
    n = len(t)
    g, gp = graphs_before_after(pu, pi, pu[removed], pi[removed], n_users, n_items)
    gg, ggp = (g, gp) if layers else (None, None)
    keep = ~t_removed
    n_after = n if norm == "training" else int(keep.sum())

    def full(x):
        return objective(x.view(-1, d), gg, layers, t.u, t.i, None, loss="bpr", reg=reg, j=t.j, n=n)

    def leave_out(x):  # every triple of a removed positive dropped, the others keep their negatives, G -> G'
        return objective(x.view(-1, d), ggp, layers, t.u[keep], t.i[keep], None, loss="bpr", reg=reg, j=t.j[keep], n=n_after)

    x0 = torch.randn((n_users + n_items) * d, generator=torch.Generator().manual_seed(0)) * 0.3
    theta = _lbfgs(full, x0)
    assert float(grad(full)(theta).norm()) < 1e-8
    assert float(full(theta)) < 0.68  # a real optimum, not the all-zero one (log 2 = 0.693)
    retrained = _lbfgs(leave_out, theta)
    assert float(grad(leave_out)(retrained).norm()) < 1e-8
    true_delta = retrained - theta

    sub = subgraph_triples_torch(pu, pi, nj, removed, n_users, n_items, layers, None)
    prob = assemble_problem(sub, theta.view(-1, d), gg, ggp, n_users=n_users, n_items=n_items, layers=layers, reg=reg, n=n,
                            loss="bpr")
    # As in the BCE oracle (LightGCN there): L' is not stationary at theta, so its Hessian is slightly indefinite
    # along MF's rotation directions (measured down to -1.2e-4 for BPR, where BCE's stays positive): damp above
    # that, and above the curvature the L2 term no longer cancels with the normaliser n - |D_u|.
    damping = 5e-4 + (2 * reg * (n - n_after) / n_after)
    upd = compute_update(prob, damping=damping, tol=1e-9, max_iter=5000, hessian=which, normaliser=norm)
    assert upd.cg.converged
    pred = upd.delta.reshape(-1)
    cos = float(torch.dot(pred, true_delta) / (pred.norm() * true_delta.norm()))
    ratio = float(pred.norm() / true_delta.norm())
    print(f"BPR layers={layers} hessian={which} normaliser={norm}: cosine {cos:.4f}, norm ratio {ratio:.3f}")
    if layers == 0:  # the acceptance oracle: L2-regularised MF near its optimum
        assert cos >= 0.95, cos
        assert ratio == pytest.approx(1.0, abs=0.2)
    else:  # LightGCN: the graph changes too (G -> G'), damped
        assert cos >= 0.9, cos
        assert 0.5 <= ratio <= 1.5, ratio
    if layers == 0 and which == "remaining":
        # further Newton steps on the remaining objective converge to the leave-out optimum itself
        err = newton_reaches_retrain(prob, theta, retrained, n_users, damping, which, norm, 8)
        print(f"  8 Newton steps: relative score error {err:.2e}")


# --------------------------------------------------------------------------- plumbing


def test_bpr_configuration_errors_and_persistence(tmp_path):
    from spark_unlearn.ifru import persist
    from spark_unlearn.ifru.unlearn import compute_unlearning, fit_tensors, fit_triples

    with pytest.raises(ConfigError, match="bpr_negatives"):
        IFRUConfig(loss="bpr", bpr_negatives=0)
    model, _ = _bpr_model(0)
    cfg = model.config
    with pytest.raises(ConfigError, match="fit_triples"):
        fit_tensors(cfg, 8, 10, model.pos_u, model.pos_i, torch.ones(model.pos_u.numel()))
    with pytest.raises(ConfigError, match="needs loss='bpr'"):
        fit_triples(cfg.replace(loss="bce"), 8, 10, model.pos_u, model.pos_i, model.neg_j)
    with pytest.raises(ConfigError, match="trained with loss='bpr'"):
        compute_unlearning(None, model, cfg.replace(loss="bce"))
    res = fit_triples(cfg.replace(epochs=3), 8, 10, model.pos_u, model.pos_i, model.neg_j)
    assert res.epochs == 3 and np.isfinite(res.final_loss)
    d = str(tmp_path / "m")
    persist.save_model(model, d)
    back = persist.load_model(d)
    assert torch.equal(back.neg_j, model.neg_j) and back.config.loss == "bpr" and back.n_terms == model.neg_j.numel()
