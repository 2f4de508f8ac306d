"""Warm offset sweeps over every row, as pure numpy: the sweep strategy's kernel.

Offset ALS (DESIGN §2) solves every row ``r`` of one side, then of the other,
to ``A'_r x_r = b'_r + t_r``: ``A'``, ``b'`` the normal equations on the
remaining data, ``t_r`` the row's target (its training residual, 0 once its
own data changed).  Started from the trained factors, the first sweep already
moves every row by what the deletion changed; the sweeps stop as soon as
every row's deviation ``dev_r = |A'_r x_r - b'_r - t_r| / |b'_r|``, computed
on the float32 factors that are published, is within its bound (the
request's :class:`~spark_unlearn.als.policy.RowTolerance`), or after
``max_sweeps`` (a cold retrain's iteration count: never more sweeps than a
retrain).  Each sweep solves the side Spark solves first (items), then the
other, with :func:`~spark_unlearn.als.kernels.solve_rows`, the kernel of
training and of the frontier; deviations come from
:func:`~spark_unlearn.als.kernels.residuals` (``O(nnz k)``, ``A`` never formed).

**Rows whose own data changed first.** Before the first sweep those rows
are solved once, in the sweep's side order: their equations moved by the
deleted ratings themselves, the others' only through them.  With the
cheaper repair below, one sweep certified a 1 % batch of the 5M ADM
expansion, where the sweeps had taken two without them.

**Repair.** After a few sweeps the deviation is within bound on almost every
row, while a few rows hover near their bounds and whole sweeps move them
back and forth (ADM, core users erased: 4-200 of ~50k item rows left over
3-6 more sweeps).  Once a sweep leaves at most ``repair_fraction`` of the
first side's rows outside their bounds, :func:`repair` solves just those
rows exactly, then checks every row of the other side (the solves moved its
equations; in implicit mode through the Gram too) and solves its violators,
alternating, at most ``repair_rounds`` rounds.  A round costs its rows'
solves, the residuals of the rows that rated them, and in implicit mode
one ``(n, k) x (k, k)`` product for the rest of the other side, whose
equations moved only by the Gram's change (:func:`_moved_other_side`),
against a sweep's every-row solves; when a round leaves more violators than
the fraction, or the rounds run out, the sweeps go on from the repaired
factors.  The certificate is the same: both sides' deviations on the
published factors, all rows (the Gram term's update is exact up to float64
rounding; the tests hold every recorded figure to the dense normal
equations').

**Forgetting.** The certificate holds while the deleted pairs' scores are
still moving towards the retrain's (ADM, 1 % of the interactions: a
forgetting gap of 0.68 after one sweep, 1.02 after three).  Given a
:class:`~spark_unlearn.als.forgetting_watch.ForgettingWatch`, the sweeps
run unchecked until the pairs have made the request's share of their
estimated move, then stop at the certificate as before.

:func:`warm_sweeps_reference` is the same loop written row by row with the
dense reference kernels (tests only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from spark_unlearn.als.forgetting_watch import ForgettingWatch
from spark_unlearn.als.kernels import (SolveSpec, gram, residuals, residuals_reference, solve_rows,
                                       solve_rows_reference)
from spark_unlearn.als.policy import RowTolerance

# Spark MLlib's order within an iteration: items from users, then users from items.
SWEEP_ORDER = ("item", "user")


def other_side(side: str) -> str:
    return "item" if side == "user" else "user"


@dataclass
class SweepSide:
    """One side on the driver: its rows' ratings in CSR form against the other side's row positions.

    ``indptr``/``src``/``ratings``: row ``j``'s ratings are
    ``ratings[indptr[j]:indptr[j+1]]`` against the other side's rows
    ``src[...]`` (positions, not ids).  ``X``: float32 factors; ``T``:
    float64 targets ``t_r`` (zero rows for rows whose own data changed).
    """

    indptr: np.ndarray
    src: np.ndarray
    ratings: np.ndarray
    X: np.ndarray
    T: np.ndarray


@dataclass
class SweepRun:
    """What the sweeps did: the factors, each row's deviation, ``|b'|`` and bound, and the history."""

    factors: dict[str, np.ndarray]
    deviation: dict[str, np.ndarray]  # per row: |A'x - b' - t| / |b'| on the float32 factors
    drift: dict[str, np.ndarray]  # per row: A'x - b' - t (float64, (n, k))
    bnorm: dict[str, np.ndarray]  # per row: |b'|
    bounds: dict[str, np.ndarray]  # per row: its bound under the request's policy
    sweeps: int
    holds: bool
    history: list[dict] = field(default_factory=list)  # per sweep: each side's max deviation and bound ratio, violators
    check_seconds: float = 0.0  # of the sweeps' time, spent computing deviations (the certificate)
    repaired_rows: int = 0  # row solves of the repair rounds, beyond the sweeps'
    presolved_rows: int = 0  # row solves before the first sweep (the rows whose own data changed)
    forgetting: dict | None = None  # the deleted pairs' scores and the share of their move made (ForgettingWatch)

    @property
    def row_solves(self) -> int:
        return self.sweeps * sum(x.shape[0] for x in self.factors.values()) + self.repaired_rows + self.presolved_rows


def deviations(sides: dict[str, SweepSide], spec: SolveSpec, policy: RowTolerance, which=("user", "item"),
               residual_fn=residuals) -> tuple[dict, dict, dict, dict]:
    """Per side in ``which``: the drift ``A'x - b' - t``, the deviation ``|drift| / |b'|``, ``|b'|`` and each row's
    bound."""
    drift, dev, bnorm, bounds = {}, {}, {}, {}
    for s in which:
        me, Y = sides[s], sides[other_side(s)].X
        g = gram(Y) if spec.implicit else None
        R, bnorm[s] = residual_fn(me.X, me.indptr, me.src, me.ratings, Y, spec, gram=g)
        drift[s], dev[s], bounds[s] = _row_figures(R, bnorm[s], me.T, policy)
    return drift, dev, bnorm, bounds


def _row_figures(R: np.ndarray, bnorm: np.ndarray, T: np.ndarray, policy: RowTolerance):
    """Rows' ``(drift, deviation, bound)`` from their residuals ``R = A'x - b'``, ``|b'|`` and targets ``T``."""
    drift = R - T
    return (drift, np.linalg.norm(drift, axis=1) / np.maximum(bnorm, 1e-300),
            policy.bounds(np.linalg.norm(T, axis=1), bnorm))


def _record(dev: dict, bounds: dict) -> dict:
    out = {}
    for s in dev:
        ratio = dev[s] / np.maximum(bounds[s], 1e-300)
        out[s] = {"max_deviation": float(dev[s].max(initial=0.0)), "max_bound_ratio": float(ratio.max(initial=0.0)),
                  "violators": int((~(dev[s] <= bounds[s])).sum())}
    return out


@dataclass
class Repair:
    """What :func:`repair` did: rounds, rows solved, and whether every row of both sides ended within bound."""

    rounds: int
    rows: int
    holds: bool
    why: str
    solve_seconds: float = 0.0  # of the repair's time, spent solving rows (the rest computes deviations)


def repair(sides: dict[str, SweepSide], spec: SolveSpec, policy: RowTolerance, checked: tuple[dict, dict, dict, dict],
           side: str, rounds: int, fraction: float, solve_fn=solve_rows, residual_fn=residuals) -> Repair:
    """Solve the violators of ``side``, then of the other side, alternating (see the module docstring).

    ``checked``: ``(drift, dev, bnorm, bounds)`` with ``side`` computed on the
    current factors; updated in place, on return it holds both sides'
    current figures (each round re-solves one side's violators, updates
    those rows' figures, and the other side's: every row from its data in
    the first round, then through :func:`_moved_other_side`).
    """
    drift, dev, bnorm, bounds = checked
    solved, solving = 0, 0.0
    for n in range(1, rounds + 1):
        t = time.perf_counter()
        bad = np.flatnonzero(~(dev[side] <= bounds[side]))
        me, nb = sides[side], sides[other_side(side)]
        g = gram(nb.X) if spec.implicit else None
        moved_before, moved_after = _solve_subset(sides, side, bad, spec, g, solve_fn)
        solved += bad.size
        solving += time.perf_counter() - t
        # The other side did not move: only the solved rows' own equations changed.
        R, bnorm[side][bad] = residual_fn(me.X[bad], me.indptr, me.src, me.ratings, nb.X, spec, gram=g, rows=bad)
        drift[side][bad], dev[side][bad], bounds[side][bad] = _row_figures(R, bnorm[side][bad], me.T[bad], policy)
        side = other_side(side)
        _moved_other_side(sides, spec, policy, checked, side, bad, moved_before, moved_after, residual_fn)
        left = int((~(dev[side] <= bounds[side])).sum())
        if left == 0 and not (~(dev[other_side(side)] <= bounds[other_side(side)])).any():
            return Repair(n, solved, True, "every row within bound", solving)
        if left > fraction * dev[side].size:
            return Repair(n, solved, False, f"{left} {side} rows outside their bounds, more than the repair takes",
                          solving)
    return Repair(rounds, solved, False, f"still outside after {rounds} rounds", solving)


def _solve_subset(sides: dict[str, SweepSide], side: str, rows: np.ndarray, spec: SolveSpec, g: np.ndarray | None,
                  solve_fn=solve_rows) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``rows`` of ``side`` exactly against the other side's factors (``g``: their Gram, implicit), in place.

    Returns the rows' factors before and after, float64.
    """
    me, nb = sides[side], sides[other_side(side)]
    X = me.X.copy()  # a new array: the kernel never writes into a caller's factors
    X[rows] = solve_fn(me.indptr, me.src, me.ratings, nb.X, spec, g, rows, me.T[rows]).astype(np.float32)
    before = me.X[rows].astype(np.float64)
    me.X = X
    return before, X[rows].astype(np.float64)


def _moved_other_side(sides: dict[str, SweepSide], spec: SolveSpec, policy: RowTolerance,
                      checked: tuple[dict, dict, dict, dict], side: str, moved: np.ndarray, before: np.ndarray,
                      after: np.ndarray, residual_fn=residuals) -> None:
    """Update ``side``'s figures in ``checked`` after the other side's rows ``moved`` went from ``before`` to
    ``after`` (computed from the data when ``checked`` has none for ``side`` yet).

    A row of ``side`` that rated none of them keeps ``A x - b`` except,
    in implicit mode, the Gram term: ``A`` gains ``dG = after^T after -
    before^T before``, so its drift gains ``dG x`` exactly (``b`` and ``|b|``
    do not change), one ``(n, k) x (k, k)`` product for the side (and the
    moved side's Gram) instead of its residuals over every rating.  The rows
    that rated a moved row are recomputed from their data
    (:func:`~spark_unlearn.als.kernels.residuals`).  ``moved`` holds no
    repeats (a repeated row would count its change twice).
    """
    assert np.unique(moved).size == moved.size, "moved rows must be distinct"
    drift, dev, bnorm, bounds = checked
    if side not in dev:  # not measured since the last sweep: every row from its data
        for part, whole in zip(deviations(sides, spec, policy, (side,), residual_fn), checked):
            whole.update(part)
        return
    me, nb = sides[side], sides[other_side(side)]
    if spec.implicit and moved.size:
        dG = after.T @ after - before.T @ before
        drift[side] = drift[side] + me.X.astype(np.float64) @ dG
        dev[side] = np.linalg.norm(drift[side], axis=1) / np.maximum(bnorm[side], 1e-300)
    # The rows of ``side`` that rated a moved row: positions of the moved rows' ratings in the other side's CSR.
    starts, counts = nb.indptr[moved], nb.indptr[moved + 1] - nb.indptr[moved]
    at = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    near = np.unique(nb.src[at])
    if near.size:
        R, bnorm[side][near] = residual_fn(me.X[near], me.indptr, me.src, me.ratings, nb.X, spec,
                                           gram=gram(nb.X) if spec.implicit else None, rows=near)
        drift[side][near], dev[side][near], bounds[side][near] = _row_figures(R, bnorm[side][near], me.T[near], policy)


def sweep(sides: dict[str, SweepSide], spec: SolveSpec, solve_fn=solve_rows, offsets: bool = True) -> None:
    """One ALS iteration in place: every row of each side in :data:`SWEEP_ORDER`, against the other side's factors,
    to ``A'x = b' + t`` (``offsets``) or ``A'x = b'`` (a retrain)."""
    for s in SWEEP_ORDER:
        me, nb = sides[s], sides[other_side(s)]
        g = gram(nb.X) if spec.implicit else None
        me.X = solve_fn(me.indptr, me.src, me.ratings, nb.X, spec, g, None, me.T if offsets else None).astype(np.float32)


def warm_sweeps(sides: dict[str, SweepSide], spec: SolveSpec, policy: RowTolerance, max_sweeps: int,
                solve_fn=solve_rows, residual_fn=residuals, progress=None, repair_fraction: float = 0.0,
                repair_rounds: int = 0, min_sweeps: int = 1, first_rows: dict[str, np.ndarray] | None = None,
                watch: ForgettingWatch | None = None) -> SweepRun:
    """Warm offset sweeps until every row is within its bound, at most ``max_sweeps`` (see the module docstring).

    ``sides[s].X`` is replaced by each solve (float32, as published).  At
    least one sweep runs: rows whose own data changed must be solved exactly,
    whatever the starting deviation says.  After each sweep the side solved
    first is checked (the side solved last was just solved: its deviation is
    the rounding of its factors to float32); only once it holds, or after the
    last sweep, is the other side's deviation computed too, and the sweeps
    stop when both hold.  ``progress(sweep, record)`` is called after each
    sweep.  ``repair_fraction``/``repair_rounds``: when a sweep leaves at most
    that fraction of the first side's rows outside their bounds, up to that
    many :func:`repair` rounds (0: none).  ``min_sweeps``: sweeps before it
    run without any check or repair (forgetting keeps moving after the
    certificate first holds); at most ``max_sweeps``.  ``first_rows``: per
    side, row positions solved once before the first sweep, in the sweep's
    side order (the rows whose own data changed, where the deletion moved
    the equations most; see the module docstring).  ``watch``: the deleted
    pairs' scores (:mod:`~spark_unlearn.als.forgetting_watch`), observed on
    entry unless the caller did, after the rows solved first and after each
    sweep; until they have made ``watch.target`` of their estimated move,
    sweeps run unchecked (at most ``max_sweeps``).
    """
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be at least 1, got {max_sweeps}")
    if not 1 <= min_sweeps <= max_sweeps:
        raise ValueError(f"min_sweeps must be in [1, max_sweeps = {max_sweeps}], got {min_sweeps}")
    first, last = SWEEP_ORDER
    history: list[dict] = []
    checking = 0.0
    repaired = presolved = 0

    def observe():
        if watch is not None:
            watch.observe(sides["user"].X, sides["item"].X)

    if watch is not None and not watch.scores:
        observe()
    for s in SWEEP_ORDER:
        rows = np.asarray((first_rows or {}).get(s, np.zeros(0, np.int64)), np.int64)
        if rows.size:
            _solve_subset(sides, s, rows, spec, gram(sides[other_side(s)].X) if spec.implicit else None, solve_fn)
            presolved += int(rows.size)
    if presolved:
        observe()
    for n in range(1, max_sweeps + 1):
        sweep(sides, spec, solve_fn)
        observe()
        forgetting = {} if watch is None else {"forgetting": watch.to_json()}
        if n < min_sweeps or (watch is not None and not watch.done() and n < max_sweeps):
            history.append({"sweep": n, "checked": False, **forgetting})
            if progress is not None:
                progress(n, history[-1])
            continue
        t = time.perf_counter()
        drift, dev, bnorm, bounds = deviations(sides, spec, policy, (first,), residual_fn)
        record = {"sweep": n, **_record(dev, bounds), **forgetting}
        if 0 < record[first]["violators"] <= repair_fraction * dev[first].size and repair_rounds:
            fix = repair(sides, spec, policy, (drift, dev, bnorm, bounds), first, repair_rounds, repair_fraction,
                         solve_fn, residual_fn)
            repaired += fix.rows
            checking -= fix.solve_seconds  # the repair's solves are solving, not checking
            record["repair"] = {"rounds": fix.rounds, "rows": fix.rows, "holds": fix.holds, "why": fix.why}
            # Both sides' figures are current after a repair, held or not (a failed one hands its factors on).
            record.update(_record(dev, bounds))
        elif record[first]["violators"] == 0 or n == max_sweeps:
            more = deviations(sides, spec, policy, (last,), residual_fn)
            for whole, part in zip((drift, dev, bnorm, bounds), more):
                whole.update(part)
            record.update(_record({last: dev[last]}, {last: bounds[last]}))
        checking += time.perf_counter() - t
        history.append(record)
        if progress is not None:
            progress(n, record)
        if all(s in record and record[s]["violators"] == 0 for s in SWEEP_ORDER):
            return SweepRun({s: sides[s].X for s in sides}, dev, drift, bnorm, bounds, n, True, history, checking,
                            repaired, presolved, None if watch is None else watch.to_json())
    return SweepRun({s: sides[s].X for s in sides}, dev, drift, bnorm, bounds, max_sweeps, False, history, checking,
                    repaired, presolved, None if watch is None else watch.to_json())


def warm_sweeps_reference(sides: dict[str, SweepSide], spec: SolveSpec, policy: RowTolerance,
                          max_sweeps: int, repair_fraction: float = 0.0, repair_rounds: int = 0,
                          min_sweeps: int = 1, first_rows: dict[str, np.ndarray] | None = None,
                          watch: ForgettingWatch | None = None) -> SweepRun:
    """:func:`warm_sweeps` with the dense row-by-row reference kernels (tests only)."""

    def solve_ref(indptr, src, ratings, Y, spec_, g, rows, offsets):
        if rows is None:
            return solve_rows_reference(indptr, src, ratings, Y, spec_, g, offsets)
        full = np.zeros((len(indptr) - 1, Y.shape[1]))
        full[rows] = offsets
        return solve_rows_reference(indptr, src, ratings, Y, spec_, g, full)[rows]

    def residual_ref(X, indptr, src, ratings, Y, spec_, gram=None, rows=None):
        if rows is None:
            return residuals_reference(X, indptr, src, ratings, Y, spec_, gram)
        counts = indptr[rows + 1] - indptr[rows]
        take = np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in rows] + [np.zeros(0, np.int64)])
        return residuals_reference(X, np.r_[0, np.cumsum(counts)], src[take], ratings[take], Y, spec_, gram)

    return warm_sweeps(sides, spec, policy, max_sweeps, solve_fn=solve_ref, residual_fn=residual_ref,
                       repair_fraction=repair_fraction, repair_rounds=repair_rounds, min_sweeps=min_sweeps,
                       first_rows=first_rows, watch=watch)
