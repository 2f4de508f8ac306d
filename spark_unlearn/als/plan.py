"""Plan stage: what a deletion batch removes from the data and which rows it reaches directly.

A batch holds requests of three kinds (``user``, ``item``, ``kind``):
``interaction`` forgets one pair, ``user`` erases a user, ``item`` withdraws
an item.  Resolving it against the ratings gives the deleted rows, the
remaining data, the *direct* rows (those whose own ratings changed and that
keep some), and a report of requests that match nothing: already forgotten
by an earlier batch (the ledger's ``forgotten`` table) or unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.errors import UnknownIdError

log = logging.getLogger(__name__)




@dataclass
class DeletionPlan:
    """The effect of a deletion batch on a ratings table (lazy DataFrames + small driver sets)."""

    remaining: DataFrame  # ratings minus every deleted row
    deleted: DataFrame  # the deleted rows (user, item, rating)
    direct: dict[str, set[int]]  # rows (still in the model) whose own ratings changed
    erased_users: set[int]
    withdrawn_items: set[int]
    counts: dict[str, int]
    not_found: dict[str, list]  # examples of requested pairs/users/items absent from the data


def batch_requests(batch: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The batch's distinct interaction pairs (``user``, ``item``), erased users (``user``) and withdrawn items (``item``)."""
    pairs = batch.filter(F.col("kind") == "interaction").select("user", "item").distinct()
    users = batch.filter(F.col("kind") == "user").select("user").distinct()
    items = batch.filter(F.col("kind") == "item").select("item").distinct()
    return pairs, users, items


def remove_batch(ratings: DataFrame, batch: DataFrame) -> DataFrame:
    """``ratings`` without every row the batch names: its pairs, its erased users, its withdrawn items."""
    pairs, users, items = batch_requests(batch)
    return (
        ratings.join(pairs, ["user", "item"], "left_anti")
        .join(users, ["user"], "left_anti")
        .join(items, ["item"], "left_anti")
    )


def plan_deletion(
    ratings: DataFrame, batch: DataFrame, strict: bool = False, examples: int = 5, forgotten: DataFrame | None = None
) -> DeletionPlan:
    """Resolve a deletion batch (``user``, ``item``, ``kind``) against ``ratings``.

    ``kind`` is ``interaction`` (forget the pair), ``user`` (erase the user)
    or ``item`` (withdraw the item).  Requests that match nothing are
    reported in ``not_found``: those that an earlier batch already removed
    (``forgotten``: ``user``, ``item``, ``kind`` of earlier requests, or a
    zero-argument callable returning them, called only when needed) as
    *already forgotten*, the rest as unknown.  With ``strict`` unknown
    requests raise :class:`~spark_unlearn.errors.UnknownIdError`.
    """
    pairs, users, items = batch_requests(batch)

    erased_users = {r[0] for r in users.collect()}
    withdrawn_items = {r[0] for r in items.collect()}
    by_pair = ratings.join(pairs, ["user", "item"], "left_semi")
    by_user = ratings.join(users, ["user"], "left_semi")
    by_item = ratings.join(items, ["item"], "left_semi")
    deleted = by_pair.unionByName(by_user).unionByName(by_item).dropDuplicates(["user", "item"]).cache()
    remaining = ratings.join(deleted.select("user", "item"), ["user", "item"], "left_anti")

    missing_pairs = pairs.join(ratings.select("user", "item"), ["user", "item"], "left_anti").cache()
    # Each lookup is a scan of the ratings: skip those the batch has nothing for.
    known_users = ({r[0] for r in ratings.join(users, ["user"], "left_semi").select("user").distinct().collect()}
                   if erased_users else set())
    known_items = ({r[0] for r in ratings.join(items, ["item"], "left_semi").select("item").distinct().collect()}
                   if withdrawn_items else set())
    missing_users, missing_items = erased_users - known_users, withdrawn_items - known_items
    already = {"interactions": 0, "users": set(), "items": set(), "examples": []}
    if forgotten is not None and (missing_users or missing_items or not missing_pairs.isEmpty()):
        if callable(forgotten):
            forgotten = forgotten()  # may be None: no earlier version forgot anything
        if forgotten is not None:
            already = already_forgotten(missing_pairs, missing_users, missing_items, forgotten, examples)
    unknown_pairs = missing_pairs
    if already["interactions"]:
        unknown_pairs = missing_pairs.join(already["pairs"], ["user", "item"], "left_anti")
    n_unknown_pairs = unknown_pairs.count()
    unknown_users, unknown_items = missing_users - already["users"], missing_items - already["items"]
    not_found = unknown_requests(
        n_unknown_pairs, [tuple(r) for r in unknown_pairs.limit(examples).collect()], unknown_users, unknown_items,
        already, strict, examples,
    )

    # Rows whose own data changed and that keep ratings: both sides in one job.
    touched = deleted.select("user", "item").distinct()
    kept_users = remaining.join(touched.select("user").distinct(), ["user"], "left_semi").select(
        F.lit("user").alias("side"), F.col("user").alias("id"))
    kept_items = remaining.join(touched.select("item").distinct(), ["item"], "left_semi").select(
        F.lit("item").alias("side"), F.col("item").alias("id"))
    direct: dict[str, set[int]] = {"user": set(), "item": set()}
    for side, row_id in kept_users.unionByName(kept_items).distinct().collect():
        direct[side].add(row_id)
    n_deleted = deleted.count()
    counts = plan_counts(pairs.count(), len(erased_users), len(withdrawn_items), n_deleted, n_unknown_pairs,
                         unknown_users, unknown_items, already, direct)
    missing_pairs.unpersist()
    log.info("deletion plan: %s", counts)
    return DeletionPlan(remaining, deleted, direct, erased_users & known_users, withdrawn_items & known_items, counts, not_found)


def unknown_requests(n_pairs: int, pair_examples: list, users: set[int], items: set[int], already: dict[str, Any],
                     strict: bool, examples: int) -> dict[str, list]:
    """The report's ``not_found`` for requests that match nothing; with ``strict`` raise :class:`UnknownIdError`.

    ``users``/``items``/``n_pairs`` are the requests neither in the data nor
    already forgotten; ``already`` is :func:`already_forgotten`'s result.
    """
    not_found = {
        "interactions": pair_examples[:examples],
        "users": sorted(users)[:examples],
        "items": sorted(items)[:examples],
        "already_forgotten": already["examples"],
    }
    if strict and (n_pairs or users or items):
        raise UnknownIdError(
            f"deletion batch names data that is not in the ratings: {n_pairs} interaction(s) "
            f"(e.g. {not_found['interactions']}), users {not_found['users']}, items {not_found['items']}; "
            "drop them from the batch or run without --strict to have them reported only"
        )
    return not_found


def plan_counts(n_pairs: int, n_users: int, n_items: int, n_deleted: int, n_unknown_pairs: int, unknown_users: set[int],
                unknown_items: set[int], already: dict[str, Any], direct: dict[str, set[int]]) -> dict[str, int]:
    """The ``deletion`` counts of a report (same keys for both engines)."""
    return {
        "requested_interactions": n_pairs,
        "requested_users": n_users,
        "requested_items": n_items,
        "deleted_ratings": n_deleted,
        "not_found_interactions": n_unknown_pairs,
        "not_found_users": len(unknown_users),
        "not_found_items": len(unknown_items),
        "already_forgotten_interactions": already["interactions"],
        "already_forgotten_users": len(already["users"]),
        "already_forgotten_items": len(already["items"]),
        "direct_users": len(direct["user"]),
        "direct_items": len(direct["item"]),
    }


def already_forgotten(missing_pairs: DataFrame, missing_users: set[int], missing_items: set[int], forgotten: DataFrame,
                       examples: int) -> dict[str, Any]:
    """Which absent requests an earlier batch removed: by the same pair, or by erasing its user or item."""
    f_pairs = forgotten.filter(F.col("kind") == "interaction").select("user", "item", "version")
    f_users = forgotten.filter(F.col("kind") == "user").select("user", "version")
    f_items = forgotten.filter(F.col("kind") == "item").select("item", "version")
    hit_pairs = (
        missing_pairs.join(f_pairs, ["user", "item"])
        .unionByName(missing_pairs.join(f_users, ["user"]))
        .unionByName(missing_pairs.join(f_items, ["item"]))
        .groupBy("user", "item")
        .agg(F.min("version").alias("version"))
        .cache()
    )
    n_pairs = hit_pairs.count()
    spark = missing_pairs.sparkSession
    user_hits = {}
    if missing_users:
        wanted = spark.createDataFrame([(u,) for u in sorted(missing_users)], "user int")
        user_hits = {r[0]: r[1] for r in wanted.join(f_users, ["user"]).groupBy("user").agg(F.min("version")).collect()}
    item_hits = {}
    if missing_items:
        wanted = spark.createDataFrame([(i,) for i in sorted(missing_items)], "item int")
        item_hits = {r[0]: r[1] for r in wanted.join(f_items, ["item"]).groupBy("item").agg(F.min("version")).collect()}
    shown = [{"user": r[0], "item": r[1], "forgotten_in": r[2]} for r in hit_pairs.orderBy("user", "item").limit(examples).collect()]
    shown += [{"user": u, "forgotten_in": v} for u, v in sorted(user_hits.items())[:examples]]
    shown += [{"item": i, "forgotten_in": v} for i, v in sorted(item_hits.items())[:examples]]
    return {
        "interactions": n_pairs,
        "pairs": hit_pairs.select("user", "item"),
        "users": set(user_hits),
        "items": set(item_hits),
        "examples": shown,
    }
