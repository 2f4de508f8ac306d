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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

# Rows per batch when forming normal equations: bounds the (rows, k, k)
# float64 workspace to a few tens of MB whatever the block size.
_WORKSPACE_BYTES = 48 * 2**20


@dataclass(frozen=True)
class SolveSpec:
    """The objective a row solve follows (see the module docstring)."""

    reg: float
    implicit: bool = False
    alpha: float = 1.0


def confidence_weights(ratings: np.ndarray, spec: SolveSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    A = np.zeros((rows.size, k, k))
    b = np.zeros((rows.size, k))
    if spec.implicit:
        A += _require_gram(gram)
    for batch in _row_buckets(indptr[rows + 1] - indptr[rows], k):
        A[batch], b[batch] = _batch_normal_equations(indptr, src, ratings, Y, spec, gram, rows[batch])
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
    threads: int = 1,
) -> np.ndarray:
    """Solve ``A_j x_j = b_j + e_j`` for the rows ``rows`` (default all); returns float64 ``(n, k)``.

    Rows are solved in bounded batches of equal padded width, each batch's
    normal equations formed and solved at once, so memory stays flat for any
    block size.  Rows without any rating (explicit) would give a singular
    system; they are returned as zeros, matching a cell with no information.

    Rows whose padded width ``w`` is at most ``k / 2`` (most items of a
    long-tail catalogue at rank 64) are solved through the ``w x w`` system of
    their own ratings (:func:`_solve_few_ratings`) instead of the ``k x k``
    one; in implicit mode in the eigenbasis of ``Y^T Y`` (:class:`_Basis`),
    where ``Y^T Y + reg n I`` is diagonal.  Same solution, fewer flops.

    ``threads``: batches solved at once by that many threads (numpy releases
    the GIL in its gathers, products and LAPACK calls); each batch writes its
    own rows of the result, so the answer does not depend on it.  For the
    driver, where nothing else runs during a sweep; Spark's tasks keep 1.
    """
    all_rows = _all_rows(indptr, rows)
    k = Y.shape[1]
    out = np.zeros((all_rows.size, k))
    counts = indptr[all_rows + 1] - indptr[all_rows]
    basis = _Basis(Y, gram if spec.implicit else None)
    positive = _positive_before(ratings) if spec.implicit else None

    def solve_batch(batch: np.ndarray) -> None:
        rows_b = all_rows[batch]
        lam = spec.reg * _counted(indptr, ratings, rows_b, spec, positive)
        if 2 * _bucket_width(counts[batch]) <= k and basis.usable(lam):
            # Few ratings per row: the w x w system in the basis where Y^T Y is diagonal.
            G, wA, wb = _padded_batch(indptr, src, ratings, basis.Y, spec, rows_b)
            b = np.einsum("nw,nwk->nk", wb, G)
            if offsets is not None:
                b += basis.rotate(offsets[batch])
            out[batch] = basis.unrotate(_solve_few_ratings(G * np.sqrt(wA)[:, :, None], 1.0 / (basis.eig[None, :] + lam[:, None]), b))
            return
        A, b = _batch_normal_equations(indptr, src, ratings, Y, spec, gram, rows_b, positive)
        if offsets is not None:
            b += offsets[batch]
        solvable = np.abs(A).sum(axis=(1, 2)) > 0
        if solvable.all():
            out[batch] = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        elif solvable.any():
            out[batch[solvable]] = np.linalg.solve(A[solvable], b[solvable][:, :, None])[:, :, 0]

    batches = _row_buckets(counts, k)
    if threads > 1 and len(batches) > 1 and any(2 * _bucket_width(counts[b]) <= k for b in batches):
        basis.prepare()  # built once before the threads share it (only a few-ratings batch uses it)
    in_threads(solve_batch, batches, threads)
    empty = np.flatnonzero(counts == 0)
    if empty.size and spec.implicit and offsets is not None:
        # A row without ratings keeps only the Gram: A = Y^T Y, b = e.
        G0 = _require_gram(gram)
        if np.abs(G0).sum() > 0:
            out[empty] = np.linalg.solve(G0, offsets[empty].T).T
    return out


def _require_gram(gram: np.ndarray | None) -> np.ndarray:
    if gram is None:
        raise ValueError("implicit ALS needs the Gram matrix Y^T Y of all other-side factors")
    return gram


def _bucket_width(counts: np.ndarray) -> int:
    """The padded width of a bucket of rows: the power of two at or above its largest rating count."""
    return int(2 ** np.ceil(np.log2(max(int(counts.max()), 1))))


def _batch_normal_equations(indptr, src, ratings, Y, spec, gram, rows, positive=None):
    """``A``, ``b`` (float64) of one bucket of rows (:func:`_row_buckets`), as :func:`normal_equations` defines them
    (``positive``: see :func:`_counted`)."""
    G, wA, wb = _padded_batch(indptr, src, ratings, Y, spec, rows)
    # A contiguous transposed copy lets matmul use BLAS (a strided view does not: ~6x slower).
    A = np.matmul(np.ascontiguousarray(np.swapaxes(G * wA[:, :, None], 1, 2)), G)
    if spec.implicit:
        A += _require_gram(gram)
    diag = np.arange(Y.shape[1])
    A[:, diag, diag] += (spec.reg * _counted(indptr, ratings, rows, spec, positive))[:, None]
    return A, np.einsum("nw,nwk->nk", wb, G)


def _padded_batch(indptr, src, ratings, Y, spec, rows):
    """Rows of one bucket padded to their common width ``w`` (a power of two).

    Returns ``G`` ``(n, w, k)`` float64 (the rated factor rows), the weights
    ``wA``, ``wb`` ``(n, w)`` of ``y y^T`` in A and of ``y`` in b (zero on
    padding).
    """
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    offs = np.arange(_bucket_width(counts))
    valid = offs[None, :] < counts[:, None]
    pos = np.where(valid, starts[:, None] + offs[None, :], 0)
    wA, wb, _ = confidence_weights(ratings[pos], spec)
    G = Y[src[pos]].astype(np.float64)
    return G, np.where(valid, wA, 0.0), np.where(valid, wb, 0.0)


def _counted(indptr, ratings, rows, spec: SolveSpec, positive: np.ndarray | None = None) -> np.ndarray:
    """Ratings of each row that count for the regularisation ``reg * n`` (all, or the positive ones if implicit).

    ``positive``: :func:`_positive_before` of ``ratings``, when the caller
    counts for many batches (it is a pass over every rating).
    """
    if not spec.implicit:
        return (indptr[rows + 1] - indptr[rows]).astype(np.float64)
    if positive is None:
        positive = _positive_before(ratings)
    return (positive[indptr[rows + 1]] - positive[indptr[rows]]).astype(np.float64)


def _positive_before(ratings: np.ndarray) -> np.ndarray:
    """``out[p]``: how many of ``ratings[:p]`` are positive."""
    return np.concatenate([[0], np.cumsum(ratings > 0)])


class _Basis:
    """The basis in which ``Y^T Y = Q diag(eig) Q^T`` is diagonal (implicit), or the identity (explicit).

    Rotating ``Y`` once per call (``Y Q``) lets the few-ratings solve treat
    ``Y^T Y + reg n I`` as a diagonal ``eig + reg n``.  Built lazily: the
    eigendecomposition only runs if some batch takes that path.
    """

    def __init__(self, Y: np.ndarray, gram: np.ndarray | None):
        self._Y, self._gram = Y, gram
        self._ready = gram is None
        k = Y.shape[1]
        self.Q: np.ndarray | None = None
        self.eig = np.zeros(k)
        self.Y = Y

    def prepare(self) -> None:
        """Build the basis now, before threads share it."""
        self._build()

    def _build(self) -> None:
        if not self._ready:
            eig, self.Q = np.linalg.eigh(self._gram)
            self.eig = np.maximum(eig, 0.0)
            self.Y = np.asarray(self._Y, dtype=np.float64) @ self.Q
            self._ready = True

    def usable(self, lam: np.ndarray) -> bool:
        """Whether ``eig + lam`` is safely positive for every row (else the k x k path is used)."""
        self._build()
        smallest = self.eig.min() + lam.min()
        return bool(smallest > 1e-10 * max(float(self.eig.max()) + float(lam.max()), 1e-300))

    def rotate(self, V: np.ndarray) -> np.ndarray:
        return V if self.Q is None else V @ self.Q

    def unrotate(self, V: np.ndarray) -> np.ndarray:
        return V if self.Q is None else V @ self.Q.T


def _solve_few_ratings(Gw: np.ndarray, d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``(Gw^T Gw + diag(1/d)) x = b`` per row through the ``w x w`` system (Woodbury identity).

    ``(D^{-1} + Gw^T Gw)^{-1} = D - D Gw^T (I + Gw D Gw^T)^{-1} Gw D``, so a
    row with ``w`` ratings costs ``O(w^2 k + w^3)`` instead of
    ``O(w k^2 + k^3)``.  Padding rows of ``Gw`` are zero and drop out.
    ``Gw`` ``(n, w, k)``, ``d`` ``(n, k)`` > 0, ``b`` ``(n, k)``.
    """
    w = Gw.shape[1]
    K = np.matmul(Gw * d[:, None, :], np.swapaxes(Gw, 1, 2))
    K[:, np.arange(w), np.arange(w)] += 1.0
    db = d * b
    alpha = np.linalg.solve(K, np.einsum("nwk,nk->nw", Gw, db)[:, :, None])[:, :, 0]
    return db - d * np.einsum("nwk,nw->nk", Gw, alpha)


def residuals(
    X: np.ndarray,
    indptr: np.ndarray,
    src: np.ndarray,
    ratings: np.ndarray,
    Y: np.ndarray,
    spec: SolveSpec,
    gram: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Normal-equation residuals ``A_j x_j - b_j`` and the norms ``|b_j|``.

    ``X`` holds the current factors of ``rows`` (one row of ``X`` per entry of
    ``rows``).  Returns ``(R, bnorm)`` with ``R`` float64 ``(n, k)``.

    ``A_j`` is never formed: with the weights of the module docstring,
    ``A_j x_j - b_j = sum_i (wA_i (y_i . x_j) - wb_i) y_i + reg n_j x_j
    (+ Y^T Y x_j)``, one dot product and one axpy per rating, ``O(nnz k)``
    instead of the ``O(nnz k^2)`` of forming every ``A_j``.  ``threads``: as
    in :func:`solve_rows` (chunks of rows at once, each writing its own rows).
    """
    all_rows = _all_rows(indptr, rows)
    k = Y.shape[1]
    Xd = np.asarray(X, dtype=np.float64)
    R = spec.reg * _counted(indptr, ratings, all_rows, spec)[:, None] * Xd
    if spec.implicit:
        R += Xd @ _require_gram(gram)  # Y^T Y is symmetric
    bnorm = np.zeros(all_rows.size)
    counts = indptr[all_rows + 1] - indptr[all_rows]
    # Chunks of whole rows with a bounded number of ratings keep the (ratings, k) workspace flat.
    per_chunk = max(1, _WORKSPACE_BYTES // (8 * k * 3))
    ends = np.cumsum(counts)
    chunks, start = [], 0
    while start < all_rows.size:
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + per_chunk, side="right")))
        chunks.append(slice(start, min(stop, all_rows.size)))
        start = chunks[-1].stop

    def chunk_residuals(sl: slice) -> None:
        rated = np.flatnonzero(counts[sl] > 0)
        if rated.size == 0:
            return
        rows_c = all_rows[sl][rated]
        n_c = counts[sl][rated]
        seg = np.cumsum(n_c) - n_c  # where each row's ratings start in the chunk
        owner = np.repeat(np.arange(rated.size), n_c)
        pos = np.repeat(indptr[rows_c] - seg, n_c) + np.arange(int(n_c.sum()))
        wA, wb, _ = confidence_weights(ratings[pos], spec)
        # Segment sums of weighted rows of Y as sparse products (C loops, each row's terms summed in order), over the
        # chunk's own columns of Y only, so a call on a few rows never converts all of Y.
        used, cols = np.unique(src[pos], return_inverse=True)
        Yu = np.asarray(Y[used], dtype=np.float64)
        dots = np.einsum("nk,nk->n", Yu[cols], Xd[sl][rated][owner])
        seg_ptr = np.append(seg, int(n_c.sum()))
        b = csr_matrix((wb, cols, seg_ptr), shape=(rated.size, used.size)) @ Yu
        R[sl.start + rated] += csr_matrix((wA * dots, cols, seg_ptr), shape=(rated.size, used.size)) @ Yu - b
        bnorm[sl.start + rated] = np.linalg.norm(b, axis=1)

    in_threads(chunk_residuals, chunks, threads)
    return R, bnorm


def in_threads(work, items: list, threads: int) -> None:
    """``work(item)`` for every item, by up to ``threads`` threads (in order on one)."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            work(item)
        return
    # Imported here: Spark's executors call the kernels with one thread and need not have it.
    from threadpoolctl import threadpool_limits

    # BLAS's own threads would compete with these for the same cores (measured on 2 cores, 1M implicit rows at rank
    # 32: 2 threads solve 1.38x faster with BLAS held to one thread each, 1.24x without).
    with threadpool_limits(1, user_api="blas"):
        pool = ThreadPoolExecutor(min(int(threads), len(items)))
        try:
            for future in [pool.submit(work, item) for item in items]:
                future.result()  # re-raises the first failure
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after a failure, batches not started never run


def _all_rows(indptr: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(len(indptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)


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
