"""Oracle tests of the warm CG row solver and of Anderson acceleration (pure numpy, no Spark).

The oracles are the dense solves: ``solve_rows`` (the product's exact
Cholesky/LU path), ``solve_rows_reference`` and the dense ``A_r`` of
``normal_equations_reference``; for Anderson, the exact fixed point of a
linear map and the constrained-form reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import spark_unlearn.als.cg as cg
from spark_unlearn.als.anderson import Anderson, anderson_reference
from spark_unlearn.als.cg import cg_solve_rows, cg_solve_rows_reference, normal_products
from spark_unlearn.als.kernels import SolveSpec, gram, normal_equations_reference, solve_rows, solve_rows_reference

RANK = 6


def rows_of_every_size(rng, n_src=40):
    """CSR with rows of 0, 1 and many (up to 30) ratings, signed ratings for the implicit case."""
    counts = np.r_[0, 1, 0, 1, 30, 2, rng.integers(0, 25, 30)]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    src = np.concatenate([rng.choice(n_src, c, replace=False) for c in counts]).astype(np.int64)
    ratings = rng.integers(-2, 6, indptr[-1]).astype(np.float32)
    ratings[ratings == 0] = 3.0
    return indptr, src, ratings


def problem(implicit, seed=0, reg=0.3):
    rng = np.random.default_rng(seed)
    indptr, src, ratings = rows_of_every_size(rng)
    if not implicit:
        ratings = np.abs(ratings)
    Y = rng.normal(size=(40, RANK)).astype(np.float32)
    spec = SolveSpec(reg=reg, implicit=implicit, alpha=0.9)
    G = gram(Y) if implicit else None
    n = len(indptr) - 1
    return rng, (indptr, src, ratings, Y, spec), G, rng.normal(size=(n, RANK))


def a_norm_error(X, exact, A):
    d = X - exact
    return np.sqrt(np.einsum("nk,nkl,nl->n", d, A, d))


@pytest.mark.parametrize("implicit", [False, True])
def test_matrix_free_products_equal_the_dense_normal_matrices(implicit):
    rng, csr, G, _ = problem(implicit)
    A, _ = normal_equations_reference(*csr, gram=G)
    rows = np.array([4, 0, 7, 4, 1])
    P = rng.normal(size=(rows.size, RANK))
    np.testing.assert_allclose(normal_products(P, *csr, gram=G, rows=rows), np.einsum("nkl,nl->nk", A[rows], P),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("with_offsets", [False, True])
def test_cg_with_k_steps_from_any_start_is_the_exact_solve(implicit, with_offsets):
    """CG ends in k steps in exact arithmetic: from a random X0, k (and more) steps give the Cholesky answer."""
    rng, csr, G, e = problem(implicit)
    offsets = e if with_offsets else None
    exact = solve_rows(*csr, gram=G, offsets=offsets)
    np.testing.assert_allclose(exact, solve_rows_reference(*csr, gram=G, offsets=offsets), rtol=1e-9, atol=1e-12)
    X0 = rng.normal(size=exact.shape) * 3
    scale = np.abs(exact).max()
    for steps in (RANK, 3 * RANK):
        X = cg_solve_rows(*csr, X0, gram=G, offsets=offsets, steps=steps)
        np.testing.assert_allclose(X, exact, rtol=0, atol=1e-8 * scale)
    empty = X[[0, 2]]  # rows without ratings: zero (explicit), the Gram's solve of the offsets (implicit)
    if not implicit:
        assert not empty.any()
    elif with_offsets:
        assert np.abs(empty).min() > 0


def test_cg_on_a_row_subset_in_small_chunks_is_the_exact_solve(monkeypatch):
    """Rows in any order, repeated and split over many chunks: still the dense solve of those rows."""
    rng, csr, G, e = problem(True, seed=3)
    rows = np.array([4, 0, 33, 4, 1, 2, 20])
    exact = solve_rows(*csr, gram=G, rows=rows, offsets=e[rows])
    monkeypatch.setattr(cg, "CHUNK_BYTES", 8 * RANK * 20)  # a few rows per chunk
    assert len(list(cg.row_chunks(np.diff(csr[0])[rows], RANK))) > 3
    X = cg_solve_rows(*csr, rng.normal(size=exact.shape), gram=G, rows=rows, offsets=e[rows], steps=4 * RANK)
    np.testing.assert_allclose(X, exact, rtol=0, atol=1e-8 * np.abs(exact).max())


@pytest.mark.parametrize("implicit", [False, True])
def test_fast_cg_equals_the_dense_textbook_cg_step_for_step(implicit):
    rng, csr, G, e = problem(implicit, seed=1)
    X0 = rng.normal(size=e.shape)
    for steps in (1, 2, 3):
        fast = cg_solve_rows(*csr, X0, gram=G, offsets=e, steps=steps)
        slow = cg_solve_rows_reference(*csr, X0, gram=G, offsets=e, steps=steps)
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-10)
    exact = solve_rows(*csr, gram=G, offsets=e)
    assert np.abs(fast - exact).max() > 1e-6  # 3 steps at rank 6 are not yet the solution: the steps were compared


def test_cg_tolerance_stops_each_row_as_the_reference_does():
    rng, csr, G, e = problem(True, seed=2)
    exact = solve_rows(*csr, gram=G, offsets=e)
    X0 = exact + 1e-3 * rng.normal(size=exact.shape)
    X0[5:15] = rng.normal(size=(10, RANK))  # far rows need more steps than near ones
    fast = cg_solve_rows(*csr, X0, gram=G, offsets=e, steps=RANK, tol=1e-4)
    slow = cg_solve_rows_reference(*csr, X0, gram=G, offsets=e, steps=RANK, tol=1e-4)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-10)
    A, b = normal_equations_reference(*csr, gram=G)
    rel = np.linalg.norm(np.einsum("nkl,nl->nk", A, fast) - b - e, axis=1) / np.linalg.norm(b + e, axis=1)
    assert rel.max() <= 1e-4
    assert np.abs(fast - exact).max() > 1e-9  # stopped early, not run to the end


@pytest.mark.parametrize("implicit", [False, True])
def test_warm_start_at_the_solution_stays_there(implicit):
    _, csr, G, e = problem(implicit)
    exact = solve_rows(*csr, gram=G, offsets=e)
    np.testing.assert_array_equal(cg_solve_rows(*csr, exact, gram=G, offsets=e, steps=3, tol=1e-9), exact)
    np.testing.assert_allclose(cg_solve_rows(*csr, exact, gram=G, offsets=e, steps=3), exact, rtol=0,
                               atol=1e-12 * np.abs(exact).max())


@pytest.mark.parametrize("implicit", [False, True])
def test_warm_steps_from_a_nearby_start_shrink_the_a_norm_error_monotonically(implicit):
    rng, csr, G, e = problem(implicit, seed=4)
    exact = solve_rows(*csr, gram=G, offsets=e)
    A, _ = normal_equations_reference(*csr, gram=G)
    X0 = exact + 0.05 * rng.normal(size=exact.shape)
    solvable = np.abs(A).sum(axis=(1, 2)) > 0  # explicit rows without ratings stay 0, their error too
    errors = [a_norm_error(cg_solve_rows(*csr, X0, gram=G, offsets=e, steps=s), exact, A)[solvable] for s in range(5)]
    for before, after in zip(errors, errors[1:]):
        assert np.all(after <= before * (1 + 1e-9))
    assert np.all(errors[3] < 0.5 * errors[0])


def linear_contraction(dim=30, radius=0.97, seed=0):
    """``x -> M x + c`` with spectral radius ``radius``: a slow plain iteration and a known fixed point."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    M = Q @ np.diag(np.linspace(-radius, radius, dim)) @ Q.T + 0.01 * rng.normal(size=(dim, dim))
    M *= radius / np.abs(np.linalg.eigvals(M)).max()
    c = rng.normal(size=dim)
    return (lambda x: M @ x + c), np.linalg.solve(np.eye(dim) - M, c)


def iterations_to(target, update, g, x, limit=5000):
    for it in range(1, limit + 1):
        x = update(x, g(x))
        if np.linalg.norm(x - target) <= 1e-10 * np.linalg.norm(target):
            return it
    return limit + 1


def test_anderson_reaches_the_fixed_point_of_a_linear_contraction_far_sooner_than_plain_iteration():
    """Plain iteration needs ~log(1e-10)/log(0.97) steps; Anderson with memory >= dim is GMRES (dim + 1 steps)."""
    dim = 30
    g, fixed = linear_contraction(dim)
    x0 = np.zeros_like(fixed)
    plain = iterations_to(fixed, lambda x, gx: gx, g, x0)
    full, short = Anderson(memory=dim), Anderson(memory=5)
    with_full, with_short = iterations_to(fixed, full.update, g, x0), iterations_to(fixed, short.update, g, x0)
    assert plain > 500 and with_full <= dim + 2 and plain >= 3 * with_short, (plain, with_full, with_short)


def test_anderson_follows_the_constrained_form_reference_step_for_step():
    g, _ = linear_contraction(dim=12, seed=1)
    x0 = np.ones(12)
    for memory, damping in ((3, 1.0), (2, 0.6)):
        ref = anderson_reference(g, x0, memory, 8, damping=damping)
        acc = Anderson(memory=memory, damping=damping, max_condition=np.inf)
        x = plain = x0
        for k in range(8):
            x, plain = acc.update(x, g(x)), g(plain)
            np.testing.assert_allclose(x, ref[k + 1], rtol=1e-8, atol=1e-10)
        assert np.linalg.norm(x - g(x)) < 0.5 * np.linalg.norm(plain - g(plain))  # extrapolated, not plain steps


def test_anderson_with_no_memory_is_plain_or_damped_iteration_exactly():
    g, _ = linear_contraction(dim=10, seed=2)
    plain, damped = Anderson(memory=0), Anderson(memory=0, damping=0.5)
    x = y = np.arange(10.0)
    for _ in range(5):
        nx, ny = plain.update(x, g(x)), damped.update(y, g(y))
        np.testing.assert_array_equal(nx, g(x))
        np.testing.assert_array_equal(ny, y + 0.5 * (g(y) - y))
        x, y = nx, ny


def test_anderson_restarts_on_a_degenerate_history_and_keeps_the_shape():
    acc = Anderson(memory=3)
    x, gx = np.ones((4, 2)), np.full((4, 2), 2.0)
    acc.update(x, gx)
    again = acc.update(x, gx)  # the same pair again: a zero difference, nothing to extrapolate from
    assert acc.restarts == 1 and again.shape == (4, 2)
    np.testing.assert_array_equal(again, gx)


def test_anderson_restarts_on_nearly_dependent_differences_and_steps_plainly():
    """Residual differences d and d + 1e-7 w: the scaled normal matrix's condition number is ~1e14."""
    rng = np.random.default_rng(5)
    d, w, x = rng.normal(size=20), rng.normal(size=20), np.zeros(20)
    images = (x, x + d, x + 2 * d + 1e-7 * w)
    steps = {}
    for limit in (1e8, np.inf):
        acc = Anderson(memory=2, max_condition=limit)
        steps[limit] = [acc.update(x, gx) for gx in images][-1]
        assert acc.restarts == (limit == 1e8)
    np.testing.assert_array_equal(steps[1e8], images[-1])
    assert np.abs(steps[np.inf] - images[-1]).max() > 1e-3  # without the restart the step extrapolates
    restarted, fresh = Anderson(memory=2, max_condition=1e8), Anderson(memory=2)
    for gx in images:
        restarted.update(x, gx)
    fresh.update(x, images[-1])
    after = (x + w, images[-1] + d - w)  # a new history starts at the restart: as if from its last pair
    np.testing.assert_array_equal(restarted.update(*after), fresh.update(*after))
