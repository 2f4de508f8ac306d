"""A :class:`~spark_unlearn.als.table_source.TableRowSource` that reads a blocked version's files on the driver.

A blocked version (:mod:`spark_unlearn.store.blocked`) keeps its ratings
twice, blocked by user and by item, and its factor and offsets tables
blocked by id, with a manifest mapping each file to its blocks.  The rows a
request reads (the ratings of a few users and items, the factors and
offsets of their neighbours) are then in a few known files, which a
*reader* (:class:`spark_unlearn.store.block_reader.BlockReader`) reads with
pyarrow: no Spark job, and only the files of the touched blocks.

Everything else is the table source's: the driver caches, the frontier
protocol and, for a reach too wide for the driver (the neighbours of a
popular item), the Spark passes over the stored tables.
"""

from __future__ import annotations

import numpy as np

from spark_unlearn.als.table_source import TableRowSource

# The stored table behind each driver cache, per side, and the columns it reads.
VERSION_TABLES = {("user", "factors"): "userFactors", ("item", "factors"): "itemFactors",
                  ("user", "targets"): "offsets/users", ("item", "targets"): "offsets/items",
                  ("user", "state"): "offsets/users", ("item", "state"): "offsets/items"}
# The version's ratings blocked by user (``user``, ``item``, ``rating``).
RATINGS_TABLE = "ratings"
TABLE_COLUMNS = {"factors": ["id", "features"], "targets": ["id", "residual", "bnorm", "drift"],
                 "state": ["id", "bnorm", "drift"]}


# An implicit request moves every row's drift by ``ΔG x``: up to this many driver bytes for a side's held rows, the
# checks over all rows and the new offsets of every row are numpy on the held arrays (no Spark pass, no Spark
# write).  ~290k rows per side at rank 32.
HOLD_SIDE_BYTES = 256 << 20


def held_bytes_per_row(rank: int) -> int:
    """Driver bytes of one held row: the caches' float32 factor, float64 ``|b|`` and drift with their ids, and the
    float64 copies of factor and drift the passes over all rows read (:meth:`BlockRowSource.hold_side`)."""
    return (4 * rank + 8) + (8 + 8 * rank + 8) + (8 * rank + 8 * rank + 8 + 8)


class BlockRowSource(TableRowSource):
    """Targeted reads from the files of the blocks that hold the wanted rows.

    Parameters
    ----------
    reader
        Reads rows of the version's tables by id
        (:class:`~spark_unlearn.store.block_reader.BlockReader`): ``rows(table,
        ids, columns)`` and ``ratings(users, items)``.
    *args, **kwargs
        As :class:`~spark_unlearn.als.table_source.TableRowSource` (its
        DataFrames serve the Spark passes of a wide reach only).
    """

    def __init__(self, reader, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reader = reader
        self._held: dict[str, tuple[np.ndarray, ...]] = {}  # per held side: ids, X, d, |b| (hold_side)

    def hold_side(self, side: str, max_bytes: int = HOLD_SIDE_BYTES) -> bool:
        """Read every row's factor, ``|b|`` and drift of ``side`` from its files, if they fit ``max_bytes``.

        Returns whether the side is held: then :meth:`holds_side` is true, the
        side's neighbours never stay in Spark (:meth:`is_lazy`), and the
        implicit checks over all rows (:meth:`gram_violators`,
        :meth:`gram_moved_rows`) and the new offsets of every row
        (:meth:`held_offsets`) are computed on the driver.
        """
        rows = self.reader.table_rows(VERSION_TABLES[side, "factors"])
        if rows * held_bytes_per_row(self.rank) > max_bytes:
            return False
        for what in ("factors", "state"):
            table = self.reader.whole(VERSION_TABLES[side, what], list(TABLE_COLUMNS[what]))
            if table is not None:
                self._put(side, what, table.column("id").to_numpy().astype(np.int64), table)
            self.mark_complete(side, what)
        # The version's stored values of every row, in id order: what the passes over all rows read (the run's own
        # changes live in the frontier's tables, and a row it touched is skipped by those passes).
        ids = self.held_ids(side)
        bnorm, drift = self.drift_state(side, ids)
        self._held[side] = (ids, self.base_factors(side, ids).astype(np.float64), np.asarray(drift, np.float64),
                            np.asarray(bnorm, np.float64))
        return True

    def _held_rows(self, side: str, skip) -> tuple[np.ndarray, ...]:
        """``(ids, X, d, |b|)`` of the held side's rows not in ``skip`` (float64)."""
        ids, X, D, bnorm = self._held[side]
        keep = ~np.isin(ids, np.asarray(skip, np.int64))
        return ids[keep], X[keep], D[keep], bnorm[keep]

    def gram_moved_rows(self, side: str, delta_gram: np.ndarray, skip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if side not in self._held:
            return super().gram_moved_rows(side, delta_gram, skip)
        from spark_unlearn.als.ratio_watch import gram_moved_rows

        ids, X, D, bnorm = self._held_rows(side, skip)
        return ids, gram_moved_rows(X, D, bnorm, delta_gram), np.linalg.norm(X, axis=1) / np.maximum(bnorm, 1e-300)

    def held_offsets(self, side: str, delta_gram, skip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, |b|, d + ΔG x)`` of every held row not in ``skip``: what
        :func:`~spark_unlearn.als.incremental.patched_offsets` writes for a row the request did not touch (its
        stored ``|b|``, and its stored drift moved by the Gram change; ``delta_gram`` None: unchanged)."""
        ids, X, D, bnorm = self._held_rows(side, skip)
        return ids, bnorm, D + X @ np.asarray(delta_gram, np.float64).T if delta_gram is not None else D.copy()

    def is_lazy(self, side: str, neighbours: int) -> bool:
        """A held side's neighbours are all on the driver already: never lazy."""
        return False if self.holds_side(side) else super().is_lazy(side, neighbours)

    def read_ratings(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.reader.ratings(np.asarray(users, np.int64), np.asarray(items, np.int64))

    def read_values(self, parts):
        import pyarrow as pa

        got = []
        for side, what, ids in parts:
            table = self.reader.rows(VERSION_TABLES[side, what], ids, TABLE_COLUMNS[what])
            if table is not None:
                got.append(table.add_column(0, "side", pa.array([side] * table.num_rows, pa.string())))
        if not got:
            return pa.table({"side": pa.array([], pa.string()), "id": pa.array([], pa.int32()),
                             "features": pa.array([], pa.list_(pa.float32())),
                             "bnorm": pa.array([], pa.float64())})
        return pa.concat_tables(got, promote_options="default")
