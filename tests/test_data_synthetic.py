"""Synthetic ratings: size, uniqueness, ranges, heavy tail, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_unlearn.data import synthetic
from spark_unlearn.data.synthetic import expected_distinct, synthetic_ratings
from spark_unlearn.errors import ConfigError
from spark_unlearn.schema import RATINGS_SCHEMA

N_USERS, N_ITEMS, N_RATINGS = 1500, 800, 12_000


@pytest.fixture(scope="module")
def generated(spark):
    df = synthetic_ratings(spark, N_USERS, N_ITEMS, N_RATINGS, seed=5, partitions=3)
    rows = df.collect()  # 12k rows: small enough for exact checks in Python
    return df, rows


def test_schema_size_ranges_and_uniqueness(generated):
    df, rows = generated
    assert df.schema == RATINGS_SCHEMA
    assert abs(len(rows) - N_RATINGS) < 0.03 * N_RATINGS
    pairs = {(r.user, r.item) for r in rows}
    assert len(pairs) == len(rows)
    assert all(0 <= r.user < N_USERS and 0 <= r.item < N_ITEMS for r in rows)
    assert {r.rating for r in rows} <= {k / 2 for k in range(1, 11)}


def test_heavy_tail_not_in_id_order(generated):
    _, rows = generated
    counts = np.bincount([r.item for r in rows], minlength=N_ITEMS)
    order = np.argsort(-counts)
    top = order[: N_ITEMS // 100]
    assert counts[top].sum() / len(rows) > 0.10  # uniform popularity would give 1%
    # The popular items are scattered over the id range, not the smallest ids.
    assert np.median(top) > N_ITEMS / 10
    user_counts = np.bincount([r.user for r in rows], minlength=N_USERS)
    assert np.sort(user_counts)[-N_USERS // 100 :].sum() / len(rows) > 0.05


def test_ratings_follow_the_latent_model(generated):
    _, rows = generated
    ratings = np.array([r.rating for r in rows])
    assert 3.0 < ratings.mean() < 4.0
    assert 0.7 < ratings.std() < 1.5


def test_deterministic_for_any_partitioning(spark, generated):
    _, rows = generated
    again = synthetic_ratings(spark, N_USERS, N_ITEMS, N_RATINGS, seed=5, partitions=1).collect()
    assert sorted(again) == sorted(rows)
    other = synthetic_ratings(spark, N_USERS, N_ITEMS, N_RATINGS, seed=6, partitions=3)
    assert other.agg(F.sum(F.col("user") * 31 + F.col("item"))).first()[0] != sum(r.user * 31 + r.item for r in rows)


def test_expected_distinct_matches_exact_sum():
    # Oracle: exact expectation sum over all pairs of 1 - (1 - p_u p_i)^d.
    n_u, n_i, d = 300, 200, 5000
    pu = np.diff(synthetic._zipf_cdf(np.arange(1, n_u + 2, dtype=float), n_u, 1.2))
    pi = np.diff(synthetic._zipf_cdf(np.arange(1, n_i + 2, dtype=float), n_i, 0.8))
    exact = (1 - (1 - np.outer(pu, pi)) ** d).sum()
    assert expected_distinct(d, n_u, n_i, 1.2, 0.8) == pytest.approx(exact, rel=2e-3)


def test_zipf_ranks_follow_power_law():
    u = synthetic.uniform_from_hash(synthetic._hash(np.uint64(1), 1, np.arange(200_000, dtype=np.uint64)))
    ranks = synthetic._zipf_rank(u, 1000, 1.0)
    assert ranks.min() == 1 and ranks.max() <= 1000
    expected = np.diff(synthetic._zipf_cdf(np.array([1.0, 2.0, 3.0]), 1000, 1.0))
    observed = np.bincount(ranks, minlength=3)[1:3] / len(ranks)
    np.testing.assert_allclose(observed, expected, rtol=0.03)


def test_permutation_is_a_bijection():
    for n in (1, 2, 97, 1000, 4096):
        a, b = synthetic._affine(n, seed=3, salt=1)
        ids = synthetic._permute(np.arange(1, n + 1), n, a, b)
        assert sorted(ids.tolist()) == list(range(n))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_users": 0}, "n_users must be a positive integer"),
        ({"n_items": 2**31 + 1}, "n_items must be a positive integer and at most 2147483648"),
        ({"n_ratings": 10_001, "n_users": 100, "n_items": 100}, "exceeds the 10,000 possible"),
        ({"user_zipf": -1.0}, "user_zipf must be a finite number >= 0"),
        ({"noise": float("nan")}, "noise"),
        ({"partitions": 0}, "partitions"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments(spark, kwargs, pattern):
    args = {"n_users": 10, "n_items": 10, "n_ratings": 10, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        synthetic_ratings(spark, **args)
