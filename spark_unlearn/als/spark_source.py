"""The Spark-side :class:`~spark_unlearn.als.frontier.RowSource`: targeted reads from cached blocks.

The remaining ratings, the base factors and the training offsets live in
cached, block-partitioned RDDs (:mod:`spark_unlearn.als.blocks`).  A frontier
round asks for a few rows; only the partitions (blocks) holding them run a
task (``SparkContext.runJob`` with an explicit partition list), and each task
returns just the requested rows, found by binary search in the block.  The
driver never sees more than the frontier's rows and their neighbours.
"""

from __future__ import annotations

import logging

import numpy as np
from pyspark import RDD, StorageLevel

from spark_unlearn.als.blocks import align_pieces, dataframe_to_factor_pieces
from spark_unlearn.als.frontier import RowData
from spark_unlearn.als.ratio_watch import listed_terms
from spark_unlearn.als.train import ALSState
from spark_unlearn.errors import StoreError
from spark_unlearn.schema import with_drift
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)


def _positions(block_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``wanted`` in the sorted ``block_ids`` and which of them are present."""
    if block_ids.size == 0:
        return np.zeros(wanted.size, np.int64), np.zeros(wanted.size, bool)
    pos = np.minimum(np.searchsorted(block_ids, wanted), block_ids.size - 1)
    return pos, block_ids[pos] == wanted


def _factors_and_offsets(it):
    """Split a partition of ``factors.union(offsets)`` into its float32 factor and float64 offset blocks."""
    freeze_worker_heap()
    fac, off = None, None
    for _, value in it:
        if value[1].dtype == np.float64:
            off = value
        else:
            fac = value
    return fac, off


class SparkRowSource:
    """Targeted access to the remaining data, base factors and offsets of a model.

    Parameters
    ----------
    state
        Block layout of the *remaining* ratings.
    factors
        Per side, the model's factor table (``id``/``features`` DataFrame).
    offsets
        Per side, the training offsets (``id``, ``residual``, ``bnorm``).
    rank
        Factor rank.
    """

    def __init__(self, state: ALSState, factors: dict, offsets: dict, rank: int):
        self.state = state
        self.rank = rank
        self.sc = state.spark.sparkContext
        P = state.num_blocks
        self.factors: dict[str, RDD] = {}
        self.offs: dict[str, RDD] = {}
        for side in ("user", "item"):
            static = state.side(side)
            self.factors[side] = align_pieces(
                static, dataframe_to_factor_pieces(factors[side], P), P, self._require_all(side, "factor")
            ).persist(StorageLevel.MEMORY_AND_DISK)
            from pyspark.sql import functions as F

            packed = with_drift(offsets[side]).select("id", F.concat("residual", F.array("bnorm"), "drift").alias("values"))
            self.offs[side] = align_pieces(
                static, dataframe_to_factor_pieces(packed, P, "values", np.float64), P, self._require_all(side, "offset")
            ).persist(StorageLevel.MEMORY_AND_DISK)
        self.jobs = 0

    @classmethod
    def from_blocks(cls, state: ALSState, factors: dict[str, RDD], offsets: dict[str, RDD], rank: int) -> "SparkRowSource":
        """A source over block-aligned RDDs already in the layout: ``factors[side]`` of ``(ids, float32 X)`` and
        ``offsets[side]`` of ``(ids, [t | |b| | d])`` (what :func:`~spark_unlearn.als.certify.certify` leaves as
        ``residual_blocks``), e.g. to continue from the factors of full sweeps."""
        self = cls.__new__(cls)
        self.state, self.rank, self.sc = state, rank, state.spark.sparkContext
        self.factors, self.offs = dict(factors), dict(offsets)
        self.jobs = 0
        return self

    @staticmethod
    def _require_all(side: str, what: str):
        def fill(ids, missing, M):
            if missing.any():
                raise StoreError(
                    f"the model has no {what} row for {side} {int(ids[missing][0])} (and {int(missing.sum()) - 1} more) "
                    "that the data version rates; the ratings do not belong to this model version"
                )
            return M

        return fill

    def unpersist(self) -> None:
        for rdd in (*self.factors.values(), *self.offs.values()):
            rdd.unpersist()

    # -- RowSource ------------------------------------------------------------
    def _run(self, rdd: RDD, side: str, ids: np.ndarray, fn):
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.size == 0:
            return []
        P = self.state.num_blocks
        blocks = sorted(set(np.mod(ids, P).tolist()))
        wanted = ids.astype(np.int32)
        self.jobs += 1
        return self.sc.runJob(rdd, lambda it: fn(it, wanted), blocks)

    def rows(self, side: str, ids: np.ndarray) -> RowData:
        def fetch(it, wanted):
            freeze_worker_heap()
            for _, sb in it:
                pos, hit = _positions(sb.ids, wanted)
                for p in pos[hit]:
                    a, b = sb.indptr[p], sb.indptr[p + 1]
                    yield int(sb.ids[p]), sb.src[a:b].copy(), sb.ratings[a:b].copy()

        got = {i: (s, r) for i, s, r in self._run(self.state.side(side), side, ids, fetch)}
        order = [int(i) for i in np.asarray(ids).tolist() if int(i) in got]
        counts = [got[i][0].size for i in order]
        return RowData(
            ids=np.asarray(order, np.int64),
            indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            src=np.concatenate([got[i][0] for i in order]).astype(np.int64) if order else np.zeros(0, np.int64),
            ratings=np.concatenate([got[i][1] for i in order]).astype(np.float32) if order else np.zeros(0, np.float32),
        )

    def _values(self, rdd: RDD, side: str, ids: np.ndarray) -> dict[int, np.ndarray]:
        def fetch(it, wanted):
            freeze_worker_heap()
            for _, (bids, M) in it:
                pos, hit = _positions(bids, wanted)
                for p in pos[hit]:
                    yield int(bids[p]), M[p].copy()

        return dict(self._run(rdd, side, ids, fetch))

    def base_factors(self, side: str, ids: np.ndarray) -> np.ndarray:
        got = self._values(self.factors[side], side, ids)
        return np.stack([got[int(i)] for i in ids]).astype(np.float32) if len(ids) else np.zeros((0, self.rank), np.float32)

    def offsets(self, side: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        got = self._values(self.offs[side], side, ids)
        M = np.stack([got[int(i)] for i in ids]) if len(ids) else np.zeros((0, 2 * self.rank + 1))
        return M[:, : self.rank], M[:, self.rank], M[:, self.rank + 1:]

    def gram(self, side: str) -> np.ndarray:
        """Gram of the base factors of the rows present in the remaining data."""
        return self.state.gram(self.factors[side])

    def gram_violators(self, side: str, delta_gram: np.ndarray, tol: float, skip: np.ndarray) -> np.ndarray:
        """Rows whose drift plus Gram change ``|d + ΔG x|`` exceeds ``tol |b|`` (one pass over factors)."""
        skip_set = np.unique(np.asarray(skip, dtype=np.int64))
        dg = np.asarray(delta_gram, dtype=np.float64)
        rank = self.rank

        def check(it):
            freeze_worker_heap()
            fac, off = _factors_and_offsets(it)
            if fac is None or off is None:
                return
            ids, X = fac
            moved = np.linalg.norm(off[1][:, rank + 1:] + X.astype(np.float64) @ dg.T, axis=1)
            bad = moved > tol * np.maximum(off[1][:, rank], 1e-300)
            bad &= ~np.isin(ids, skip_set)
            yield from ids[bad].tolist()

        self.jobs += 1
        return np.asarray(self.factors[side].union(self.offs[side]).mapPartitions(check).collect(), np.int64)

    def ratio_bound(self, side: str) -> tuple[float, float]:
        """``(max_s |x_s|/|b_s|, max_s |d_s|/|b_s|)`` over the side: bound every untouched row's ``|d + ΔG x|/|b|``."""
        rank = self.rank

        def ratio(it):
            freeze_worker_heap()
            fac, off = _factors_and_offsets(it)
            if fac is None or off is None or fac[0].size == 0:
                return
            bn = np.maximum(off[1][:, rank], 1e-300)
            yield (float((np.linalg.norm(fac[1].astype(np.float64), axis=1) / bn).max()),
                   float((np.linalg.norm(off[1][:, rank + 1:], axis=1) / bn).max()))

        vals = self.factors[side].union(self.offs[side]).mapPartitions(ratio).collect()
        return (max(v[0] for v in vals), max(v[1] for v in vals)) if vals else (0.0, 0.0)


class BoundedGramSource:
    """Wraps a source so Gram checks first try a cheap bound (no Spark job).

    ``ratio[side] = (max |x|/|b|, max |d|/|b|)`` over the side's stored rows;
    then every untouched row has ``|d + ΔG x| / |b| <= max|d|/|b| + |ΔG|_2 max|x|/|b|``.
    With a :class:`~spark_unlearn.als.ratio_watch.RatioWatch` per side
    (``watch``) the rows it does not list are bounded with its ``rest``
    instead, and the listed rows whose own bound fails are read and checked
    exactly: a pass over the whole side only when the bound of the rest fails.
    """

    def __init__(self, inner, ratio: dict[str, tuple[float, float]], watch: dict | None = None):
        self.inner = inner
        self.ratio = ratio
        self.watch = watch or {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def lazy_check(self, side, moves, skip, spec, delta_gram, tol, every_row=False):
        # The watch must learn the new |x|/|b'| of its listed rows and of rows that rise above its rest.
        return self.inner.lazy_check(side, moves, skip, spec, delta_gram, tol, self.watch.get(side), every_row)

    def gram_needs_pass(self, side, delta_gram, tol) -> bool:
        """Whether :meth:`gram_violators` would pass over every row (the bound of the rows it does not list fails)."""
        x_ratio, d_ratio = self.ratio[side]
        watch = self.watch.get(side)
        return d_ratio + float(np.linalg.norm(delta_gram, 2)) * (watch.rest if watch is not None else x_ratio) > tol

    def gram_violators(self, side, delta_gram, tol, skip):
        if self.gram_needs_pass(side, delta_gram, tol):
            return self.inner.gram_violators(side, delta_gram, tol, skip)
        d_ratio = self.ratio[side][1]
        watch = self.watch.get(side)
        if watch is None:
            return np.zeros(0, np.int64)
        ids, terms, _ = listed_terms(self.inner, side, watch, delta_gram, skip, d_ratio, tol)
        return ids[terms > tol]
