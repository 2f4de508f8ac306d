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

# Per-row training residual e_r = A_r x_r - b_r (DESIGN §2) and |b_r|, kept in double.
OFFSETS_SCHEMA = StructType(
    [
        StructField("id", IntegerType(), False),
        StructField("residual", ArrayType(DoubleType(), False), False),
        StructField("bnorm", DoubleType(), False),
    ]
)

# Internal transport: an id and one double array (residual and |b| side by side).
WIDE_DOUBLES_SCHEMA = StructType(
    [StructField("id", IntegerType(), False), StructField("values", ArrayType(DoubleType(), False), False)]
)

INT32_MAX = 2**31 - 1
