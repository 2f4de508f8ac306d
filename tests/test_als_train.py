"""Distributed ALS: parity with Spark MLlib and a brute-force numpy ALS oracle."""

from __future__ import annotations

import numpy as np
import pytest

from als_helpers import blocks_dict, csr_from_pairs, factors_dict, load_sample
from spark_unlearn.als.kernels import SolveSpec, gram, solve_rows_reference
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.train import ALSState, init_factors, train_als


@pytest.fixture(scope="module")
def sample(spark):
    return load_sample(spark).cache()


@pytest.fixture(scope="module")
def sample_state(sample):
    state = ALSState.build(sample, num_blocks=3)
    yield state
    state.unpersist()


@pytest.mark.parametrize("implicit", [False, True])
def test_resolving_spark_users_from_spark_items_gives_spark_users(spark, sample, sample_state, implicit):
    """Our row solver reproduces Spark MLlib's userFactors from its itemFactors (DESIGN §1)."""
    from pyspark.ml.recommendation import ALS

    params = ALSParams(rank=10, reg=0.1, alpha=1.0, implicit=implicit)
    # MLlib's last half-iteration solves the users from the final items, so the parity holds after any number
    # of iterations; 3 leave the factors well away from the random start.
    model = ALS(rank=10, regParam=0.1, alpha=1.0, implicitPrefs=implicit, maxIter=3, seed=3).fit(sample)
    items = sample_state.initial_factors("item", 10, 0, warm=model.itemFactors)
    ours = blocks_dict(sample_state.solve("user", items, params))
    theirs = factors_dict(model.userFactors)
    assert ours.keys() == theirs.keys()
    ids = sorted(theirs)
    X, S = np.stack([ours[i] for i in ids]), np.stack([theirs[i] for i in ids])
    rel = np.abs(X - S).max() / np.abs(S).max()
    assert rel <= 1e-5, rel


def numpy_als(users, items, ratings, params: ALSParams):
    """Brute-force ALS in numpy with the same deterministic start: the oracle."""
    uid, iid = np.unique(users), np.unique(items)
    u_index, i_index = {u: k for k, u in enumerate(uid)}, {i: k for k, i in enumerate(iid)}
    U = init_factors(uid, params.rank, params.seed, 1)
    V = init_factors(iid, params.rank, params.seed, 2)
    by_user = csr_from_pairs(users, items, ratings, uid, i_index)
    by_item = csr_from_pairs(items, users, ratings, iid, u_index)
    spec = SolveSpec(params.reg, params.implicit, params.alpha)
    for _ in range(params.iterations):
        V = solve_rows_reference(*by_item, U, spec, gram(U) if params.implicit else None).astype(np.float32)
        U = solve_rows_reference(*by_user, V, spec, gram(V) if params.implicit else None).astype(np.float32)
    return dict(zip(uid.tolist(), U.astype(np.float64))), dict(zip(iid.tolist(), V.astype(np.float64)))


@pytest.mark.parametrize("implicit", [False, True])
def test_train_matches_numpy_oracle(spark, sample, sample_state, implicit):
    # Lineage cut after iteration 2: iteration 1 is chained lazily, 2 ends a job, 3 starts from its checkpoint.
    params = ALSParams(rank=4, reg=0.2, alpha=2.0, implicit=implicit, iterations=3, seed=7, checkpoint_interval=2)
    pdf = sample.toPandas()
    U0, V0 = numpy_als(pdf.user.to_numpy(), pdf.item.to_numpy(), pdf.rating.to_numpy(), params)
    result = train_als(sample, params, state=sample_state)
    U, V = factors_dict(result.model.user_factors), factors_dict(result.model.item_factors)
    assert U.keys() == U0.keys() and V.keys() == V0.keys()
    for got, want in ((U, U0), (V, V0)):
        diff = max(np.abs(got[i] - want[i]).max() for i in want)
        assert diff < 1e-4, diff


def test_block_count_does_not_change_the_model(spark, sample, sample_state):
    params = ALSParams(rank=5, iterations=3, seed=1)
    a = train_als(sample, params, state=sample_state)  # 3 blocks
    b = train_als(sample, ALSParams(**{**params.to_dict(), "num_blocks": 5}))
    assert (a.state.num_blocks, b.state.num_blocks) == (3, 5)
    A, B = factors_dict(a.model.user_factors), factors_dict(b.model.user_factors)
    assert A.keys() == B.keys()
    assert max(np.abs(A[i] - B[i]).max() for i in A) < 1e-5
    b.state.unpersist()


def test_warm_start_with_zero_iterations_returns_the_given_factors(spark, sample, sample_state):
    params = ALSParams(rank=4, iterations=2, seed=2)
    trained = train_als(sample, params, state=sample_state)
    again = train_als(sample, ALSParams(**{**params.to_dict(), "iterations": 0}), init=trained.model, state=sample_state)
    A, B = factors_dict(trained.model.item_factors), factors_dict(again.model.item_factors)
    assert A.keys() == B.keys()
    assert all(np.array_equal(A[i], B[i]) for i in A)


def test_long_run_with_checkpoints_lowers_the_objective(spark, sample, sample_state):
    """5 iterations with lineage cut every 2: runs, and ALS never increases its objective."""
    pdf = sample.toPandas()

    def objective(result, params):
        U, V = factors_dict(result.model.user_factors), factors_dict(result.model.item_factors)
        err = sum((r - U[u] @ V[i]) ** 2 for u, i, r in zip(pdf.user, pdf.item, pdf.rating))
        n_u, n_i = pdf.user.value_counts(), pdf.item.value_counts()
        reg = sum(n_u[u] * U[u] @ U[u] for u in U) + sum(n_i[i] * V[i] @ V[i] for i in V)
        return err + params.reg * reg

    short = ALSParams(rank=4, iterations=2, seed=5, checkpoint_interval=2)
    long = ALSParams(rank=4, iterations=5, seed=5, checkpoint_interval=2)
    assert objective(train_als(sample, long, state=sample_state), long) < objective(
        train_als(sample, short, state=sample_state), short
    )


def test_init_is_deterministic_and_unit_norm():
    ids = np.array([5, 1, 99, 2**31 - 1], dtype=np.int32)
    a = init_factors(ids, 8, seed=3, salt=1)
    np.testing.assert_array_equal(a[[1, 0]], init_factors(ids[[1, 0]], 8, seed=3, salt=1))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(a, init_factors(ids, 8, seed=4, salt=1))
