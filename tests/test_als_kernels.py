"""Oracle and property tests of the numpy ALS kernels against their slow references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_unlearn.als.kernels import (
    SolveSpec,
    gram,
    normal_equations,
    normal_equations_reference,
    residuals,
    residuals_reference,
    solve_rows,
    solve_rows_reference,
)


def random_csr(rng, n_rows, n_src, max_per_row, signed=False):
    counts = rng.integers(0, max_per_row + 1, n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    src = np.concatenate([rng.choice(n_src, c, replace=False) for c in counts]).astype(np.int64)
    low = -2 if signed else 1
    ratings = rng.integers(low, 6, indptr[-1]).astype(np.float32)
    return indptr, src, ratings


@pytest.mark.parametrize("implicit", [False, True])
def test_normal_equations_match_reference(implicit):
    rng = np.random.default_rng(1)
    indptr, src, ratings = random_csr(rng, 40, 25, 20, signed=implicit)
    Y = rng.normal(size=(25, 6)).astype(np.float32)
    spec = SolveSpec(reg=0.3, implicit=implicit, alpha=1.7)
    G = gram(Y) if implicit else None
    A, b = normal_equations(indptr, src, ratings, Y, spec, gram=G)
    A0, b0 = normal_equations_reference(indptr, src, ratings, Y, spec, gram=G)
    np.testing.assert_allclose(A, A0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, b0, rtol=1e-12, atol=1e-12)


def test_explicit_closed_form_single_row():
    # One row, two ratings, rank 1: A = y1^2 + y2^2 + reg*2, b = r1 y1 + r2 y2.
    Y = np.array([[2.0], [3.0]], dtype=np.float32)
    x = solve_rows(np.array([0, 2]), np.array([0, 1]), np.array([4.0, 1.0], np.float32), Y, SolveSpec(reg=0.5))
    assert x[0, 0] == pytest.approx((4 * 2 + 1 * 3) / (4 + 9 + 0.5 * 2))


def test_implicit_closed_form_single_row():
    # Implicit, rank 1, catalogue of 3 items, one positive rating r=2 on item 0 and a
    # negative r=-1 on item 2: A = sum(y^2) + alpha*2*y0^2 + alpha*1*y2^2 + reg*1, b = (1+2 alpha) y0.
    Y = np.array([[1.0], [2.0], [0.5]], dtype=np.float32)
    alpha, reg = 0.5, 0.1
    x = solve_rows(
        np.array([0, 2]), np.array([0, 2]), np.array([2.0, -1.0], np.float32), Y,
        SolveSpec(reg=reg, implicit=True, alpha=alpha), gram=gram(Y),
    )
    A = (1 + 4 + 0.25) + alpha * 2 * 1 + alpha * 1 * 0.25 + reg * 1
    assert x[0, 0] == pytest.approx((1 + 2 * alpha) * 1.0 / A)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_rows=st.integers(1, 30),
    rank=st.integers(1, 8),
    implicit=st.booleans(),
    reg=st.floats(0.01, 2.0),
)
def test_solve_and_residual_properties(seed, n_rows, rank, implicit, reg):
    """Solving with an offset e gives residual exactly e; solve_rows agrees with the reference."""
    rng = np.random.default_rng(seed)
    indptr, src, ratings = random_csr(rng, n_rows, 12, 12, signed=implicit)
    Y = rng.normal(size=(12, rank)).astype(np.float32)
    spec = SolveSpec(reg=reg, implicit=implicit, alpha=0.8)
    G = gram(Y) if implicit else None
    e = rng.normal(size=(n_rows, rank))
    X = solve_rows(indptr, src, ratings, Y, spec, gram=G, offsets=e)
    X0 = solve_rows_reference(indptr, src, ratings, Y, spec, gram=G, offsets=e)
    np.testing.assert_allclose(X, X0, rtol=1e-8, atol=1e-8)
    R, bn = residuals(X, indptr, src, ratings, Y, spec, gram=G)
    R0, bn0 = residuals_reference(X, indptr, src, ratings, Y, spec, gram=G)
    np.testing.assert_allclose(R, R0, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(bn, bn0, rtol=1e-12, atol=1e-12)
    solvable = (np.diff(indptr) > 0) | implicit
    np.testing.assert_allclose(R[solvable], e[solvable], rtol=1e-6, atol=1e-6)


def test_row_subset_equals_full_solve():
    rng = np.random.default_rng(3)
    indptr, src, ratings = random_csr(rng, 60, 30, 25)
    Y = rng.normal(size=(30, 5)).astype(np.float32)
    spec = SolveSpec(reg=0.2)
    full = solve_rows(indptr, src, ratings, Y, spec)
    rows = np.array([59, 3, 17, 3])
    np.testing.assert_array_equal(solve_rows(indptr, src, ratings, Y, spec, rows=rows), full[rows])


def test_large_rows_batched_like_small_ones():
    """Rows far above the batching width go through the same maths."""
    rng = np.random.default_rng(4)
    counts = np.array([1, 1500, 3, 700])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    src = np.concatenate([rng.choice(2000, c, replace=False) for c in counts])
    ratings = rng.integers(1, 6, indptr[-1]).astype(np.float32)
    Y = rng.normal(size=(2000, 16)).astype(np.float32)
    spec = SolveSpec(reg=0.1)
    np.testing.assert_allclose(
        solve_rows(indptr, src, ratings, Y, spec), solve_rows_reference(indptr, src, ratings, Y, spec), rtol=1e-9, atol=1e-10
    )


def test_implicit_requires_gram():
    with pytest.raises(ValueError, match="Gram"):
        normal_equations(np.array([0, 1]), np.array([0]), np.array([1.0]), np.ones((1, 2)), SolveSpec(0.1, implicit=True))


@pytest.mark.parametrize("implicit", [False, True])
def test_rows_with_few_ratings_solved_through_their_own_small_system_match_reference(implicit):
    """At rank 32, rows with fewer than 16 ratings take the w x w (Woodbury) path; the answer is the k x k one."""
    rng = np.random.default_rng(5)
    indptr, src, ratings = random_csr(rng, 300, 200, 40, signed=implicit)
    assert (np.diff(indptr) < 16).sum() > 100 and (np.diff(indptr) >= 16).sum() > 50  # both paths are taken
    Y = rng.normal(size=(200, 32)).astype(np.float32)
    spec = SolveSpec(reg=0.05, implicit=implicit, alpha=2.0)
    G = gram(Y) if implicit else None
    e = rng.normal(size=(300, 32))
    for offsets in (None, e):
        X = solve_rows(indptr, src, ratings, Y, spec, gram=G, offsets=offsets)
        X0 = solve_rows_reference(indptr, src, ratings, Y, spec, gram=G, offsets=offsets)
        np.testing.assert_allclose(X, X0, rtol=1e-9, atol=1e-11)


def test_few_ratings_path_with_a_rank_deficient_gram_matches_reference():
    """Implicit, 6 other-side rows at rank 16: Y^T Y is singular, reg * n keeps each row's system solvable."""
    rng = np.random.default_rng(6)
    indptr, src, ratings = random_csr(rng, 50, 6, 4)
    Y = rng.normal(size=(6, 16)).astype(np.float32)
    spec = SolveSpec(reg=0.3, implicit=True, alpha=1.0)
    keep = np.diff(indptr) > 0  # rows without ratings would be singular in the reference
    X = solve_rows(indptr, src, ratings, Y, spec, gram=gram(Y))
    X0 = solve_rows_reference(indptr, src, ratings, Y, spec, gram=gram(Y) + 0.0)
    np.testing.assert_allclose(X[keep], X0[keep], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("implicit", [False, True])
def test_residuals_of_a_row_subset_in_small_chunks_equal_the_reference(monkeypatch, implicit):
    """Rows in any order, repeated, without ratings, and split over many workspace chunks: same as the reference."""
    import spark_unlearn.als.kernels as kernels

    rng = np.random.default_rng(11)
    indptr, src, ratings = random_csr(rng, 40, 25, 15, signed=implicit)
    indptr = np.concatenate([indptr, [indptr[-1]]])  # a last row without ratings
    Y = rng.normal(size=(25, 6)).astype(np.float32)
    spec = SolveSpec(reg=0.3, implicit=implicit, alpha=0.7)
    G = gram(Y) if implicit else None
    rows = np.array([40, 7, 0, 39, 7, 12])
    X = rng.normal(size=(rows.size, 6))
    _, bn0 = residuals_reference(np.zeros((41, 6)), indptr, src, ratings, Y, spec, gram=G)  # |b| of every row
    A, b = normal_equations(indptr, src, ratings, Y, spec, gram=G, rows=rows)
    expected = np.einsum("nkl,nl->nk", A, X) - b
    monkeypatch.setattr(kernels, "_WORKSPACE_BYTES", 8 * 6 * 3 * 5)  # ~5 ratings per chunk
    R, bn = residuals(X, indptr, src, ratings, Y, spec, gram=G, rows=rows)
    np.testing.assert_allclose(R, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn, bn0[rows], rtol=1e-12, atol=1e-12)
    assert bn[0] == 0.0 and (np.abs(R[0]).sum() > 0) == implicit  # no ratings: only the Gram term


@pytest.mark.parametrize("implicit", [False, True])
def test_threaded_solves_and_residuals_equal_the_reference_over_many_batches(monkeypatch, implicit):
    """Many small batches (both solve paths) shared by 3 threads: the reference's answer, and the 1-thread bits."""
    import spark_unlearn.als.kernels as kernels

    rng = np.random.default_rng(12)
    indptr, src, ratings = random_csr(rng, 300, 40, 12, signed=implicit)
    Y = rng.normal(size=(40, 8)).astype(np.float32)
    spec = SolveSpec(reg=0.2, implicit=implicit, alpha=0.9)
    G = gram(Y) if implicit else None
    T = rng.normal(size=(300, 8))
    monkeypatch.setattr(kernels, "_WORKSPACE_BYTES", 8 * 8 * 8 * 6)  # a few rows per batch: dozens of batches
    assert len(kernels._row_buckets(np.diff(indptr), 8)) > 20
    X1 = solve_rows(indptr, src, ratings, Y, spec, gram=G, offsets=T)
    X3 = solve_rows(indptr, src, ratings, Y, spec, gram=G, offsets=T, threads=3)
    keep = np.diff(indptr) > 0
    X0 = solve_rows_reference(indptr, src, ratings, Y, spec, gram=G, offsets=T)
    np.testing.assert_allclose(X3[keep], X0[keep], rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(X3, X1)
    R1, bn1 = residuals(X1, indptr, src, ratings, Y, spec, gram=G)
    R3, bn3 = residuals(X1, indptr, src, ratings, Y, spec, gram=G, threads=3)
    R0, bn0 = residuals_reference(X1, indptr, src, ratings, Y, spec, gram=G)
    np.testing.assert_allclose(R3, R0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bn3, bn0, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(R3, R1)
    np.testing.assert_array_equal(bn3, bn1)


def test_a_failing_batch_in_a_thread_raises():
    from spark_unlearn.als.kernels import in_threads

    def work(i):
        if i == 3:
            raise ValueError("batch 3")

    with pytest.raises(ValueError, match="batch 3"):
        in_threads(work, list(range(8)), 2)
