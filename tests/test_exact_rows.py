"""The targeted certificate made exact: rows read from the data, the maximum settled, the drift watch carried.

Each piece against a slow numpy reference on small random data (no Spark).
"""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als.exact_rows import exact_deviations, settle_maximum
from spark_unlearn.als.frontier import bnorm_now, other
from spark_unlearn.als.kernels import SolveSpec, normal_equations_reference
from spark_unlearn.als.local_source import LocalSource
from spark_unlearn.als.ratio_watch import RatioWatch
from spark_unlearn.als.targeted_certificate import next_drift_watch, settle_side
from test_frontier import low_rank_problem, trained, unlearn_case


def _reference(side, ids, data, U, V, targets, spec):
    """Per row of ``ids``: ``A'x - b' - t`` and ``|b'|`` by the per-rating loop, current factors, remaining data."""
    u2, i2, r2 = data
    mine, theirs = (U, V) if side == "user" else (V, U)
    col, oth = (u2, i2) if side == "user" else (i2, u2)
    G = None
    if spec.implicit:
        Y = np.stack([theirs[x] for x in np.unique(oth)]).astype(np.float64)
        G = Y.T @ Y
    D, B = [], []
    for i in ids:
        sel = np.flatnonzero(col == i)
        Y = np.stack([theirs[x] for x in oth[sel]]).astype(np.float32)
        A, b = normal_equations_reference(np.array([0, sel.size]), np.arange(sel.size), r2[sel], Y, spec, gram=G)
        D.append(A[0] @ np.asarray(mine[i], np.float32).astype(np.float64) - b[0] - targets[side][i])
        B.append(np.linalg.norm(b[0]))
    return np.array(D), np.array(B)


@pytest.mark.parametrize("implicit", [False, True])
def test_rows_read_from_the_data_and_solved_rows_have_the_exact_deviation_and_norm(implicit):
    k = 3
    spec = SolveSpec(0.3, implicit, 1.0)
    uu, ii, r, rng = low_rank_problem(3, k, nu=40, ni=30)
    U, V = trained(uu, ii, r, k, spec, sweeps=30)
    delete = rng.choice(uu.size, 4, replace=False)
    res, data, U2, V2, targets = unlearn_case(uu, ii, r, U, V, spec, delete, 1e-3, max_rounds=200)
    assert res.converged
    direct = {s: np.array(sorted(set(np.asarray(list(targets[s]))[[not v.any() for v in targets[s].values()]])))
              for s in ("user", "item")}
    src = LocalSource(*data, {"user": U, "item": V}, targets, {s: {i: 1.0 for i in targets[s]} for s in targets})
    for side in ("user", "item"):
        table = res.rows[side]
        sel = np.flatnonzero(table["touched"])
        ids = table.ids[sel]
        D_ref, b_ref = _reference(side, ids, data, U2, V2, targets, spec)
        gram = res.grams_final[other(side)] if implicit else None
        got_ids, D, bn = exact_deviations(src, side, ids, res.rows, direct[side], spec, gram)
        assert np.array_equal(got_ids, ids)
        assert np.allclose(bn, b_ref, rtol=1e-10, atol=1e-12)
        assert np.allclose(D, D_ref, rtol=0, atol=1e-9 * max(1.0, b_ref.max()))
        # Solved rows: |b'| from b kept at the solve plus its bookkept change, exact without reading anything.
        scale, exact = bnorm_now(table, sel, np.full(sel.size, 1e9))
        assert exact.any() and np.allclose(scale[exact], b_ref[exact], rtol=1e-10)
        assert (scale[~exact] >= 1e9 - 1e6).all()  # the others: the stored |b| minus the change, a lower bound


def test_settle_maximum_reads_in_decreasing_bound_until_no_bound_can_exceed_the_exact_maximum():
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        true = rng.gamma(1.0, 0.1, n)
        exact = rng.random(n) < 0.4
        bounds = np.where(exact, true, true * (1 + rng.random(n) * rng.choice([0.001, 0.05, 1.0])))
        extra_exact = float(rng.choice([0.0, rng.gamma(1.0, 0.1)]))
        reads = []

        def exactify(pos):
            reads.append(np.asarray(pos))
            return true[pos]

        out = settle_maximum(bounds, exact, exactify, exact_terms=extra_exact, chunk=int(rng.integers(1, 5)))
        assert out.is_exact and out.maximum == pytest.approx(max(true.max(), extra_exact), abs=0)
        read = np.concatenate(reads) if reads else np.zeros(0, int)
        assert not exact[read].any() and np.unique(read).size == read.size  # only bounds, each at most once
        # Every bound above the exact maximum was read; a read row's bound was at least the smallest bound read.
        assert set(np.flatnonzero(~exact & (bounds > out.maximum)).tolist()) <= set(read.tolist())
        capped = settle_maximum(bounds, exact, lambda p: true[p], exact_terms=extra_exact, cap=0)
        assert capped.maximum >= max(true.max(), extra_exact) - 1e-15
        assert capped.is_exact == (not (~exact & (bounds > max(extra_exact, true[exact].max(initial=0.0)))).any())
        # A bound term above every exact value: the record is that bound, and nothing below it is read.
        top = float(bounds.max()) * 2
        bounded = settle_maximum(bounds, exact, lambda p: true[p], bound_terms=top)
        assert not bounded.is_exact and bounded.maximum == top and bounded.read.size == 0


def test_the_drift_watch_gives_the_exact_maximum_of_untouched_rows_over_a_sequence_of_requests(monkeypatch):
    """Brute force: every row's true term over random requests; what the engine records per side against it."""
    rng = np.random.default_rng(11)
    n, size = 120, 16
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    true = np.zeros(n)
    alive = np.ones(n, bool)
    by_id = {int(i): j for j, i in enumerate(ids)}

    def fake_exact(source, side, want, tables, direct, spec, gram):
        want = np.asarray(want, np.int64)
        vals = true[[by_id[int(i)] for i in want]]
        return want, vals[:, None].copy(), np.ones(want.size)

    monkeypatch.setattr("spark_unlearn.als.targeted_certificate.exact_deviations", fake_exact)
    monkeypatch.setattr("spark_unlearn.als.targeted_certificate.DRIFT_WATCH_SIZE", size)
    watch = RatioWatch.empty()
    exact_records = bounded_records = 0
    for step in range(40):
        live = np.flatnonzero(alive)
        t = rng.choice(live, size=min(live.size, int(rng.integers(1, 30))), replace=False)
        if step % 2:  # the parent's worst rows are touched (the watch's first entries leave it and re-enter)
            t = np.union1d(t, live[np.argsort(-true[live])[:3]])
        gone = rng.choice(np.setdiff1d(live, t), size=int(rng.integers(0, 2)), replace=False)
        alive[gone] = False
        # Late requests leave smaller terms: then rows pushed out of the watch earlier (rest) may be the largest.
        true[t] = rng.gamma(1.0, 0.1, t.size) * (1.0 if step < 20 else 0.2)
        solved = rng.random(t.size) < 0.5
        upper = np.where(solved, true[t], true[t] * (1 + 0.01 * rng.random(t.size)))  # |b'| bounded below
        touched = {"ids": ids[t], "relative": upper.copy(), "exact": solved.copy(), "drift": upper[:, None].copy(),
                   "bnorm": np.ones(t.size), "x_relative": None}
        skip = np.concatenate([ids[t], ids[gone]])
        out = settle_side(None, "user", touched, {}, set(), SolveSpec(0.1, False, 1.0), None, exact_terms={},
                          bound_terms={}, watch=watch, untouched_skip=skip)
        truth = true[alive].max()
        if out["exact"]:
            exact_records += 1
            assert out["max"] == pytest.approx(truth, abs=1e-15), step
        else:
            bounded_records += 1
            assert out["max"] >= truth - 1e-15 and "rest" in out["why"]
            assert out["max"] == pytest.approx(max(watch.rest, truth), abs=1e-15)  # the bound is rest, no looser
        # Rows read exactly leave the touched arrays exact, at their true value.
        assert np.allclose(touched["relative"][touched["exact"]], true[t][touched["exact"]])
        watch = next_drift_watch(out["watch"], touched, set(ids[gone].tolist()), np.zeros(0, np.int64), None)
        # The invariant: listed values bound (exact: equal) the true terms, every other live row is below rest.
        listed = {int(i): (v, e) for i, v, e in zip(watch.ids, watch.ratios, watch.exact)}
        for j in np.flatnonzero(alive):
            v, e = listed.get(int(ids[j]), (watch.rest, False))
            assert true[j] <= v + 1e-15 and (not e or v == pytest.approx(true[j], abs=1e-15))
    # Most records exact (rest rises only by what falls out of the watch); a bound only where rest is above the truth.
    assert exact_records >= 20 and bounded_records >= 1, (exact_records, bounded_records)
