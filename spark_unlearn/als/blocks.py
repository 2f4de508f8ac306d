"""Block layout of a ratings table for distributed ALS (Spark MLlib's in/out-block design).

Each side (users, items) is cut into ``P`` blocks by ``id mod P``.  For one
side the static part of a block is a :class:`SideBlock`:

* the block's rows (sorted ids) and their ratings in CSR form;
* ``src_local``: each rating's index into the *needed* other-side factors,
  ordered by (other block, id).  When the other side sends, for each of its
  blocks, the factors this block needs in id order, concatenating the
  messages by block number gives exactly that order, so no per-iteration
  lookup is needed;
* ``outlinks``: for each other-side block, the local rows of this block that
  it needs (the rows that have a rating from that block).

Factors travel between blocks once per (row, destination block), never once
per rating, and ratings never move after the layout is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)


@dataclass
class SideBlock:
    """Static data of one block of one side (see module docstring)."""

    block: int
    num_blocks: int
    ids: np.ndarray  # int32, sorted, unique
    indptr: np.ndarray  # int64, len(ids)+1
    src: np.ndarray  # int32 global other-side ids, per rating
    ratings: np.ndarray  # float32, per rating
    src_local: np.ndarray  # int64, per rating: index into concatenated messages
    needed_counts: np.ndarray  # int64 (num_blocks,): rows expected from each other-side block
    outlinks: dict[int, np.ndarray] = field(default_factory=dict)  # other block -> local rows (int64)

    @property
    def n_rows(self) -> int:
        return int(self.ids.size)

    @property
    def n_ratings(self) -> int:
        return int(self.ratings.size)


def build_side_block(block: int, num_blocks: int, dst: np.ndarray, src: np.ndarray, ratings: np.ndarray) -> SideBlock:
    """Build the static block from the raw (dst, src, rating) triples that fall in it."""
    order = np.lexsort((src, dst))
    dst, src, ratings = dst[order], src[order].astype(np.int32), ratings[order].astype(np.float32)
    ids, starts = np.unique(dst, return_index=True)
    indptr = np.append(starts, dst.size).astype(np.int64)

    uniq, inverse = np.unique(src, return_inverse=True)
    other_block = np.mod(uniq, num_blocks)
    by_block = np.lexsort((uniq, other_block))  # needed rows in (block, id) order
    rank_of = np.empty_like(by_block)
    rank_of[by_block] = np.arange(by_block.size)
    src_local = rank_of[inverse].astype(np.int64)
    needed_counts = np.bincount(other_block, minlength=num_blocks).astype(np.int64)

    row_of_rating = np.repeat(np.arange(ids.size, dtype=np.int64), np.diff(indptr))
    pair = np.unique(np.mod(src, num_blocks).astype(np.int64) * max(ids.size, 1) + row_of_rating)
    dest, rows = np.divmod(pair, max(ids.size, 1))
    outlinks = {int(d): rows[dest == d] for d in np.unique(dest)}
    return SideBlock(block, num_blocks, ids.astype(np.int32), indptr, src, ratings, src_local, needed_counts, outlinks)


def _split_by_block(dst_col: str, src_col: str, num_blocks: int):
    """mapInArrow function: cut each Arrow batch into per-block (dst, src, rating) byte pieces."""

    def split(batches):
        freeze_worker_heap()
        for batch in batches:
            dst = batch.column(dst_col).to_numpy(zero_copy_only=False).astype(np.int32)
            src = batch.column(src_col).to_numpy(zero_copy_only=False).astype(np.int32)
            rat = batch.column("rating").to_numpy(zero_copy_only=False).astype(np.float32)
            blk = np.mod(dst, num_blocks)
            order = np.argsort(blk, kind="stable")
            bounds = np.searchsorted(blk[order], np.arange(num_blocks + 1))
            out_b, out_d, out_s, out_r = [], [], [], []
            for b in range(num_blocks):
                sel = order[bounds[b] : bounds[b + 1]]
                if sel.size:
                    out_b.append(b)
                    out_d.append(dst[sel].tobytes())
                    out_s.append(src[sel].tobytes())
                    out_r.append(rat[sel].tobytes())
            if out_b:
                yield pa.RecordBatch.from_arrays(
                    [pa.array(out_b, pa.int32()), pa.array(out_d, pa.binary()), pa.array(out_s, pa.binary()), pa.array(out_r, pa.binary())],
                    names=["blk", "dst", "src", "rating"],
                )

    return split


def side_blocks(ratings: DataFrame, side: str, num_blocks: int) -> RDD:
    """RDD ``(block, SideBlock)`` of one side (``"user"`` or ``"item"``), hash-partitioned by block, cached.

    The ratings must have the canonical schema (``user``, ``item``, ``rating``).
    """
    dst_col, src_col = ("user", "item") if side == "user" else ("item", "user")
    pieces = ratings.select("user", "item", "rating").mapInArrow(
        _split_by_block(dst_col, src_col, num_blocks), "blk int, dst binary, src binary, rating binary"
    )

    def to_pair(row):
        return row[0], (
            np.frombuffer(row[1], dtype=np.int32),
            np.frombuffer(row[2], dtype=np.int32),
            np.frombuffer(row[3], dtype=np.float32),
        )

    def build(it):
        freeze_worker_heap()
        parts: dict[int, list] = {}
        for blk, piece in it:
            parts.setdefault(blk, []).append(piece)
        for blk, ps in parts.items():
            yield blk, build_side_block(
                blk, num_blocks, *(np.concatenate([p[i] for p in ps]) for i in range(3))
            )

    blocks = pieces.rdd.map(to_pair).partitionBy(num_blocks).mapPartitions(build, preservesPartitioning=True)
    return blocks.persist(StorageLevel.MEMORY_AND_DISK)


def factors_to_dataframe(spark: SparkSession, factors: RDD, rank: int) -> DataFrame:
    """Turn an RDD ``(block, (ids, F, ...))`` into an ``id``/``features`` DataFrame (float32), via Arrow."""
    from spark_unlearn.schema import FACTORS_SCHEMA

    return rows_to_dataframe(spark, factors, rank, FACTORS_SCHEMA, np.float32)


def rows_to_dataframe(spark: SparkSession, blocks: RDD, width: int, schema, dtype) -> DataFrame:
    """Turn an RDD ``(block, (ids, M, ...))`` into a two-column ``id``/array DataFrame.

    Blocks travel as a few binary rows and are exploded into Arrow list
    arrays on the executors, so no per-row Python objects are built.
    ``schema`` names the columns (``id`` + one array of ``dtype``).
    """
    value_col = schema.fieldNames()[1]
    arrow_type = pa.float32() if np.dtype(dtype) == np.float32 else pa.float64()
    packed = blocks.map(
        lambda kv: (int(kv[0]), kv[1][0].astype(np.int32).tobytes(), np.ascontiguousarray(kv[1][1], dtype=dtype).tobytes())
    )
    raw = spark.createDataFrame(packed, "blk int, ids binary, values binary")

    def explode(batches):
        freeze_worker_heap()
        for batch in batches:
            for ids_b, v_b in zip(batch.column("ids").to_pylist(), batch.column("values").to_pylist()):
                ids = np.frombuffer(ids_b, dtype=np.int32)
                if ids.size == 0:
                    continue
                values = pa.array(np.frombuffer(v_b, dtype=dtype), arrow_type)
                offsets = pa.array(np.arange(0, ids.size * width + 1, width, dtype=np.int32))
                lists = pa.ListArray.from_arrays(offsets, values, type=pa.list_(pa.field("element", arrow_type, nullable=False)))
                yield pa.RecordBatch.from_arrays([pa.array(ids, pa.int32()), lists], names=["id", value_col])

    return raw.mapInArrow(explode, schema)


def dataframe_to_factor_pieces(factors: DataFrame, num_blocks: int, value_col: str = "features", dtype=np.float32) -> RDD:
    """RDD ``(block, ("init", ids, M))`` pieces (several per block) from an ``id`` + array-column DataFrame."""
    dtype = np.dtype(dtype)

    def split(batches):
        freeze_worker_heap()
        for batch in batches:
            ids = batch.column("id").to_numpy(zero_copy_only=False).astype(np.int32)
            if ids.size == 0:
                continue
            flat = batch.column(value_col).flatten().to_numpy(zero_copy_only=False).astype(dtype)
            M = flat.reshape(ids.size, flat.size // ids.size)
            blk = np.mod(ids, num_blocks)
            out_b, out_i, out_f = [], [], []
            for b in np.unique(blk):
                sel = blk == b
                out_b.append(int(b))
                out_i.append(ids[sel].tobytes())
                out_f.append(np.ascontiguousarray(M[sel]).tobytes())
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_b, pa.int32()), pa.array(out_i, pa.binary()), pa.array(out_f, pa.binary())],
                names=["blk", "ids", "values"],
            )

    pieces = factors.select("id", value_col).mapInArrow(split, "blk int, ids binary, values binary")

    def to_pair(row):
        ids = np.frombuffer(row[1], dtype=np.int32)
        M = np.frombuffer(row[2], dtype=dtype)
        return row[0], ("init", ids, M.reshape(ids.size, -1) if ids.size else M.reshape(0, 0))

    return pieces.rdd.map(to_pair)


def align_pieces(static: RDD, pieces: RDD, num_blocks: int, fill) -> RDD:
    """Align per-block pieces ``(ids, M)`` with the rows of each static block.

    Returns ``(block, (ids, M))`` with one row of ``M`` per row of the block,
    taken from the pieces where given and from ``fill(ids, missing_mask, M)``
    otherwise (``fill`` returns the completed matrix).
    """

    def align(it):
        freeze_worker_heap()
        block, given = None, []
        for _, value in it:
            if isinstance(value, SideBlock):
                block = value
            else:
                given.append(value)
        if block is None:
            return
        width = next((G.shape[1] for _, ids, G in given if ids.size), 0)
        dtype = next((G.dtype for _, ids, G in given if ids.size), np.float32)
        M = np.zeros((block.ids.size, width), dtype=dtype)
        found = np.zeros(block.ids.size, dtype=bool)
        for _, ids, G in given:
            if ids.size == 0 or block.ids.size == 0:
                continue
            pos = np.minimum(np.searchsorted(block.ids, ids), block.ids.size - 1)
            hit = block.ids[pos] == ids
            M[pos[hit]] = G[hit]
            found[pos[hit]] = True
        yield block.block, (block.ids, fill(block.ids, ~found, M))

    return static.union(pieces.partitionBy(num_blocks)).mapPartitions(align, preservesPartitioning=True)
