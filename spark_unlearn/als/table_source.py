"""A :class:`~spark_unlearn.als.frontier.RowSource` that reads a model version's tables directly.

No block layout is built: each request is one filtered scan of the stored
table (ratings, a factor table, an offsets table) with the wanted ids as an
``IN`` filter (few ids) or a broadcast semi-join, and only the matching rows
reach the driver.  A row already fetched is served from the driver's cache
(sorted arrays, :mod:`~spark_unlearn.als.row_table`), so a frontier round
costs at most one scan of the ratings and one of the factor and offsets
tables for the rows it has not seen yet.

This is the engine for small deletion batches: the work is a few scans
whatever the data size, with no shuffle of the ratings.  Large batches use
the cached block layout (:class:`~spark_unlearn.als.spark_source.SparkRowSource`).

The *remaining* data is the stored ratings minus the deleted rows, which
the planner collected (they are few): fetched rows are filtered against
them on the driver.
"""

from __future__ import annotations

import logging

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.als.factor_passes import gram_moved
from spark_unlearn.als.frontier import RowData
from spark_unlearn.als.row_table import RaggedTable, RowTable, csr_by
from spark_unlearn.als.selection import FULL_SCAN_FRACTION, pair_keys, select_ids, select_rows, unique_ratings
from spark_unlearn.deferred import Deferred, ForcedDict, force
from spark_unlearn.errors import StoreError
from spark_unlearn.schema import with_drift

log = logging.getLogger(__name__)


def rows_of(column, width: int | None = None) -> np.ndarray:
    """An Arrow list column without nulls as an ``(n, k)`` matrix; with ``width``, every row must hold ``width``
    values (else :class:`~spark_unlearn.errors.StoreError`: the stored table is damaged)."""
    n = len(column)
    if n == 0:
        return np.zeros((0, width or 0))
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if width is not None and flat.size != n * width:
        raise StoreError(f"a list column of a stored table has rows of the wrong length (expected {width} values per "
                         f"row, {flat.size} for {n} rows): the version is damaged; restore it from its parent")
    return flat.reshape(n, -1)


class TableRowSource:
    """Targeted reads of remaining ratings, base factors and offsets from a version's tables.

    Parameters
    ----------
    ratings
        The version's ratings (``user``, ``item``, ``rating``), before the deletion.
    factors, offsets
        Per side, the factor table (``id``, ``features``) and offsets table
        (``id``, ``residual``, ``bnorm``, ``drift``; a missing drift reads as zero).
    rank
        Factor rank.
    deleted_keys
        :func:`pair_keys` of every deleted rating (sorted or not).
    table_rows
        Per side, the number of rows of the factor table if known (the
        manifest's counts): reads of most of a table then scan it whole
        (:data:`FULL_SCAN_FRACTION`).
    """

    def __init__(self, ratings: DataFrame, factors: dict[str, DataFrame], offsets: dict[str, DataFrame], rank: int,
                 deleted_keys: np.ndarray, table_rows: dict[str, int] | None = None, driver_rows: int | None = None):
        # The tables may be unbuilt plans (spark_unlearn.deferred): a block source reads none of them.
        self.spark = SparkSession.getActiveSession() or force(ratings).sparkSession
        self._ratings = Deferred(lambda: force(ratings).select("user", "item", "rating"))
        self.factor_tables = factors
        self.offset_tables = ForcedDict({s: Deferred(lambda df=df: with_drift(force(df))) for s, df in offsets.items()})
        self.rank = rank
        self.deleted = np.unique(np.asarray(deleted_keys, np.int64))
        self.table_rows = dict(table_rows or {})
        # Above this many neighbours of a round's solves, a side stays in Spark (neighbour_pass; None: its DRIVER_ROWS).
        from spark_unlearn.als import neighbour_pass

        self.driver_rows = neighbour_pass.DRIVER_ROWS if driver_rows is None else int(driver_rows)
        self.lazy_sides: set[str] = set()
        # Per side, the caches ("factors", "state") that hold every row of their table (after a whole scan).
        self._complete: dict[str, set[str]] = {"user": set(), "item": set()}
        self.jobs = 0
        # Driver caches, one sorted-array table per side (see row_table: no Python object per row).
        self._rows = {s: RaggedTable() for s in ("user", "item")}
        # Targets are read only for rows the frontier solves; a neighbour that only drifts needs its
        # factor, |b| and stored drift (a third less to scan and ship for the tens of thousands of
        # raters of a popular item).
        self._factors = {s: RowTable({"x": (np.float32, rank, 0.0)}) for s in ("user", "item")}
        self._targets = {s: RowTable({"t": (np.float64, rank, 0.0)}) for s in ("user", "item")}
        self._state = {s: RowTable({"bnorm": (np.float64, None, 0.0), "d": (np.float64, rank, 0.0)}) for s in ("user", "item")}

    @property
    def ratings(self) -> DataFrame:
        """The version's ratings (``user``, ``item``, ``rating``), before the deletion."""
        return self._ratings.get()

    # -- filling the caches ----------------------------------------------------
    def add_ratings(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, complete: dict[str, np.ndarray]) -> None:
        """Cache ratings already scanned; ``complete[side]`` lists rows all of whose ratings are among them."""
        keys = pair_keys(users, items)
        keep = ~np.isin(keys, self.deleted)
        u, i = np.asarray(users, np.int64)[keep], np.asarray(items, np.int64)[keep]
        r = np.asarray(ratings, np.float32)[keep]
        for side, mine, theirs in (("user", u, i), ("item", i, u)):
            wanted = np.unique(np.asarray(complete.get(side, []), np.int64))
            if wanted.size == 0:
                continue
            indptr, order = csr_by(mine, wanted)
            self._rows[side].add(wanted, indptr, theirs[order], r[order])

    def fetch_ratings(self, wanted: dict[str, np.ndarray]) -> None:
        """One scan for the ratings of every row in ``wanted`` (both sides) not cached yet."""
        need = {}
        for s, ids in wanted.items():
            ids = np.unique(np.asarray(ids, np.int64))
            need[s] = ids[~self._rows[s].contains(ids)]
        need = {s: v for s, v in need.items() if v.size}
        if not need:
            return
        u, i, r = self.read_ratings(need.get("user", np.zeros(0, np.int64)), need.get("item", np.zeros(0, np.int64)))
        self.add_ratings(u, i, r, need)

    def read_ratings(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored rating (deleted ones included) of ``users`` or ``items``, each pair once: one scan."""
        rows = select_rows(self.ratings, list(users), list(items)).toArrow()
        self.jobs += 1
        return unique_ratings(rows.column("user").to_numpy(zero_copy_only=False),
                              rows.column("item").to_numpy(zero_copy_only=False),
                              rows.column("rating").to_numpy(zero_copy_only=False))

    def read_values(self, parts: list[tuple[str, str, np.ndarray]]):
        """Stored rows for ``parts`` (``(side, what, ids)``, ``what`` a driver cache: ``factors``, ``targets``,
        ``state``) as one Arrow table (``side``, ``id`` and the columns each read; the others null).

        One scan: a union of the tables' filtered reads, no join, nothing shuffled.
        """
        scan = None
        for s, what, ids in parts:
            part = self._scan(s, what, ids).select(F.lit(s).alias("side"), "*")
            scan = part if scan is None else scan.unionByName(part, allowMissingColumns=True)
        got = scan.toArrow()
        self.jobs += 1
        return got

    def prefetch(self, frontier: dict[str, np.ndarray]) -> None:
        """Everything a frontier round reads, in at most two scans (one of the ratings, one of factors and offsets).

        The round solves ``frontier`` and moves their neighbours: it reads the
        rows' ratings, factors and targets, and the factors, ``|b|`` and
        stored drift of rows and neighbours (the neighbours' drift is checked
        after the round).
        """
        wanted = {s: np.unique(np.asarray(v, np.int64)) for s, v in frontier.items() if len(v)}
        if not wanted:
            return
        self.fetch_ratings(wanted)
        need: dict[str, list[np.ndarray]] = {s: [v] for s, v in wanted.items()}
        for s, ids in wanted.items():
            other_side = "item" if s == "user" else "user"
            nbrs = np.unique(self._rows[s].gather(ids)[1])
            # A lazy side's neighbours stay in Spark (the frontier asks the same question before it solves).
            if not self.is_lazy(other_side, nbrs.size):
                need.setdefault(other_side, []).append(nbrs)
        self.fetch_values({s: np.unique(np.concatenate(v)) for s, v in need.items()}, targets=wanted)

    def fetch_values(self, wanted: dict[str, np.ndarray], targets: dict[str, np.ndarray] | None = None) -> None:
        """One scan of the factor and offsets tables (a union, no join) for what is not cached yet.

        ``wanted``: per side, rows whose factor, ``|b|`` and drift are read;
        ``targets``: rows whose target is read as well.
        """
        def arr(ids):
            return np.unique(np.asarray(ids, np.int64))

        parts = []
        asked = {}
        for s in set(wanted) | set(targets or {}):
            ids = arr(wanted.get(s, []))
            with_t = arr((targets or {}).get(s, []))
            need_f = np.union1d(ids, with_t)
            need_f = need_f[~self._factors[s].contains(need_f)]
            need_t = with_t[~self._targets[s].contains(with_t)]
            need_d = np.setdiff1d(ids[~self._state[s].contains(ids)], need_t)
            asked[s] = (need_f, need_t, need_d)
            parts += [(s, what, need) for what, need in (("factors", need_f), ("targets", need_t), ("state", need_d))
                      if need.size]
        if not parts:
            return
        got = self.read_values(parts)
        names = got.schema.names
        side = got.column("side").to_numpy(zero_copy_only=False)
        ids_got = got.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
        valid = {c: got.column(c).is_valid().to_numpy(zero_copy_only=False) if c in names else np.zeros(len(ids_got), bool)
                 for c in ("features", "residual", "bnorm")}
        for s in asked:
            sel = np.flatnonzero((side == s) & valid["features"])
            self._put(s, "factors", ids_got[sel], got, sel)
            sel = np.flatnonzero((side == s) & valid["bnorm"])
            self._put(s, "state", ids_got[sel], got, sel)
            sel = np.flatnonzero((side == s) & valid["residual"])
            self._put(s, "targets", ids_got[sel], got, sel)
        # Rows without a factor or an offsets row: the per-table fetches name what is missing.
        for s, (need_f, need_t, need_d) in asked.items():
            self._fetch_values(s, "factors", need_f)
            self._fetch_values(s, "targets", need_t)
            self._fetch_values(s, "state", need_d)

    def _put(self, side: str, what: str, ids: np.ndarray, table, sel=None) -> None:
        """Cache ``what`` for ``ids`` from the Arrow ``table`` (rows ``sel``, default all)."""
        if not ids.size:
            return

        def col(name):
            c = table.column(name)
            return c.take(sel) if sel is not None else c

        if what == "factors":
            self._factors[side].put(ids, x=rows_of(col("features")).astype(np.float32))
        elif what == "targets":
            self._targets[side].put(ids, t=rows_of(col("residual")))
        if what in ("targets", "state"):
            self._state[side].put(ids, bnorm=col("bnorm").to_numpy(zero_copy_only=False), d=rows_of(col("drift")))

    # What each driver cache holds, and the columns of the stored table it is read from.
    _COLUMNS = {"factors": ("id", "features"), "targets": ("id", "residual", "bnorm", "drift"), "state": ("id", "bnorm", "drift")}

    def _scan(self, side: str, what: str, ids: np.ndarray) -> DataFrame:
        """The stored rows ``ids`` of the table behind the ``what`` cache, with the columns it needs."""
        table = self.factor_tables[side] if what == "factors" else self.offset_tables[side]
        if self._whole(side, ids):
            # Extra rows are cached too (they are the version's values), so the cache now holds the whole table.
            self._complete[side].update(("state",) if what == "targets" else (what,))
            return table.select(*self._COLUMNS[what])
        return select_ids(table, "id", ids).select(*self._COLUMNS[what])

    def _whole(self, side: str, ids: np.ndarray) -> bool:
        """Whether reading ``ids`` should scan the whole table (see :data:`FULL_SCAN_FRACTION`)."""
        n = self.table_rows.get(side)
        return n is not None and len(ids) > FULL_SCAN_FRACTION * n

    def _fetch_values(self, side: str, what: str, ids: np.ndarray) -> None:
        cache = {"factors": self._factors, "targets": self._targets, "state": self._state}[what][side]
        ids = np.unique(np.asarray(ids, np.int64))
        need = ids[~cache.contains(ids)]
        if not need.size:
            return
        got = self.read_values([(side, what, need)])
        self._put(side, what, got.column("id").to_numpy(zero_copy_only=False).astype(np.int64), got)
        missing = need[~cache.contains(need)]
        if missing.size:
            raise StoreError(
                f"the model has no {'factor' if what == 'factors' else 'offset'} row for {side} {int(missing[0])} "
                f"(and {missing.size - 1} more) that the data version rates; the ratings do not belong to this model version"
            )

    def cached_rows(self, side: str) -> int:
        """How many rows of ``side`` have a factor or offsets on the driver."""
        return int(np.union1d(self._factors[side].ids, self._state[side].ids).size)

    # -- lazy sides: neighbours kept in Spark (spark_unlearn.als.neighbour_pass) ---------
    def is_lazy(self, side: str, neighbours: int) -> bool:
        """Whether ``side``'s neighbours of a solve stay in Spark: once more than ``driver_rows`` of them are
        needed, and from then on for the rest of the run."""
        if side not in self.lazy_sides and neighbours > self.driver_rows:
            log.info("%d %s neighbours of the rows to re-solve (more than %d): they stay in Spark", neighbours, side,
                     self.driver_rows)
            self.lazy_sides.add(side)
        return side in self.lazy_sides

    def normal_equations(self, nb_side: str, rd: RowData, overrides, spec, gram):
        """Normal equations of the rows ``rd`` (the other side of ``nb_side``), summed over their neighbours in Spark."""
        from spark_unlearn.als.neighbour_pass import spark_normal_equations

        self.jobs += 1
        return spark_normal_equations(self.factor_tables[nb_side], rd.ids, rd.indptr, rd.src, rd.ratings, overrides,
                                      spec, gram, self.rank, self._whole(nb_side, np.unique(rd.src)))

    def lazy_frame(self, side: str, moves, skip, spec, delta_gram, every_row: bool = False,
                   targets: bool = True, keep_skipped: bool = False) -> DataFrame:
        """New ``bnorm``, ``drift`` (and ``ratio``, ``xratio``; ``residual`` if ``targets``) of ``side``'s rows next
        to ``moves`` and not in ``skip`` (``every_row``: of every row; the others get the Gram term only)."""
        from spark_unlearn.als.neighbour_pass import lazy_frame

        return lazy_frame(self.factor_tables[side], self.offset_tables[side], moves, spec, delta_gram, skip, every_row,
                          self._whole(side, moves.neighbours), targets, keep_skipped)

    def lazy_check(self, side: str, moves, skip, spec, delta_gram, tol: float, watch=None, every_row: bool = False):
        """One pass over ``side``'s rows next to ``moves`` (``every_row``: over all rows) not in ``skip``: a
        :class:`~spark_unlearn.als.neighbour_pass.LazyCheck`."""
        from spark_unlearn.als.neighbour_pass import lazy_check

        self.jobs += 1
        ids = np.setdiff1d(moves.neighbours, np.asarray(skip, np.int64))
        frame = self.lazy_frame(side, moves, skip, spec, delta_gram, every_row=every_row, targets=False)
        check = lazy_check(frame, ids, tol, None if watch is None else watch.rest, None if watch is None else watch.ids,
                           every_row)
        if not every_row and check.rows != ids.size:
            raise StoreError(
                f"{ids.size - check.rows} {side} rows rated in the data version have no factor or offset row in the "
                "model; the ratings do not belong to this model version")
        return check

    # -- RowSource ----------------------------------------------------------------
    def rows(self, side: str, ids: np.ndarray) -> RowData:
        ids = np.asarray(ids, np.int64)
        self.fetch_ratings({side: ids})
        kept = ids[self._rows[side].counts(ids) > 0]
        indptr, src, val = self._rows[side].gather(kept)
        return RowData(ids=kept, indptr=indptr, src=src.astype(np.int64), ratings=val.astype(np.float32))

    def has_ratings(self, side: str, ids: np.ndarray) -> np.ndarray:
        """Whether each of ``ids`` keeps at least one remaining rating (fetches what is not cached)."""
        ids = np.asarray(ids, np.int64)
        self.fetch_ratings({side: ids})
        return self._rows[side].counts(ids) > 0

    def base_factors(self, side: str, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        self._fetch_values(side, "factors", ids)
        return self._factors[side].take("x", ids) if ids.size else np.zeros((0, self.rank), np.float32)

    def targets(self, side: str, ids: np.ndarray) -> np.ndarray:
        """Stored targets ``t`` ``(n, k)`` of ``ids``."""
        ids = np.asarray(ids, np.int64)
        self._fetch_values(side, "targets", ids)
        return self._targets[side].take("t", ids) if ids.size else np.zeros((0, self.rank))

    def drift_state(self, side: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored ``|b|`` ``(n,)`` and drift ``d`` ``(n, k)`` of ``ids`` (no targets read)."""
        ids = np.asarray(ids, np.int64)
        self._fetch_values(side, "state", ids)
        if not ids.size:
            return np.zeros(0), np.zeros((0, self.rank))
        pos = self._state[side].positions(ids)
        return self._state[side]["bnorm"][pos], self._state[side]["d"][pos]

    def offsets(self, side: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.targets(side, ids)
        return (t, *self.drift_state(side, ids))

    def holds_side(self, side: str) -> bool:
        """Whether the driver already holds every row's factor, ``|b|`` and drift of ``side`` (no pass needed)."""
        return {"factors", "state"} <= self._complete[side]

    def gram_moved_rows(self, side: str, delta_gram: np.ndarray, skip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, |d + delta_gram x| / |b|, |x| / |b|)`` of every row not in ``skip``, from the driver's caches.

        Only when :meth:`holds_side`: the stored drift, base factor and stored
        ``|b|`` of every row of the version (what a pass over the tables reads).
        """
        from spark_unlearn.als.ratio_watch import gram_moved_rows

        ids = self._state[side].ids
        ids = ids[~np.isin(ids, np.asarray(skip, np.int64))]
        bnorm, drift = self.drift_state(side, ids)
        X = self.base_factors(side, ids)
        xnorm = np.linalg.norm(X.astype(np.float64), axis=1) / np.maximum(bnorm, 1e-300)
        return ids, gram_moved_rows(X, drift, bnorm, delta_gram), xnorm

    def mark_complete(self, side: str, what: str) -> None:
        """Record that the ``what`` cache (``factors``, ``state``) of ``side`` holds every row of its table."""
        self._complete[side].add(what)

    def held_ids(self, side: str) -> np.ndarray:
        """Ids of every row whose ``|b|`` and drift the driver holds (sorted)."""
        return self._state[side].ids.copy()

    def gram_violators(self, side: str, delta_gram: np.ndarray, tol: float, skip: np.ndarray) -> np.ndarray:
        """Rows (not in ``skip``) with ``|d + delta_gram x| > tol |b|``.

        From the driver's caches when they hold the whole side (the frontier
        read most of it anyway), else one pass over the factor and offsets tables.
        """
        if self.holds_side(side):
            ids, moved, _ = self.gram_moved_rows(side, delta_gram, skip)
            return ids[moved > tol]
        self.jobs += 1
        moved = gram_moved(self.factor_tables[side], self.offset_tables[side], delta_gram)
        bad = moved.filter(F.col("moved") > F.lit(tol) * F.col("bnorm"))
        if len(skip):
            bad = select_ids(bad, "id", np.asarray(skip).tolist(), keep=False)
        return np.asarray([r[0] for r in bad.select("id").collect()], np.int64)
