"""The normal-equation residual of one ALS row, written to be obviously right (numpy, no Spark).

This is the verifier's own arithmetic: it shares nothing with the solver,
the certificate or the offsets bookkeeping of the unlearning path, so that a
bug there cannot hide itself here.  For row ``r`` with ratings ``q_i``
against the other side's factors ``y_i`` (Spark MLlib's ALS objective):

explicit::

    A_r = sum_i y_i y_i^T + reg * n_r * I,              b_r = sum_i q_i y_i

implicit (``c_i = alpha |q_i|``, positives ``q_i > 0``)::

    A_r = Y^T Y + sum_i c_i y_i y_i^T + reg * n+_r * I,  b_r = sum_{q_i > 0} (1 + c_i) y_i

with ``n_r`` the row's ratings, ``n+_r`` its positive ones and ``Y^T Y`` the
Gram of the *whole* other side.  The deviation of ``x_r`` from its target
``t_r`` (the residual it owes from training, or 0 once its data changed) is

    rho_r = |A_r x_r - b_r - t_r| / |b_r|.
"""

from __future__ import annotations

import numpy as np


def row_equations(ratings: np.ndarray, Y: np.ndarray, *, reg: float, implicit: bool, alpha: float,
                  gram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(A_r, b_r)`` of one row, float64, by a loop over its ratings."""
    k = Y.shape[1]
    A = np.array(gram, dtype=np.float64) if implicit else np.zeros((k, k))
    b = np.zeros(k)
    counted = 0
    for q, y in zip(np.asarray(ratings, dtype=np.float64), np.asarray(Y, dtype=np.float64)):
        if implicit:
            c = alpha * abs(q)
            A += c * np.outer(y, y)
            if q > 0:
                b += (1.0 + c) * y
                counted += 1
        else:
            A += np.outer(y, y)
            b += q * y
            counted += 1
    A += reg * counted * np.eye(k)
    return A, b


def row_deviation(x: np.ndarray, target: np.ndarray | None, ratings: np.ndarray, Y: np.ndarray, *, reg: float,
                  implicit: bool, alpha: float, gram: np.ndarray | None) -> tuple[float, float]:
    """``(rho_r, |b_r|)`` for one row (``target`` ``None`` means 0)."""
    A, b = row_equations(ratings, Y, reg=reg, implicit=implicit, alpha=alpha, gram=gram)
    r = A @ np.asarray(x, dtype=np.float64) - b
    if target is not None:
        r = r - np.asarray(target, dtype=np.float64)
    bnorm = float(np.linalg.norm(b))
    return float(np.linalg.norm(r)) / max(bnorm, 1e-300), bnorm


def gram_of(rows) -> np.ndarray | None:
    """``sum_j y_j y_j^T`` (float64) over an iterable of vectors; ``None`` when empty."""
    acc = None
    for y in rows:
        y = np.asarray(y, dtype=np.float64)
        acc = np.outer(y, y) if acc is None else acc + np.outer(y, y)
    return acc
