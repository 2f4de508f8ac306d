"""Exact certificate terms of a few rows, read from the data, and the exact maximum over rows known only by bounds.

The targeted engine knows most of a request's rows by their exact deviation
(rows it solved: :func:`~spark_unlearn.als.frontier.bnorm_now`), and some
only by an upper bound (``|b'|`` bounded below).  The certificate's maximum
is exact when every bound that could exceed it has been replaced by the
row's exact value.  :func:`settle_maximum` does that in decreasing order of
bound and stops as soon as no remaining bound exceeds the exact maximum, so
it reads only the rows that could be the worst, not every row;
:func:`exact_deviations` is the reading, with the same kernel as the solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from spark_unlearn.als.frontier import current_factors, other, targets_of
from spark_unlearn.als.kernels import SolveSpec, normal_equations

#: At most this many rows per side are read to make the maximum exact; past it the record stays an upper bound.
MAX_EXACT_ROWS = 2000
#: Rows read per step (one read of their ratings and of their neighbours' factors).
EXACT_CHUNK = 256


def deviation_rows(A: np.ndarray, b: np.ndarray, X: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deviation ``d = A x - b - t`` and ``|b|`` of each row.

    Parameters
    ----------
    A : (n, k, k) float64
        Normal-equation matrices on the remaining data (current Gram in implicit mode).
    b : (n, k) float64
        Right-hand sides.
    X : (n, k)
        The rows' factors as stored (float32 is promoted: the certificate is of the stored model).
    T : (n, k) float64
        Targets (0 for rows whose own data changed).

    Returns
    -------
    D : (n, k) float64, bnorm : (n,) float64
        The row's certificate term is ``|D_r| / bnorm_r``.
    """
    D = np.einsum("nkl,nl->nk", A, np.asarray(X, np.float64)) - b - T
    return D, np.linalg.norm(b, axis=1)


def exact_deviations(source, side: str, ids: np.ndarray, tables: dict, direct: np.ndarray, spec: SolveSpec,
                     gram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, d, |b'|)`` of rows of ``side`` recomputed from their remaining ratings and current factors.

    ``tables``: per side, the frontier's :class:`~spark_unlearn.als.row_table.RowTable`
    (current factors of the rows it changed); ``direct``: rows whose own data
    changed (target 0; every other row keeps its stored target, as
    :func:`~spark_unlearn.als.frontier.frontier_unlearn` does); ``gram``: the
    other side's current Gram (implicit).  Rows without a remaining rating
    are left out (they left the model).
    """
    rd = source.rows(side, np.asarray(ids, np.int64))
    k = int(getattr(source, "rank", 0) or (tables[side]["x"].shape[1] if tables.get(side) is not None else 0))
    if rd.ids.size == 0:
        return rd.ids, np.zeros((0, k)), np.zeros(0)
    nbr_ids, src_local = np.unique(rd.src, return_inverse=True)
    Y = current_factors(source, other(side), tables.get(other(side)), nbr_ids)
    X = current_factors(source, side, tables.get(side), rd.ids)
    A, b = normal_equations(rd.indptr, src_local, rd.ratings, Y, spec, gram=gram)
    T = np.zeros(b.shape)
    keep = ~np.isin(rd.ids, np.asarray(direct, np.int64))
    if keep.any():
        T[keep] = targets_of(source, side, rd.ids[keep])
    D, bnorm = deviation_rows(A, b, X, T)
    return rd.ids, D, bnorm


@dataclass
class Settled:
    """Outcome of :func:`settle_maximum`."""

    values: np.ndarray  # per row: the exact value where read (or known), else its bound
    exact: np.ndarray  # per row: whether ``values`` is exact
    maximum: float  # the recorded maximum: exact maximum, or an upper bound when ``is_exact`` is False
    is_exact: bool
    read: np.ndarray  # positions of the rows made exact here
    capped: bool  # stopped at the cap with bounds still above the exact maximum


def settle_maximum(values: np.ndarray, exact: np.ndarray, exactify: Callable[[np.ndarray], np.ndarray],
                   exact_terms: float = 0.0, bound_terms: float = 0.0, cap: int = MAX_EXACT_ROWS,
                   chunk: int = EXACT_CHUNK) -> Settled:
    """The exact maximum of per-row values known partly by upper bounds, reading as few rows as possible.

    Parameters
    ----------
    values, exact
        Per row, its value (exact where ``exact``) or an upper bound of it.
    exactify
        Positions -> those rows' exact values (a read of the data).
    exact_terms, bound_terms
        Other terms of the maximum: known exactly, and known only by a bound.
    cap, chunk
        At most ``cap`` rows are read, ``chunk`` at a time.

    Returns
    -------
    Settled
        With ``M`` the largest exact value, rows are read in decreasing order
        of bound while some unread bound exceeds ``max(M, bound_terms)`` (below
        that no read can change the record).  The maximum is
        ``max(M, every remaining bound)`` and exact iff no bound exceeds ``M``.
    """
    values = np.asarray(values, np.float64).copy()
    exact = np.asarray(exact, bool).copy()
    read: list[np.ndarray] = []
    n_read = 0

    def best_exact() -> float:
        return max(float(exact_terms), float(values[exact].max(initial=0.0)))

    capped = False
    while True:
        floor = max(best_exact(), float(bound_terms))
        open_ = np.flatnonzero(~exact & (values > floor))
        if open_.size == 0:
            break
        if n_read >= cap:
            capped = True
            break
        take = open_[np.argsort(-values[open_], kind="stable")][:min(chunk, cap - n_read)]
        values[take] = np.asarray(exactify(take), np.float64)
        exact[take] = True
        read.append(take)
        n_read += take.size
    m = best_exact()
    top = max(m, float(bound_terms), float(values[~exact].max(initial=0.0)))
    return Settled(values, exact, top, bool(top <= m), np.concatenate(read) if read else np.zeros(0, np.int64), capped)
