"""Reading deletion batches: the interactions, users and items to unlearn.

A batch is a CSV (with header) or parquet table whose columns are

* ``user`` and ``item``: forget those interactions;
* only ``user``: erase those users entirely;
* only ``item``: withdraw those items entirely.

A file with both columns may also leave one of them empty on a row: a row
with a user and no item erases the user, a row with an item and no user
withdraws the item.  Other columns (ratings, timestamps, reasons...) are
ignored.

Conventions
-----------
* Result columns: ``user`` int (nullable), ``item`` int (nullable), ``kind``
  string, one of :data:`KINDS`; see :data:`DELETIONS_SCHEMA`.
* Ids are checked like ratings ids (:class:`InvalidIdError`); a row with
  neither id is invalid too.
* Repeated rows are harmless: they are dropped and their number logged.
* An empty batch is not an error here: it returns an empty DataFrame and
  the caller decides.
* Validation is one aggregate pass (problem counts, first examples, total
  and distinct row counts); the returned DataFrame is lazy.
"""

from __future__ import annotations

import logging
import posixpath

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ByteType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from spark_unlearn.data.readers import (
    strip_compression,
    csv_line,
    list_dir,
    read_csv_strings,
    require_path,
)
from spark_unlearn.data.validate import (
    Problem,
    collect_problems,
    describe_columns,
    numeric_example,
    numeric_id_problem,
    parse_string_id,
    raise_first,
    string_id_problem,
)
from spark_unlearn.errors import ConfigError, EmptyInputError, InvalidIdError, SchemaError
from spark_unlearn.schema import ITEM, USER

log = logging.getLogger(__name__)

KIND = "kind"
KIND_INTERACTION, KIND_USER, KIND_ITEM = "interaction", "user", "item"
KINDS = (KIND_INTERACTION, KIND_USER, KIND_ITEM)
FORMATS = ("auto", "csv", "parquet")

DELETIONS_SCHEMA = StructType(
    [
        StructField(USER, IntegerType(), True),
        StructField(ITEM, IntegerType(), True),
        StructField(KIND, StringType(), False),
    ]
)

_NUMERIC_TYPES = (ByteType, ShortType, IntegerType, LongType, FloatType, DoubleType, DecimalType)
_EXAMPLE_CHARS = 200


def read_deletions(
    spark: SparkSession,
    path: str,
    format: str = "auto",
    columns: dict[str, str | None] | None = None,
) -> DataFrame:
    """Read and validate a deletion batch.

    Parameters
    ----------
    spark
        Active session.
    path
        CSV file (header required) or parquet file/directory.
    format
        ``"auto"`` (by extension: ``.csv`` or ``.parquet`` / a directory of
        parquet files), ``"csv"`` or ``"parquet"``.
    columns
        Our name -> the file's column name, e.g. ``{"user": "uid", "item":
        "sku"}``; ``None`` as a value ignores that column.  Defaults to
        ``user`` and ``item``.

    Returns
    -------
    DataFrame
        Lazy, :data:`DELETIONS_SCHEMA`, without repeated rows; possibly empty.

    Raises
    ------
    SchemaError
        Neither a user nor an item column, a non-numeric parquet id column,
        malformed CSV lines, or an undetectable format.
    InvalidIdError
        An id that is not an integer in int32 range, or a row with neither id.
    EmptyInputError
        The path does not exist.
    ConfigError
        Unknown format or bad ``columns``.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown deletions format {format!r}; use one of {', '.join(map(repr, FORMATS))}")
    require_path(spark, path)
    fmt = _detect(spark, path) if format == "auto" else format
    if fmt == "csv":
        staged = _stage_csv(spark, path, columns)
    else:
        staged = _stage_parquet(spark, path, columns)
    if staged is None:
        log.warning("deletion batch %s is an empty file: no deletions", path)
        return spark.createDataFrame([], DELETIONS_SCHEMA)
    df, problems, user, item = staged
    return _finish(df, problems, user, item, path)


def _detect(spark: SparkSession, path: str) -> str:
    name = strip_compression(posixpath.basename(path.rstrip("/")))
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    children = list_dir(spark, path)
    if children is not None and any(c.endswith(".parquet") for c in children):
        return "parquet"
    raise SchemaError(
        f"cannot tell the format of deletion batch {path} from its name; pass format='csv' or format='parquet'"
    )


def column_mapping(
    columns: dict[str, str | None] | None, found: list[str], source: str, shown: str
) -> dict[str, str | None]:
    """Our name -> the file's column (``None``: absent), requiring at least one of them."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - {USER, ITEM})
    if unknown:
        raise ConfigError(f"columns= has unknown key(s) {unknown}; a deletion batch has only 'user' and 'item'")
    for ours, theirs in columns.items():
        if theirs is not None and not isinstance(theirs, str):
            raise ConfigError(f"columns['{ours}'] must be a column name (str) or None, got {theirs!r}")
        if theirs is not None and theirs not in found:
            raise SchemaError(f"{source}: column {theirs!r} (for {ours}) not found; the batch has columns {shown}")
    mapping = {ours: columns.get(ours, ours) for ours in (USER, ITEM)}
    mapping = {ours: (theirs if theirs in found else None) for ours, theirs in mapping.items()}
    if mapping[USER] is None and mapping[ITEM] is None:
        raise SchemaError(
            f"{source}: a deletion batch needs a user and/or an item column; found {shown}. "
            "Pass columns={'user': ..., 'item': ...} naming the file's columns"
        )
    return mapping


def _stage_csv(spark: SparkSession, path: str, columns) -> tuple[DataFrame, list[Problem], Column, Column] | None:
    """Problems and parsed id columns of a CSV batch; ``None`` for a file without even a header."""
    try:
        df, header, corrupt = read_csv_strings(spark, path, ",")
    except EmptyInputError:
        return None
    mapping = column_mapping(columns, header, path, str(header))
    line = F.concat(F.lit("line '"), F.substring(csv_line(header, corrupt, ","), 1, _EXAMPLE_CHARS), F.lit("'"))
    user_s = F.col(f"`{mapping[USER]}`") if mapping[USER] else F.lit(None).cast("string")
    item_s = F.col(f"`{mapping[ITEM]}`") if mapping[ITEM] else F.lit(None).cast("string")
    user, item = parse_string_id(user_s), parse_string_id(item_s)
    malformed = F.col(corrupt).isNotNull()
    problems = [
        string_id_problem(user_s, USER, line, required=False),
        string_id_problem(item_s, ITEM, line, required=False),
        _neither(user, item, line),
    ]
    wrong_fields = Problem(
        SchemaError,
        malformed,
        line,
        "with the wrong number of fields",
        f"Expected {len(header)} fields like the header {','.join(header)!r}",
    )
    return df, [wrong_fields] + [p.only_where(~malformed) for p in problems], user, item


def _stage_parquet(spark: SparkSession, path: str, columns) -> tuple[DataFrame, list[Problem], Column, Column]:
    """Problems and id columns of a parquet batch (ids must be numeric)."""
    df = spark.read.parquet(path)
    mapping = column_mapping(columns, df.columns, path, describe_columns(df))
    fields = {f.name: f.dataType for f in df.schema.fields}
    for ours, theirs in mapping.items():
        if theirs is not None and not isinstance(fields[theirs], _NUMERIC_TYPES):
            raise SchemaError(
                f"{path}: column {theirs!r} (for {ours}) has type {fields[theirs].simpleString()}, expected an "
                f"integer type; found {describe_columns(df)}"
            )
    user = F.col(f"`{mapping[USER]}`") if mapping[USER] else F.lit(None).cast("int")
    item = F.col(f"`{mapping[ITEM]}`") if mapping[ITEM] else F.lit(None).cast("int")
    example = numeric_example(*[c for c in mapping.values() if c is not None])
    problems = []
    for ours, col in ((USER, user), (ITEM, item)):
        if mapping[ours] is not None:
            problems.append(numeric_id_problem(col, fields[mapping[ours]], ours, example, required=False))
    problems.append(_neither(user, item, example))
    return df, problems, user, item


def _neither(user: Column, item: Column, example: Column) -> Problem:
    return Problem(
        InvalidIdError,
        user.isNull() & item.isNull(),
        example,
        "with neither a user nor an item id",
        "every row must name a user, an item or both",
    )


def _finish(df: DataFrame, problems: list[Problem], user: Column, item: Column, source: str) -> DataFrame:
    """Check, count repeated rows and kinds, and shape the batch as ``DELETIONS_SCHEMA``."""
    # try_cast: this aggregate also sees the bad rows it is looking for, and a
    # plain cast of 1e20 would fail the job under ANSI before we can report it.
    user_id, item_id = user.try_cast("long"), item.try_cast("long")
    extra = [
        F.count_distinct(F.struct(user_id, item_id)),
        F.count_if(user_id.isNotNull() & item_id.isNotNull()),
        F.count_if(user_id.isNotNull() & item_id.isNull()),
        F.count_if(user_id.isNull() & item_id.isNotNull()),
    ]
    total, findings, (n_distinct, n_pairs, n_users, n_items) = collect_problems(df, problems, extra=extra)
    raise_first(findings, source)
    if total == 0:
        log.warning("deletion batch %s holds no rows", source)
    else:
        log.info(
            "deletion batch %s: %s interaction, %s user and %s item row(s); %s repeated row(s) dropped",
            source, f"{n_pairs:,}", f"{n_users:,}", f"{n_items:,}", f"{total - n_distinct:,}",
        )
    kind = (
        F.when(user_id.isNotNull() & item_id.isNotNull(), F.lit(KIND_INTERACTION))
        .when(user_id.isNotNull(), F.lit(KIND_USER))
        .otherwise(F.lit(KIND_ITEM))
    )
    return df.select(user_id.cast("int").alias(USER), item_id.cast("int").alias(ITEM), kind.alias(KIND)).dropDuplicates()
