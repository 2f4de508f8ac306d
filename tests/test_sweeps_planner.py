"""Oracle tests of the sweep strategy's kernel and of the batch planner's cost model (pure numpy, no Spark).

The oracles: the same sweeps written row by row with the dense reference
kernels; each row's deviation recomputed from the dense normal equations;
one sweep written out with ``solve_rows``; the planner's rule applied by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als import strategy_cost
from spark_unlearn.als.kernels import SolveSpec, gram, normal_equations_reference, residuals, solve_rows
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.strategy_cost import choose_strategy, forced_sweeps, frontier_remaining, frontier_should_yield
from spark_unlearn.als.sweep_kernel import SweepSide, warm_sweeps, warm_sweeps_reference

RANK = 5


def csr(rows, cols, vals, n):
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order].astype(np.int64), vals[order].astype(np.float32)


def problem(implicit: bool, seed: int = 0, n_users: int = 30, n_items: int = 20, trained_sweeps: int = 30):
    """A model trained by plain ALS sweeps on a random bipartite rating set, its training residual as the targets,
    then 10 % of its ratings deleted (every row keeps one): the sweep strategy's starting point.  Rows that lost a
    rating get target 0."""
    rng = np.random.default_rng(seed)
    pairs = {(u, int(rng.integers(n_items))) for u in range(n_users)} | {(int(rng.integers(n_users)), i)
                                                                         for i in range(n_items)}
    pairs |= {(int(rng.integers(n_users)), int(rng.integers(n_items))) for _ in range(120)}
    u, i = (np.array(x, np.int64) for x in zip(*sorted(pairs)))
    r = rng.integers(1, 6, u.size).astype(np.float32)
    spec = SolveSpec(reg=0.1, implicit=implicit, alpha=0.5)
    X = rng.normal(scale=0.3, size=(n_users, RANK)).astype(np.float32)
    Y = rng.normal(scale=0.3, size=(n_items, RANK)).astype(np.float32)
    by_user, by_item = csr(u, i, r, n_users), csr(i, u, r, n_items)
    for _ in range(trained_sweeps):
        Y = solve_rows(*by_item, X, spec, gram(X) if implicit else None).astype(np.float32)
        X = solve_rows(*by_user, Y, spec, gram(Y) if implicit else None).astype(np.float32)
    T = {"user": residuals(X, *by_user, Y, spec, gram(Y) if implicit else None)[0],
         "item": residuals(Y, *by_item, X, spec, gram(X) if implicit else None)[0]}
    # Delete 10 % of the ratings, never a row's last one.
    gone = np.zeros(u.size, bool)
    for p in rng.permutation(u.size)[: u.size // 10]:
        if (~gone & (u == u[p])).sum() > 1 and (~gone & (i == i[p])).sum() > 1:
            gone[p] = True
    T["user"][np.unique(u[gone])] = 0.0
    T["item"][np.unique(i[gone])] = 0.0
    keep = ~gone

    def sides():
        return {"user": SweepSide(*csr(u[keep], i[keep], r[keep], n_users), X.copy(), T["user"].copy()),
                "item": SweepSide(*csr(i[keep], u[keep], r[keep], n_items), Y.copy(), T["item"].copy())}

    sides.deleted = (u[gone], i[gone])  # the deleted pairs (row positions), for the forgetting watch's tests
    return sides, spec


def dense_deviation(sides, side, other, spec):
    me, nb = sides[side], sides[other]
    A, b = normal_equations_reference(me.indptr, me.src, me.ratings, nb.X, spec, gram(nb.X) if spec.implicit else None)
    d = np.einsum("nkl,nl->nk", A, me.X.astype(np.float64)) - b - me.T
    return np.linalg.norm(d, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("implicit", [False, True])
def test_warm_sweeps_equal_the_row_by_row_reference_and_stop_at_the_first_certified_sweep(implicit):
    sides, spec = problem(implicit)
    policy = RowTolerance(floor=1e-2, own=1.0, policy="training-precision")
    fast = warm_sweeps(sides(), spec, policy, max_sweeps=60)
    ref = warm_sweeps_reference(sides(), spec, policy, max_sweeps=60)
    assert fast.holds and ref.holds
    assert fast.sweeps == ref.sweeps > 1
    for s in ("user", "item"):
        np.testing.assert_allclose(fast.factors[s], ref.factors[s], rtol=1e-4, atol=1e-6)
    # The sweep before the last did not hold: the run stopped at the first certified sweep.
    assert fast.history[-2]["item"]["violators"] > 0
    assert fast.row_solves == fast.sweeps * (30 + 20)


@pytest.mark.parametrize("implicit", [False, True])
def test_the_recorded_deviation_and_bounds_are_every_rows_exact_values_on_the_float32_factors(implicit):
    sides, spec = problem(implicit, seed=1)
    policy = RowTolerance(floor=1e-2, own=1.0, policy="training-precision")
    s = sides()
    run = warm_sweeps(s, spec, policy, max_sweeps=40)
    for side, other in (("user", "item"), ("item", "user")):
        assert run.factors[side].dtype == np.float32
        np.testing.assert_allclose(run.deviation[side], dense_deviation(s, side, other, spec), rtol=1e-7, atol=1e-12)
        # Each row's bound: max(floor, |t_r| / |b'_r|) (targets zero on the direct rows: the floor).
        expect = np.maximum(1e-2, np.linalg.norm(s[side].T, axis=1) / run.bnorm[side])
        np.testing.assert_allclose(run.bounds[side], expect, rtol=1e-12)
        assert (run.deviation[side] <= run.bounds[side]).all()
        np.testing.assert_allclose(np.linalg.norm(run.drift[side], axis=1) / run.bnorm[side], run.deviation[side],
                                   rtol=1e-12)


@pytest.mark.parametrize("implicit", [False, True])
def test_the_repair_equals_its_row_by_row_reference_certifies_in_fewer_sweeps_and_records_exact_deviations(implicit):
    sides, spec = problem(implicit, seed=1)
    policy = RowTolerance(floor=1e-2, own=1.0, policy="training-precision")
    plain = warm_sweeps(sides(), spec, policy, max_sweeps=60)
    s = sides()
    fast = warm_sweeps(s, spec, policy, max_sweeps=60, repair_fraction=0.5, repair_rounds=6)
    ref = warm_sweeps_reference(sides(), spec, policy, max_sweeps=60, repair_fraction=0.5, repair_rounds=6)
    assert fast.holds and ref.holds and fast.sweeps == ref.sweeps
    assert fast.sweeps < plain.sweeps  # the point of the repair
    repairs = [h["repair"] for h in fast.history if "repair" in h]
    assert repairs and repairs[-1]["holds"] and repairs == [h["repair"] for h in ref.history if "repair" in h]
    assert fast.repaired_rows == sum(r["rows"] for r in repairs) > 0
    assert fast.row_solves == fast.sweeps * (30 + 20) + fast.repaired_rows
    for side, other in (("user", "item"), ("item", "user")):
        np.testing.assert_allclose(fast.factors[side], ref.factors[side], rtol=1e-4, atol=1e-6)
        # The certificate after a repair: every row's exact deviation on the published factors, bound included.
        np.testing.assert_allclose(fast.deviation[side], dense_deviation(s, side, other, spec), rtol=1e-7, atol=1e-12)
        expect = np.maximum(1e-2, np.linalg.norm(s[side].T, axis=1) / fast.bnorm[side])
        np.testing.assert_allclose(fast.bounds[side], expect, rtol=1e-12)
        assert (fast.deviation[side] <= fast.bounds[side]).all()


@pytest.mark.parametrize("implicit", [False, True])
def test_a_repair_of_many_rounds_keeps_every_rows_figures_equal_to_the_dense_normal_equations(implicit):
    """After the first round a repair updates the other side from the rows next to the solved ones and, implicit,
    the Gram's change (not from every rating): every recorded drift, deviation and |b'| is still the data's."""
    sides, spec = problem(implicit, seed=4, n_users=60, n_items=40)
    policy = RowTolerance(floor=1e-3, own=1.0, policy="training-precision")
    s = sides()
    run = warm_sweeps(s, spec, policy, max_sweeps=60, repair_fraction=0.5, repair_rounds=8)
    last = [h["repair"] for h in run.history if "repair" in h][-1]
    assert run.holds and last["holds"] and last["rounds"] >= 4
    for side, other in (("user", "item"), ("item", "user")):
        me, nb = s[side], s[other]
        A, b = normal_equations_reference(me.indptr, me.src, me.ratings, nb.X, spec, gram(nb.X) if implicit else None)
        drift = np.einsum("nkl,nl->nk", A, me.X.astype(np.float64)) - b - me.T
        np.testing.assert_allclose(run.drift[side], drift, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(run.bnorm[side], np.linalg.norm(b, axis=1), rtol=1e-12)
        np.testing.assert_allclose(run.deviation[side], dense_deviation(s, side, other, spec), rtol=1e-9, atol=1e-14)


def test_a_repair_that_takes_more_rows_than_its_fraction_hands_back_to_the_sweeps():
    sides, spec = problem(False, seed=1)
    policy = RowTolerance(floor=1e-2, own=1.0, policy="training-precision")
    # A fraction so small that no sweep's violators qualify: plain sweeps, no repair recorded.
    none = warm_sweeps(sides(), spec, policy, max_sweeps=60, repair_fraction=1e-9, repair_rounds=6)
    plain = warm_sweeps(sides(), spec, policy, max_sweeps=60)
    assert none.sweeps == plain.sweeps and not any("repair" in h for h in none.history)
    # One round only: a repair that does not hold in it leaves the next sweep to start from the repaired rows,
    # and the run still ends certified with both sides measured.
    one = warm_sweeps(sides(), spec, policy, max_sweeps=60, repair_fraction=0.5, repair_rounds=1)
    assert one.holds and set(one.deviation) == {"user", "item"}
    assert all(h["repair"]["rounds"] == 1 for h in one.history if "repair" in h)


def test_min_sweeps_run_unchecked_first_then_the_certificate_stops_the_sweeps():
    sides, spec = problem(True, seed=2)
    loose = RowTolerance(floor=1e6)
    plain = warm_sweeps(sides(), spec, loose, max_sweeps=10, min_sweeps=3)
    ref = warm_sweeps_reference(sides(), spec, loose, max_sweeps=10, min_sweeps=3)
    # A policy every sweep meets: the certificate stops at the first sweep allowed to stop, the third.
    assert plain.holds and plain.sweeps == ref.sweeps == 3
    assert [h.get("checked", True) for h in plain.history] == [False, False, True]
    for s in ("user", "item"):
        np.testing.assert_allclose(plain.factors[s], ref.factors[s], rtol=1e-4, atol=1e-6)
    three = warm_sweeps(sides(), spec, RowTolerance(floor=0.0), max_sweeps=3)  # never certifies: exactly 3 sweeps
    for s in ("user", "item"):
        np.testing.assert_array_equal(plain.factors[s], three.factors[s])
    with pytest.raises(ValueError, match="min_sweeps must be in"):
        warm_sweeps(sides(), spec, loose, max_sweeps=2, min_sweeps=3)


def test_a_loose_policy_stops_after_one_sweep_which_is_items_then_users():
    sides, spec = problem(True, seed=2)
    s0 = sides()
    run = warm_sweeps(sides(), spec, RowTolerance(floor=1e6), max_sweeps=10)
    assert run.holds and run.sweeps == 1
    items = solve_rows(s0["item"].indptr, s0["item"].src, s0["item"].ratings, s0["user"].X, spec, gram(s0["user"].X),
                       None, s0["item"].T).astype(np.float32)
    users = solve_rows(s0["user"].indptr, s0["user"].src, s0["user"].ratings, items, spec, gram(items), None,
                       s0["user"].T).astype(np.float32)
    np.testing.assert_array_equal(run.factors["item"], items)
    np.testing.assert_array_equal(run.factors["user"], users)


def test_first_rows_are_solved_items_then_users_before_the_first_sweep_and_counted():
    """One loose sweep after the changed rows' presolve, written out by hand; the reference agrees; row solves count
    them."""
    sides, spec = problem(True, seed=2)
    s0 = sides()
    first = {"item": np.array([3, 0, 7]), "user": np.array([5, 1])}
    run = warm_sweeps(sides(), spec, RowTolerance(floor=1e6), max_sweeps=10, first_rows=first)
    ref = warm_sweeps_reference(sides(), spec, RowTolerance(floor=1e6), max_sweeps=10, first_rows=first)
    it, us = s0["item"], s0["user"]
    Y = it.X.copy()
    Y[first["item"]] = solve_rows(it.indptr, it.src, it.ratings, us.X, spec, gram(us.X), first["item"],
                                  it.T[first["item"]]).astype(np.float32)
    X = us.X.copy()
    X[first["user"]] = solve_rows(us.indptr, us.src, us.ratings, Y, spec, gram(Y), first["user"],
                                  us.T[first["user"]]).astype(np.float32)
    Y = solve_rows(it.indptr, it.src, it.ratings, X, spec, gram(X), None, it.T).astype(np.float32)
    X = solve_rows(us.indptr, us.src, us.ratings, Y, spec, gram(Y), None, us.T).astype(np.float32)
    np.testing.assert_array_equal(run.factors["item"], Y)
    np.testing.assert_array_equal(run.factors["user"], X)
    for s in ("user", "item"):
        np.testing.assert_allclose(ref.factors[s], run.factors[s], rtol=1e-4, atol=1e-6)
    assert run.presolved_rows == 5 and run.row_solves == 5 + 50
    plain = warm_sweeps(sides(), spec, RowTolerance(floor=1e6), max_sweeps=10)
    assert not np.array_equal(plain.factors["user"], run.factors["user"])


def test_sweeps_that_cannot_certify_within_their_budget_say_so_with_both_sides_measured():
    sides, spec = problem(False, seed=3)
    run = warm_sweeps(sides(), spec, RowTolerance(floor=1e-5), max_sweeps=2)
    assert not run.holds and run.sweeps == 2 and len(run.history) == 2
    assert set(run.deviation) == {"user", "item"}  # the last sweep measures both sides even when items fail
    assert run.history[-1]["item"]["violators"] > 0
    with pytest.raises(ValueError, match="max_sweeps must be at least 1"):
        warm_sweeps(sides(), spec, RowTolerance(floor=1.0), max_sweeps=0)


def test_the_planner_sweeps_at_once_when_the_direct_rows_cost_more_than_the_sweeps():
    k, c, g = strategy_cost.EXPECTED_SWEEPS, strategy_cost.FRONTIER_ROW_COST, strategy_cost.FRONTIER_GROWTH
    total = 100_000
    limit = int(k * total / (c * g))
    small = choose_strategy(direct_rows=100, total_rows=total, max_rows=50_000, max_sweeps=10, sweeps_possible=True)
    assert small.choice == "frontier" and small.direct_rows_limit == limit and small.frontier_max_rows == 50_000
    assert small.sweep_estimate_row_solves == k * total
    big = choose_strategy(direct_rows=limit + 1, total_rows=total, max_rows=50_000, max_sweeps=10, sweeps_possible=True)
    assert big.choice == "sweeps" and "cost more" in big.why
    assert choose_strategy(direct_rows=limit, total_rows=total, max_rows=50_000, max_sweeps=10,
                           sweeps_possible=True).choice == "frontier"
    # Never more sweeps than a cold retrain's iterations.
    few = choose_strategy(direct_rows=10, total_rows=total, max_rows=50, max_sweeps=2, sweeps_possible=True)
    assert few.sweep_estimate_row_solves == 2 * total and few.frontier_max_rows == 50
    # Sweeps impossible (the version does not fit the driver): the frontier with the request's cap, and why.
    no = choose_strategy(direct_rows=10**6, total_rows=total, max_rows=50_000, max_sweeps=10, sweeps_possible=False,
                         why_not="too big")
    assert no.choice == "frontier" and no.frontier_max_rows == 50_000 and "too big" in no.why
    forced = forced_sweeps(10, total, 10)
    assert forced.choice == "sweeps" and forced.why == "requested (mode full)"
    assert set(small.to_dict()) >= {"choice", "why", "direct_rows_limit", "frontier_max_rows", "sweep_estimate_row_solves"}


def test_the_frontier_yields_when_its_predicted_remaining_rounds_cost_more_than_sweeping():
    # Rounds alternate sides: the ratio is taken against the round two before (11555 -> 5403: q = 0.47).
    sizes = [11555, 2228]
    q = 5403 / 11555
    assert frontier_remaining(sizes, 5403) == pytest.approx((5403 + 2228 * q) / (1 - q))
    # A frontier of ADM's core 5 % users (measured rounds): from round 3 on it solved 9,483 rows; predicted 12.2k.
    rounds = [11555, 2228, 5403, 525, 2278, 186, 705, 50, 218, 19, 81, 3, 15]
    assert sum(rounds[2:]) <= frontier_remaining(rounds[:2], rounds[2]) <= 1.5 * sum(rounds[2:])
    assert frontier_remaining([11555], 2228) == 2228  # no ratio on one side yet: the next round alone
    assert frontier_remaining([100, 100], 95) == float("inf")  # not shrinking: predicted never to end
    c = strategy_cost.FRONTIER_ROW_COST
    remaining = frontier_remaining(sizes, 5403)
    assert not frontier_should_yield(sizes, 5403, sweep_row_solves=remaining * c * 1.01)
    assert frontier_should_yield(sizes, 5403, sweep_row_solves=remaining * c * 0.99)
