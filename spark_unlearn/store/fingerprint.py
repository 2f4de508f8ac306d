"""The identity of a ratings table: an order-independent fingerprint computed by Spark.

A version's manifest records the fingerprint of the ratings it was trained on
(``data_fingerprint``), so a job can tell whether the data it was given is the
data behind a model.  The same rows always give the same fingerprint, whatever
their order and partitioning.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.errors import SchemaError
from spark_unlearn.schema import ITEM, RATING, USER

_FP_SALT = "spark_unlearn.fingerprint.v1"


def fingerprint_ratings(ratings: DataFrame) -> str:
    """Order-independent fingerprint of a ratings table, computed in one Spark aggregation.

    Each row ``(user int, item int, rating float)`` is hashed with two
    independent ``xxhash64`` functions.  The fingerprint combines the row
    count, the exact sums of the 32-bit halves of both hashes (sums, unlike
    xor, see duplicated rows) and the xor of the first hash; all are
    invariant to row order and partitioning.

    Parameters
    ----------
    ratings
        DataFrame with ``user``, ``item``, ``rating`` columns; cast to
        ``RATINGS_SCHEMA`` types first so the same data always hashes the same.

    Returns
    -------
    str
        64 hex characters.
    """
    return fingerprint_and_count(ratings)[0]


def fingerprint_and_count(ratings: DataFrame) -> tuple[str, int]:
    """:func:`fingerprint_ratings` and the row count, from the same single aggregation."""
    missing = [c for c in (USER, ITEM, RATING) if c not in ratings.columns]
    if missing:
        raise SchemaError(f"ratings lack column(s) {missing}; have {ratings.columns}")
    canon = ratings.select(
        F.col(USER).cast("int").alias(USER),
        F.col(ITEM).cast("int").alias(ITEM),
        F.col(RATING).cast("float").alias(RATING),
    )
    hashed = canon.select(
        F.xxhash64(USER, ITEM, RATING).alias("h1"),
        F.xxhash64(F.lit(_FP_SALT), USER, ITEM, RATING).alias("h2"),
    )
    low32 = F.lit(0xFFFFFFFF)

    def _halves(col: str) -> list:
        # decimal sums cannot overflow (ANSI mode would raise on a long overflow)
        return [
            F.sum(F.col(col).bitwiseAND(low32).cast("decimal(20,0)")),
            F.sum(F.shiftrightunsigned(col, 32).cast("decimal(20,0)")),
        ]

    row = hashed.agg(F.count(F.lit(1)), *_halves("h1"), *_halves("h2"), F.bit_xor("h1")).first()
    values = [int(v) if v is not None else 0 for v in row]
    token = "ratings-fp-v1:" + ":".join(f"{v & ((1 << 128) - 1):x}" for v in values)
    return hashlib.sha256(token.encode("ascii")).hexdigest(), values[0]


__all__ = ["fingerprint_and_count", "fingerprint_ratings"]
