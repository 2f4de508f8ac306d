"""Frontier Unlearn-ALS: re-solve only the rows a deletion reaches (driver-side logic).

Maths (DESIGN §2).  Every row ``r`` keeps its training residual
``e_r = A_r x_r - b_r``.  After a deletion the target is, for every row,

    A'_r x_r = b'_r + t_r,     t_r = 0 if r's own ratings changed, else e_r,

where primes mean "on the remaining data" (λ·n and confidences recomputed).
An untouched model satisfies this for every row whose data did not change,
so only the rows whose own data changed (the *direct* rows) start off it.

The solver keeps, for every row it has touched, the drift
``d_r = A'_r x_r - b'_r - t_r``.  It starts from the drift the version
stored for the row (what earlier unlearning left below the tolerance: it is
never folded into ``t_r``, so it cannot pile up over many requests) and is
updated edge by edge: when neighbour ``f`` moves from ``y`` to ``y'``,

    d_s += w_sf (y' y'^T - y y^T) x_s - c_sf (y' - y)

(``w``/``c`` the weights of ``y y^T`` in A and of ``y`` in b, see
:mod:`spark_unlearn.als.kernels`).  In implicit mode every row also drifts
by ``(G_now - G_then) x_s`` when the other side's Gram moves.  A row joins
the next frontier when ``|d_r| > tol * |b_r|``; solving it resets its drift
to zero.  Rows never touched drift only through the Gram; a cheap bound
``|ΔG|_2 * max_s |x_s|/|b_s|`` decides whether they need a look at all.

Nothing here knows about Spark: data comes through a :class:`RowSource`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from spark_unlearn.als.kernels import SolveSpec, _weights, normal_equations
from spark_unlearn.faults import failpoint

log = logging.getLogger(__name__)

SIDES = ("user", "item")


def other(side: str) -> str:
    return "item" if side == "user" else "user"


@dataclass
class RowData:
    """Remaining ratings of some rows of one side, CSR over global other-side ids."""

    ids: np.ndarray  # int64 (n,), the rows, in request order (absent rows dropped)
    indptr: np.ndarray  # int64 (n+1,)
    src: np.ndarray  # int64 global other-side ids
    ratings: np.ndarray  # float32


class RowSource(Protocol):
    """What the frontier needs from the data (Spark or in-memory)."""

    def rows(self, side: str, ids: np.ndarray) -> RowData:
        """Remaining ratings of ``ids`` (rows with no remaining rating are left out)."""

    def base_factors(self, side: str, ids: np.ndarray) -> np.ndarray:
        """Factors before unlearning, float32 ``(n, k)``."""

    def offsets(self, side: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored targets ``t`` ``(n, k)``, ``|b|`` ``(n,)`` and drift ``d`` ``(n, k)`` of the version."""

    def gram_violators(self, side: str, delta_gram: np.ndarray, tol: float, skip: np.ndarray) -> np.ndarray:
        """Rows (not in ``skip``) with ``|d_s + delta_gram x_s| > tol |b_s|`` (stored drift, base factors, stored ``|b|``)."""


def edge_drift(x: np.ndarray, y_old: np.ndarray, y_new: np.ndarray, ratings: np.ndarray, spec: SolveSpec) -> np.ndarray:
    """Per-edge change of a row's residual when one neighbour moves (see module docstring).

    All arrays are per edge: ``x``, ``y_old``, ``y_new`` are ``(m, k)``,
    ``ratings`` ``(m,)``.  Returns ``(m, k)`` float64.
    """
    wA, wb, _ = _weights(ratings, spec)
    x = x.astype(np.float64)
    yo, yn = y_old.astype(np.float64), y_new.astype(np.float64)
    return (
        wA[:, None] * (yn * np.einsum("mk,mk->m", yn, x)[:, None] - yo * np.einsum("mk,mk->m", yo, x)[:, None])
        - wb[:, None] * (yn - yo)
    )


def edge_drift_reference(x, y_old, y_new, ratings, spec: SolveSpec):
    """Slow twin of :func:`edge_drift`: the difference of two explicit normal-equation residuals."""
    out = np.zeros((len(ratings), x.shape[1]))
    for m in range(len(ratings)):
        wA, wb, _ = _weights(np.array([ratings[m]]), spec)
        before = wA[0] * np.outer(y_old[m], y_old[m]) @ x[m] - wb[0] * y_old[m]
        after = wA[0] * np.outer(y_new[m], y_new[m]) @ x[m] - wb[0] * y_new[m]
        out[m] = after - before
    return out


@dataclass
class FrontierResult:
    """Outcome of :func:`frontier_unlearn` (compute only: nothing is stored)."""

    updates: dict[str, dict[int, np.ndarray]]  # side -> id -> new float32 factor
    rows_solved: int
    rounds: int
    frontier_sizes: list[dict[str, int]]
    tol: float
    converged: bool
    seconds: float
    solved_ids: dict[str, set[int]] = field(default_factory=dict)
    # Per side, for every row touched (solved or drifted): the residual drift
    # d = A'x - b' - t it was left with (edges, float32 rounding at its solve;
    # the Gram term is separate; for rows not in solved_ids, add the drift the
    # version stored), the change of b since |b| was last known,
    # that |b|, and (implicit) the Gram snapshot it is relative to.
    drift: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    bdrift: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    bnorm: dict[str, dict[int, float]] = field(default_factory=dict)
    gram_snapshot: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    grams_final: dict[str, np.ndarray] = field(default_factory=dict)


class _Side:
    """Driver-side bookkeeping of one side during a frontier run."""

    def __init__(self, name: str, direct: set[int]):
        self.name = name
        self.direct = set(direct)
        self.current: dict[int, np.ndarray] = {}  # id -> current float32 factor (touched rows only)
        self.drift: dict[int, np.ndarray] = {}  # id -> accumulated drift d (float64)
        self.bdrift: dict[int, np.ndarray] = {}  # id -> change of b since bnorm was known (float64)
        self.bnorm: dict[int, float] = {}
        self.solved_gram: dict[int, int] = {}  # id -> index of the other side's Gram snapshot at solve
        self.solved: set[int] = set()


def frontier_unlearn(
    source: RowSource,
    direct: dict[str, set[int]],
    spec: SolveSpec,
    tol: float,
    *,
    gram_train: dict[str, np.ndarray] | None = None,
    gram_now: dict[str, np.ndarray] | None = None,
    max_rounds: int = 50,
    max_rows: int | None = None,
    seed_frontier: dict[str, set[int]] | None = None,
    start: dict[str, dict[int, np.ndarray]] | None = None,
) -> FrontierResult:
    """Re-solve the direct rows and every row their change reaches beyond ``tol``.

    Parameters
    ----------
    source
        Access to remaining ratings, base factors and training offsets.
    direct
        Per side, the rows whose own ratings changed (solved with ``t = 0``).
        Rows with no remaining rating must not be listed (they leave the model).
    spec
        The ALS objective.
    tol
        Relative residual tolerance ``|A'x - b' - t| <= tol |b|``.
    gram_train, gram_now
        Implicit mode: per side, the Gram of the factors the offsets were
        computed with (all training rows) and of the current model's rows
        (removed rows excluded).
    max_rounds
        Give up (``converged=False``) after this many rounds.
    max_rows
        Give up once this many row solves were made (the caller then falls
        back to full sweeps).
    seed_frontier, start
        Continue a previous run: extra rows to solve first, and factors
        already changed (id -> vector) to start from.
    """
    t0 = time.perf_counter()
    sides = {s: _Side(s, direct.get(s, set())) for s in SIDES}
    for s, upd in (start or {}).items():
        sides[s].current.update(upd)
    grams: dict[str, list[np.ndarray]] = {}
    if spec.implicit:
        assert gram_train is not None and gram_now is not None, "implicit mode needs the Grams"
        for s in SIDES:
            grams[s] = [np.asarray(gram_train[s], dtype=np.float64), np.asarray(gram_now[s], dtype=np.float64).copy()]
    frontier = {s: set(direct.get(s, set())) | set((seed_frontier or {}).get(s, set())) for s in SIDES}
    rows_solved, rounds, sizes = 0, 0, []
    converged = False
    while rounds < max_rounds:
        if not any(frontier.values()):
            converged = True
            break
        rounds += 1
        sizes.append({s: len(frontier[s]) for s in SIDES})
        prefetch = getattr(source, "prefetch", None)
        if prefetch is not None:  # a source whose reads are Spark jobs batches the round's reads
            prefetch(frontier)
        log.info("frontier round %d: %d users, %d items", rounds, len(frontier["user"]), len(frontier["item"]))
        for s in SIDES:
            if frontier[s]:
                rows_solved += _solve_side(source, sides[s], sides[other(s)], sorted(frontier[s]), spec, grams)
        failpoint("during_solve")
        if max_rows is not None and rows_solved > max_rows:
            break
        frontier = {s: _next_frontier(source, sides[s], sides[other(s)], spec, grams, tol) for s in SIDES}
    updates = {s: dict(sides[s].current) for s in SIDES}
    snapshots = {}
    if spec.implicit:
        snapshots = {s: {i: grams[other(s)][sides[s].solved_gram.get(i, 0)] for i in sides[s].drift} for s in SIDES}
    return FrontierResult(
        updates=updates,
        rows_solved=rows_solved,
        rounds=rounds,
        frontier_sizes=sizes,
        tol=tol,
        converged=converged,
        seconds=time.perf_counter() - t0,
        solved_ids={s: set(sides[s].solved) for s in SIDES},
        drift={s: dict(sides[s].drift) for s in SIDES},
        bdrift={s: dict(sides[s].bdrift) for s in SIDES},
        bnorm={s: dict(sides[s].bnorm) for s in SIDES},
        gram_snapshot=snapshots,
        grams_final={s: grams[s][-1] for s in SIDES} if spec.implicit else {},
    )


def _current(source: RowSource, side: _Side, ids: np.ndarray) -> np.ndarray:
    """Current factors of ``ids``: touched rows from the driver, the rest from the source."""
    ids = np.asarray(ids, dtype=np.int64)
    missing = np.array([i for i in ids.tolist() if i not in side.current], dtype=np.int64)
    base = source.base_factors(side.name, missing) if missing.size else None
    lookup = dict(zip(missing.tolist(), base)) if base is not None else {}
    return np.stack([side.current[i] if i in side.current else lookup[i] for i in ids.tolist()]) if ids.size else np.zeros((0, 0), np.float32)


def _solve_side(source: RowSource, me: _Side, nb: _Side, ids: list[int], spec: SolveSpec, grams) -> int:
    rd = source.rows(me.name, np.asarray(ids, dtype=np.int64))
    if rd.ids.size == 0:
        return 0
    nbr_ids, src_local = np.unique(rd.src, return_inverse=True)
    Y = _current(source, nb, nbr_ids)
    G = grams[nb.name][-1] if spec.implicit else None
    A, b = normal_equations(rd.indptr, src_local, rd.ratings, Y, spec, gram=G)
    e, _, _ = source.offsets(me.name, rd.ids)
    t = np.array([np.zeros(e.shape[1]) if i in me.direct else e[j] for j, i in enumerate(rd.ids.tolist())])
    X_exact = np.linalg.solve(A, (b + t)[:, :, None])[:, :, 0]
    X_new = X_exact.astype(np.float32)
    # Factors are stored as float32: the rounding leaves A (x32 - x) of residual, kept as the row's drift.
    rounding = np.einsum("nkl,nl->nk", A, X_new.astype(np.float64) - X_exact)
    X_old = _current(source, me, rd.ids)

    # Edge drift on the neighbours: d_s += w (y'y'^T - yy^T) x_s - c (y' - y).
    row_of_edge = np.repeat(np.arange(rd.ids.size), np.diff(rd.indptr))
    delta = edge_drift(Y[src_local], X_old[row_of_edge], X_new[row_of_edge], rd.ratings, spec)
    acc = np.zeros((nbr_ids.size, Y.shape[1]))
    np.add.at(acc, src_local, delta)
    _, wb, _ = _weights(rd.ratings, spec)
    acc_b = np.zeros_like(acc)
    np.add.at(acc_b, src_local, wb[:, None] * (X_new[row_of_edge].astype(np.float64) - X_old[row_of_edge]))
    for j, s_id in enumerate(nbr_ids.tolist()):
        nb.drift[s_id] = nb.drift.get(s_id, 0.0) + acc[j]
        nb.bdrift[s_id] = nb.bdrift.get(s_id, 0.0) + acc_b[j]

    if spec.implicit:
        G_me = grams[me.name][-1] + X_new.astype(np.float64).T @ X_new - X_old.astype(np.float64).T @ X_old
        grams[me.name].append(G_me)
    for j, i in enumerate(rd.ids.tolist()):
        me.current[i] = X_new[j]
        me.drift[i] = rounding[j]
        me.bdrift[i] = np.zeros(X_new.shape[1])
        me.bnorm[i] = float(np.linalg.norm(b[j]))
        me.solved.add(i)
        if spec.implicit:
            me.solved_gram[i] = len(grams[nb.name]) - 1
    return int(rd.ids.size)


def lower_bnorm(bnorm: float, bdrift: np.ndarray | None) -> float:
    """A lower bound of ``|b'|`` from a known ``|b|`` and the change ``b' - b`` (triangle inequality), floored > 0."""
    low = bnorm - (float(np.linalg.norm(bdrift)) if bdrift is not None else 0.0)
    return max(low, 1e-300)


def _next_frontier(source: RowSource, me: _Side, nb: _Side, spec: SolveSpec, grams, tol: float) -> set[int]:
    """Rows of ``me`` whose drift (edges + Gram) exceeds ``tol |b|``."""
    nxt: set[int] = set()
    touched = np.array(sorted(set(me.drift)), dtype=np.int64)
    if touched.size:
        ids = touched.tolist()
        _, train_bnorm, stored = source.offsets(me.name, touched)
        D = np.stack([np.broadcast_to(np.asarray(me.drift[i], np.float64), stored.shape[1:]) for i in ids])
        unsolved = np.array([i not in me.solved for i in ids])
        D[unsolved] += stored[unsolved]
        if spec.implicit:
            X = _current(source, me, touched).astype(np.float64)
            G_now = grams[nb.name][-1]
            snap = np.array([me.solved_gram.get(i, 0) for i in ids])
            for g in np.unique(snap).tolist():
                sel = snap == g
                D[sel] += X[sel] @ (G_now - grams[nb.name][g]).T
        bnorm = np.array([me.bnorm.get(i, float(train_bnorm[j])) for j, i in enumerate(ids)])
        bdrift = np.array([float(np.linalg.norm(me.bdrift[i])) if i in me.bdrift else 0.0 for i in ids])
        low = np.maximum(bnorm - bdrift, 1e-300)  # lower_bnorm, vectorised
        nxt = set(touched[np.linalg.norm(D, axis=1) > tol * low].tolist())
    if spec.implicit:
        delta_gram = grams[nb.name][-1] - grams[nb.name][0]
        if np.abs(delta_gram).max() > 0:
            nxt |= set(source.gram_violators(me.name, delta_gram, tol, touched).tolist())
    return nxt
