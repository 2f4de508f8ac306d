"""Blocked factor and offsets tables, and their copy-on-write from the driver.

Layout
------
A side's rows are cut into ``B`` blocks by ``id mod B`` (``B`` from the
side's row count at the lineage's first version, :func:`blocks_for`, then
kept, so every version of a lineage is keyed the same way; factors and
offsets of a side share it).  A table is still a plain Parquet directory
(``ALSModel.load`` reads ``userFactors/``, ``itemFactors/``): each file holds
whole blocks, sorted by id.  The manifest records, per table, each file's
blocks and rows (:data:`BLOCKS_KEY`).

Copy-on-write
-------------
A request changes a few rows (:class:`TableDelta`: rows removed, columns of
some rows replaced).  :func:`patch_blocked` rewrites only the files that hold
a block of a changed row, on the driver with pyarrow, and hard-links every
other file from the parent version; nothing of it is a Spark job, and the
bytes read and written are those of the touched files.  A full table (a
training, a retrain, sweeps) is written by Spark, :func:`arrange`-d, and its
file map read back with :func:`file_maps`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import numpy as np

from spark_unlearn.store.fsutil import files_for, link_part_file, read_parquet, write_text_durable
from spark_unlearn.store.parquet_io import write_arrow_file

BLOCKS_KEY = "blocks"
BLOCK_ROWS = 4096
"""Target rows per block: a one-row change rewrites about this many rows (~0.5 MB of rank-32 factors)."""


DATA_BLOCK_ROWS = 65536
"""Target ratings per block of a ratings or holdout table: a user's erasure rewrites about this many ratings
(~170 KB), whatever the number of users (a side's blocks alone put 3.3M of 5M ratings in one file)."""


def blocks_for(n_rows: int) -> int:
    """Blocks for a side of ``n_rows`` rows: ``ceil(n_rows / BLOCK_ROWS)``, at least 1."""
    return max(1, -(-int(n_rows) // BLOCK_ROWS))


def data_blocks_for(n_rows: int, side_blocks: int) -> int:
    """Blocks for a ratings table of ``n_rows`` keyed by a side of ``side_blocks`` blocks: finer when it is large.

    ``max(side_blocks, ceil(n_rows / DATA_BLOCK_ROWS))``: a table keyed by
    user (or item) ids is cut by ``id mod B`` like the side, with more blocks
    when the side's would hold more than :data:`DATA_BLOCK_ROWS` ratings each.
    """
    return max(int(side_blocks), -(-int(n_rows) // DATA_BLOCK_ROWS))


def block_of(ids: np.ndarray, n_blocks: int) -> np.ndarray:
    """The block of each id (``id mod n_blocks``; ids are non-negative)."""
    return np.asarray(ids, np.int64) % int(n_blocks)


@dataclass(frozen=True)
class TableDelta:
    """What a request changes in one table.

    Attributes
    ----------
    removed
        Ids whose rows leave the table.
    updates
        ``(ids, {column: values})`` groups applied in order: row ``ids[k]``
        takes ``values[k]`` in each named column (a 2-D array for list
        columns).  An id absent from the table is ignored.
    """

    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    updates: tuple[tuple[np.ndarray, dict[str, np.ndarray]], ...] = ()

    def ids(self) -> np.ndarray:
        """Every id the delta touches (sorted, unique)."""
        parts = [np.asarray(self.removed, np.int64)] + [np.asarray(ids, np.int64) for ids, _ in self.updates]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- full writes (Spark)


def arrange(df, n_blocks: int, key: str = "id"):
    """``df`` arranged for a blocked write by its ``key`` column: whole blocks per partition, sorted by the key."""
    from pyspark.sql import functions as F

    # Ratings: the other id second, so each copy is sorted the way it is looked up.
    second = {"user": "item", "item": "user"}.get(key)
    order = [key] + ([second] if second in df.columns else [])
    return df.repartition(int(n_blocks), F.pmod(F.col(key), F.lit(int(n_blocks)))).sortWithinPartitions(*order)


def file_maps(spark, tables: dict[str, tuple[str, int, str]]) -> dict[str, dict[str, dict]]:
    """``{table: {file name: {"blocks": [...], "rows": n}}}`` of written blocked tables (``table: (path, B, key)``).

    One aggregation over all of them.
    """
    import functools

    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    from spark_unlearn.store.fsutil import file_uri

    parts = [spark.read.parquet(file_uri(path)).select(
        F.lit(name).alias("t"), F.input_file_name().alias("f"), F.pmod(F.col(key), F.lit(int(b))).alias("b"))
        for name, (path, b, key) in tables.items()]
    if not parts:
        return {}
    rows = (functools.reduce(DataFrame.unionByName, parts).groupBy("t", "f")
            .agg(F.collect_set("b").alias("blocks"), F.count(F.lit(1)).alias("rows")).collect())
    out: dict[str, dict[str, dict]] = {name: {} for name in tables}
    for r in rows:
        out[r["t"]][os.path.basename(r["f"])] = {"blocks": sorted(int(b) for b in r["blocks"]), "rows": int(r["rows"])}
    return out


# --------------------------------------------------------------------------- copy-on-write (driver)


def recorded_table_blocks(record: dict) -> dict[str, int]:
    """The tables with their own block count in a manifest's ``blocks`` record (the ratings copies and holdout);
    every other table, and the ratings of versions written before, use their side's count."""
    return {t: int(b) for t, b in (record.get("table_blocks") or {}).items()}


def touched_files(files: dict[str, dict], n_blocks: int, ids: np.ndarray) -> list[str]:
    """The files of ``files`` (a file map) holding a block of one of ``ids``."""
    hit = set(block_of(ids, n_blocks).tolist())
    return sorted(f for f, info in files.items() if hit.intersection(info["blocks"]))


def patch_blocked(parent_dir: str, files: dict[str, dict], n_blocks: int, delta: TableDelta,
                  out_dir: str, cache=None) -> tuple[dict[str, dict], dict[str, int]]:
    """Write the table ``parent_dir`` with ``delta`` applied into the new directory ``out_dir``.

    Files holding a block of a changed row are read, patched, sorted by id and
    written anew (same schema, same blocks); the others are hard-linked (with
    their ``.crc`` side files).  Returns the new file map and
    ``{"files_linked", "files_written", "bytes_read", "bytes_written"}``.

    An update of an id that no file holds is ignored (as the engine's own
    patch, a left join, ignores it).
    """
    touched = set(touched_files(files, n_blocks, delta.ids()))
    # Each update group's rows sorted by block once: a file takes the slices of its blocks (a delta naming every
    # row of a large table would otherwise be scanned once per file).
    grouped = []
    for ids, cols in delta.updates:
        ids = np.asarray(ids, np.int64)
        blocks = block_of(ids, n_blocks)
        order = np.argsort(blocks, kind="stable")
        grouped.append((ids, cols, order, np.searchsorted(blocks[order], np.arange(n_blocks + 1))))

    def patch(table, info):
        parts = []
        for ids, cols, order, bounds in grouped:
            pos = np.concatenate([order[bounds[b]:bounds[b + 1]] for b in info["blocks"]] + [np.zeros(0, np.int64)])
            parts.append((ids[pos], {c: np.asarray(v)[pos] for c, v in cols.items()}))
        return apply_delta(table, delta.removed, parts)

    return rewrite_touched(parent_dir, files, touched, out_dir, patch, cache)


class _DiskFiles:
    """What :func:`rewrite_touched` reads and writes through when no cache is given: the disk."""

    @staticmethod
    def read(path: str):
        return read_parquet(path), files_for(path).size(path)

    @staticmethod
    def wrote(path: str, table) -> None:
        pass


def rewrite_touched(parent_dir: str, files: dict[str, dict], touched: set[str], out_dir: str,
                    transform, cache=None) -> tuple[dict[str, dict], dict[str, int]]:
    """Write ``out_dir``: each file of ``touched`` read, ``transform(table, info)``-ed and written under a new name
    with the same blocks (dropped if empty); every other file of ``files`` hard-linked with its ``.crc``.

    ``cache``: where files are read from and what learns the written ones
    (``read(path) -> (table, bytes read from disk)``, ``wrote(path, table)``;
    a :class:`~spark_unlearn.store.block_reader.TableFiles`), else the disk.
    Returns the new file map and ``{"files_linked", "files_written",
    "bytes_read", "bytes_written"}`` (``bytes_read``: from disk).
    """

    cache = cache or _DiskFiles
    files_io = files_for(out_dir)
    files_io.makedirs(out_dir, exist_ok=False)
    out: dict[str, dict] = {}
    stats = {"files_linked": 0, "files_written": 0, "bytes_read": 0, "bytes_written": 0}
    for name, info in sorted(files.items()):
        src = os.path.join(parent_dir, name)
        if name not in touched:
            link_part_file(parent_dir, out_dir, name)
            out[name] = dict(info)
            stats["files_linked"] += 1
            continue
        parent_table, from_disk = cache.read(src)
        stats["bytes_read"] += from_disk
        table = transform(parent_table, info)
        if table.num_rows == 0:
            continue
        new = f"part-{uuid.uuid4().hex}-c000.snappy.parquet"
        write_arrow_file(table, os.path.join(out_dir, new))
        cache.wrote(os.path.join(out_dir, new), table)
        stats["bytes_written"] += files_io.size(os.path.join(out_dir, new))
        stats["files_written"] += 1
        out[new] = {"blocks": list(info["blocks"]), "rows": int(table.num_rows)}
    write_text_durable(os.path.join(out_dir, "_SUCCESS"), "")
    return out, stats


@dataclass(frozen=True)
class RowFilter:
    """The rows a deletion batch removes from a ratings table: erased users, withdrawn items, forgotten pairs."""

    users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def keys(self) -> np.ndarray | None:
        """The users whose blocks can hold a removed row, or ``None`` when any block can (items withdrawn)."""
        if np.asarray(self.items).size:
            return None
        return np.unique(np.concatenate([np.asarray(self.users, np.int64), np.asarray(self.pairs, np.int64)[:, 0]]))

    def keep(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Mask of the rows ``(user, item)`` that stay (as :func:`spark_unlearn.als.plan.remove_batch` keeps them)."""
        user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
        gone = np.isin(user, np.asarray(self.users, np.int64)) | np.isin(item, np.asarray(self.items, np.int64))
        pairs = np.asarray(self.pairs, np.int64)
        if pairs.size:
            code = (user << 32) | item
            gone |= np.isin(code, (pairs[:, 0] << 32) | pairs[:, 1])
        return ~gone


def filter_blocked(parent_dir: str, files: dict[str, dict], n_blocks: int, rows: RowFilter, out_dir: str,
                   touched: set[str] | None = None, cache=None) -> tuple[dict[str, dict], dict[str, int]]:
    """Write the ratings table ``parent_dir`` (blocked by ``user``) without the rows ``rows`` removes.

    The files to rewrite are those holding a block of a named user, or
    ``touched`` (file names; when items are withdrawn, any block can hold one,
    and the caller found them by a scan).  They are filtered on the driver
    (row order kept); the others are hard-linked.  Returns the new file map
    and the I/O counts, as :func:`patch_blocked`.
    """
    keys = rows.keys()
    if touched is None:
        if keys is None:
            raise ValueError("withdrawn items can be in any block: give the touched files")
        touched = set(touched_files(files, n_blocks, keys))

    def keep(table, _info):
        return table.filter(rows.keep(table.column("user").to_numpy(), table.column("item").to_numpy()))

    return rewrite_touched(parent_dir, files, touched, out_dir, keep, cache)


def apply_delta(table, removed: np.ndarray, updates: list[tuple[np.ndarray, dict[str, np.ndarray]]]):
    """``table`` (pyarrow, with an int ``id`` column) without ``removed`` and with ``updates``; sorted by id.

    Updates of ids not in the table (after the removal) are ignored.  List
    columns must hold lists of one length per column (factors, offsets).
    """
    import pyarrow as pa

    ids = table.column("id").to_numpy().astype(np.int64)
    cols = {name: _to_numpy(table.column(name)) for name in table.column_names if name != "id"}
    keep = ~np.isin(ids, np.asarray(removed, np.int64))
    ids, cols = ids[keep], {c: v[keep] for c, v in cols.items()}
    for up_ids, values in updates:
        up_ids = np.asarray(up_ids, np.int64)
        if up_ids.size == 0:
            continue
        order = np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids[order], up_ids), max(ids.size - 1, 0))
        found = ids[order][pos] == up_ids if ids.size else np.zeros(up_ids.size, bool)
        up_ids, values = up_ids[found], {c: np.asarray(v)[found] for c, v in values.items()}
        pos = pos[found]
        rows = order[pos]
        for c, v in values.items():
            if c not in cols:
                raise ValueError(f"column {c!r} is not in the table ({sorted(cols)})")
            cols[c][rows] = np.asarray(v).astype(cols[c].dtype)
    order = np.argsort(ids, kind="stable")
    arrays = [pa.array(ids[order], type=table.schema.field("id").type)]
    for name in table.column_names:
        if name == "id":
            continue
        arrays.append(_to_arrow(cols[name][order], table.schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=table.schema)


def _to_numpy(column) -> np.ndarray:
    import pyarrow as pa

    arr = column.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        if arr.null_count:
            raise ValueError("a list column holds nulls; blocked tables hold complete rows only")
        lengths = np.diff(arr.offsets.to_numpy())
        width = int(lengths[0]) if lengths.size else 0
        if lengths.size and (lengths != width).any():
            raise ValueError("a list column holds lists of different lengths")
        return np.asarray(arr.flatten().to_numpy(zero_copy_only=False)).reshape(len(arr), width).copy()
    return np.asarray(arr.to_numpy(zero_copy_only=False)).copy()


def _to_arrow(values: np.ndarray, type_):
    import pyarrow as pa

    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        n, width = values.shape[0], (values.shape[1] if values.ndim == 2 else 0)
        flat = pa.array(values.reshape(-1), type=type_.value_type)
        offsets = pa.array(np.arange(n + 1, dtype=np.int64) * width,
                           type=pa.int64() if pa.types.is_large_list(type_) else pa.int32())
        cls = pa.LargeListArray if pa.types.is_large_list(type_) else pa.ListArray
        return cls.from_arrays(offsets, flat, type=type_)
    return pa.array(values, type=type_)


def patch_reference(rows: dict[int, dict], delta: TableDelta) -> dict[int, dict]:
    """Slow obvious reference of :func:`apply_delta` on ``{id: {column: value}}``."""
    out = {i: dict(r) for i, r in rows.items() if i not in set(np.asarray(delta.removed).tolist())}
    for ids, values in delta.updates:
        for k, i in enumerate(np.asarray(ids).tolist()):
            if i in out:
                for c, v in values.items():
                    out[i][c] = np.asarray(v)[k]
    return out


__all__ = ["BLOCKS_KEY", "BLOCK_ROWS", "DATA_BLOCK_ROWS", "data_blocks_for", "recorded_table_blocks", "RowFilter", "TableDelta", "filter_blocked", "apply_delta", "block_of", "blocks_for", "patch_blocked",
           "patch_reference", "rewrite_touched", "touched_files", "arrange", "file_maps"]
