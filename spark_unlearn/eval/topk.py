"""Blocked user x item scoring in Spark: per-user top-k lists and rank counts.

Nothing here collects a factor table or the score matrix to the driver.  Both
factor tables are hashed into blocks (``user_block_size`` users,
``item_block_size`` items per block on average); every (user block, item
block) pair becomes one Arrow cogroup in which numpy scores the whole block
pair at once.  Per-user results of the item blocks are merged in Spark.

Score convention
----------------
``s_ui = x_u . y_i`` in float64 (the float32 factors are widened exactly),
accumulated *in factor order* ``((x_0 y_0 + x_1 y_1) + x_2 y_2) + ...`` with
separate IEEE multiplies and adds (no BLAS, no FMA).  Every score this module
computes, for one pair (:func:`score_rows`) or for a block pair
(:func:`score_block`), is therefore bit-identical for the same (user, item):
a target item ties exactly with itself and equal vectors (common in ALS
models: items rated by the same single user) tie exactly.  The SQL dot
product of :func:`spark_unlearn.eval.metrics.predict` performs the same
operations in the same order.  The price is speed: about ``2 * rank``
memory passes over each ``B_u x B_i`` score block instead of one GEMM.

Cost
----
With ``U`` users to score, ``I`` items, rank ``r``, ``n_ub = ceil(U / B_u)``
user blocks and ``n_ib = ceil(I / B_i)`` item blocks:

* compute ``O(U * I * r)`` flops (the full score matrix, block by block);
* shuffle ``O((n_ib * U + n_ub * I) * r)`` floats, because every user row is
  replicated to each item block and every item row to each user block;
* executor memory per cogroup about ``5 * B_u * B_i * 8`` bytes (scores,
  a temporary, masks, a partition copy): ~80 MB at the defaults;
* top-k merge shuffles at most ``U * n_ib * k`` candidate rows.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, LongType, StructField, StructType

log = logging.getLogger(__name__)

DEFAULT_USER_BLOCK_SIZE = 512
DEFAULT_ITEM_BLOCK_SIZE = 4096

TOP_K_SCHEMA = StructType(
    [
        StructField("user", IntegerType(), False),
        StructField("item", IntegerType(), False),
        StructField("score", DoubleType(), False),
    ]
)

COUNTS_SCHEMA = StructType(
    [
        StructField("user", IntegerType(), False),
        StructField("target_item", IntegerType(), False),
        StructField("n_greater", LongType(), False),
        StructField("n_equal", LongType(), False),
        StructField("n_candidates", LongType(), False),
    ]
)

# --------------------------------------------------------------------------
# numpy kernels (run on executors)
# --------------------------------------------------------------------------


def score_rows(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``s_n = U[n] . V[n]`` accumulated in factor order (see module docstring)."""
    if U.shape != V.shape:
        raise ValueError(f"factor rank mismatch: users have shape {U.shape}, items {V.shape}")
    if U.shape[0] == 0:
        return np.zeros(0)
    s = U[:, 0] * V[:, 0]
    for f in range(1, U.shape[1]):
        s += U[:, f] * V[:, f]
    return s


def score_block(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``S[a, b] = U[a] . V[b]`` with exactly the arithmetic of :func:`score_rows`."""
    if U.shape[1] != V.shape[1]:
        raise ValueError(f"factor rank mismatch: users have rank {U.shape[1]}, items {V.shape[1]}")
    S = np.multiply.outer(U[:, 0], V[:, 0])
    tmp = np.empty_like(S)
    for f in range(1, U.shape[1]):
        np.multiply.outer(U[:, f], V[:, f], out=tmp)
        S += tmp
    return S


def features_matrix(column: pa.Array | pa.ChunkedArray, what: str = "features") -> np.ndarray:
    """An ``n x rank`` float64 matrix from an Arrow ``list<float>`` column.

    Raises
    ------
    ValueError
        On null vectors, vectors of unequal length or non-finite entries:
        scores of such factors would silently corrupt every ranking.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0))
    if arr.null_count:
        raise ValueError(f"{arr.null_count} {what} vector(s) are null; every factor row needs a vector")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    rank = int(lengths[0])
    if (lengths != rank).any():
        raise ValueError(f"{what} vectors have unequal lengths {sorted(set(lengths.tolist()))[:5]}")
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
    matrix = flat.reshape(n, rank)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} vectors hold NaN or infinite entries")
    return matrix


def _ids(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.int64)


def _flattened_lists(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(row index of every element, the elements) of a list column; null lists are empty."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    return parents, pc.list_flatten(arr)


class _ItemIndex:
    """Maps item ids to column positions of one item block."""

    def __init__(self, item_ids: np.ndarray):
        self._order = np.argsort(item_ids, kind="stable")
        self._sorted = item_ids[self._order]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(column of each id, whether the id is in the block); columns of absent ids are 0."""
        if len(self._sorted) == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.searchsorted(self._sorted, ids)
        pos_clipped = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos_clipped] == ids
        return np.where(found, self._order[pos_clipped], 0), found


def _exclusion_mask(exclude: pa.ChunkedArray, n_users: int, index: _ItemIndex, n_items: int) -> np.ndarray:
    rows, values = _flattened_lists(exclude)
    cols, found = index.lookup(values.to_numpy(zero_copy_only=False).astype(np.int64))
    mask = np.zeros((n_users, n_items), dtype=bool)
    mask[rows[found], cols[found]] = True
    return mask


def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


_TOP_K_ARROW = pa.schema([("user", pa.int32(), False), ("item", pa.int32(), False), ("score", pa.float64(), False)])
_COUNTS_ARROW = pa.schema(
    [
        ("user", pa.int32(), False),
        ("target_item", pa.int32(), False),
        ("n_greater", pa.int64(), False),
        ("n_equal", pa.int64(), False),
        ("n_candidates", pa.int64(), False),
    ]
)


def _top_k_kernel(k: int, users: pa.Table, items: pa.Table) -> pa.Table:
    """Per user of the block: its ``k`` best non-excluded items of this item block.

    Order is score descending, then item id ascending, the same order the
    global merge uses, so the union of block lists contains the global top k.
    """
    if users.num_rows == 0 or items.num_rows == 0:
        return _empty(_TOP_K_ARROW)
    user_ids, item_ids = _ids(users["id"]), _ids(items["id"])
    S = score_block(features_matrix(users["features"], "user"), features_matrix(items["features"], "item"))
    excluded = _exclusion_mask(users["exclude"], len(user_ids), _ItemIndex(item_ids), len(item_ids))
    n_items = len(item_ids)
    candidate = ~excluded
    if n_items > k:
        # k-th best allowed score per user; everything at or above it (ties
        # included) is a candidate, the exact cut happens after sorting.
        kth = np.partition(np.where(excluded, -np.inf, S), n_items - k, axis=1)[:, n_items - k]
        candidate &= S >= kth[:, None]
    rows, cols = np.nonzero(candidate)
    scores, items_of = S[rows, cols], item_ids[cols]
    order = np.lexsort((items_of, -scores, rows))
    rows, scores, items_of = rows[order], scores[order], items_of[order]
    first = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - first) < k
    return pa.Table.from_arrays(
        [
            pa.array(user_ids[rows[keep]], pa.int32()),
            pa.array(items_of[keep], pa.int32()),
            pa.array(scores[keep], pa.float64()),
        ],
        schema=_TOP_K_ARROW,
    )


def _rank_counts_kernel(users: pa.Table, items: pa.Table) -> pa.Table:
    """For every (user, target): how many block items score above / equal to the target.

    Candidates are the block's items minus the user's ``exclude`` list and
    minus the target item itself.
    """
    if users.num_rows == 0 or items.num_rows == 0:
        return _empty(_COUNTS_ARROW)
    user_ids, item_ids = _ids(users["id"]), _ids(items["id"])
    U = features_matrix(users["features"], "user")
    index = _ItemIndex(item_ids)
    excluded = _exclusion_mask(users["exclude"], len(user_ids), index, len(item_ids))
    t_rows, t_features = _flattened_lists(users["target_features"])
    _, t_items = _flattened_lists(users["target_items"])
    t_items = t_items.to_numpy(zero_copy_only=False).astype(np.int64)
    # Same arithmetic as the block scores, so a target ties exactly with itself.
    t_scores = score_rows(U[t_rows], features_matrix(t_features, "target item"))
    S = score_block(U, features_matrix(items["features"], "item"))
    greater = np.zeros(len(t_items), dtype=np.int64)
    equal = np.zeros(len(t_items), dtype=np.int64)
    n = np.zeros(len(t_items), dtype=np.int64)
    bounds = np.searchsorted(t_rows, np.arange(len(user_ids) + 1))
    for row in range(len(user_ids)):
        lo, hi = bounds[row], bounds[row + 1]
        if lo == hi:
            continue
        allowed = np.sort(S[row, ~excluded[row]])
        left = np.searchsorted(allowed, t_scores[lo:hi], side="left")
        right = np.searchsorted(allowed, t_scores[lo:hi], side="right")
        greater[lo:hi] = len(allowed) - right
        equal[lo:hi] = right - left
        n[lo:hi] = len(allowed)
    _remove_self(S, excluded, index, t_rows, t_items, t_scores, greater, equal, n)
    return pa.Table.from_arrays(
        [
            pa.array(user_ids[t_rows], pa.int32()),
            pa.array(t_items, pa.int32()),
            pa.array(greater),
            pa.array(equal),
            pa.array(n),
        ],
        schema=_COUNTS_ARROW,
    )


def _remove_self(S, excluded, index, t_rows, t_items, t_scores, greater, equal, n) -> None:
    """Take each target item out of its own counts, whatever its in-block score is."""
    cols, found = index.lookup(t_items)
    counted = found & ~excluded[t_rows, cols]
    if not counted.any():
        return
    own = S[t_rows[counted], cols[counted]]
    greater[counted] -= own > t_scores[counted]
    equal[counted] -= own == t_scores[counted]
    n[counted] -= 1


# --------------------------------------------------------------------------
# Spark plumbing (driver)
# --------------------------------------------------------------------------


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _count_both(users: DataFrame, items: DataFrame) -> tuple[int, int]:
    """Row counts of both sides in one small Spark job."""
    row = (
        users.agg(F.count(F.lit(1)).alias("n_users"))
        .crossJoin(items.agg(F.count(F.lit(1)).alias("n_items")))
        .first()
    )
    return int(row["n_users"]), int(row["n_items"])


def _keyed(df: DataFrame, own_key: str, n_own: int, other_key: str, n_other: int) -> DataFrame:
    """Rows of ``df`` hashed into ``n_own`` blocks, each copied to all ``n_other`` blocks of the other side."""
    other = df.sparkSession.range(n_other).select(F.col("id").cast("int").alias(other_key))
    own = F.pmod(F.xxhash64(F.col("id")), F.lit(n_own)).cast("int")
    return df.withColumn(own_key, own).crossJoin(other)


def cogroup_blocks(
    users: DataFrame,
    items: DataFrame,
    kernel,
    schema: StructType,
    user_block_size: int = DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = DEFAULT_ITEM_BLOCK_SIZE,
) -> DataFrame:
    """Run ``kernel(user_block, item_block)`` on every (user block, item block) pair.

    ``users`` needs ``id`` and ``features`` plus whatever the kernel reads;
    ``items`` needs ``id`` and ``features``.  Users are hashed into
    ``ceil(n_users / user_block_size)`` blocks, items likewise, and every row
    is copied to each block of the other side.  Counting both sides is one
    eager job (it computes ``users``' upstream once more: cache it first if
    that is expensive).
    """
    _check_positive_int("user_block_size", user_block_size)
    _check_positive_int("item_block_size", item_block_size)
    n_users, n_items = _count_both(users, items)
    if n_users == 0 or n_items == 0:
        return users.sparkSession.createDataFrame([], schema)
    n_ub, n_ib = math.ceil(n_users / user_block_size), math.ceil(n_items / item_block_size)
    log.debug("scoring %d users x %d items in %d x %d blocks", n_users, n_items, n_ub, n_ib)
    keyed_users = _keyed(users, "ub", n_ub, "ib", n_ib)
    keyed_items = _keyed(items.select("id", "features"), "ib", n_ib, "ub", n_ub)
    return keyed_users.groupBy("ub", "ib").cogroup(keyed_items.groupBy("ub", "ib")).applyInArrow(kernel, schema)


def top_k(
    users: DataFrame,
    item_factors: DataFrame,
    k: int,
    user_block_size: int = DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = DEFAULT_ITEM_BLOCK_SIZE,
) -> DataFrame:
    """Each user's ``k`` highest-scoring items, excluding the user's ``exclude`` list.

    Parameters
    ----------
    users
        ``id`` int, ``features`` array<float>, ``exclude`` array<int> (may be
        null or empty).
    item_factors
        ``id``, ``features``: the catalogue to rank.
    k
        List length; users with fewer allowed items get shorter lists.

    Returns
    -------
    DataFrame
        ``user``, ``item``, ``score`` (double), ``rank`` (int, 1-based).
        Ties in score are broken by ascending item id, so lists are
        deterministic.
    """
    _check_positive_int("k", k)
    kernel = functools.partial(_top_k_kernel, k)
    candidates = cogroup_blocks(users, item_factors, kernel, TOP_K_SCHEMA, user_block_size, item_block_size)
    order = Window.partitionBy("user").orderBy(F.col("score").desc(), F.col("item").asc())
    return (
        candidates.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= k)
        .select("user", "item", "score", F.col("rank").cast("int").alias("rank"))
    )


def rank_counts(
    users: DataFrame,
    item_factors: DataFrame,
    user_block_size: int = DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = DEFAULT_ITEM_BLOCK_SIZE,
) -> DataFrame:
    """How many catalogue items score above / the same as each target, per user.

    Parameters
    ----------
    users
        As built by :func:`with_targets`: ``id``, ``features``, ``exclude``
        array<int> (items left out of the comparison, may be null),
        ``target_items`` array<int> and the aligned ``target_features``
        array<array<float>>.

    Returns
    -------
    DataFrame
        ``user``, ``target_item``, ``n_greater`` (candidates scoring strictly
        higher than the target), ``n_equal`` (candidates scoring exactly the
        target's score), ``n_candidates`` (catalogue items minus ``exclude``
        minus the target item itself).  Only targets whose user and item
        have factors appear.
    """
    counts = cogroup_blocks(users, item_factors, _rank_counts_kernel, COUNTS_SCHEMA, user_block_size, item_block_size)
    return counts.groupBy("user", "target_item").agg(
        F.sum("n_greater").alias("n_greater"),
        F.sum("n_equal").alias("n_equal"),
        F.sum("n_candidates").alias("n_candidates"),
    )


def with_targets(users: DataFrame, item_factors: DataFrame, targets: DataFrame) -> DataFrame:
    """``users`` plus their targets, in the layout :func:`rank_counts` reads.

    Parameters
    ----------
    users
        ``id``, ``features``, ``exclude`` array<int> (may be null).
    targets
        Distinct ``(user, item)`` pairs.  Targets whose item has no factors,
        and users without targets, are dropped (inner joins).
    """
    item_features = item_factors.select(F.col("id").alias("item"), F.col("features").alias("t_features"))
    per_user = (
        targets.select("user", "item")
        .join(item_features, "item")
        .groupBy("user")
        .agg(F.collect_list(F.struct("item", "t_features")).alias("t"))
    )
    return per_user.join(users.withColumnRenamed("id", "user"), "user").select(
        F.col("user").alias("id"),
        "features",
        "exclude",
        F.col("t.item").alias("target_items"),
        F.col("t.t_features").alias("target_features"),
    )
