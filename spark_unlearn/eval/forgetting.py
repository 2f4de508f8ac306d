"""How far deleted interactions fell in their users' rankings.

After unlearning, a deleted item should no longer sit near the top of its
user's list.  :func:`rank_percentile` measures where it sits, against the
model's whole catalogue, computed in Spark with the blocked scoring of
:mod:`spark_unlearn.eval.topk` (only the pairs' users are scored, against
every item; the item table is never collected).
"""

from __future__ import annotations

import logging

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.errors import SchemaError
from spark_unlearn.eval import topk
from spark_unlearn.schema import ITEM, USER

log = logging.getLogger(__name__)


def rank_percentile(
    user_factors: DataFrame,
    item_factors: DataFrame,
    pairs: DataFrame,
    percentile_col: str = "percentile",
    *,
    user_block_size: int = topk.DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = topk.DEFAULT_ITEM_BLOCK_SIZE,
) -> DataFrame:
    """``pairs`` plus the percentile of each item in its user's ranking.

    With ``I`` the items of ``item_factors`` and ``s_uj = x_u . y_j``::

        percentile(u, i) = ( |{j in I, j != i: s_uj > s_ui}|
                             + 0.5 |{j in I, j != i: s_uj = s_ui}| ) / (|I| - 1)

    so 0 is the top of the list and 1 the bottom, and the train items are
    *not* excluded (the question is where the model puts ``i`` among
    everything it knows).

    Pairs whose user or item has no factors, or a model with a single item,
    get ``NaN``.  Every input row and column is kept; duplicate pairs get the
    same value.

    Cost: ``O(U_p * I * rank)`` flops for the ``U_p`` distinct users of
    ``pairs``, in ``ceil(U_p / user_block_size) x ceil(I / item_block_size)``
    cogroups.
    """
    missing = [c for c in (USER, ITEM) if c not in pairs.columns]
    if missing:
        raise SchemaError(f"pairs lacks column(s) {missing}; it has {pairs.columns}")
    targets = pairs.select(USER, ITEM).distinct()
    users = targets.select(F.col(USER).alias("id")).distinct().join(user_factors.select("id", "features"), "id")
    users = topk.with_targets(users.withColumn("exclude", F.array().cast("array<int>")), item_factors, targets)
    counts = topk.rank_counts(users, item_factors, user_block_size, item_block_size)
    n = F.col("n_candidates")
    percentile = F.when(n > 0, (F.col("n_greater") + F.lit(0.5) * F.col("n_equal")) / n)
    per_pair = counts.select(
        F.col(USER).alias("__rp_user"), F.col("target_item").alias("__rp_item"), percentile.alias("__rp_value")
    )
    joined = pairs.join(
        per_pair, (F.col(USER) == F.col("__rp_user")) & (F.col(ITEM) == F.col("__rp_item")), "left"
    )
    value = F.coalesce(F.col("__rp_value"), F.lit(float("nan"))).cast("double")
    return joined.select(*[joined[c] for c in pairs.columns], value.alias(percentile_col))


def rank_percentiles(users: np.ndarray, items: np.ndarray, targets: np.ndarray, chunk: int | None = None,
                     chunk_bytes: int = 64 << 20) -> np.ndarray:
    """Percentile of item ``targets[n]`` in the ranking of user vector ``users[n]`` over every row of ``items``.

    The definition of :func:`rank_percentile`, on driver arrays::

        percentile_n = ( |{j != t: s_j > s_t}| + 0.5 |{j != t: s_j = s_t}| ) / (|I| - 1),  s = items @ users[n]

    Scores are float64 products (BLAS), whose rounding may depend on an
    item's position, so a tie between two equal item vectors may break where
    Spark's factor-order sum (:func:`spark_unlearn.eval.topk.score_block`)
    keeps it (half a place, ``0.5 / (|I| - 1)``, per such item); a target
    always ties with itself.  ``NaN`` for a model with a single item.  Users
    are scored ``chunk`` at a time (default: as many as ``chunk_bytes`` of
    scores hold).
    """
    users = np.asarray(users, np.float64)
    items = np.asarray(items, np.float64)
    targets = np.asarray(targets, np.int64)
    out = np.full(users.shape[0], np.nan)
    if items.shape[0] < 2:
        return out
    chunk = chunk or max(1, chunk_bytes // (8 * items.shape[0]))
    for start in range(0, users.shape[0], chunk):
        S = users[start:start + chunk] @ items.T
        t = S[np.arange(S.shape[0]), targets[start:start + chunk]][:, None]
        greater = (S > t).sum(axis=1)
        equal = (S == t).sum(axis=1) - 1  # the target itself
        out[start:start + chunk] = (greater + 0.5 * equal) / (items.shape[0] - 1)
    return out


def rank_percentiles_reference(users: np.ndarray, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """:func:`rank_percentiles` one pair and one item at a time (slow; for tests)."""
    out = []
    for u, t in zip(np.asarray(users, np.float64), np.asarray(targets, np.int64)):
        if len(items) < 2:
            out.append(float("nan"))
            continue
        s = [float(np.dot(u, np.asarray(v, np.float64))) for v in items]
        greater = sum(1 for j, v in enumerate(s) if j != t and v > s[t])
        equal = sum(1 for j, v in enumerate(s) if j != t and v == s[t])
        out.append((greater + 0.5 * equal) / (len(items) - 1))
    return np.asarray(out)


def mean_rank_percentile(
    user_factors: DataFrame,
    item_factors: DataFrame,
    pairs: DataFrame,
    *,
    user_block_size: int = topk.DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = topk.DEFAULT_ITEM_BLOCK_SIZE,
) -> float:
    """Mean of :func:`rank_percentile` over the rows of ``pairs`` it is defined for.

    Rows with ``NaN`` (unknown user or item) are left out and counted in the
    log.  Returns ``NaN`` when no row is defined.  Duplicate rows count once
    each.
    """
    scored = rank_percentile(
        user_factors,
        item_factors,
        pairs.select(USER, ITEM),
        user_block_size=user_block_size,
        item_block_size=item_block_size,
    )
    defined = ~F.isnan("percentile")
    row = scored.agg(
        F.avg(F.when(defined, F.col("percentile"))).alias("mean"),
        F.count(F.when(defined, 1)).alias("n_defined"),
        F.count(F.when(~defined, 1)).alias("n_missing"),
    ).first()
    if row["n_missing"]:
        log.warning("rank percentile: %d pairs have a user or item unknown to the model; left out", row["n_missing"])
    value = float("nan") if row["mean"] is None else float(row["mean"])
    log.info("mean rank percentile %.6f over %d pairs", value, row["n_defined"])
    return value
