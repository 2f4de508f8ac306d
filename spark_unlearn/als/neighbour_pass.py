"""Neighbours of the re-solved rows, kept in Spark: their drift, their check and the solves that need them.

When a frontier round re-solves rows next to popular items, the rows it
moves have tens of thousands of neighbours (one user of 25 popular items:
89,599 of 100,000 users on 5M ratings).  Reading every neighbour's factor,
``|b|`` and drift onto the driver does not scale, so above
``driver_rows`` neighbours a side is *lazy*: its rows that are not
re-solved stay in Spark, and this module computes what the frontier needs
of them in passes over the side's factor and offsets tables.

Maths (:mod:`spark_unlearn.als.frontier`).  A row ``s`` that is not
re-solved keeps its factor ``x_s``, so the edge terms of its drift telescope
over however many times a neighbour ``f`` moved, from its base factor
``y0_f`` to its current one ``y_f``::

    d_s = d_s^stored + sum_f [w_sf (y_f y_f^T - y0_f y0_f^T) x_s - c_sf (y_f - y0_f)] + (G_now - G_train) x_s
    |b'_s| >= |b_s| - |sum_f c_sf (y_f - y0_f)|

(the Gram term in implicit mode only).  One pass over the rows that have an
edge to a moved row evaluates this for all of them: the driver ships the
moved rows (their ids, base and current factors and their remaining
ratings, all of which it holds because it solved them) and gets back the
rows above ``tol`` and the largest ratio of the others, never the rows.

The normal equations of a row to re-solve need its neighbours' current
factors.  For a lazy neighbour side they are summed in Spark
(:func:`spark_normal_equations`): per partition of the neighbour side's
factor table, ``sum w y y^T`` and ``sum c y`` per row to solve; the driver
adds the partial sums (``k x k`` per row and partition), the Gram and the
regularisation.

Kernels (:func:`lazy_rows`, :func:`partial_normal_equations`) are pure numpy
with references in the tests; the Spark functions only move data to them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame

from spark_unlearn.als.kernels import SolveSpec, confidence_weights, normal_equations
from spark_unlearn.als.drift import neighbour_drift
from spark_unlearn.als.factor_passes import arrow_matrix
from spark_unlearn.als.row_table import ranges
from spark_unlearn.als.selection import id_condition, select_ids
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

# Above this many neighbours of the rows a round re-solves, a side's neighbours stay in Spark (a lazy side).
# 20,000 rows at rank 32 are ~8 MB of factors and offsets on the driver.
DRIVER_ROWS = 20_000


@dataclass
class Moves:
    """The rows of one side a frontier run moved, with their remaining ratings (edges to the other side).

    ``ids`` sorted; ``x0`` the version's factors, ``x`` the current ones
    (float32, ``(n, k)``); edge ``e`` joins moved row ``ids[edge_row[e]]`` to
    neighbour ``edge_nbr[e]`` with rating ``edge_rating[e]``, sorted by
    neighbour.
    """

    ids: np.ndarray
    x0: np.ndarray
    x: np.ndarray
    edge_row: np.ndarray
    edge_nbr: np.ndarray
    edge_rating: np.ndarray

    @property
    def neighbours(self) -> np.ndarray:
        """Unique neighbour ids (sorted; the edges are sorted by neighbour)."""
        if self._neighbours is None:
            e = self.edge_nbr
            self._neighbours = e[np.concatenate([[True], e[1:] != e[:-1]])] if e.size else e.copy()
        return self._neighbours

    def __post_init__(self):
        self._neighbours = None

    @classmethod
    def build(cls, ids, x0, x, indptr, src, ratings) -> "Moves":
        """From moved rows (unique ids, any order) and their CSR ``indptr``/``src`` (neighbour ids)/``ratings``."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        row = rank[np.repeat(np.arange(ids.size), np.diff(np.asarray(indptr, np.int64)))]
        src = np.asarray(src, np.int64)
        by_nbr = np.argsort(src, kind="stable")
        return cls(ids[order], np.asarray(x0, np.float32)[order], np.asarray(x, np.float32)[order], row[by_nbr],
                   src[by_nbr], np.asarray(ratings, np.float32)[by_nbr])


def _edges_of(moves: Moves, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of ``moves`` whose neighbour is among ``ids``: ``(neighbour position in ids, moved row, rating)``."""
    lo = np.searchsorted(moves.edge_nbr, ids)
    counts = np.searchsorted(moves.edge_nbr, ids, side="right") - lo
    _, take = ranges(lo, counts)
    return np.repeat(np.arange(ids.size), counts), moves.edge_row[take], moves.edge_rating[take]


def lazy_rows(ids: np.ndarray, X: np.ndarray, drift: np.ndarray, bnorm: np.ndarray, moves: Moves, spec: SolveSpec,
              delta_gram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drift of rows that were not re-solved, after the moves (see the module docstring).

    ``ids`` ``(n,)`` with their factors ``X`` ``(n, k)``, stored drift ``(n, k)``
    and stored ``|b|`` ``(n,)``; ``delta_gram``: ``G_now - G_train`` of the
    moved side (implicit) or ``None``.  Returns ``(drift', bnorm', ratio,
    xratio)``: the new drift, the lower bound of ``|b'|``, ``|drift'| /
    bnorm'`` and ``|x| / bnorm'``.
    """
    ids = np.asarray(ids, np.int64)
    at, row, rating = _edges_of(moves, ids)
    # neighbour_drift wants the CSR of the moving rows over the neighbours.
    order = np.argsort(row, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=moves.ids.size))]).astype(np.int64)
    dd, db = neighbour_drift(indptr, at[order], rating[order], X, moves.x0, moves.x, spec)
    D = np.asarray(drift, np.float64) + dd
    if delta_gram is not None:
        D += np.asarray(X, np.float64) @ np.asarray(delta_gram, np.float64).T
    bn = np.maximum(np.asarray(bnorm, np.float64) - np.linalg.norm(db, axis=1), 1e-300)
    return D, bn, np.linalg.norm(D, axis=1) / bn, np.linalg.norm(np.asarray(X, np.float64), axis=1) / bn


def partial_normal_equations(rows: np.ndarray, Y: np.ndarray, ratings: np.ndarray, spec: SolveSpec
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sum w y y^T`` and ``sum c y`` per row over some of its edges (no Gram, no regularisation).

    Edge ``e`` of row ``rows[e]`` has neighbour factor ``Y[e]`` and rating
    ``ratings[e]``.  Returns ``(unique rows, A (n, k, k), b (n, k))``; the
    sums over disjoint edge sets add up to the rows' normal equations minus
    the Gram and ``reg n I`` (:func:`~spark_unlearn.als.kernels.normal_equations`).
    """
    rows = np.asarray(rows, np.int64)
    uniq, local = np.unique(rows, return_inverse=True)
    order = np.argsort(local, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(local, minlength=uniq.size))]).astype(np.int64)
    bare = SolveSpec(reg=0.0, implicit=spec.implicit, alpha=spec.alpha)
    k = Y.shape[1]
    A, b = normal_equations(indptr, order, ratings[order] if ratings.size else ratings, np.asarray(Y),
                            bare, gram=np.zeros((k, k)) if spec.implicit else None)
    return uniq, A, b


# ---------------------------------------------------------------------------
# Spark passes
# ---------------------------------------------------------------------------


def _restrict(df: DataFrame, ids: np.ndarray, scan_whole: bool) -> DataFrame:
    """``df``'s rows ``ids``; when ``scan_whole`` (they are most of the table) the caller filters them itself:
    a semi-join with that many ids costs more than the rows it saves (0.7-1.0 s more for 98,000 of 100,000)."""
    return df if scan_whole else select_ids(df, "id", ids.tolist())


def _shipped(spark, value):
    """``value`` as a broadcast variable: shipped once per executor, not pickled into every task."""
    return spark.sparkContext.broadcast(value)


def lazy_frame(factors: DataFrame, offsets: DataFrame, moves: Moves, spec: SolveSpec, delta_gram: np.ndarray | None,
               skip: np.ndarray, every_row: bool = False, scan_whole: bool = False, targets: bool = True,
               keep_skipped: bool = False) -> DataFrame:
    """``id, residual, bnorm, drift, ratio, xratio`` of every neighbour of ``moves`` not in ``skip`` (lazy, Spark).

    ``bnorm`` and ``drift`` are the row's new ones (:func:`lazy_rows`);
    ``residual`` (the target) is unchanged.  One join of the side's factor
    and offsets tables restricted to the neighbours; the moved rows travel
    in the task closure (they are what the driver solved).  ``every_row``:
    all rows of the tables instead (rows without an edge to a moved row get
    only the Gram term: the next version's offsets of every row not re-solved).
    ``scan_whole``: the neighbours are most of the side, so the tables are
    read whole and filtered in the task.  ``targets=False``: only ``id``,
    ``ratio`` and ``xratio`` (what a check needs).  ``keep_skipped``
    (with ``every_row``): the rows in ``skip`` are kept too, with values to
    be replaced (the next version's table needs every row).
    """
    from spark_unlearn.schema import with_drift

    skip = np.unique(np.asarray(skip, np.int64))
    nbrs = np.setdiff1d(moves.neighbours, skip)
    dg = None if delta_gram is None else np.asarray(delta_gram, np.float64)
    # Rows kept in the task: the neighbours, or every row but (unless keep_skipped) the skipped ones.
    listed, inside = (nbrs, True) if not every_row else (skip if not keep_skipped else np.zeros(0, np.int64), False)
    shipped = _shipped(factors.sparkSession, (moves, listed))

    def part(batches):
        freeze_worker_heap()
        import pyarrow as pa

        moves_, listed_ = shipped.value
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if inside or listed_.size:
                ids = batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
                pos = np.minimum(np.searchsorted(listed_, ids), max(listed_.size - 1, 0))
                hit = listed_[pos] == ids if listed_.size else np.zeros(ids.size, bool)
                wanted = hit if inside else ~hit
                if not wanted.all():
                    batch = batch.filter(pa.array(wanted))
                    if batch.num_rows == 0:
                        continue
            ids = batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
            D, bn, ratio, xratio = lazy_rows(ids, arrow_matrix(batch, "features"), arrow_matrix(batch, "drift"),
                                             batch.column("bnorm").to_numpy(zero_copy_only=False), moves_, spec, dg)
            if not targets:  # a check: the ratios are all it needs (a third of the bytes back to the JVM)
                yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(ratio), pa.array(xratio)],
                                                 names=["id", "ratio", "xratio"])
                continue
            k = D.shape[1]
            drift = pa.FixedSizeListArray.from_arrays(pa.array(D.reshape(-1)), k).cast(pa.list_(pa.float64()))
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("residual"), pa.array(bn), drift, pa.array(ratio), pa.array(xratio)],
                names=["id", "residual", "bnorm", "drift", "ratio", "xratio"])

    fac = factors.select("id", "features")
    off = with_drift(offsets).select("id", *(["residual"] if targets else []), "bnorm", "drift")
    if not every_row:
        fac, off = _restrict(fac, nbrs, scan_whole), _restrict(off, nbrs, scan_whole)
    schema = ("id int, residual array<double>, bnorm double, drift array<double>, ratio double, xratio double"
              if targets else "id int, ratio double, xratio double")
    return fac.join(off, "id").mapInArrow(part, schema)


@dataclass
class LazyCheck:
    """What one pass over a lazy side found (see :func:`lazy_check`)."""

    ids: np.ndarray  # the rows evaluated: neighbours of the moves not re-solved (sorted)
    rows: int  # how many rows the pass evaluated
    every_row: bool  # the pass covered every row of the side not re-solved (edges and Gram term), not only ``ids``
    violators: np.ndarray  # ids with ratio > tol
    max_ratio: float  # largest ratio of the others (their certificate term)
    max_xratio: float  # largest |x| / |b'| of all of them
    watch_ids: np.ndarray  # rows whose |x| / |b'| exceeds ``watch_above`` or that are listed in ``watch_listed``
    watch_ratios: np.ndarray


def lazy_check(frame: DataFrame, ids: np.ndarray, tol: float, watch_above: float | None = None,
               watch_listed: np.ndarray | None = None, every_row: bool = False) -> LazyCheck:
    """One job over :func:`lazy_frame`: violators, the others' largest ratio and the rows a ratio watch must see."""
    from pyspark.sql import functions as F


    over = F.col("ratio") > F.lit(tol)
    watched = F.lit(False) if watch_above is None else F.col("xratio") > F.lit(float(watch_above))
    listed = [int(i) for i in (watch_listed if watch_listed is not None else [])]
    if listed:
        watched = watched | id_condition("id", listed)
    row = frame.agg(
        F.count(F.lit(1)).alias("n"),
        F.collect_list(F.when(over, F.col("id"))).alias("bad"),
        F.max(F.when(~over, F.col("ratio"))).alias("max_ratio"),
        F.max("xratio").alias("max_xratio"),
        F.collect_list(F.when(watched, F.struct("id", "xratio"))).alias("watch"),
    ).first()
    watch = row["watch"] or []
    return LazyCheck(np.asarray(ids, np.int64), int(row["n"]), every_row, np.asarray(sorted(int(i) for i in row["bad"]), np.int64), float(row["max_ratio"] or 0.0),
                     float(row["max_xratio"] or 0.0), np.asarray([w[0] for w in watch], np.int64),
                     np.asarray([w[1] for w in watch], np.float64))


def spark_normal_equations(factors: DataFrame, rows: np.ndarray, indptr: np.ndarray, src: np.ndarray,
                           ratings: np.ndarray, overrides: tuple[np.ndarray, np.ndarray], spec: SolveSpec,
                           gram: np.ndarray | None, rank: int, scan_whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Normal equations ``A (n, k, k)``, ``b (n, k)`` of ``rows`` whose neighbours are read in Spark.

    ``indptr``/``src``/``ratings``: the rows' remaining ratings (CSR over
    neighbour ids, held by the driver); ``factors``: the neighbour side's
    stored factor table; ``overrides``: ``(ids, X)`` of neighbours whose
    current factor is not the stored one (re-solved earlier in the run).
    ``gram``: the neighbour side's current Gram (implicit); ``rank`` the
    factors' ``k``.  Equal to
    :func:`~spark_unlearn.als.kernels.normal_equations` on the same data.
    ``scan_whole``: the neighbours are most of the table (see :func:`lazy_frame`).
    """
    n = len(indptr) - 1
    src = np.asarray(src, np.int64)
    row = np.repeat(np.arange(n), np.diff(np.asarray(indptr, np.int64)))
    by_nbr = np.argsort(src, kind="stable")
    e_nbr, e_row, e_rating = src[by_nbr], row[by_nbr], np.asarray(ratings, np.float32)[by_nbr]
    o_ids = np.asarray(overrides[0], np.int64)
    o_order = np.argsort(o_ids)
    o_ids, o_x = o_ids[o_order], np.asarray(overrides[1], np.float32)[o_order]
    shipped = _shipped(factors.sparkSession, (e_nbr, e_row, e_rating, o_ids, o_x))

    def part(batches):
        freeze_worker_heap()
        import pyarrow as pa

        e_nbr, e_row, e_rating, o_ids, o_x = shipped.value
        ids_l, X_l = [], []
        for batch in batches:
            if batch.num_rows:
                ids_l.append(batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64))
                X_l.append(arrow_matrix(batch, "features").astype(np.float32))
        if not ids_l:
            return
        ids, X = np.concatenate(ids_l), np.concatenate(X_l)
        if o_ids.size:
            pos = np.minimum(np.searchsorted(o_ids, ids), o_ids.size - 1)
            hit = o_ids[pos] == ids
            X[hit] = o_x[pos[hit]]
        lo = np.searchsorted(e_nbr, ids)
        counts = np.searchsorted(e_nbr, ids, side="right") - lo
        _, take = ranges(lo, counts)
        at = np.repeat(np.arange(ids.size), counts)
        uniq, A, b = partial_normal_equations(e_row[take], X[at], e_rating[take], spec)
        yield pa.RecordBatch.from_arrays([pa.array(uniq.astype(np.int32)), pa.array([a.tobytes() for a in A], pa.binary()),
                                          pa.array([v.tobytes() for v in b], pa.binary())], names=["row", "a", "b"])

    nbrs = np.unique(src)
    got = _restrict(factors.select("id", "features"), nbrs, scan_whole).mapInArrow(
        part, "row int, a binary, b binary").collect()
    k = int(rank)
    A = np.zeros((n, k, k))
    b = np.zeros((n, k))
    for r in got:
        A[r[0]] += np.frombuffer(r[1], np.float64).reshape(k, k)
        b[r[0]] += np.frombuffer(r[2], np.float64)
    _, _, counted = confidence_weights(np.asarray(ratings, np.float32), spec)
    n_reg = np.bincount(row, weights=counted.astype(np.float64), minlength=n)
    if spec.implicit:
        A += gram
    diag = np.arange(k)
    A[:, diag, diag] += (spec.reg * n_reg)[:, None]
    return A, b

