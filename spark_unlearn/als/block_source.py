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
_TABLES = {("user", "factors"): "userFactors", ("item", "factors"): "itemFactors",
           ("user", "targets"): "offsets/users", ("item", "targets"): "offsets/items",
           ("user", "state"): "offsets/users", ("item", "state"): "offsets/items"}
_COLUMNS = {"factors": ["id", "features"], "targets": ["id", "residual", "bnorm", "drift"],
            "state": ["id", "bnorm", "drift"]}


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

    def read_ratings(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.reader.ratings(np.asarray(users, np.int64), np.asarray(items, np.int64))

    def read_values(self, parts):
        import pyarrow as pa

        got = []
        for side, what, ids in parts:
            table = self.reader.rows(_TABLES[side, what], ids, _COLUMNS[what])
            if table is not None:
                got.append(table.add_column(0, "side", pa.array([side] * table.num_rows, pa.string())))
        if not got:
            return pa.table({"side": pa.array([], pa.string()), "id": pa.array([], pa.int32()),
                             "features": pa.array([], pa.list_(pa.float32())),
                             "bnorm": pa.array([], pa.float64())})
        return pa.concat_tables(got, promote_options="default")
