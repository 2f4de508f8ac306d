"""Writing a version's factor, offsets, ratings and holdout tables: blocked, and copy-on-write from the parent.

Per table (``userFactors``, ``itemFactors``, ``offsets/users``,
``offsets/items``), one of two paths:

* **copy-on-write** (:func:`~spark_unlearn.store.blocked.patch_blocked`), when
  the parent version in this store is blocked and the caller knows the
  table's :class:`~spark_unlearn.store.blocked.TableDelta`: only the files of
  touched blocks are rewritten, on the driver; the others are hard-linked and
  keep the checksums the parent recorded.  Written factor rows are validated
  on the driver (rank, finite values).
* **full**: a Spark write of the whole table, arranged in blocks, its file
  map read back (one aggregation for all full tables) and its factor tables
  validated by one scan (:func:`~spark_unlearn.store.tables.check_written_factors`).

Ratings and holdout are blocked by user, and the ratings again by item
(:func:`write_data_tables`), each with its own block count (at least the
side's, finer for large tables: :func:`~spark_unlearn.store.blocked.data_blocks_for`);
a deletion filters the parent's files holding the blocks of the removed
rows.  A lineage keeps its first version's block counts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.deferred import force
from spark_unlearn.errors import EmptyInputError, SchemaError, StoreError
from spark_unlearn.store import tables
from spark_unlearn.store.block_reader import table_files
from spark_unlearn.store.blocked import (BLOCKS_KEY, TableDelta, arrange, blocks_for, data_blocks_for, file_maps,
                                        patch_blocked, recorded_table_blocks)
from spark_unlearn.store.spark_layout import ITEM_FACTORS, USER_FACTORS
from spark_unlearn.store.fsutil import file_uri, files_for, path_key, read_parquet
from spark_unlearn.store.tables import ITEM_OFFSETS, RATINGS_BY_ITEM_DIR, RATINGS_DIR, USER_OFFSETS

SIDE_OF = {USER_FACTORS: "user", ITEM_FACTORS: "item", USER_OFFSETS: "user", ITEM_OFFSETS: "item"}
FACTOR_TABLES = (USER_FACTORS, ITEM_FACTORS)


@dataclass(frozen=True)
class ParentLayout:
    """A blocked parent version: its directory, blocks per side, file maps and recorded checksums."""

    path: str
    n_blocks: dict[str, int]
    files: dict[str, dict[str, dict]]
    checksums: dict[str, str]
    table_n_blocks: dict[str, int] = field(default_factory=dict)  # the ratings tables' own block counts

    @classmethod
    def of(cls, path: str, manifest: dict[str, Any]) -> "ParentLayout | None":
        """The layout ``manifest`` records, or ``None`` (a version written before blocks, or purged)."""
        blocks = manifest.get(BLOCKS_KEY)
        if not blocks or manifest.get("purged"):
            return None
        return cls(path, {s: int(blocks["n_blocks"][s]) for s in ("user", "item")}, blocks["files"],
                   manifest.get("files") or {}, recorded_table_blocks(blocks))

    def blocks_of(self, table: str, side: str) -> int | None:
        """The parent's block count of ``table`` (keyed by ``side``), ``None`` if the parent has no such blocked table."""
        if table not in self.files:
            return None
        return self.table_n_blocks.get(table, self.n_blocks[side])


@dataclass
class SideTablesWritten:
    """What :func:`write_side_tables` wrote: counts, the manifest's ``blocks`` record, reused checksums, I/O."""

    counts: dict[str, int]
    blocks: dict[str, Any]
    checksums: dict[str, str] = field(default_factory=dict)  # rel path -> sha256 of files linked from the parent
    io: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> files linked/written, bytes read/written


def write_factor_tables(spark: SparkSession, staging: str, frames: dict[str, DataFrame], rank: int,
                        layout: ParentLayout | None, deltas: dict[str, TableDelta] | None) -> SideTablesWritten:
    """Write and validate ``userFactors`` and ``itemFactors`` (``frames``: table -> DataFrame)."""
    if layout is not None:
        n_blocks = dict(layout.n_blocks)
    else:  # a new lineage: its sizes fix the blocks for good
        n_blocks = {SIDE_OF[t]: blocks_for(force(frames[t]).count()) for t in FACTOR_TABLES}
    out = SideTablesWritten(counts={}, blocks={"n_blocks": n_blocks, "files": {}})
    full = _write(spark, staging, frames, layout, deltas, out)
    if full:
        checked = tables.check_written_factors(spark, {SIDE_OF[t]: os.path.join(staging, t) for t in full}, rank)
        for t in full:
            out.counts[SIDE_OF[t]] = checked[SIDE_OF[t]]
    for t in FACTOR_TABLES:
        if t not in full:
            out.counts[SIDE_OF[t]] = _check_patched_factors(staging, t, out, rank)
    return out


def write_offsets_tables(spark: SparkSession, staging: str, frames: dict[str, DataFrame], written: SideTablesWritten,
                         layout: ParentLayout | None, deltas: dict[str, TableDelta] | None) -> None:
    """Write ``offsets/users`` and ``offsets/items`` with the factor tables' blocks; adds to ``written``."""
    _write(spark, staging, frames, layout, deltas, written)


def _write(spark, staging, frames, layout, deltas, out: SideTablesWritten) -> list[str]:
    """Patch what can be patched, write the rest in full; returns the tables written in full."""
    n_blocks = out.blocks["n_blocks"]
    full = []
    for t, df in frames.items():
        delta = (deltas or {}).get(t)
        if layout is not None and delta is not None and t in layout.files:
            src = os.path.join(layout.path, t)
            files, io = patch_blocked(src, layout.files[t], n_blocks[SIDE_OF[t]], delta, os.path.join(staging, t),
                                      table_files(t))
            out.blocks["files"][t] = files
            out.io[t] = io
            _reuse_checksums(staging, out, layout, t, set(files) & set(layout.files[t]))  # kept names: hard links
        else:
            tables.write_parquet(arrange(force(df), n_blocks[SIDE_OF[t]]), os.path.join(staging, t))
            full.append(t)
    if full:
        maps = file_maps(spark, {t: (os.path.join(staging, t), n_blocks[SIDE_OF[t]], "id") for t in full})
        for t in full:
            out.blocks["files"][t] = maps[t]
            out.io[t] = {"files_written": len(maps[t]), "files_linked": 0,
                         "bytes_written": _dir_bytes(os.path.join(staging, t))}
    return full


def _check_patched_factors(staging: str, table: str, out: SideTablesWritten, rank: int) -> int:
    """Rank and finiteness of the factor rows a patch wrote (linked files were checked when first published)."""
    from spark_unlearn.store.blocked import apply_delta

    files = out.blocks["files"][table]
    n = sum(int(info["rows"]) for info in files.values())
    if n == 0:
        raise EmptyInputError(f"{table} has no rows; refusing to publish an empty model")
    for name in files:
        path = os.path.join(staging, table, name)
        if f"{table}/{name}" in out.checksums:  # linked from the parent, checked when it was published
            continue
        # apply_delta with nothing to apply converts the columns and checks the lists' lengths.
        t = apply_delta(read_parquet(path), np.zeros(0, np.int64), [])
        feats = np.asarray(t.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False))
        if feats.size != t.num_rows * rank:
            raise SchemaError(f"{table}/{name}: factor rows do not have {rank} features (params.rank)")
        if not np.isfinite(feats).all():
            raise StoreError(f"{table}/{name}: factor rows hold NaN or infinite features; refusing to publish")
    return n


def _dir_bytes(path: str) -> int:
    files = files_for(path)
    return sum(files.size(os.path.join(path, rel)) for rel in files.walk(path))


DATA_DRIVER_MAX_BYTES = 256 << 20
"""At most this many bytes of touched ratings files are filtered on the driver; beyond, Spark rewrites them."""
DATA_DRIVER_MAX_REQUESTS = 100_000
"""At most this many deletion requests are brought to the driver to filter ratings blocks."""


def write_data_tables(spark: SparkSession, staging: str, data: dict[str, Any], written: SideTablesWritten,
                      layout: ParentLayout | None) -> dict[str, dict[str, int]]:
    """Write the ratings and holdout tables (``rel -> DataFrame or DerivedTable``), blocked by user; the ratings
    also blocked by item (``ratings_by_item``: the same rows, so a request reads an item's ratings in its blocks).

    A full table is arranged in its own blocks (the parent's count, else
    :func:`~spark_unlearn.store.blocked.data_blocks_for` of its rows).  A derived one (the
    parent's minus a deletion batch) whose parent is blocked is filtered on
    the driver in the files that can hold a removed row.  For the ratings
    these are found from the batch alone: the removed rows are read in the
    blocks of the named users (user copy) and of the withdrawn items (item
    copy), and each copy rewrites the files of their blocks.  The holdout has
    no item copy: when items are withdrawn one scan finds its files.  When
    that is too much for the driver, or the parent is not blocked, Spark
    rewrites the touched files (:mod:`spark_unlearn.store.derived`) and the
    table has no block map in this version (an item copy is then written in
    full from the new ratings).  Returns the ``copy_on_write`` counts (``rel
    -> {"linked", "rewritten"}``).
    """
    from spark_unlearn.store.blocked import filter_blocked
    from spark_unlearn.store.blocked import touched_files as files_of_blocks
    from spark_unlearn.store.derived import DerivedTable, touched_files

    side_blocks = written.blocks["n_blocks"]
    own = written.blocks.setdefault("table_blocks", {})

    def blocks(rel: str, side: str, rows_of) -> int:
        """``rel``'s block count: the parent's (kept for the lineage), else from its rows (``rows_of()``)."""
        if rel not in own:
            kept = layout.blocks_of(rel, side) if layout is not None else None
            own[rel] = kept if kept is not None else data_blocks_for(rows_of(), side_blocks[side])
        return own[rel]

    out: dict[str, dict[str, int]] = {}
    spark_derived = {}
    rows_of_batch: dict[int, Any] = {}
    by_item_done = False
    for rel, table in data.items():
        if not isinstance(table, DerivedTable):
            n_rows = functools.lru_cache(lambda: force(table).count())
            b = blocks(rel, "user", n_rows)
            tables.write_parquet(arrange(table, b, "user"), os.path.join(staging, rel))
            written.blocks["files"][rel] = file_maps(spark, {rel: (os.path.join(staging, rel), b, "user")})[rel]
            if rel == RATINGS_DIR:
                _write_full_by_item(spark, staging, table, blocks(RATINGS_BY_ITEM_DIR, "item", n_rows), written)
                by_item_done = True
            continue
        files = layout.files.get(rel) if layout is not None else None
        if files is None or path_key(table.parent_dir) != path_key(os.path.join(layout.path, rel)):
            spark_derived[rel] = table  # the parent is not blocked, or is not the version the layout describes
            continue
        if id(table.batch) not in rows_of_batch:
            rows_of_batch[id(table.batch)] = _row_filter(table.batch, table.rows)
        rows = rows_of_batch[id(table.batch)]
        if rows is None:
            spark_derived[rel] = table
            continue
        if rel == RATINGS_DIR and RATINGS_BY_ITEM_DIR in layout.files:
            touched = _removed_blocks(layout, rows)
            b_of = {RATINGS_DIR: layout.blocks_of(RATINGS_DIR, "user"),
                    RATINGS_BY_ITEM_DIR: layout.blocks_of(RATINGS_BY_ITEM_DIR, "item")}
            names = {RATINGS_DIR: set(files_of_blocks(files, b_of[RATINGS_DIR], touched["user"])),
                     RATINGS_BY_ITEM_DIR: set(files_of_blocks(layout.files[RATINGS_BY_ITEM_DIR],
                                                              b_of[RATINGS_BY_ITEM_DIR], touched["item"]))}
            if sum(_bytes(os.path.join(layout.path, t), n) for t, n in names.items()) > DATA_DRIVER_MAX_BYTES:
                spark_derived[rel] = table
                continue
            for t, b in b_of.items():
                own[t] = b
                new_files, io = filter_blocked(os.path.join(layout.path, t), layout.files[t], b, rows,
                                               os.path.join(staging, t), names[t], table_files(t))
                written.blocks["files"][t] = new_files
                written.io[t] = io
                _reuse_checksums(staging, written, layout, t, set(new_files) & set(layout.files[t]))
                out[t] = {"linked": io["files_linked"], "rewritten": io["files_written"]}
            by_item_done = True
            continue
        touched = None
        if rows.keys() is None:  # withdrawn items: any block, found by one scan
            touched = touched_files(spark, [table.parent_dir], table.batch)[table.parent_dir]
        b = layout.blocks_of(rel, "user")
        if _bytes(table.parent_dir, touched if touched is not None else
                  _names_holding(files, b, rows)) > DATA_DRIVER_MAX_BYTES:
            spark_derived[rel] = table
            continue
        own[rel] = b
        new_files, io = filter_blocked(table.parent_dir, files, b, rows, os.path.join(staging, rel), touched,
                                       table_files(rel))
        written.blocks["files"][rel] = new_files
        written.io[rel] = io
        _reuse_checksums(staging, written, layout, rel, set(new_files) & set(files))
        out[rel] = {"linked": io["files_linked"], "rewritten": io["files_written"]}
    if spark_derived:
        touched_all = tables.touched_together(spark, *spark_derived.values())
        for rel, table in spark_derived.items():
            out.update(tables.write_table(spark, table, staging, rel, touched_all))
    if RATINGS_DIR in data and not by_item_done:
        # The user copy was rewritten by Spark (or is new): the item copy is written in full from it.
        new_ratings = spark.read.parquet(file_uri(os.path.join(staging, RATINGS_DIR)))
        _write_full_by_item(spark, staging, new_ratings,
                            blocks(RATINGS_BY_ITEM_DIR, "item", lambda: new_ratings.count()), written)
    for rel in list(own):
        if rel not in written.blocks["files"]:
            del own[rel]  # rewritten by Spark without blocks: no block count to keep
    return out


def _write_full_by_item(spark: SparkSession, staging: str, ratings: DataFrame, b_item: int,
                        written: SideTablesWritten) -> None:
    """Write ``ratings_by_item`` in full: ``ratings`` arranged in the item side's blocks."""
    path = os.path.join(staging, RATINGS_BY_ITEM_DIR)
    tables.write_parquet(arrange(ratings, b_item, "item"), path)
    written.blocks["files"][RATINGS_BY_ITEM_DIR] = file_maps(spark, {RATINGS_BY_ITEM_DIR: (path, b_item, "item")})[
        RATINGS_BY_ITEM_DIR]


def _removed_blocks(layout: ParentLayout, rows) -> dict[str, np.ndarray]:
    """The users and items of the parent's ratings that ``rows`` removes, read on the driver.

    The named users' rows are in their blocks of the user copy, the
    withdrawn items' in theirs of the item copy; a removed pair's user is
    named.  Returns ``{"user": ids, "item": ids}`` (the blocks to rewrite in
    each copy).
    """
    from spark_unlearn.store.block_reader import BlockReader

    reader = BlockReader(layout.path, layout.n_blocks, layout.files, table_n_blocks=layout.table_n_blocks)
    users = np.unique(np.concatenate([np.asarray(rows.users, np.int64), np.asarray(rows.pairs, np.int64)[:, 0]]))
    u, i, _ = reader.ratings(users, np.asarray(rows.items, np.int64))
    gone = ~rows.keep(u, i)
    return {"user": np.unique(u[gone]), "item": np.unique(i[gone])}


def _row_filter(batch: DataFrame, rows=None):
    """The batch's requests on the driver as a :class:`~spark_unlearn.store.blocked.RowFilter` (``None``: too many).

    ``rows``: the ``(user, item, kind)`` rows if the caller holds them (else collected).
    """
    from spark_unlearn.store.blocked import RowFilter

    if rows is None:
        rows = batch.select("user", "item", "kind").limit(DATA_DRIVER_MAX_REQUESTS + 1).collect()
    if len(rows) > DATA_DRIVER_MAX_REQUESTS:
        return None
    users = [u for u, _, kind in rows if kind == "user"]
    items = [i for _, i, kind in rows if kind == "item"]
    pairs = [(u, i) for u, i, kind in rows if kind == "interaction"]
    return RowFilter(np.asarray(users, np.int64), np.asarray(items, np.int64),
                     np.asarray(pairs, np.int64).reshape(-1, 2))


def _names_holding(files: dict[str, dict], n_blocks: int, rows) -> set[str]:
    from spark_unlearn.store.blocked import touched_files

    return set(touched_files(files, n_blocks, rows.keys()))


def _bytes(parent_dir: str, names: set[str]) -> int:
    files = files_for(parent_dir)
    return sum(files.size(os.path.join(parent_dir, n)) for n in names)


def _reuse_checksums(staging: str, written: SideTablesWritten, layout: ParentLayout, table: str,
                     linked: set[str]) -> None:
    """Record the parent's checksums for the files of ``table`` hard-linked from it (and their ``.crc`` side files)."""
    for name in linked:
        for rel in (f"{table}/{name}", f"{table}/.{name}.crc"):
            if files_for(staging).exists(os.path.join(staging, rel)):
                if rel not in layout.checksums:
                    raise StoreError(f"{layout.path}: its manifest has no checksum of {rel}; the version is damaged "
                                     "(check it with jobs/audit.py --verify-certificate)")
                written.checksums[rel] = layout.checksums[rel]


__all__ = ["DATA_DRIVER_MAX_BYTES", "DATA_DRIVER_MAX_REQUESTS", "FACTOR_TABLES", "ParentLayout", "SIDE_OF",
           "SideTablesWritten", "write_data_tables", "write_factor_tables", "write_offsets_tables"]
