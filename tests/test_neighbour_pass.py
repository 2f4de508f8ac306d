"""Neighbours kept in Spark (lazy sides): kernels against slow references, and the engine against recomputed residuals."""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als import neighbour_pass
from spark_unlearn.als.drift import edge_drift_reference
from spark_unlearn.als.kernels import SolveSpec, normal_equations
from spark_unlearn.als.neighbour_pass import Moves, lazy_rows, partial_normal_equations, spark_normal_equations
from spark_unlearn.als.train import ALSState, offsets_for
from spark_unlearn.als.plan import remove_batch
from spark_unlearn.als.options import UnlearnOptions, VersionFacts
from spark_unlearn.als.unlearn import unlearn_als
from test_incremental import _changed_rows, _check_offsets, _offsets_dict, batch, trained  # noqa: F401  (fixture)

SPECS = [SolveSpec(reg=0.1), SolveSpec(reg=0.1, implicit=True, alpha=2.0)]


def _random_csr(rng, n_rows, n_nbrs, per_row):
    counts = rng.integers(1, per_row + 1, n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    src = np.concatenate([rng.choice(n_nbrs, c, replace=False) for c in counts]).astype(np.int64)
    ratings = rng.choice(np.array([-1.0, 0.5, 1.0, 3.0, 5.0], np.float32), indptr[-1])
    return indptr, src, ratings


@pytest.mark.parametrize("spec", SPECS, ids=["explicit", "implicit"])
def test_lazy_rows_equal_the_edge_by_edge_reference(spec):
    rng = np.random.default_rng(3)
    k, n_moved, n_nbrs = 3, 4, 7
    indptr, src, ratings = _random_csr(rng, n_moved, n_nbrs, 5)
    nbr_ids = np.arange(n_nbrs, dtype=np.int64) * 10 + 5  # global ids of the neighbours
    moved_ids = np.array([40, 2, 17, 9], np.int64)
    x0 = rng.normal(size=(n_moved, k)).astype(np.float32)
    x = (x0 + 0.1 * rng.normal(size=(n_moved, k))).astype(np.float32)
    X = rng.normal(size=(n_nbrs, k)).astype(np.float32)
    drift = rng.normal(size=(n_nbrs, k)) * 1e-3
    bnorm = rng.uniform(5, 10, n_nbrs)
    dg = rng.normal(size=(k, k)) * 1e-2 if spec.implicit else None
    moves = Moves.build(moved_ids, x0, x, indptr, nbr_ids[src], ratings)

    # Evaluate a subset of the neighbours, in an arbitrary order, as a Spark partition would.
    pick = np.array([5, 0, 3], np.int64)
    D, bn, ratio, xratio = lazy_rows(nbr_ids[pick], X[pick], drift[pick], bnorm[pick], moves, spec, dg)

    want_d, want_b = drift.copy(), np.zeros((n_nbrs, k))
    for j in range(n_moved):
        for e in range(indptr[j], indptr[j + 1]):
            s = src[e]
            want_d[s] += edge_drift_reference(X[s][None].astype(np.float64), x0[j][None].astype(np.float64),
                                              x[j][None].astype(np.float64), ratings[e:e + 1], spec)[0]
            c = (1 + spec.alpha * abs(ratings[e])) * (ratings[e] > 0) if spec.implicit else ratings[e]
            want_b[s] += c * (x[j].astype(np.float64) - x0[j])
    if dg is not None:
        want_d += X.astype(np.float64) @ dg.T
    want_bn = np.maximum(bnorm - np.linalg.norm(want_b, axis=1), 1e-300)
    np.testing.assert_allclose(D, want_d[pick], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn, want_bn[pick], rtol=1e-12)
    np.testing.assert_allclose(ratio, np.linalg.norm(want_d[pick], axis=1) / want_bn[pick], rtol=1e-10)
    np.testing.assert_allclose(xratio, np.linalg.norm(X[pick].astype(np.float64), axis=1) / want_bn[pick], rtol=1e-10)


@pytest.mark.parametrize("spec", SPECS, ids=["explicit", "implicit"])
def test_partial_normal_equations_over_disjoint_edges_add_up(spec):
    rng = np.random.default_rng(5)
    k, n_rows, n_nbrs = 4, 6, 30
    indptr, src, ratings = _random_csr(rng, n_rows, n_nbrs, 8)
    Y = rng.normal(size=(n_nbrs, k)).astype(np.float32)
    G = Y.astype(np.float64).T @ Y
    A_ref, b_ref = normal_equations(indptr, src, ratings, Y, spec, gram=G if spec.implicit else None)

    row = np.repeat(np.arange(n_rows), np.diff(indptr))
    half = rng.random(row.size) < 0.5
    A, b = np.zeros((n_rows, k, k)), np.zeros((n_rows, k))
    for part in (half, ~half):
        uniq, A_p, b_p = partial_normal_equations(row[part], Y[src[part]], ratings[part], spec)
        A[uniq] += A_p
        b[uniq] += b_p
    counted = (ratings > 0) if spec.implicit else np.ones(ratings.size, bool)
    n_reg = np.bincount(row, weights=counted.astype(float), minlength=n_rows)
    A += (G if spec.implicit else 0.0) + spec.reg * n_reg[:, None, None] * np.eye(k)
    np.testing.assert_allclose(A, A_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=["explicit", "implicit"])
def test_spark_normal_equations_equal_the_driver_ones(spark, spec):
    rng = np.random.default_rng(11)
    k, n_rows, n_nbrs = 3, 5, 40
    indptr, local, ratings = _random_csr(rng, n_rows, n_nbrs, 10)
    ids = np.arange(n_nbrs, dtype=np.int64) * 3 + 1
    Y = rng.normal(size=(n_nbrs, k)).astype(np.float32)
    table = spark.createDataFrame([(int(i), [float(v) for v in y]) for i, y in zip(ids, Y)], "id int, features array<float>"
                                  ).repartition(3)
    # Two neighbours were re-solved earlier in the run: their current factors are not the stored ones.
    over = np.array([4, 17], np.int64)
    Y_now = Y.copy()
    Y_now[over] = rng.normal(size=(2, k)).astype(np.float32)
    G = Y_now.astype(np.float64).T @ Y_now
    A, b = spark_normal_equations(table, np.arange(n_rows), indptr, ids[local], ratings, (ids[over], Y_now[over]), spec,
                                  G if spec.implicit else None, k)
    A_ref, b_ref = normal_equations(indptr, local, ratings, Y_now, spec, gram=G if spec.implicit else None)
    np.testing.assert_allclose(A, A_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-10)


def test_lazy_neighbours_give_the_offsets_and_certificate_of_a_recomputation(spark, trained, monkeypatch):
    """Every neighbour stays in Spark (driver_rows 0) for a mixed batch and (implicit) then an erasure from the
    first request's ratio watch: every row's offsets equal a recomputation against the target it was owed from
    the start, within tol and within the reported certificate."""
    ratings, model, offsets = trained
    monkeypatch.setattr(neighbour_pass, "DRIVER_ROWS", 0)
    present = [(r[0], r[1]) for r in ratings.filter("user in (1, 2) and item < 40").orderBy("user", "item").limit(3).collect()]
    requests = [[(7, None, "user"), (None, 50, "item")] + [(u, i, "interaction") for u, i in present]]
    if model.params.implicit:  # the second request starts from the first's ratio watch (implicit only; saves time)
        requests.append([(5, None, "user")])
    train = [_offsets_dict(df) for df in offsets]
    tol = 8e-2
    data, cur_model, cur_offsets, changed, x_watch = ratings, model, offsets, (set(), set()), None
    for rows in requests:
        c = _changed_rows(data, rows)
        changed = (changed[0] | c[0], changed[1] | c[1])
        out = unlearn_als(data, cur_model, cur_offsets, batch(spark, rows), options=UnlearnOptions(tol=tol, engine="targeted", full_fallback_fraction=1.0), facts=VersionFacts(x_watch=x_watch))
        rep = out.report
        assert rep["engine"] == "targeted" and rep["driver_rows_limit"] == 0 and rep["certificate"]["holds"]
        assert sum(rep["certificate"]["spark_rows"].values()) > 0
        if not model.params.implicit:
            # Only re-solved rows reached the driver (implicit also reads removed rows and the ratio watch's rows).
            for side in ("user", "item"):
                assert rep["driver_rows"][side] <= sum(f[side] for f in rep["frontier_sizes"])
        x_watch = out.x_watch
        data = remove_batch(data, batch(spark, rows)).cache()
        cur_model, cur_offsets = out.model, tuple(df.cache() for df in out.offsets)

    true = [_offsets_dict(df) for df in offsets_for(ALSState.build(data, 2), cur_model)]
    worst = 0.0
    for side in (0, 1):
        targets = {r: 0.0 * train[side][r][0] if r in changed[side] else train[side][r][0] for r in true[side]}
        worst = max(worst, _check_offsets(_offsets_dict(cur_offsets[side]), true[side], targets))
    assert worst <= tol
    assert worst <= rep["certificate"]["max_relative_residual"] + 1e-9


def test_a_negative_driver_rows_is_refused_before_any_work():
    from spark_unlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"driver_rows=-1 is negative; give a number of rows >= 0"):
        unlearn_als(None, None, None, None, options=UnlearnOptions(driver_rows=-1))
