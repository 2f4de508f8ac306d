"""How far the deleted interactions fell in their users' rankings, measured after a request.

The measure is :func:`spark_unlearn.eval.forgetting.mean_rank_percentile`
of the deleted pairs, before and after.  In Spark it scores every pair's
user against every item in blocked cogroups (about 13 s per model on ADM's
98k items).  When the request ran on a blocked version's files and its exact
row changes are on the driver, the same numbers come from the files instead:
the parent's item factor table is read whole (only if it fits
:data:`DRIVER_ITEM_BYTES`), the pairs' user rows by block, the request's
changes applied, and the percentiles computed with numpy
(:func:`spark_unlearn.eval.forgetting.rank_percentiles`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.sql import DataFrame

from spark_unlearn.als.selection import sorted_lookup

log = logging.getLogger(__name__)

# Up to this many bytes of the item factor table (float64 on the driver), the measure is computed there.
DRIVER_ITEM_BYTES = 256 << 20

UNDEFINED = {"pairs": 0, "defined": False,
             "note": "undefined: every deleted interaction lost its user's or its item's factor row (erased user or "
                     "withdrawn item), so no pair is left to rank"}
CONVENTION = "0 = top of the user's list, 1 = bottom"


def measure_forgetting(before, result, reader=None) -> dict[str, Any]:
    """The forgetting measure of a request: on the driver when :func:`forgetting_on_driver` can, else in Spark."""
    local = forgetting_on_driver(reader, result.changes, result.deleted_local, before.params.rank)
    return local if local is not None else forgetting_report(before, result.model, result.deleted)


def forgetting_report(before, after, deleted: DataFrame) -> dict[str, Any]:
    """Mean rank percentile of the deleted items in their (remaining) users' lists, before and after.

    Only pairs whose user *and* item still have a factor row can be ranked
    after the deletion; with none left the measure is undefined and the
    report says why (``"defined": false``) instead of giving a number.
    """
    from spark_unlearn.eval.forgetting import mean_rank_percentile

    remaining_users = after.user_factors.select("id").withColumnRenamed("id", "user")
    remaining_items = after.item_factors.select("id").withColumnRenamed("id", "item")
    pairs = (deleted.select("user", "item").join(remaining_users, ["user"], "left_semi")
             .join(remaining_items, ["item"], "left_semi"))
    n = pairs.count()
    if n == 0:
        return dict(UNDEFINED)
    pairs = pairs.cache()
    return {
        "pairs": n,
        "defined": True,
        "rank_percentile_before": mean_rank_percentile(before.user_factors, before.item_factors, pairs),
        "rank_percentile_after": mean_rank_percentile(after.user_factors, after.item_factors, pairs),
        "convention": CONVENTION,
        "computed": "spark",
    }



def forgetting_on_driver(reader, changes, deleted_local, rank: int) -> dict[str, Any] | None:
    """:func:`forgetting_report` from the parent's block files and the request's row changes, or ``None``.

    ``None`` (measure in Spark) without a block reader, row changes or the
    deleted ratings on the driver, or when the item factor table exceeds
    :data:`DRIVER_ITEM_BYTES`.  Reads the whole item factor table and the
    pairs' users' factor rows; the "after" model is the parent's with the
    changed rows replaced and the removed rows gone.
    """
    from spark_unlearn.eval.forgetting import rank_percentiles
    from spark_unlearn.store.spark_layout import ITEM_FACTORS, USER_FACTORS

    if reader is None or changes is None or deleted_local is None:
        return None
    if reader.table_rows(ITEM_FACTORS) * rank * 8 > DRIVER_ITEM_BYTES:
        return None
    users = deleted_local.column("user").to_numpy().astype(np.int64)
    items = deleted_local.column("item").to_numpy().astype(np.int64)
    keep = ~np.isin(users, changes["user"].removed) & ~np.isin(items, changes["item"].removed)
    users, items = users[keep], items[keep]
    if users.size == 0:
        return dict(UNDEFINED)
    before_items = _table(reader.whole(ITEM_FACTORS, ["id", "features"]))
    before_users = _table(reader.rows(USER_FACTORS, np.unique(users), ["id", "features"]))
    after_items = _applied(before_items, changes["item"])
    after_users = _applied(before_users, changes["user"])
    # Pairs without a user or item row in either model are left out, as Spark's measure leaves them out.
    known = _found(before_users[0], users) & _found(before_items[0], items)
    known &= _found(after_users[0], users) & _found(after_items[0], items)
    users, items = users[known], items[known]
    if users.size == 0:
        return dict(UNDEFINED)
    out = {"pairs": int(users.size), "defined": True}
    # Each distinct (user, item) pair is scored once; duplicates count once each in the mean, as in Spark.
    pairs, inverse = np.unique(np.stack([users, items]), axis=1, return_inverse=True)
    for label, (uid, U), (iid, V) in (("before", before_users, before_items), ("after", after_users, after_items)):
        values = rank_percentiles(U[np.searchsorted(uid, pairs[0])], V, np.searchsorted(iid, pairs[1]))[inverse.ravel()]
        out[f"rank_percentile_{label}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    out.update(convention=CONVENTION, computed="driver (block files and the request's row changes)")
    log.info("mean rank percentile %.6f -> %.6f over %d pairs (driver)", out["rank_percentile_before"],
             out["rank_percentile_after"], users.size)
    return out


def _table(table) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted ids, float64 factors)`` of an Arrow ``id``/``features`` table (``None``: no row); a null or
    non-finite vector is an error, as in Spark's measure (:func:`spark_unlearn.eval.topk.features_matrix`)."""
    from spark_unlearn.eval.topk import features_matrix

    if table is None or table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    ids = table.column("id").to_numpy().astype(np.int64)
    X = features_matrix(table.column("features"))
    order = np.argsort(ids, kind="stable")
    return ids[order], X[order]


def _found(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Whether each of ``wanted`` is in ``sorted_ids``."""
    return sorted_lookup(sorted_ids, wanted)[1]


def _applied(table: tuple[np.ndarray, np.ndarray], change) -> tuple[np.ndarray, np.ndarray]:
    """``table`` with ``change``'s rows replaced (those it holds) and its removed rows dropped."""
    ids, X = table[0], table[1].copy()
    up = np.asarray(change.factor_ids, np.int64)
    pos, hit = sorted_lookup(ids, up)
    if hit.any():  # a side with no changed row may carry an empty (0, 0) factor array
        X[pos[hit]] = np.asarray(change.factors, np.float64)[hit]
    keep = ~np.isin(ids, np.asarray(change.removed, np.int64))
    return ids[keep], X[keep]


__all__ = ["DRIVER_ITEM_BYTES", "forgetting_on_driver", "forgetting_report", "measure_forgetting"]
