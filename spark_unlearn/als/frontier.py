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

from spark_unlearn.als.drift import neighbour_drift
from spark_unlearn.als.kernels import SolveSpec, normal_equations
from spark_unlearn.als.row_table import RaggedTable, RowTable, ranges
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


@dataclass
class FrontierResult:
    """Outcome of :func:`frontier_unlearn` (compute only: nothing is stored).

    ``rows[side]`` is a :class:`~spark_unlearn.als.row_table.RowTable` of every
    row the run touched, with columns (see :class:`_Side`):

    * ``x`` / ``has_x``: the new float32 factor, for rows the run changed;
    * ``touched``: the row's equation moved (solved, or a neighbour moved);
    * ``drift``: ``d = A'x - b' - t`` it was left with (edges and the float32
      rounding at its solve; the Gram term is separate; for rows not
      ``solved``, add the drift the version stored);
    * ``bdrift``: the change of ``b`` since the row's solve (else since the
      version's stored ``|b|``); ``bsolve``: ``b`` at the row's solve (solved rows), so that
      ``|b'| = |bsolve + bdrift|`` is exact (:func:`bnorm_now`);
    * ``solved``; ``snap``: index into ``gram_history[other side]`` of the
      Gram its drift is relative to (implicit).
    """

    rows: dict[str, RowTable]
    rows_solved: int
    rounds: int
    frontier_sizes: list[dict[str, int]]
    tol: float
    converged: bool
    seconds: float
    gram_history: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # Per lazy side (neighbours kept in Spark): its last check (LazyCheck) and the other side's moves
    # (neighbour_pass.Moves), from which the rows it did not re-solve get their new offsets.
    lazy: dict[str, dict] = field(default_factory=dict)
    # Why a run that did not converge stopped: "max_rounds", "max_rows" or "give_up" ("" when it converged).
    stopped: str = ""

    @property
    def grams_final(self) -> dict[str, np.ndarray]:
        return {s: h[-1] for s, h in self.gram_history.items()}

    def changed(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, factors)`` of the rows whose factor changed (sorted by id)."""
        t = self.rows[side]
        sel = t["has_x"]
        return t.ids[sel], t["x"][sel]

    @property
    def updates(self) -> dict[str, dict[int, np.ndarray]]:
        """Per side, id -> new factor of the changed rows (a dict view of :meth:`changed`)."""
        out = {}
        for s in self.rows:
            ids, X = self.changed(s)
            out[s] = dict(zip(ids.tolist(), X))
        return out

    @property
    def solved_ids(self) -> dict[str, set[int]]:
        return {s: set(t.ids[t["solved"]].tolist()) for s, t in self.rows.items()}


class _Side:
    """Driver-side bookkeeping of one side during a frontier run: one sorted-array row table."""

    def __init__(self, name: str, direct, gone=()):
        self.name = name
        self.direct = np.unique(np.asarray(list(direct), np.int64))
        # Rows that leave the model (no remaining rating): never re-solved, never checked.
        self.gone = np.unique(np.asarray(list(gone), np.int64))
        self.table: RowTable | None = None
        # A lazy side's rows that are not re-solved stay in Spark (spark_unlearn.als.neighbour_pass): the
        # driver tracks only its solved rows, and ``check`` is the last pass over the others.
        self.lazy = False
        self.check = None
        # Every row this side re-solved: base factor and remaining ratings (the edges a lazy neighbour side needs).
        self.moved = RaggedTable()
        self.moved_x0: RowTable | None = None
        self.solves = 0  # rows solved so far (a lazy neighbour side's check is redone only after new moves)
        self.check_key = None

    def make_lazy(self) -> None:
        """From now on rows that are not re-solved are left to Spark; bookkeeping already done for them is dropped
        (the pass recomputes it from the version's values and every move of the run)."""
        if self.lazy:
            return
        self.lazy = True
        if self.table is not None:
            self.table["touched"][~self.table["solved"]] = False

    def record_moves(self, rd: "RowData", x0: np.ndarray) -> None:
        """Remember re-solved rows: their base factors (first solve only) and their remaining ratings."""
        new = ~self.moved.contains(rd.ids)
        if new.any():
            if self.moved_x0 is None:
                self.moved_x0 = RowTable({"x0": (np.float32, x0.shape[1], 0.0)})
            self.moved_x0.put(rd.ids[new], x0=x0[new])
            sel = np.flatnonzero(new)
            indptr, take = ranges(rd.indptr[sel], np.diff(rd.indptr)[sel])
            self.moved.add(rd.ids[sel], indptr, rd.src[take], rd.ratings[take])

    def moves(self):
        """The :class:`~spark_unlearn.als.neighbour_pass.Moves` of this side so far (current factors from the table)."""
        from spark_unlearn.als.neighbour_pass import Moves

        ids = self.moved.index.ids
        indptr, src, val = self.moved.gather(ids)
        return Moves.build(ids, self.moved_x0.take("x0", ids), self.table.take("x", ids), indptr, src, val)

    def rows(self, k: int) -> RowTable:
        if self.table is None:
            self.table = RowTable({
                "x": (np.float32, k, 0.0), "has_x": (bool, None, False), "touched": (bool, None, False),
                "drift": (np.float64, k, 0.0), "bdrift": (np.float64, k, 0.0),
                "bsolve": (np.float64, k, 0.0), "solved": (bool, None, False), "snap": (np.int64, None, 0),
            })
        return self.table

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
    gone: dict[str, set[int]] | None = None,
    give_up=None,
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
        Give up (before solving it) at the first round that would take the
        row solves beyond this many (the caller then falls back).
    seed_frontier
        Extra rows to solve in the first round (e.g. a certificate's
        violators, or rows whose stored drift is above ``tol``).
    gone
        Per side, rows of the source's factor tables that leave the model
        (no remaining rating).  Checks over stored rows skip them; without
        this a row that cannot be re-solved would be flagged every round.
    give_up
        ``give_up(sizes, next_size)``, asked before every round after the
        first with the rows of each round so far and of the next: True stops
        the frontier (``converged=False``) before it solves that round (the
        batch planner's switch to sweeps,
        :func:`~spark_unlearn.als.strategy_cost.frontier_should_yield`).
    """
    t0 = time.perf_counter()
    sides = {s: _Side(s, direct.get(s, set()), (gone or {}).get(s, ())) for s in SIDES}
    grams: dict[str, list[np.ndarray]] = {}
    if spec.implicit:
        assert gram_train is not None and gram_now is not None, "implicit mode needs the Grams"
        for s in SIDES:
            grams[s] = [np.asarray(gram_train[s], dtype=np.float64), np.asarray(gram_now[s], dtype=np.float64).copy()]
    frontier = {s: np.setdiff1d(np.union1d(np.asarray(sorted(direct.get(s, ())), np.int64),
                                           np.asarray(sorted((seed_frontier or {}).get(s, ())), np.int64)),
                                sides[s].gone) for s in SIDES}
    rows_solved, rounds, sizes = 0, 0, []
    converged = False
    stopped = "max_rounds"
    while rounds < max_rounds:
        if not any(v.size for v in frontier.values()):
            converged = True
            break
        next_size = sum(v.size for v in frontier.values())
        if max_rows is not None and rows_solved + next_size > max_rows:
            stopped = "max_rows"  # the next round would pass the budget: give up before paying for it
            break
        if give_up is not None and rounds and give_up([sum(s.values()) for s in sizes], next_size):
            stopped = "give_up"
            break
        rounds += 1
        sizes.append({s: len(frontier[s]) for s in SIDES})
        prefetch = getattr(source, "prefetch", None)
        if prefetch is not None:  # a source whose reads are Spark jobs batches the round's reads
            prefetch(frontier)
        log.info("frontier round %d: %d users, %d items", rounds, len(frontier["user"]), len(frontier["item"]))
        for s in SIDES:
            if frontier[s].size:
                rows_solved += _solve_side(source, sides[s], sides[other(s)], frontier[s], spec, grams)
        failpoint("during_solve")
        frontier = {s: _next_frontier(source, sides[s], sides[other(s)], spec, grams, tol) for s in SIDES}
    k = next((sd.table["x"].shape[1] for sd in sides.values() if sd.table is not None), 0)
    return FrontierResult(
        rows={s: sides[s].rows(k) for s in SIDES},
        rows_solved=rows_solved,
        rounds=rounds,
        frontier_sizes=sizes,
        tol=tol,
        converged=converged,
        stopped="" if converged else stopped,
        seconds=time.perf_counter() - t0,
        gram_history=grams if spec.implicit else {},
        lazy={s: {"check": sides[s].check, "moves": sides[other(s)].moves() if sides[other(s)].table is not None else None}
              for s in SIDES if sides[s].lazy and converged},
    )


def targets_of(source: RowSource, side: str, ids: np.ndarray) -> np.ndarray:
    """Stored targets of ``ids`` (a source may read them apart from the rest of the offsets)."""
    read = getattr(source, "targets", None)
    return read(side, ids) if read is not None else source.offsets(side, ids)[0]


def drift_state_of(source: RowSource, side: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored ``|b|`` and drift of ``ids``, without their targets where the source can."""
    read = getattr(source, "drift_state", None)
    return read(side, ids) if read is not None else source.offsets(side, ids)[1:]


def current_factors(source: RowSource, side: str, table: RowTable | None, ids: np.ndarray) -> np.ndarray:
    """Current factors of ``ids``: rows the run changed from ``table``, the rest from the source."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros((0, table["x"].shape[1] if table is not None else 0), np.float32)
    if table is None:
        return source.base_factors(side, ids)
    pos = table.positions(ids)
    have = pos >= 0
    have[have] = table["has_x"][pos[have]]
    if have.all():
        return table["x"][pos]
    base = source.base_factors(side, ids[~have])
    out = np.empty((ids.size, base.shape[1]), np.float32)
    out[~have] = base
    out[have] = table["x"][pos[have]]
    return out


def _current(source: RowSource, side: _Side, ids: np.ndarray) -> np.ndarray:
    return current_factors(source, side.name, side.table, ids)


def _solve_side(source: RowSource, me: _Side, nb: _Side, ids: np.ndarray, spec: SolveSpec, grams) -> int:
    rd = source.rows(me.name, np.asarray(ids, dtype=np.int64))
    if rd.ids.size == 0:
        return 0
    nbr_ids, src_local = np.unique(rd.src, return_inverse=True)
    is_lazy = getattr(source, "is_lazy", None)
    if is_lazy is not None and is_lazy(nb.name, nbr_ids.size):
        nb.make_lazy()
    G = grams[nb.name][-1] if spec.implicit else None
    X_old = _current(source, me, rd.ids)
    k = X_old.shape[1]
    if nb.lazy:
        # The neighbours stay in Spark: the normal equations are summed there, with the rows re-solved so far
        # at their current factors.  Only the neighbours that were re-solved are tracked here.
        A, b = source.normal_equations(nb.name, rd, _changed(nb), spec, G)
        pos = nb.table.positions(nbr_ids) if nb.table is not None else np.full(nbr_ids.size, -1)
        known = pos >= 0
        if known.any():
            known[known] = nb.table["solved"][pos[known]]
    else:
        Y = _current(source, nb, nbr_ids)
        A, b = normal_equations(rd.indptr, src_local, rd.ratings, Y, spec, gram=G)
        known = np.ones(nbr_ids.size, bool)
    e = targets_of(source, me.name, rd.ids)
    t = np.where(np.isin(rd.ids, me.direct)[:, None], 0.0, e)
    X_exact = np.linalg.solve(A, (b + t)[:, :, None])[:, :, 0]
    X_new = X_exact.astype(np.float32)
    # Factors are stored as float32: the rounding leaves A (x32 - x) of residual, kept as the row's drift.
    rounding = np.einsum("nkl,nl->nk", A, X_new.astype(np.float64) - X_exact)
    if is_lazy is not None:  # a source that can keep a side in Spark needs the moves (the others never will)
        me.record_moves(rd, source.base_factors(me.name, rd.ids))
    me.solves += int(rd.ids.size)

    # Edge drift on the (tracked) neighbours: d_s += w (y'y'^T - yy^T) x_s - c (y' - y).
    if known.any():
        indptr, src, ratings = rd.indptr, src_local, rd.ratings
        if not known.all():
            # The CSR restricted to the tracked neighbours (edges stay grouped by row).
            keep = known[src_local]
            row = np.repeat(np.arange(rd.ids.size), np.diff(rd.indptr))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=rd.ids.size))])
            src, ratings = (np.cumsum(known) - 1)[src_local[keep]], rd.ratings[keep]
        tracked = nbr_ids[known]
        Y = _current(source, nb, tracked) if nb.lazy else Y
        acc, acc_b = neighbour_drift(indptr.astype(np.int64), src, ratings, Y, X_old, X_new, spec)
        nt = nb.rows(k)
        pos = nt.ensure(tracked)
        nt["drift"][pos] += acc
        nt["bdrift"][pos] += acc_b
        nt["touched"][pos] = True

    if spec.implicit:
        G_me = grams[me.name][-1] + X_new.astype(np.float64).T @ X_new - X_old.astype(np.float64).T @ X_old
        grams[me.name].append(G_me)
    mt = me.rows(k)
    # b itself is kept (not only |b|): with the exactly bookkept change bdrift, |b'| = |b + bdrift| stays exact.
    mt.put(rd.ids, x=X_new, has_x=True, touched=True, drift=rounding, bdrift=0.0,
           bsolve=b, solved=True, **({"snap": len(grams[nb.name]) - 1} if spec.implicit else {}))
    return int(rd.ids.size)


def _changed(side: _Side) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, factors)`` of the rows of ``side`` the run has re-solved so far."""
    if side.table is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    sel = side.table["has_x"]
    return side.table.ids[sel], side.table["x"][sel]


def bnorm_now(me_rows: RowTable, sel: np.ndarray, stored_bnorm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|b'|`` of the rows at positions ``sel`` where it is known exactly, a lower bound elsewhere; and which.

    Returns ``(values, exact)``.  A row solved in this run kept ``b`` at its
    solve and the exactly bookkept change ``bdrift`` since, so
    ``|b'| = |b_solve + bdrift|`` (float64 rounding only).  Any other row
    knows only ``|b|`` (``stored_bnorm``, the version's, itself possibly a
    lower bound written by an earlier request) and
    ``|b'| >= |b| - |bdrift|`` (triangle inequality), floored > 0.
    """
    solved = me_rows["solved"][sel]
    lower = np.maximum(np.asarray(stored_bnorm, np.float64) - np.linalg.norm(me_rows["bdrift"][sel], axis=1), 1e-300)
    exact = np.linalg.norm(me_rows["bsolve"][sel] + me_rows["bdrift"][sel], axis=1)
    return np.where(solved, np.maximum(exact, 1e-300), lower), solved.copy()


def current_drift(me_rows: RowTable, sel: np.ndarray, stored_drift: np.ndarray, X: np.ndarray | None,
                  gram_history: list[np.ndarray] | None) -> np.ndarray:
    """Drift ``d`` of the rows at positions ``sel``: bookkept edges, stored drift if unsolved, Gram term (implicit).

    ``X``: the rows' current factors (implicit only); ``gram_history``: the
    other side's Gram snapshots, the last one current.
    """
    D = me_rows["drift"][sel].copy()
    unsolved = ~me_rows["solved"][sel]
    D[unsolved] += stored_drift[unsolved]
    if gram_history is not None:
        G_now = gram_history[-1]
        snap = me_rows["snap"][sel]
        for g in np.unique(snap).tolist():
            rows = snap == g
            D[rows] += X[rows].astype(np.float64) @ (G_now - gram_history[g]).T
    return D


def _next_frontier(source: RowSource, me: _Side, nb: _Side, spec: SolveSpec, grams, tol: float) -> np.ndarray:
    """Rows of ``me`` whose drift (edges + Gram) exceeds ``tol |b|``."""
    nxt = np.zeros(0, np.int64)
    touched = np.zeros(0, np.int64)
    if me.table is not None:
        sel = np.flatnonzero(me.table["touched"])
        touched = me.table.ids[sel]
    if touched.size:
        train_bnorm, stored = drift_state_of(source, me.name, touched)
        X = _current(source, me, touched) if spec.implicit else None
        D = current_drift(me.table, sel, stored, X, grams[nb.name] if spec.implicit else None)
        nxt = touched[np.linalg.norm(D, axis=1) > tol * bnorm_now(me.table, sel, train_bnorm)[0]]
    skip = np.union1d(touched, me.gone)  # gone rows have no edges, so only the passes over stored rows see them
    if me.lazy:
        # The rows next to moved rows that were not re-solved: one pass in Spark, redone only after new moves.
        # Implicit: when the Gram check below would pass over every row anyway, this pass covers every row
        # (edges and Gram term) and replaces it.
        delta = grams[nb.name][-1] - grams[nb.name][0] if spec.implicit else None
        every = bool(spec.implicit and np.abs(delta).max() > 0
                     and getattr(source, "gram_needs_pass", lambda *a: True)(me.name, delta, tol))
        key = (nb.solves, len(grams[nb.name]) if spec.implicit else 0, every)
        if me.check is None or me.check_key != key:
            me.check = source.lazy_check(me.name, nb.moves(), skip, spec, delta, tol, every_row=every)
            me.check_key = key
            nxt = np.union1d(nxt, me.check.violators)
        if me.check.every_row:
            return nxt
        skip = np.union1d(skip, me.check.ids)
    if spec.implicit:
        delta_gram = grams[nb.name][-1] - grams[nb.name][0]
        if np.abs(delta_gram).max() > 0:
            nxt = np.union1d(nxt, source.gram_violators(me.name, delta_gram, tol, skip))
    return nxt
