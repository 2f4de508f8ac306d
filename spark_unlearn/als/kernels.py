"""Pure numpy kernels of ALS: normal equations, batched row solves, residuals.

Nothing here knows about Spark.  Rows are given in CSR form: row ``j`` has
ratings ``ratings[indptr[j]:indptr[j+1]]`` against the other side's factor
rows ``src[indptr[j]:indptr[j+1]]`` (indices into ``Y``).

Maths convention (Spark MLlib ``ALS.computeFactors``), for row ``j`` with
ratings ``r`` against factor rows ``y``:

explicit::

    A_j = sum_i y_i y_i^T + reg * n_j * I          b_j = sum_i r_i y_i

implicit (``c = 1 + alpha |r|``, ``p = [r > 0]``)::

    A_j = Y^T Y + sum_i alpha |r_i| y_i y_i^T + reg * n+_j * I
    b_j = sum_{i : r_i > 0} (1 + alpha |r_i|) y_i

where ``n_j`` counts the row's ratings and ``n+_j`` its positive ratings.  The
row solution is ``x_j = A_j^{-1} (b_j + e_j)`` with an optional offset ``e_j``
(the training residual kept by Unlearn-ALS, DESIGN §2; zero for plain ALS).
Everything is computed in float64 from float32 factors, as Spark does.

Every fast kernel has a ``*_reference`` twin: a per-row loop written to be
obviously right, used by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows per batch when forming normal equations: bounds the (rows, k, k)
# float64 workspace to a few tens of MB whatever the block size.
_WORKSPACE_BYTES = 48 * 2**20


@dataclass(frozen=True)
class SolveSpec:
    """The objective a row solve follows (see the module docstring)."""

    reg: float
    implicit: bool = False
    alpha: float = 1.0


def _weights(ratings: np.ndarray, spec: SolveSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-rating weight of ``y y^T`` in A, coefficient of ``y`` in b, and counted-for-reg flag."""
    r = ratings.astype(np.float64, copy=False)
    if spec.implicit:
        c1 = spec.alpha * np.abs(r)
        pos = r > 0
        return c1, np.where(pos, 1.0 + c1, 0.0), pos
    return np.ones_like(r), r, np.ones(r.shape, dtype=bool)


def _row_buckets(counts: np.ndarray, k: int) -> list[np.ndarray]:
    """Group rows by rating count into power-of-two buckets, each split into bounded batches.

    Padding a row to its bucket's width wastes at most half the flops, and it
    lets one ``matmul`` form the Gram of many rows at once.
    """
    batches: list[np.ndarray] = []
    nonzero = np.flatnonzero(counts > 0)
    if nonzero.size == 0:
        return batches
    width = np.maximum(1, 2 ** np.ceil(np.log2(np.maximum(counts[nonzero], 1)))).astype(np.int64)
    for w in np.unique(width):
        rows = nonzero[width == w]
        per_batch = max(1, _WORKSPACE_BYTES // (8 * int(w) * k + 8 * k * k))
        for start in range(0, rows.size, per_batch):
            batches.append(rows[start : start + per_batch])
    return batches


def normal_equations(
    indptr: np.ndarray,
    src: np.ndarray,
    ratings: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    gram: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Form ``A_j`` and ``b_j`` (float64) for the rows ``rows`` (default: all rows).

    Parameters
    ----------
    indptr, src, ratings
        CSR of the rows: ``src`` indexes rows of ``Y``.
    Y
        Factors of the other side, shape ``(m, k)``.
    spec
        Regularisation and feedback type.
    gram
        ``Y_all^T Y_all`` over *all* rows of the other side (implicit only).
    rows
        Which rows to form; rows without ratings get ``A = 0`` (plus the Gram
        in implicit mode), ``b = 0``.

    Returns
    -------
    A : (n, k, k) float64, b : (n, k) float64
    """
    k = Y.shape[1]
    rows = np.arange(len(indptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)
    n = rows.size
    A = np.zeros((n, k, k))
    b = np.zeros((n, k))
    if spec.implicit:
        if gram is None:
            raise ValueError("implicit ALS needs the Gram matrix Y^T Y of all other-side factors")
        A += gram
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    for batch in _row_buckets(counts, k):
        width = int(2 ** np.ceil(np.log2(max(int(counts[batch].max()), 1))))
        offs = np.arange(width)
        valid = offs[None, :] < counts[batch][:, None]
        pos = np.where(valid, starts[batch][:, None] + offs[None, :], 0)
        wA, wb, counted = _weights(ratings[pos], spec)
        wA = np.where(valid, wA, 0.0)
        wb = np.where(valid, wb, 0.0)
        G = Y[src[pos]].astype(np.float64)  # (rows in batch, width, k)
        # A contiguous transposed copy lets matmul use BLAS (a strided view does not: ~6x slower).
        GwT = np.ascontiguousarray(np.swapaxes(G * wA[:, :, None], 1, 2))
        A[batch] += np.matmul(GwT, G)
        b[batch] = np.einsum("nw,nwk->nk", wb, G)
        n_reg = (counted & valid).sum(axis=1)
        diag = np.arange(k)[None, :]
        # batch holds distinct rows, so fancy-index += adds once per row.
        A[batch[:, None], diag, diag] += (spec.reg * n_reg)[:, None]
    return A, b


def solve_rows(
    indptr: np.ndarray,
    src: np.ndarray,
    ratings: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    gram: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Solve ``A_j x_j = b_j + e_j`` for the rows ``rows`` (default all); returns float64 ``(n, k)``.

    Rows are processed in bounded batches so memory stays flat for any block
    size.  Rows without any rating (explicit) would give a singular system;
    they are returned as zeros, matching a cell with no information.
    """
    all_rows = _all_rows(indptr, rows)
    out = np.zeros((all_rows.size, Y.shape[1]))
    for sl, A, b in _normal_equation_chunks(indptr, src, ratings, Y, spec, gram, all_rows):
        if offsets is not None:
            b = b + offsets[sl]
        solvable = np.abs(A).sum(axis=(1, 2)) > 0
        if solvable.any():
            out[sl][solvable] = np.linalg.solve(A[solvable], b[solvable][:, :, None])[:, :, 0]
    return out


def residuals(
    X: np.ndarray,
    indptr: np.ndarray,
    src: np.ndarray,
    ratings: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    gram: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normal-equation residuals ``A_j x_j - b_j`` and the norms ``|b_j|``.

    ``X`` holds the current factors of ``rows`` (one row of ``X`` per entry of
    ``rows``).  Returns ``(R, bnorm)`` with ``R`` float64 ``(n, k)``.
    """
    all_rows = _all_rows(indptr, rows)
    R = np.zeros((all_rows.size, Y.shape[1]))
    bnorm = np.zeros(all_rows.size)
    Xd = np.asarray(X, dtype=np.float64)
    for sl, A, b in _normal_equation_chunks(indptr, src, ratings, Y, spec, gram, all_rows):
        R[sl] = np.einsum("nkl,nl->nk", A, Xd[sl]) - b
        bnorm[sl] = np.linalg.norm(b, axis=1)
    return R, bnorm


def _all_rows(indptr: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(len(indptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)


def _normal_equation_chunks(indptr, src, ratings, Y, spec, gram, all_rows):
    """Yield ``(slice into all_rows, A, b)`` in chunks that keep the (rows, k, k) workspace bounded."""
    k = Y.shape[1]
    per_chunk = max(1, _WORKSPACE_BYTES // (8 * k * k))
    for start in range(0, all_rows.size, per_chunk):
        sl = slice(start, min(start + per_chunk, all_rows.size))
        A, b = normal_equations(indptr, src, ratings, Y, spec, gram=gram, rows=all_rows[sl])
        yield sl, A, b


# ---------------------------------------------------------------------------
# Slow obvious references (tests only)
# ---------------------------------------------------------------------------


def normal_equations_reference(indptr, src, ratings, Y, spec: SolveSpec, gram=None):
    """Per-row, per-rating loop over Spark's ``NormalEquation.add`` (see module docstring)."""
    n, k = len(indptr) - 1, Y.shape[1]
    A = np.zeros((n, k, k))
    b = np.zeros((n, k))
    for j in range(n):
        if spec.implicit:
            A[j] += gram
        n_reg = 0
        for p in range(indptr[j], indptr[j + 1]):
            y = Y[src[p]].astype(np.float64)
            r = float(ratings[p])
            if spec.implicit:
                c1 = spec.alpha * abs(r)
                A[j] += c1 * np.outer(y, y)
                if r > 0:
                    b[j] += (1.0 + c1) * y
                    n_reg += 1
            else:
                A[j] += np.outer(y, y)
                b[j] += r * y
                n_reg += 1
        A[j] += spec.reg * n_reg * np.eye(k)
    return A, b


def solve_rows_reference(indptr, src, ratings, Y, spec: SolveSpec, gram=None, offsets=None):
    A, b = normal_equations_reference(indptr, src, ratings, Y, spec, gram)
    if offsets is not None:
        b = b + offsets
    out = np.zeros_like(b)
    for j in range(len(b)):
        if np.abs(A[j]).sum() > 0:
            out[j] = np.linalg.solve(A[j], b[j])
    return out


def residuals_reference(X, indptr, src, ratings, Y, spec: SolveSpec, gram=None):
    A, b = normal_equations_reference(indptr, src, ratings, Y, spec, gram)
    return np.einsum("nkl,nl->nk", A, np.asarray(X, dtype=np.float64)) - b, np.linalg.norm(b, axis=1)


def gram(Y: np.ndarray) -> np.ndarray:
    """``Y^T Y`` in float64."""
    Yd = np.asarray(Y, dtype=np.float64)
    return Yd.T @ Yd
