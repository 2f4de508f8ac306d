"""Selecting rows of a stored table by id, without a shuffle.

A request reads a few users' or items' rows out of a table: up to
:data:`ISIN_MAX` ids as one ``IN`` filter (Parquet can skip row groups), more
as a broadcast semi-join with an id table built from Arrow.  Ratings come
back once per (user, item) pair (:func:`unique_ratings`).
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 per (user, item) pair (ids are int32)."""
    return (np.asarray(users, np.int64) << 32) | (np.asarray(items, np.int64) & 0xFFFFFFFF)


def unique_ratings(users, items, ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scanned ratings with each (user, item) pair once, as int64/int64/float32.

    A scan that unions a user-side and an item-side selection returns a
    rating once per side that selected it; deduplicating here (pairs are
    unique in a data version) saves Spark a shuffle.
    """
    u, i = np.asarray(users, np.int64), np.asarray(items, np.int64)
    _, first = np.unique(pair_keys(u, i), return_index=True)
    return u[first], i[first], np.asarray(ratings, np.float32)[first]


def ids_frame(spark, ids, name: str = "id") -> DataFrame:
    """A one-column int DataFrame of ``ids`` (to broadcast into a semi-join), built from Arrow: no Python worker."""
    import pyarrow as pa

    return spark.createDataFrame(pa.table({name: pa.array(np.asarray(list(ids), np.int32))}), f"{name} int")


# Up to this many ids a selection is an ``IN`` filter: no extra job to build and broadcast an id table, and
# Parquet can skip row groups.  Beyond it, a broadcast semi-join with an id table built from Arrow (measured
# on 100k rows: equal cost near 2,000 ids; at 20,000 the filter took 3x longer than the join).
ISIN_MAX = 2_000

# When a read wants more than this fraction of a factor or offsets table, the table is scanned whole and the
# driver keeps what it asked for: the broadcast semi-join costs more than the rows it saves (measured on
# 100,000 user rows, rank 32: 89,599 ids 0.66 s by semi-join, 0.31 s for the whole table).
FULL_SCAN_FRACTION = 0.3


def id_condition(column: str, ids) -> "F.Column":
    """``column IN ids`` (ids are few: see :data:`ISIN_MAX`).

    Written as one SQL expression: ``Column.isin`` makes two py4j calls per
    literal, which cost 42 s for 20,000 ids on a busy driver.  The ids are
    Python ints, so the text is only digits, signs and commas.
    """
    return F.expr(f"`{column}` IN ({','.join(str(int(i)) for i in ids)})")


def select_ids(df: DataFrame, column: str, ids, keep: bool = True) -> DataFrame:
    """Rows of ``df`` whose ``column`` is (``keep``) or is not among ``ids``, without a shuffle."""
    ids = [int(i) for i in ids]
    if not ids:
        return df.limit(0) if keep else df
    if len(ids) <= ISIN_MAX:
        cond = id_condition(column, ids)
        return df.filter(cond if keep else ~cond)
    return df.join(F.broadcast(ids_frame(df.sparkSession, ids, column)), column, "left_semi" if keep else "left_anti")


def select_rows(ratings: DataFrame, users, items) -> DataFrame:
    """Ratings of any of ``users`` or any of ``items``: one scan, each rating once."""
    users, items = [int(i) for i in users], [int(i) for i in items]
    if len(users) <= ISIN_MAX and len(items) <= ISIN_MAX:
        conds = ([id_condition("user", users)] if users else []) + ([id_condition("item", items)] if items else [])
        if not conds:
            return ratings.limit(0)
        return ratings.filter(conds[0] if len(conds) == 1 else conds[0] | conds[1])
    parts = ([select_ids(ratings, "user", users)] if users else []) + ([select_ids(ratings, "item", items)] if items else [])
    return parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])  # duplicates: see unique_ratings


def deleted_arrow(users: np.ndarray, items: np.ndarray, ratings: np.ndarray):
    """Deleted ratings as an Arrow table (``user`` int32, ``item`` int32, ``rating`` float32)."""
    import pyarrow as pa

    return pa.table({"user": pa.array(np.asarray(users).astype(np.int32)),
                     "item": pa.array(np.asarray(items).astype(np.int32)),
                     "rating": pa.array(np.asarray(ratings).astype(np.float32))})


def sorted_lookup(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``wanted`` is in the sorted ``sorted_ids``, and whether it is there at all.

    Returns ``(pos, found)``: ``sorted_ids[pos[j]] == wanted[j]`` exactly
    where ``found[j]``; elsewhere ``pos[j]`` is a valid index that means
    nothing.
    """
    sorted_ids, wanted = np.asarray(sorted_ids), np.asarray(wanted)
    if sorted_ids.size == 0:
        return np.zeros(wanted.size, np.int64), np.zeros(wanted.size, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
    return pos, sorted_ids[pos] == wanted
