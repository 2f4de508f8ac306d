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
FINGERPRINT_STATE = "data_fingerprint_state"
"""The manifest key of the sums behind a version's ``data_fingerprint`` (:func:`fingerprint_state`)."""


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
    fp, state = fingerprint_state(ratings)
    return fp, state_count(state)


def state_count(state: list[str]) -> int:
    """The row count a fingerprint state records."""
    return int(state[0], 16)


def fingerprint_state(ratings: DataFrame) -> tuple[str, list[str]]:
    """:func:`fingerprint_ratings` and the sums behind it (hex strings, for the manifest), in one aggregation.

    The state lets :func:`fingerprint_without` derive the fingerprint of the
    table minus some of its rows on the driver.
    """
    missing = [c for c in (USER, ITEM, RATING) if c not in ratings.columns]
    if missing:
        raise SchemaError(f"ratings lack column(s) {missing}; have {ratings.columns}")
    values = _values(ratings)
    return _digest(values), [f"{v & _MASK:x}" for v in values]


_MASK = (1 << 128) - 1


def _digest(values: list[int]) -> str:
    token = "ratings-fp-v1:" + ":".join(f"{v & _MASK:x}" for v in values)
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _values(ratings: DataFrame) -> list[int]:
    canon = ratings.select(F.col(USER).cast("int").alias(USER), F.col(ITEM).cast("int").alias(ITEM),
                           F.col(RATING).cast("float").alias(RATING))
    hashed = canon.select(F.xxhash64(USER, ITEM, RATING).alias("h1"),
                          F.xxhash64(F.lit(_FP_SALT), USER, ITEM, RATING).alias("h2"))
    low32 = F.lit(0xFFFFFFFF)
    halves = [agg for col in ("h1", "h2") for agg in (
        F.sum(F.col(col).bitwiseAND(low32).cast("decimal(20,0)")),
        F.sum(F.shiftrightunsigned(col, 32).cast("decimal(20,0)")))]
    row = hashed.agg(F.count(F.lit(1)), *halves, F.bit_xor("h1")).first()
    return [int(v) if v is not None else 0 for v in row]


# --------------------------------------------------------------------------- Spark's xxhash64, on the driver

_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P5 = 0x27D4EB2F165667C5
SALT_HASH = 0x67ED17BC66B0D8BE
"""``xxhash64(lit(_FP_SALT))`` as Spark computes it (seed 42): the seed of the second hash's chain (checked by a test)."""


def _rotl(x, r: int):
    import numpy as np

    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h):
    import numpy as np

    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(_P2)
    h = h ^ (h >> np.uint64(29))
    h = h * np.uint64(_P3)
    return h ^ (h >> np.uint64(32))


def hash_int(values, seed):
    """Spark's ``XXH64.hashInt`` of 32-bit values (numpy, elementwise; ``seed`` a uint64 scalar or array)."""
    import numpy as np

    with np.errstate(over="ignore"):
        v = np.asarray(values).astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)
        h = np.asarray(seed, np.uint64) + np.uint64(_P5) + np.uint64(4)
        h = h ^ (v * np.uint64(_P1))
        h = _rotl(h, 23) * np.uint64(_P2) + np.uint64(_P3)
        return _fmix(h)


def row_hashes(users, items, ratings):
    """``(h1, h2)`` of rows as :func:`fingerprint_ratings` hashes them in Spark (uint64 arrays)."""
    import numpy as np

    r = np.asarray(ratings, np.float32).copy()
    r[r == 0] = 0.0  # Spark hashes -0.0 as 0.0
    bits = r.view(np.int32)
    bits = np.where(np.isnan(r), np.int32(0x7FC00000), bits)  # Float.floatToIntBits: one NaN
    out = []
    for seed in (42, SALT_HASH):
        h = np.full(len(r), seed, np.uint64)
        for col in (users, items, bits):
            h = hash_int(col, h)
        out.append(h)
    return out[0], out[1]


def fingerprint_without(state: list[str], users, items, ratings) -> tuple[str, list[str]]:
    """The fingerprint (and state) of the table ``state`` describes minus the rows ``(users, items, ratings)``.

    The rows must be distinct rows of that table (a deletion's removed
    ratings): the count and the sums lose their hashes, and the xor loses
    them again.
    """
    import numpy as np

    h1, h2 = row_hashes(users, items, ratings)
    values = [int(v, 16) for v in state]
    low = np.uint64(0xFFFFFFFF)
    values[0] -= len(h1)
    values[1] -= int((h1 & low).astype(object).sum())
    values[2] -= int((h1 >> np.uint64(32)).astype(object).sum())
    values[3] -= int((h2 & low).astype(object).sum())
    values[4] -= int((h2 >> np.uint64(32)).astype(object).sum())
    x = int(np.bitwise_xor.reduce(h1, initial=np.uint64(0)))
    # The stored xor is a signed long taken mod 2^128: flip the low 64 bits, keep the sign extension.
    signed = values[5] if values[5] < (1 << 127) else values[5] - (1 << 128)
    signed_u64 = (signed & ((1 << 64) - 1)) ^ x
    values[5] = signed_u64 - (1 << 64) if signed_u64 >= (1 << 63) else signed_u64
    return _digest(values), [f"{v & _MASK:x}" for v in values]


__all__ = ["FINGERPRINT_STATE", "fingerprint_and_count", "fingerprint_ratings", "fingerprint_state", "fingerprint_without", "row_hashes",
           "state_count"]
