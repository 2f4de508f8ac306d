"""Frontier Unlearn-ALS on the driver, against brute-force references (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als.drift import neighbour_drift, neighbour_drift_reference
from spark_unlearn.als.frontier import frontier_unlearn
from spark_unlearn.als.kernels import SolveSpec
from spark_unlearn.als.local_source import LocalSource, certificate, offset_sweeps, offsets_of
from spark_unlearn.als.train import init_factors


def low_rank_problem(seed, k, nu=60, ni=50, density=0.25, components=1):
    """Ratings from a true rank-k model plus small noise (ALS converges fast on these)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((nu, ni)) < density
    if components == 2:  # two disconnected blocks: users/items of one never rate the other's
        mask[: nu // 2, ni // 2 :] = False
        mask[nu // 2 :, : ni // 2] = False
    uu, ii = np.nonzero(mask)
    Ut, Vt = rng.normal(size=(nu, k)) + 1, rng.normal(size=(ni, k)) + 1
    r = (np.einsum("nk,nk->n", Ut[uu], Vt[ii]) + 0.1 * rng.normal(size=uu.size)).astype(np.float32)
    return uu + 100, ii + 500, r, rng


def trained(uu, ii, r, k, spec, sweeps):
    U = {u: init_factors(np.array([u]), k, 0, 1)[0] for u in np.unique(uu)}
    V = {i: init_factors(np.array([i]), k, 0, 2)[0] for i in np.unique(ii)}
    zero = {s: {i: np.zeros(k) for i in d} for s, d in (("user", U), ("item", V))}
    return offset_sweeps(uu, ii, r, U, V, zero, spec, sweeps)


def unlearn_case(uu, ii, r, U, V, spec, delete, tol, **kw):
    """Run the frontier for deleting rows ``delete``; returns everything a test needs."""
    e, bn = offsets_of(uu, ii, r, U, V, spec)
    keep = np.setdiff1d(np.arange(uu.size), delete)
    u2, i2, r2 = uu[keep], ii[keep], r[keep]
    direct = {"user": set(uu[delete].tolist()) & set(u2.tolist()), "item": set(ii[delete].tolist()) & set(i2.tolist())}
    targets = {s: {i: (np.zeros_like(v) if i in direct[s] else v) for i, v in e[s].items()} for s in e}
    grams = {}
    if spec.implicit:
        stack = lambda d, ids: np.stack([d[x] for x in ids]).astype(np.float64)  # noqa: E731
        Ua, Va = stack(U, list(U)), stack(V, list(V))
        Un, Vn = stack(U, np.unique(u2)), stack(V, np.unique(i2))
        grams = {"gram_train": {"user": Ua.T @ Ua, "item": Va.T @ Va}, "gram_now": {"user": Un.T @ Un, "item": Vn.T @ Vn}}
    res = frontier_unlearn(LocalSource(u2, i2, r2, {"user": U, "item": V}, e, bn), direct, spec, tol, **grams, **kw)
    U2 = {x: res.updates["user"].get(x, U[x]) for x in np.unique(u2)}
    V2 = {x: res.updates["item"].get(x, V[x]) for x in np.unique(i2)}
    return res, (u2, i2, r2), U2, V2, targets


@pytest.mark.parametrize("implicit,pred_factor", [(False, 10.0), (True, 100.0)])
def test_frontier_reaches_the_exact_stationary_point_of_a_converged_model(implicit, pred_factor):
    """Converged model (e ~ 0): frontier result certifies at tol and matches full sweeps to convergence."""
    k, tol = 2, 1e-4
    spec = SolveSpec(0.3, implicit, 1.0)
    uu, ii, r, rng = low_rank_problem(0, k)
    U, V = trained(uu, ii, r, k, spec, sweeps=200)
    delete = rng.choice(uu.size, 3, replace=False)
    res, (u2, i2, r2), U2, V2, targets = unlearn_case(uu, ii, r, U, V, spec, delete, tol, max_rounds=500)
    assert res.converged
    assert certificate(u2, i2, r2, U2, V2, targets, spec) <= tol
    Uf, Vf = offset_sweeps(u2, i2, r2, {x: U[x] for x in np.unique(u2)}, {x: V[x] for x in np.unique(i2)}, targets, spec, 400)
    assert certificate(u2, i2, r2, Uf, Vf, targets, spec) < 1e-6  # the reference really is the fixed point
    ours = np.array([U2[a] @ V2[b] for a, b in zip(u2, i2)])
    ref = np.array([Uf[a] @ Vf[b] for a, b in zip(u2, i2)])
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= pred_factor * tol


def test_frontier_certifies_an_unconverged_model_at_its_tolerance():
    """A 10-sweep model is far from stationary; the offsets make it a fixed point, and the frontier restores that."""
    k = 3
    spec = SolveSpec(0.3, False, 1.0)
    uu, ii, r, rng = low_rank_problem(1, k)
    U, V = trained(uu, ii, r, k, spec, sweeps=10)
    delete = rng.choice(uu.size, 4, replace=False)
    res, (u2, i2, r2), U2, V2, targets = unlearn_case(uu, ii, r, U, V, spec, delete, 1e-3)
    assert res.converged
    assert certificate(u2, i2, r2, U2, V2, targets, spec) <= 1e-3
    # The first round is exactly the direct rows (those whose own ratings changed and that still have some)...
    keep = np.setdiff1d(np.arange(uu.size), delete)
    direct = {"user": set(uu[delete].tolist()) & set(uu[keep].tolist()),
              "item": set(ii[delete].tolist()) & set(ii[keep].tolist())}
    assert res.frontier_sizes[0] == {s: len(direct[s]) for s in ("user", "item")}
    assert direct["user"] <= res.solved_ids["user"] and direct["item"] <= res.solved_ids["item"]
    # ...and the work reported is one solve per row per round it was in the frontier.
    assert len(res.frontier_sizes) == res.rounds
    assert res.rows_solved == sum(n["user"] + n["item"] for n in res.frontier_sizes)


def test_empty_deletion_changes_nothing():
    k = 2
    spec = SolveSpec(0.3, False, 1.0)
    uu, ii, r, _ = low_rank_problem(2, k)
    U, V = trained(uu, ii, r, k, spec, sweeps=10)
    res, *_ = unlearn_case(uu, ii, r, U, V, spec, np.array([], dtype=np.int64), 1e-4)
    assert res.rows_solved == 0 and res.updates == {"user": {}, "item": {}}


def test_work_stays_in_the_connected_component_of_the_deletion():
    """Explicit mode couples rows only through shared ratings: the other component is never touched."""
    k = 2
    spec = SolveSpec(0.3, False, 1.0)
    uu, ii, r, rng = low_rank_problem(3, k, components=2)
    U, V = trained(uu, ii, r, k, spec, sweeps=100)
    first_half = np.flatnonzero(uu < 100 + 30)
    res, *_ = unlearn_case(uu, ii, r, U, V, spec, rng.choice(first_half, 3, replace=False), 1e-6, max_rounds=300)
    assert all(u < 130 for u in res.solved_ids["user"])
    assert all(i < 525 for i in res.solved_ids["item"])
    assert res.rows_solved > 0


def test_rows_left_without_ratings_are_skipped_not_flagged_every_round():
    """An item whose every rating is deleted leaves the model; checks over stored rows must skip it.

    Its stored factor row cannot be re-solved (no remaining rating).  Flagged by the implicit Gram check, it
    came back every round until the frontier gave up (ml-latest-small, 5 % of the interactions: 45 such
    items, 50 rounds, then full sweeps).  Passed as ``gone`` it is skipped and the frontier converges.
    """
    k, tol = 2, 1e-4
    spec = SolveSpec(0.3, True, 1.0)
    uu, ii, r, _ = low_rank_problem(4, k)
    U, V = trained(uu, ii, r, k, spec, sweeps=200)
    items, counts = np.unique(ii, return_counts=True)
    lonely = int(items[np.argmin(counts)])
    delete = np.flatnonzero(ii == lonely)
    stuck, *_ = unlearn_case(uu, ii, r, U, V, spec, delete, tol, max_rounds=300)
    # Without it: the frontier ends with that one row flagged (and solved for nothing) round after round.
    assert not stuck.converged and stuck.frontier_sizes[-20:] == [{"user": 0, "item": 1}] * 20
    res, (u2, i2, r2), U2, V2, targets = unlearn_case(uu, ii, r, U, V, spec, delete, tol, max_rounds=300,
                                                      gone={"item": {lonely}})
    assert res.converged and lonely not in res.solved_ids["item"]
    assert certificate(u2, i2, r2, U2, V2, targets, spec) <= tol


@pytest.mark.parametrize("implicit", [False, True])
def test_neighbour_drift_matches_the_per_edge_reference(implicit):
    rng = np.random.default_rng(6)
    n_rows, n_nbrs, k = 5, 30, 4
    counts = rng.integers(0, 12, n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    src = rng.integers(0, n_nbrs, indptr[-1])  # repeated neighbours: their terms add up
    ratings = rng.integers(-2, 6, indptr[-1]).astype(np.float32)
    Y = rng.normal(size=(n_nbrs, k)).astype(np.float32)
    X_old, X_new = (rng.normal(size=(n_rows, k)).astype(np.float32) for _ in range(2))
    spec = SolveSpec(0.1, implicit, 0.7)
    got = neighbour_drift(indptr, src, ratings, Y, X_old, X_new, spec, chunk=7)
    want = neighbour_drift_reference(indptr, src, ratings, Y, X_old, X_new, spec)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-10)
    assert np.abs(want[0]).max() > 0.1
