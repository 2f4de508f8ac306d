"""Kernels for the drift of a row when its neighbours move (DESIGN §2), with slow references.

When neighbour ``f`` of row ``s`` moves from ``y`` to ``y'``, the row's
residual ``A_s x_s - b_s`` changes by ``w_sf (y' y'^T - y y^T) x_s - c_sf (y' - y)``
(``w``/``c`` the weights of ``y y^T`` in A and of ``y`` in b,
:func:`~spark_unlearn.als.kernels.confidence_weights`).  Pure numpy: the
frontier calls these on the driver, the neighbour pass inside Spark tasks.
"""

from __future__ import annotations

import numpy as np

from spark_unlearn.als.kernels import SolveSpec, confidence_weights


def edge_drift_reference(x, y_old, y_new, ratings, spec: SolveSpec):
    """Per-edge change of a row's residual when one neighbour moves, as the difference of two explicit
    normal-equation residuals (slow, obviously right; the reference :func:`neighbour_drift` is tested against).

    All arrays are per edge: ``x``, ``y_old``, ``y_new`` are ``(m, k)``, ``ratings`` ``(m,)``.
    """
    out = np.zeros((len(ratings), x.shape[1]))
    for m in range(len(ratings)):
        wA, wb, _ = confidence_weights(np.array([ratings[m]]), spec)
        before = wA[0] * np.outer(y_old[m], y_old[m]) @ x[m] - wb[0] * y_old[m]
        after = wA[0] * np.outer(y_new[m], y_new[m]) @ x[m] - wb[0] * y_new[m]
        out[m] = after - before
    return out


def neighbour_drift(indptr: np.ndarray, src: np.ndarray, ratings: np.ndarray, Y: np.ndarray, X_old: np.ndarray,
                    X_new: np.ndarray, spec: SolveSpec, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Drift of every neighbour when the rows of a CSR move from ``X_old`` to ``X_new``.

    Row ``j`` has edges ``indptr[j]:indptr[j+1]`` to neighbours ``src``
    (indices into ``Y``, the neighbours' factors ``(n, k)``).  Returns
    ``(dd, db)``, both ``(n, k)`` float64: per neighbour ``s`` the sum over its
    edges of :func:`edge_drift_reference` (``d_s += w (y'y'^T - yy^T) x_s - c (y' - y)``)
    and of the change of its ``b`` (``c (y' - y)``).

    Each edge's term is ``(w y'.x_s - c) y' - (w y.x_s - c) y``: two dot
    products per edge (in chunks, bounded memory) and then sparse products
    with the few moved rows, with no ``(edges, k)`` array beyond a chunk.
    """
    from scipy.sparse import csr_matrix

    n, k = Y.shape
    m = int(src.size)
    row = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    wA, wb, _ = confidence_weights(ratings, spec)
    Y64, Xo, Xn = Y.astype(np.float64), X_old.astype(np.float64), X_new.astype(np.float64)
    dot_new, dot_old = np.empty(m), np.empty(m)
    for a in range(0, m, chunk):
        part = slice(a, a + chunk)
        ys = Y64[src[part]]
        dot_new[part] = np.einsum("mk,mk->m", ys, Xn[row[part]])
        dot_old[part] = np.einsum("mk,mk->m", ys, Xo[row[part]])
    shape = (n, Xn.shape[0])

    def spread(coef, X):
        return csr_matrix((coef, (src, row)), shape=shape) @ X if m else np.zeros((n, k))

    dd = spread(wA * dot_new - wb, Xn) - spread(wA * dot_old - wb, Xo)
    db = spread(wb, Xn - Xo)
    return np.asarray(dd), np.asarray(db)


def neighbour_drift_reference(indptr, src, ratings, Y, X_old, X_new, spec: SolveSpec):
    """Slow twin of :func:`neighbour_drift`: per-edge :func:`edge_drift_reference`, summed with ``np.add.at``."""
    row = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    dd = np.zeros((Y.shape[0], Y.shape[1]))
    db = np.zeros_like(dd)
    np.add.at(dd, src, edge_drift_reference(Y[src].astype(np.float64), X_old[row].astype(np.float64),
                                            X_new[row].astype(np.float64), ratings, spec))
    _, wb, _ = confidence_weights(ratings, spec)
    np.add.at(db, src, wb[:, None] * (X_new[row].astype(np.float64) - X_old[row]))
    return dd, db
