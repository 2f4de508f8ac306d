"""The Parquet tables of a model-store version: where they sit, how they are written, read and checked.

A version directory (see :mod:`spark_unlearn.store.model_store`) holds, beside
the Spark ``ALSModel`` layout (:mod:`spark_unlearn.store.spark_layout`), the
optional tables named here: offsets, ratings, holdout and forgotten ids.  This
module writes a table (a DataFrame in full, or a
:class:`~spark_unlearn.store.derived.DerivedTable` copy-on-write), reads the
factor tables, casts inputs to the shared schemas and validates the factor
tables that were written.  The publish path calls these through module-level
names so tests can inject failures.
"""

from __future__ import annotations

import functools
import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    ByteType,
    DoubleType,
    FloatType,
    IntegerType,
    NumericType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from spark_unlearn.errors import EmptyInputError, SchemaError, StoreError
from spark_unlearn.store.derived import DerivedTable, touched_files, write_derived
from spark_unlearn.store.fsutil import file_uri, files_for, write_text_durable
from spark_unlearn.store.parquet_io import write_arrow_file

USER_OFFSETS, ITEM_OFFSETS = "offsets/users", "offsets/items"
RATINGS_DIR = "ratings"
RATINGS_BY_ITEM_DIR = "ratings_by_item"  # the same rows, blocked by item (a request reads an item's ratings there)
HOLDOUT_DIR = "holdout"
FORGOTTEN_DIR = "forgotten"
FORGOTTEN_SCHEMA = StructType([StructField("user", IntegerType()), StructField("item", IntegerType()),
                               StructField("kind", StringType())])
"""The requests a version's deletion removed (ids only)."""


def write_table(spark: SparkSession, table, staging: str, rel: str, touched: dict[str, set[str]] | None = None
                ) -> dict[str, dict[str, int]]:
    """Write a data table: a DataFrame in full, or a :class:`DerivedTable` copy-on-write (returns its file counts).

    ``touched``: :func:`touched_together`'s scan, when it covered this table.
    """
    if isinstance(table, DerivedTable):
        hit = (touched or {}).get(table.parent_dir)
        return {rel: write_derived(spark, table, os.path.join(staging, rel), touched=hit)}
    write_parquet(table, os.path.join(staging, rel))
    return {}


def touched_together(spark: SparkSession, *tables) -> dict[str, set[str]] | None:
    """The touched part files of derived tables that share a deletion batch, found in one scan (else ``None``)."""
    derived = [t for t in tables if isinstance(t, DerivedTable)]
    if len(derived) < 2 or any(t.batch is not derived[0].batch for t in derived):
        return None
    return touched_files(spark, [t.parent_dir for t in derived], derived[0].batch)


def write_parquet(df: DataFrame, path: str) -> None:
    """Write ``df`` as a new Parquet table at ``path`` (a plain path or a URI; refuses to overwrite)."""
    df.write.mode("error").parquet(file_uri(path))


def write_local_parquet(table, path: str) -> None:
    """Write the Arrow ``table`` (small, on the driver) as a new one-file Parquet table at ``path``, with pyarrow."""
    import uuid

    files_for(path).makedirs(path, exist_ok=False)
    write_arrow_file(table, os.path.join(path, f"part-00000-{uuid.uuid4().hex}-c000.snappy.parquet"))
    write_text_durable(os.path.join(path, "_SUCCESS"), "")


def read_factors(spark: SparkSession, path: str, typed: bool = False) -> DataFrame:
    """The ``id``, ``features`` columns of the factor table at ``path`` (a lazy read; ``typed``: see :func:`read_table`)."""
    from spark_unlearn.schema import FACTORS_SCHEMA

    return read_table(spark, path, FACTORS_SCHEMA if typed else None).select("id", "features")


def read_table(spark: SparkSession, path: str, schema: StructType | None = None) -> DataFrame:
    """The Parquet table at ``path``, lazily.  With the ``schema`` it was written with, Spark does not start a job
    to read a file footer for it (a version that records its blocks wrote every table in the shared schemas)."""
    reader = spark.read if schema is None else spark.read.schema(schema)
    return reader.parquet(file_uri(path))


def canon_to_schema(df: DataFrame, schema: StructType, what: str) -> DataFrame:
    """Select and cast ``df``'s columns to ``schema`` (one of the shared schemas).

    Ids must already be 32-bit (or narrower) integers: a silent long-to-int
    cast could wrap.  Float columns and arrays may be float or double and are
    cast to the schema's width (factors are stored as float32).
    """
    out = []
    for field in schema.fields:
        if field.name not in df.columns:
            raise SchemaError(f"{what} lacks column {field.name!r}; expected {schema.fieldNames()}, have {df.columns}")
        have = df.schema[field.name].dataType
        want = field.dataType
        if isinstance(want, IntegerType):
            ok = isinstance(have, (IntegerType, ShortType, ByteType))
        elif isinstance(want, ArrayType):
            ok = isinstance(have, ArrayType) and isinstance(have.elementType, (FloatType, DoubleType))
        else:
            ok = isinstance(have, NumericType)
        if not ok:
            raise SchemaError(
                f"{what}.{field.name} must be {want.simpleString()} (ids are int32), "
                f"got {have.simpleString()}; cast it first"
            )
        if isinstance(want, ArrayType):
            # Element nullability follows the input: Spark refuses to cast it away.
            want = ArrayType(want.elementType, have.containsNull)
        out.append(F.col(field.name).cast(want).alias(field.name))
    return df.select(*out)


def check_written_factors(spark: SparkSession, paths: dict[str, str], rank: int) -> dict[str, int]:
    """Validate written factor tables (``side -> path``) in one scan of them all; return each side's row count."""
    bad_value = F.exists("features", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    tables = [spark.read.parquet(file_uri(path)).select(F.lit(side).alias("side"), "id", "features")
              for side, path in paths.items()]
    union = functools.reduce(DataFrame.unionByName, tables)
    rows = {
        r["side"]: r
        for r in union.groupBy("side").agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct("id").alias("distinct"),
            F.sum(F.when(F.col("id").isNull(), 1).otherwise(0)).alias("null_ids"),
            F.sum(F.when(F.col("features").isNull() | (F.size("features") != rank), 1).otherwise(0)).alias("bad_len"),
            F.sum(F.when(bad_value, 1).otherwise(0)).alias("non_finite"),
        ).collect()
    }
    counts = {}
    for side in paths:  # in the caller's order: the first side's problem is reported first
        row = rows.get(side)
        n = int(row["n"]) if row is not None else 0
        if n == 0:
            raise EmptyInputError(f"{side} factors have no rows; refusing to publish an empty model")
        if row["null_ids"]:
            raise SchemaError(f"{row['null_ids']} {side} factor row(s) have a null id")
        if row["distinct"] != n - row["null_ids"]:
            raise SchemaError(f"{side} factors repeat ids: {n} rows but {row['distinct']} distinct ids")
        if row["bad_len"]:
            raise SchemaError(f"{row['bad_len']} {side} factor row(s) do not have {rank} features (params.rank)")
        if row["non_finite"]:
            raise StoreError(
                f"{row['non_finite']} {side} factor row(s) hold NaN, infinite or null features; refusing to publish"
            )
        counts[side] = n
    return counts


__all__ = [
    "FORGOTTEN_DIR",
    "HOLDOUT_DIR",
    "ITEM_OFFSETS",
    "RATINGS_BY_ITEM_DIR",
    "write_local_parquet",
    "FORGOTTEN_SCHEMA",
    "read_table",
    "RATINGS_DIR",
    "USER_OFFSETS",
    "canon_to_schema",
    "check_written_factors",
    "read_factors",
    "touched_together",
    "write_parquet",
    "write_table",
]
