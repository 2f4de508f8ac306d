"""Warm conjugate-gradient row solves of ALS that never form the k x k matrices A_r.

Same systems as :func:`spark_unlearn.als.kernels.solve_rows` (the exact
Cholesky/LU solve, kept as the reference): for row ``r`` with ratings
against the other side's factor rows ``y_j``, weights ``w_j`` and ``v_j`` from
:func:`~spark_unlearn.als.kernels.confidence_weights`,

::

    A_r = [Y^T Y] + sum_j w_j y_j y_j^T + reg * n_r * I      b_r = sum_j v_j y_j

(``Y^T Y`` in implicit mode only; ``n_r`` counts the ratings, the positive
ones if implicit), and the solution of ``A_r x_r = b_r + e_r``.

Conjugate gradient only needs products with ``A_r``::

    A_r p = [Y^T Y p] + sum_j w_j (y_j . p) y_j + reg * n_r * p

one dot product and one axpy per rating, ``O(n_r k)`` (plus ``O(k^2)`` for the
shared Gram) instead of the ``O(n_r k^2 + k^3)`` of forming and factoring
``A_r``.  Started at the row's current factors, which after a small deletion
lie next to the new solution, a few steps reach the accuracy of the
certificate (Takacs, Pilaszy and Tikk, RecSys 2011; ``implicit``'s solver,
DESIGN section 10).  In exact arithmetic CG terminates in at most ``k``
steps.

All rows are iterated at once: the rows' rated factor rows are gathered once
per bounded chunk of rows and every step is two segment sums over them
(:class:`RowOperator`), so memory stays flat for any number of rows.
"""

from __future__ import annotations

import numpy as np

from spark_unlearn.als.kernels import SolveSpec, confidence_weights, normal_equations_reference

# Bytes of float64 workspace per chunk of rows: the gathered factor rows (three
# (ratings, k) arrays during a product) and the rows' CG vectors.
CHUNK_BYTES = 48 * 2**20


class RowOperator:
    """The normal-equation matrices ``A_r`` of some rows, applied without forming them.

    Parameters
    ----------
    indptr, src, ratings
        CSR of all rows; ``src`` indexes rows of ``Y``.
    Y
        Factors of the other side, ``(m, k)``.
    spec
        Regularisation and feedback type.
    gram
        ``Y^T Y`` over all other-side rows (implicit only, required there).
    rows
        The rows this operator covers (positions ``0..n-1`` of its vectors).

    Attributes
    ----------
    b : (n, k) float64
        The right-hand sides ``b_r`` (without offsets).
    lam : (n,) float64
        ``reg * n_r``.
    counts : (n,) int
        Ratings per row.
    """

    def __init__(self, indptr, src, ratings, Y, spec: SolveSpec, gram=None, rows=None):
        rows = _rows_or_all(indptr, rows)
        if spec.implicit and gram is None:
            raise ValueError("implicit ALS needs the Gram matrix Y^T Y of all other-side factors")
        k = Y.shape[1]
        self.gram = np.asarray(gram, dtype=np.float64) if spec.implicit else None
        self.counts = indptr[rows + 1] - indptr[rows]
        # reduceat cannot sum an empty segment: only rows with ratings take part in the sums.
        self.rated = np.flatnonzero(self.counts > 0)
        n_rated = self.counts[self.rated]
        self.seg = np.cumsum(n_rated) - n_rated
        self.owner = np.repeat(self.rated, n_rated)
        pos = np.repeat(indptr[rows[self.rated]] - self.seg, n_rated) + np.arange(int(n_rated.sum()))
        self.wA, wb, counted = confidence_weights(ratings[pos], spec)
        # Stored transposed, (k, ratings): segment sums along the contiguous last axis are ~3x faster
        # than reduceat along axis 0 of a (ratings, k) array.
        self.YpT = np.ascontiguousarray(Y[src[pos]].T, dtype=np.float64)
        self.lam = np.zeros(rows.size)
        self.b = np.zeros((rows.size, k))
        if self.rated.size:
            self.lam[self.rated] = spec.reg * np.add.reduceat(counted.astype(np.float64), self.seg)
            self.b[self.rated] = self._segment_sums(wb)

    def _segment_sums(self, coef: np.ndarray) -> np.ndarray:
        """``sum_j coef_j y_j`` over each rated row's ratings, ``(rated, k)``."""
        return np.add.reduceat(self.YpT * coef[None, :], self.seg, axis=1).T

    def apply(self, P: np.ndarray) -> np.ndarray:
        """``A_r p_r`` for every row ``r`` (row ``r`` of ``P``); float64 ``(n, k)``."""
        P = np.asarray(P, dtype=np.float64)
        out = self.lam[:, None] * P
        if self.gram is not None:
            out += P @ self.gram  # Y^T Y is symmetric
        if self.rated.size:
            dots = np.einsum("kn,kn->n", self.YpT, np.ascontiguousarray(P.T)[:, self.owner])
            out[self.rated] += self._segment_sums(self.wA * dots)
        return out

    def singular(self) -> np.ndarray:
        """Rows whose ``A_r`` is exactly zero (no ratings, and no Gram or a zero one): ``solve_rows`` returns 0."""
        no_gram = self.gram is None or not np.any(self.gram)
        return (self.counts == 0) & no_gram


def _rows_or_all(indptr: np.ndarray, rows) -> np.ndarray:
    return np.arange(len(indptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)


def row_chunks(counts: np.ndarray, k: int, budget: int | None = None):
    """Consecutive slices of rows whose CG workspace stays under ``budget`` bytes (default :data:`CHUNK_BYTES`).

    A row with ``n`` ratings costs about ``3 n`` gathered ``k``-vectors and 6
    of its own (``x, r, p, A p, b``, offset), each ``8 k`` bytes.  Every slice
    holds at least one row.
    """
    budget = CHUNK_BYTES if budget is None else budget
    ends = np.cumsum((3 * np.asarray(counts, dtype=np.int64) + 6) * 8 * k)
    start = 0
    while start < ends.size:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + budget, side="right")))
        yield slice(start, stop)
        start = stop


def normal_products(P, indptr, src, ratings, Y, spec: SolveSpec, gram=None, rows=None) -> np.ndarray:
    """Matrix-free ``A_r p_r`` for the rows ``rows`` (default all), ``P`` one row per entry of ``rows``.

    Together with ``b_r`` this gives the residual ``A_r x_r - b_r`` the
    certificate measures; chunked like :func:`cg_solve_rows`.
    """
    rows = _rows_or_all(indptr, rows)
    out = np.zeros((rows.size, Y.shape[1]))
    for sl in row_chunks(indptr[rows + 1] - indptr[rows], Y.shape[1]):
        out[sl] = RowOperator(indptr, src, ratings, Y, spec, gram, rows[sl]).apply(P[sl])
    return out


def cg_solve_rows(
    indptr: np.ndarray,
    src: np.ndarray,
    ratings: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    X0: np.ndarray,
    gram: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    steps: int = 3,
    tol: float = 0.0,
) -> np.ndarray:
    """Warm-started conjugate gradient on ``A_r x_r = b_r + e_r``; returns float64 ``(n, k)``.

    Parameters
    ----------
    indptr, src, ratings, Y, spec, gram, rows, offsets
        As :func:`spark_unlearn.als.kernels.solve_rows`: ``rows`` defaults to
        all rows; ``offsets`` ``e_r`` has one row per entry of ``rows``.
    X0
        Starting point, one row per entry of ``rows`` (the rows' current factors).
    steps
        At most this many CG steps per row (``k`` steps solve exactly in exact arithmetic).
    tol
        A row stops once ``|b_r + e_r - A_r x_r| <= tol * |b_r + e_r|`` (before
        any step, so a row already there is returned as ``X0``); with
        ``tol = 0`` only an exactly zero residual stops it.

    Notes
    -----
    Textbook CG, per row: ``r = b - A x``, ``p = r``; then for each step
    ``a = r.r / p.Ap``, ``x += a p``, ``r -= a A p``, ``p = r + (r'.r' / r.r) p``.
    Each iterate minimises the ``A``-norm of the error over the Krylov space,
    so that norm never grows from step to step.  A row also stops if
    ``p.Ap <= 0`` (a singular ``A_r``).  Rows whose ``A_r`` is exactly zero
    (explicit rows without ratings) return 0, as ``solve_rows`` does; an
    implicit row without ratings solves ``Y^T Y x = e``.  ``A_r`` is never
    formed (:class:`RowOperator`).
    """
    rows = _rows_or_all(indptr, rows)
    out = np.zeros((rows.size, Y.shape[1]))
    for sl in row_chunks(indptr[rows + 1] - indptr[rows], Y.shape[1]):
        op = RowOperator(indptr, src, ratings, Y, spec, gram, rows[sl])
        rhs = op.b if offsets is None else op.b + offsets[sl]
        out[sl] = _conjugate_gradient(op, rhs, np.array(X0[sl], dtype=np.float64), steps, tol)
    return out


def _conjugate_gradient(op: RowOperator, rhs: np.ndarray, X: np.ndarray, steps: int, tol: float) -> np.ndarray:
    """CG on all rows of ``op`` at once from ``X`` (updated in place); a stopped row is masked out of the updates."""
    singular = op.singular()
    X[singular] = 0.0
    R = rhs - op.apply(X)
    P = R.copy()
    rr = np.einsum("nk,nk->n", R, R)
    limit = (tol * np.linalg.norm(rhs, axis=1)) ** 2
    active = ~singular
    for _ in range(steps):
        active &= rr > limit
        if not active.any():
            break
        AP = op.apply(P)
        pAp = np.einsum("nk,nk->n", P, AP)
        active &= pAp > 0
        a = np.where(active, rr / np.where(active, pAp, 1.0), 0.0)
        X += a[:, None] * P
        R -= a[:, None] * AP
        rr_new = np.einsum("nk,nk->n", R, R)
        beta = np.where(active, rr_new / np.where(active, rr, 1.0), 0.0)
        P = R + beta[:, None] * P
        rr = np.where(active, rr_new, rr)
    return X


# ---------------------------------------------------------------------------
# Slow obvious reference (tests only)
# ---------------------------------------------------------------------------


def cg_solve_rows_reference(indptr, src, ratings, Y, spec: SolveSpec, X0, gram=None, rows=None, offsets=None,
                            steps=3, tol=0.0):
    """Row by row: form ``A_r`` densely (:func:`normal_equations_reference`) and run textbook CG on it."""
    rows = _rows_or_all(indptr, rows)
    A_all, b_all = normal_equations_reference(indptr, src, ratings, Y, spec, gram)
    out = np.zeros((rows.size, Y.shape[1]))
    for n, row in enumerate(rows):
        A = A_all[row]
        b = b_all[row] + (0.0 if offsets is None else offsets[n])
        if not np.any(A):
            continue  # no information: 0, like solve_rows_reference
        x = np.array(X0[n], dtype=np.float64)
        r = b - A @ x
        p = r.copy()
        for _ in range(steps):
            if np.sqrt(r @ r) <= tol * np.linalg.norm(b):
                break
            Ap = A @ p
            if p @ Ap <= 0:
                break
            a = (r @ r) / (p @ Ap)
            x = x + a * p
            r_new = r - a * Ap
            p = r_new + (r_new @ r_new) / (r @ r) * p
            r = r_new
        out[n] = x
    return out
