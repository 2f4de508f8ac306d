"""Canonical table schemas shared by every module.

* Ratings: ``user`` int, ``item`` int, ``rating`` float (Spark ALS column
  names and types; ids are int32 as Spark ALS requires).
* Factors: ``id`` int, ``features`` array<float> (the layout of Spark's
  ``ALSModel.userFactors`` / ``itemFactors``, which ``ALSModel.load`` reads).
"""

from __future__ import annotations

from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, StructField, StructType

USER, ITEM, RATING = "user", "item", "rating"

RATINGS_SCHEMA = StructType(
    [
        StructField(USER, IntegerType(), False),
        StructField(ITEM, IntegerType(), False),
        StructField(RATING, FloatType(), False),
    ]
)

FACTORS_SCHEMA = StructType(
    [
        StructField("id", IntegerType(), False),
        StructField("features", ArrayType(FloatType(), False), True),
    ]
)

# Per-row offsets of Unlearn-ALS (DESIGN §2), kept in double:
#   residual  the row's target t_r: its training residual e_r = A_r x_r - b_r, or 0 once its own data changed;
#   bnorm     |b_r| (a lower bound of it after incremental unlearning);
#   drift     d_r = A_r x_r - b_r - t_r on the version's data, the part of the residual the target does not
#             explain (0 after training).  Kept apart from the target so that sub-tolerance drift is never
#             absorbed into it: the version's certificate is max_r |d_r| / bnorm_r.
OFFSETS_SCHEMA = StructType(
    [
        StructField("id", IntegerType(), False),
        StructField("residual", ArrayType(DoubleType(), False), False),
        StructField("bnorm", DoubleType(), False),
        StructField("drift", ArrayType(DoubleType(), False), False),
    ]
)



def with_drift(offsets):
    """``offsets`` with a ``drift`` column: zeros when absent (tables written before drift was kept apart).

    Such tables stored the whole current residual as the target, which is
    what a zero drift means.
    """
    from pyspark.sql import functions as F

    if "drift" in offsets.columns:
        return offsets
    return offsets.withColumn("drift", F.transform("residual", lambda x: F.lit(0.0)))


# Internal transport: an id and one double array (residual and |b| side by side).
WIDE_DOUBLES_SCHEMA = StructType(
    [StructField("id", IntegerType(), False), StructField("values", ArrayType(DoubleType(), False), False)]
)

INT32_MAX = 2**31 - 1


def renamed_columns(df, columns: list[str], names: list[str], what: str, fix: str):
    """``df``'s ``columns`` selected under ``names`` (a caller's column names -> ours), or a clear error.

    Raises
    ------
    SchemaError
        A column is missing: the message names it, the columns ``df`` has,
        ``what`` (e.g. ``"ALSUnlearner.unlearn: ratings"``) and ``fix``.
    """
    from pyspark.sql import functions as F

    from spark_unlearn.errors import SchemaError

    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise SchemaError(f"{what} has no column {absent} (it has {df.columns}); {fix}")
    return df.select(*(F.col(c).alias(n) for c, n in zip(columns, names)))
