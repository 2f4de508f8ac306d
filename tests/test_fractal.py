"""Fractal expansion: kernels against dense oracles, target counts, Spark = driver, power-law fit, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_unlearn.data import fractal as fr
from spark_unlearn.data.readers import read_ratings
from spark_unlearn.errors import ConfigError, EmptyInputError, OutputPathError
from spark_unlearn.schema import RATINGS_SCHEMA

REPO = Path(__file__).resolve().parents[1]


def _random_table(m: int, n: int, density: float, seed: int):
    rng = np.random.default_rng(seed)
    present = rng.random((m, n)) < density
    values = rng.integers(1, 11, (m, n)) / 2.0
    users, items = np.nonzero(present)
    return present, values, users, items, values[users, items]


def _as_dense(users, items, ratings, shape):
    out = np.full(shape, np.nan)
    out[users, items] = ratings
    return out


# --------------------------------------------------------------------------- kernels vs oracles


def test_kernel_equals_dense_kronecker_reference():
    present, values, users, items, ratings = _random_table(7, 6, 0.4, seed=1)
    reduced = np.random.default_rng(2).random((3, 4))
    reduced[1, 2] = 0.0  # a cell that is never kept
    expected = fr.expand_dense_reference(present, values, reduced, seed=11)
    got = _as_dense(*fr.expand_pairs(users, items, ratings, reduced, seed=11), expected.shape)
    np.testing.assert_array_equal(got, expected)
    assert 0 < np.count_nonzero(~np.isnan(got)) < present.sum() * reduced.size
    assert np.all(np.isnan(got[1::3, 2::4]))  # cell (a, b) = (1, 2) stays empty


def test_all_ones_is_exactly_r_kron_ones():
    present, values, users, items, ratings = _random_table(5, 4, 0.5, seed=3)
    k, l = 3, 2
    eu, ei, er = fr.expand_pairs(users, items, ratings, np.ones((k, l)), seed=0)
    assert eu.size == users.size * k * l
    np.testing.assert_array_equal(_as_dense(eu, ei, er, (5 * k, 4 * l)),
                                  np.where(np.kron(present, np.ones((k, l))) > 0, np.kron(values, np.ones((k, l))),
                                           np.nan))
    # id formula: copy (a, b) of (u, i) is (u k + a, i l + b), cells in row-major order per pair
    a, b = np.divmod(np.arange(k * l), l)
    np.testing.assert_array_equal(eu[: k * l], users[0] * k + a)
    np.testing.assert_array_equal(ei[: k * l], items[0] * l + b)
    assert np.array_equal(fr.split_ids(eu, k)[0], np.repeat(users, k * l))


def test_expected_count_hits_target_within_bound():
    _, _, users, items, ratings = _random_table(400, 300, 0.03, seed=4)
    nnz, target = users.size, 50_000
    (eu, ei, _), reduced = fr.expand_arrays(users, items, ratings, target, seed=5)
    assert nnz * reduced.sum() == pytest.approx(target, rel=1e-12)
    assert reduced.min() >= 0 and reduced.max() <= 1
    # Independent Bernoulli keeps: sd = sqrt(nnz * sum B (1 - B)); 4 sd fails with probability ~6e-5.
    sd = math.sqrt(nnz * np.sum(reduced * (1 - reduced)))
    assert abs(eu.size - target) <= 4 * sd, (eu.size, target, sd)
    assert len(set(zip(eu.tolist(), ei.tolist()))) == eu.size  # no pair twice


def test_scale_to_target_clips_and_waterfills():
    reduced = np.array([[1.0, 0.5], [0.25, 0.0]])
    scaled = fr.scale_to_target(reduced, 100, 250)  # needs 2.5 of the 3 positive cells
    assert scaled.sum() == pytest.approx(2.5) and scaled.max() == 1.0 and scaled[1, 1] == 0.0
    np.testing.assert_allclose(scaled, [[1.0, 1.0], [0.5, 0.0]])
    with pytest.raises(ConfigError, match="larger k or l"):
        fr.scale_to_target(reduced, 100, 301)


def test_truncated_svd_and_reduced_matrix():
    rng = np.random.default_rng(6)
    # Planted rank-4 signal plus noise: subspace iteration is accurate where the spectrum has a gap ...
    big = rng.random((300, 4)) @ rng.random((4, 200)) + 0.1 * rng.random((300, 200))
    _, s_big, _ = fr.truncated_svd(lambda x: big @ x, lambda y: big.T @ y, big.shape, 4, seed=0)
    np.testing.assert_allclose(s_big, np.linalg.svd(big, compute_uv=False)[:4], rtol=1e-6)
    # ... and exact when rank + oversample covers the smaller side.
    a = (rng.random((60, 12)) < 0.3).astype(float)
    u, s, v = fr.truncated_svd(lambda x: a @ x, lambda y: a.T @ y, a.shape, 4, seed=0)
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False)[:4], rtol=1e-10)
    np.testing.assert_allclose(u.T @ a @ v, np.diag(s), atol=1e-10)
    b = fr.reduced_matrix(u, s, v, 4, 5)
    assert b.shape == (4, 5) and b.min() == 0.0 and b.max() == 1.0
    # Before rescaling, the reduced matrix keeps the top singular values of R (the paper's Algorithm 2).
    rhat = (fr.closest_orthonormal(fr.resize_rows(u, 4)) * s) @ fr.closest_orthonormal(fr.resize_rows(v, 5)).T
    np.testing.assert_allclose(np.linalg.svd(rhat, compute_uv=False), s, rtol=1e-9)
    np.testing.assert_allclose(fr.resize_rows(np.arange(6.0)[:, None], 3).ravel(), [0.5, 2.5, 4.5])


def test_determinism_with_a_seed():
    _, _, users, items, ratings = _random_table(50, 40, 0.1, seed=7)
    first, _ = fr.expand_arrays(users, items, ratings, 2_000, seed=9)
    again, _ = fr.expand_arrays(users, items, ratings, 2_000, seed=9)
    other, _ = fr.expand_arrays(users, items, ratings, 2_000, seed=10)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert set(zip(first[0], first[1])) != set(zip(other[0], other[1]))


# --------------------------------------------------------------------------- power-law fit


def test_power_law_fit_recovers_exponent():
    # Rounded continuous power law: P(X >= x) = ((x - 1/2) / 9.5)^(1 - alpha) for x >= 10, the law the
    # approximate MLE is exact for.  The MLE is asymptotically normal with sd (alpha - 1) / sqrt(n_tail):
    # 3 sd (~0.04 here); the sample is fixed, so the test is deterministic.
    u = np.random.default_rng(0).random(20_000)
    x = np.floor(9.5 * (1 - u) ** (-1 / 1.5) + 0.5).astype(int)
    fit = fr.fit_power_law(x)
    assert abs(fit.alpha - 2.5) <= 3 * fit.sigma, fit
    assert 10 <= fit.xmin <= 20
    # Exact discrete (zeta) law: the approximation is biased low by a few percent at small xmin (Clauset et
    # al. 2009, section 3.3), so allow 3 sd plus 0.05.
    from scipy import stats

    fit = fr.fit_power_law(stats.zipf.rvs(2.5, size=20_000, random_state=0))
    assert abs(fit.alpha - 2.5) <= 3 * fit.sigma + 0.05, fit


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("target", [0, -5, 2.5, True, "1M"])
def test_bad_target_is_a_config_error(target):
    with pytest.raises(ConfigError, match="target_interactions must be a positive integer"):
        fr.expand_arrays(np.array([1, 2]), np.array([1, 1]), np.ones(2), target)


def test_target_below_original_and_empty_input():
    with pytest.raises(ConfigError, match="below the original"):
        fr.expand_arrays(np.array([1, 2, 2]), np.array([1, 1, 2]), np.ones(3), 2)
    with pytest.raises(EmptyInputError):
        fr.expand_arrays(np.array([], int), np.array([], int), np.array([]), 10)
    with pytest.raises(EmptyInputError):
        fr.fit_power_law(np.array([0, 0]))
    with pytest.raises(ConfigError, match="k must be"):
        fr.choose_shape(3.0, k=0)


# --------------------------------------------------------------------------- Spark path


@pytest.fixture(scope="module")
def sample(spark, sample_ratings_path):
    df = read_ratings(spark, sample_ratings_path).persist()
    return df, df.toPandas()


def test_spark_path_equals_driver_kernel(spark, sample):
    df, pdf = sample
    plan = fr.plan_expansion(spark, df, 6_000, seed=3)
    expanded = plan.expand()
    assert expanded.schema == RATINGS_SCHEMA
    rows = expanded.toPandas()
    (du, di, dr), reduced = fr.expand_arrays(pdf.user.values, pdf.item.values, pdf.rating.values, 6_000, seed=3)
    np.testing.assert_allclose(plan.reduced, reduced, atol=1e-9)
    assert set(zip(rows.user, rows.item, rows.rating)) == set(zip(du.tolist(), di.tolist(), dr.tolist()))
    # Mapping back: every expanded row is a copy of an original (user, item, rating).
    back = plan.original_ids(expanded).toPandas()
    original = set(zip(pdf.user, pdf.item, pdf.rating))
    assert len(back) == len(rows) and set(zip(back.orig_user, back.orig_item, back.rating)) <= original
    assert (back.user_copy < plan.k).all() and (back.item_copy < plan.l).all()
    with pytest.raises(ConfigError, match="below the original"):
        fr.plan_expansion(spark, df, 1_000, seed=3)
    with pytest.raises(EmptyInputError):
        fr.expand_ratings(spark, df.limit(0), 6_000)
    plan.indexed.unpersist()


def test_write_blocked_layout_and_atomicity(spark, sample, tmp_path):
    df, _ = sample
    out = str(tmp_path / "blocked")
    fr.write_blocked(df, out, num_blocks=3)
    blocks = sorted(p.name for p in Path(out).iterdir() if p.name.startswith("user_block="))
    assert blocks == ["user_block=0", "user_block=1", "user_block=2"]
    part = spark.read.parquet(out + "/user_block=1")
    users = [r.user for r in part.collect()]
    assert users and all(u % 3 == 1 for u in users) and users == sorted(users)  # one sorted file per block
    assert read_ratings(spark, out, format="parquet").count() == df.count()
    with pytest.raises(OutputPathError, match="exists"):
        fr.write_blocked(df, out, num_blocks=3)
    failing = df.withColumn("user", F.when(F.col("user") > 20, F.raise_error(F.lit("boom"))).otherwise(F.col("user")))
    with pytest.raises(Exception, match="boom"):
        fr.write_blocked(failing, str(tmp_path / "failed"), num_blocks=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked"]  # nothing half-written


def test_cli_end_to_end_on_the_sample(spark, sample_ratings_path, tmp_path):
    spec = importlib.util.spec_from_file_location("expand_data", REPO / "benchmarks" / "expand_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.parse_target("20M") == 20_000_000 and cli.parse_target("12345") == 12_345
    assert cli.parse_columns("user=uid,item=iid,rating=") == {"user": "uid", "item": "iid", "rating": None}
    report_path = tmp_path / "r.json"
    cli.main(["--ratings", sample_ratings_path, "--target", "5000", "--out", str(tmp_path / "x"),
              "--blocks", "2", "--report", str(report_path), "--seed", "1"])
    report = json.loads(report_path.read_text())
    assert report["original"]["interactions"] == 1501
    assert abs(report["expansion"]["interactions"] - 5000) < 4 * math.sqrt(5000)
    assert report["expansion"]["users"] <= 30 * report["k"]
    assert len(report["expansion"]["singular_values_predicted_normalised"]) == 10


# --------------------------------------------------------------------------- real data (skipped without it)


def test_movielens_small_expansion_keeps_spectrum_and_tails(movielens_small_dir):
    import pandas as pd
    from scipy import sparse
    from scipy.sparse.linalg import svds

    pdf = pd.read_csv(movielens_small_dir / "ratings.csv")
    (eu, ei, _), _ = fr.expand_arrays(pdf.userId.values, pdf.movieId.values, pdf.rating.values, 1_000_000, seed=1)
    assert abs(eu.size - 1_000_000) < 4_000

    def top(users, items):
        _, r = np.unique(users, return_inverse=True)
        _, c = np.unique(items, return_inverse=True)
        s = np.sort(svds(sparse.csr_matrix((np.ones(r.size), (r, c))), k=6, return_singular_vectors=False))[::-1]
        return s / s[0]

    np.testing.assert_allclose(top(eu, ei), top(pdf.userId.values, pdf.movieId.values), atol=0.05)
    alpha = fr.fit_power_law(np.bincount(ei)[np.bincount(ei) > 0]).alpha
    assert abs(alpha - fr.fit_power_law(pdf.groupby("movieId").size().values).alpha) < 0.2
