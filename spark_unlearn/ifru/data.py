"""Spark data preparation for IFRU; the driver receives only tensors (through Arrow).

Pipeline (all in Spark):

1. binarise: ``label = 1`` if ``rating >= threshold`` else ``0`` (every rated
   pair is a labelled training term, as in the authors' pointwise BCE);
2. ``k``-core: drop users and items with fewer than ``k`` rated pairs,
   repeated until nothing changes;
3. split 60/20/20 with :func:`spark_unlearn.data.split.train_val_test_split`;
4. dense ids: users and items of the k-cored data, sorted by raw id, numbered
   ``0..n-1`` (``zipWithIndex``, no single-partition window).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from spark_unlearn.errors import EmptyInputError
from spark_unlearn.schema import ITEM, RATING, USER

log = logging.getLogger(__name__)


def _F():
    from pyspark.sql import functions as F  # noqa: N812

    return F


@dataclass
class PreparedData:
    """Dense-indexed splits: DataFrames with ``user``, ``item``, ``rating``, ``u``, ``i``, ``label``."""

    train: object
    val: object
    test: object
    user_ids: np.ndarray  # raw user id of dense index k
    item_ids: np.ndarray
    kcore_rounds: int

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)


def binarise(ratings, threshold: float):
    """``ratings`` with an int ``label`` column (1 iff ``rating >= threshold``)."""
    F = _F()
    return ratings.withColumn("label", (F.col(RATING) >= F.lit(float(threshold))).cast("int"))


def kcore(ratings, k: int, max_rounds: int = 100):
    """Users and items with at least ``k`` rated pairs, iterated to a fixed point; returns (DataFrame, rounds)."""
    F = _F()
    cur = ratings.localCheckpoint()
    n = cur.count()
    if k <= 1:
        return cur, 0
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        users = cur.groupBy(USER).count().where(F.col("count") >= k).select(USER)
        items = cur.groupBy(ITEM).count().where(F.col("count") >= k).select(ITEM)
        nxt = cur.join(users, USER, "left_semi").join(items, ITEM, "left_semi").localCheckpoint()
        m = nxt.count()
        log.info("k-core round %d: %d -> %d ratings", rounds, n, m)
        cur = nxt
        if m == n:
            break
        n = m
    if n == 0:
        raise EmptyInputError(f"no ratings survive the {k}-core filter; lower kcore or use more data")
    return cur, rounds


def dense_index(df, column: str, out: str):
    """(``column``, ``out``) with ``out`` = rank of the distinct raw id in ascending order, from 0."""
    spark = df.sparkSession
    ids = df.select(column).distinct().orderBy(column).rdd.map(lambda r: r[0]).zipWithIndex()
    return spark.createDataFrame(ids, f"{column} int, {out} int")


def sample_negatives(indexed, items, n_items: int, per_positive: int, seed: int):
    """Unobserved pairs labelled 0 for implicit data: ``per_positive`` draws per observed pair, uniform over items.

    Draw ``k`` of observed pair ``(u, i)`` is item ``xxhash64(u, i, k, seed) mod n_items``;
    draws that hit an observed pair of ``u`` or repeat are dropped, so a user
    gets at most ``per_positive`` negatives per observed pair.  Rows carry
    ``rating = 0`` and ``label = 0``; ``items`` maps dense ``i`` to raw ``item``.
    """
    F = _F()
    draws = (indexed.select("u", USER, "i", F.explode(F.sequence(F.lit(0), F.lit(per_positive - 1))).alias("k"))
             .select("u", USER, F.pmod(F.xxhash64("u", "i", "k", F.lit(int(seed))), F.lit(n_items)).cast("int").alias("i"))
             .distinct()
             .join(indexed.select("u", "i"), ["u", "i"], "left_anti"))
    return draws.join(items, "i").select(USER, ITEM, F.lit(0.0).alias(RATING), "u", "i", F.lit(0).alias("label"))


def prepare(ratings, *, threshold: float = 4.0, k: int = 5, fractions=(0.6, 0.2, 0.2), seed: int = 0,
            negatives: int = 0) -> PreparedData:
    """Binarise, k-core filter, split and index ``ratings`` (``RATINGS_SCHEMA``).

    ``negatives > 0`` is for implicit data, where every pair is observed:
    after the k-core, that many unobserved pairs per observed pair are added
    with label 0 (:func:`sample_negatives`, seeded by ``seed``) and split with
    the others.
    """
    from spark_unlearn.data.split import train_val_test_split

    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"negatives must be an integer >= 0, got {negatives!r}")
    cored, rounds = kcore(ratings.select(USER, ITEM, RATING), k)
    users = dense_index(cored, USER, "u").localCheckpoint()
    items = dense_index(cored, ITEM, "i").localCheckpoint()
    user_ids = _column(users.orderBy("u"), USER).astype(np.int64)
    item_ids = _column(items.orderBy("i"), ITEM).astype(np.int64)
    indexed = binarise(cored, threshold).join(users, USER).join(items, ITEM).localCheckpoint()
    if negatives:
        indexed = indexed.select(USER, ITEM, RATING, "u", "i", "label").unionByName(
            sample_negatives(indexed, items, int(item_ids.size), negatives, seed)).localCheckpoint()
    parts = train_val_test_split(indexed, fractions=tuple(fractions), seed=seed)
    out = [part.select(USER, ITEM, RATING, "u", "i", "label").localCheckpoint() for part in parts]
    return PreparedData(out[0], out[1], out[2], user_ids, item_ids, rounds)


def _column(df, name: str) -> np.ndarray:
    table = df.select(name).toArrow()
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    return table.column(name).to_numpy(zero_copy_only=False)


def to_tensors(df, columns: list[str]) -> dict[str, torch.Tensor]:
    """Collect ``columns`` of ``df`` to the driver through Arrow, as torch tensors (in a deterministic row order)."""
    table = df.select(*columns).toArrow()
    out = {}
    for c in columns:
        if table.num_rows == 0:
            out[c] = torch.zeros(0, dtype=torch.int64)
            continue
        arr = table.column(c).to_numpy(zero_copy_only=False)
        if arr.dtype == np.bool_:
            out[c] = torch.from_numpy(arr.copy())
        else:
            out[c] = torch.from_numpy(np.array(arr, copy=True))
    return out


def sorted_terms(df, extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``u``, ``i``, ``label`` (+ ``extra``) of a split, sorted by (u, i) so the driver's order is reproducible."""
    return to_tensors(df.orderBy("u", "i"), ["u", "i", "label", *extra])


def flip_labels(train, fraction: float, seed: int):
    """Flip the label of exactly ``round(fraction * n)`` training rows chosen at random; mark them ``noisy``.

    The benchmark's unusable data (IFRU protocol): noisy labels that unlearning
    should remove.
    """
    F = _F()
    n = train.count()
    m = int(round(fraction * n))
    chosen = (
        train.select("u", "i")
        .withColumn("_r", F.xxhash64(F.col("u"), F.col("i"), F.lit(int(seed))))
        .orderBy("_r", "u", "i")
        .limit(m)
        .select("u", "i", F.lit(True).alias("noisy"))
    )
    out = train.join(chosen, ["u", "i"], "left").withColumn("noisy", F.coalesce(F.col("noisy"), F.lit(False)))
    return out.withColumn("label", F.when(F.col("noisy"), 1 - F.col("label")).otherwise(F.col("label"))).localCheckpoint()


def mark_removed(train, deletions):
    """``train`` with boolean ``removed`` = (user, item) is in ``deletions`` (raw ids)."""
    F = _F()
    keys = deletions.select(USER, ITEM).distinct().withColumn("removed", F.lit(True))
    return train.join(keys, [USER, ITEM], "left").withColumn("removed", F.coalesce(F.col("removed"), F.lit(False)))
