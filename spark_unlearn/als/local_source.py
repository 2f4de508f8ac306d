"""In-memory :class:`~spark_unlearn.als.frontier.RowSource` and full-sweep offset ALS (reference, small data).

Used by the tests as the oracle side of frontier unlearning, and usable for
small data on the driver.  Arrays only; no Spark.
"""

from __future__ import annotations

import numpy as np

from spark_unlearn.als.frontier import RowData, other
from spark_unlearn.als.kernels import SolveSpec, gram, residuals, solve_rows


class LocalSource:
    """Ratings as COO arrays plus dict-of-vector factors and offsets per side."""

    def __init__(self, users, items, ratings, factors: dict[str, dict[int, np.ndarray]], offsets: dict[str, dict[int, np.ndarray]],
                 bnorm: dict[str, dict[int, float]], drift: dict[str, dict[int, np.ndarray]] | None = None):
        self.cols = {"user": np.asarray(users, np.int64), "item": np.asarray(items, np.int64)}
        self.ratings = np.asarray(ratings, np.float32)
        self.factors = factors
        self.offs = offsets
        self.bnorms = bnorm
        self.drifts = drift or {"user": {}, "item": {}}

    def rows(self, side, ids):
        mine, theirs = self.cols[side], self.cols[other(side)]
        keep, src, rat, ptr = [], [], [], [0]
        for i in np.asarray(ids, np.int64).tolist():
            sel = np.flatnonzero(mine == i)
            if sel.size == 0:
                continue
            sel = sel[np.argsort(theirs[sel])]
            keep.append(i)
            src.append(theirs[sel])
            rat.append(self.ratings[sel])
            ptr.append(ptr[-1] + sel.size)
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return RowData(np.asarray(keep, np.int64), np.asarray(ptr, np.int64), cat(src, np.int64), cat(rat, np.float32))

    def base_factors(self, side, ids):
        return np.stack([self.factors[side][int(i)] for i in ids]).astype(np.float32)

    def _drift(self, side, i, like):
        return np.asarray(self.drifts[side].get(int(i), np.zeros_like(like)), np.float64)

    def offsets(self, side, ids):
        e = np.stack([self.offs[side][int(i)] for i in ids]) if len(ids) else np.zeros((0, 1))
        d = np.stack([self._drift(side, i, self.offs[side][int(i)]) for i in ids]) if len(ids) else np.zeros((0, 1))
        return e, np.array([self.bnorms[side][int(i)] for i in ids]), d

    def gram_violators(self, side, delta_gram, tol, skip):
        skip = set(np.asarray(skip).tolist())
        out = []
        for i, x in self.factors[side].items():
            if i in skip or i not in self.bnorms[side]:
                continue
            moved = self._drift(side, i, self.offs[side][i]) + delta_gram @ x.astype(np.float64)
            if np.linalg.norm(moved) > tol * self.bnorms[side][i]:
                out.append(i)
        return np.asarray(out, np.int64)


def side_csr(users, items, ratings, side):
    """CSR of one side over *positions* of the other side's sorted unique ids."""
    mine, theirs = (users, items) if side == "user" else (items, users)
    ids, other_ids = np.unique(mine), np.unique(theirs)
    order = np.lexsort((theirs, mine))
    indptr = np.searchsorted(mine[order], np.append(ids, ids.max() + 1)).astype(np.int64)
    return ids, other_ids, indptr, np.searchsorted(other_ids, theirs[order]), np.asarray(ratings, np.float32)[order]


def offsets_of(users, items, ratings, U: dict, V: dict, spec: SolveSpec):
    """Training residuals ``e = A x - b`` and ``|b|`` of every row (dicts per side)."""
    out_e, out_b = {}, {}
    for side, mine, theirs in (("user", U, V), ("item", V, U)):
        ids, other_ids, indptr, src, rat = side_csr(users, items, ratings, side)
        Y = np.stack([theirs[i] for i in other_ids]).astype(np.float32)
        X = np.stack([mine[i] for i in ids]).astype(np.float32)
        R, bn = residuals(X, indptr, src, rat, Y, spec, gram=gram(Y) if spec.implicit else None)
        out_e[side] = dict(zip(ids.tolist(), R))
        out_b[side] = dict(zip(ids.tolist(), bn))
    return out_e, out_b


def offset_sweeps(users, items, ratings, U: dict, V: dict, targets: dict, spec: SolveSpec, sweeps: int):
    """Full-sweep offset ALS (the reference): solve every row ``A'x = b' + t`` for ``sweeps`` sweeps.

    Items first, then users (Spark's order); ``targets[side][id]`` is ``t``.
    Returns new ``(U, V)`` dicts restricted to rows that have ratings.
    """
    U, V = dict(U), dict(V)
    for _ in range(sweeps):
        for side in ("item", "user"):
            mine, theirs = (V, U) if side == "item" else (U, V)
            ids, other_ids, indptr, src, rat = side_csr(users, items, ratings, side)
            Y = np.stack([theirs[i] for i in other_ids]).astype(np.float32)
            t = np.stack([targets[side][i] for i in ids])
            X = solve_rows(indptr, src, rat, Y, spec, gram=gram(Y) if spec.implicit else None, offsets=t)
            new = dict(zip(ids.tolist(), X.astype(np.float32)))
            if side == "item":
                V = new
            else:
                U = new
    return U, V


def certificate(users, items, ratings, U: dict, V: dict, targets: dict, spec: SolveSpec) -> float:
    """``max_r |A'x - b' - t| / |b'|`` over all rows (brute force)."""
    worst = 0.0
    for side, mine, theirs in (("user", U, V), ("item", V, U)):
        ids, other_ids, indptr, src, rat = side_csr(users, items, ratings, side)
        Y = np.stack([theirs[i] for i in other_ids]).astype(np.float32)
        X = np.stack([mine[i] for i in ids]).astype(np.float32)
        R, bn = residuals(X, indptr, src, rat, Y, spec, gram=gram(Y) if spec.implicit else None)
        t = np.stack([targets[side][i] for i in ids])
        worst = max(worst, float((np.linalg.norm(R - t, axis=1) / np.maximum(bn, 1e-300)).max()))
    return worst
