"""Reading ratings files into validated ``RATINGS_SCHEMA`` DataFrames.

Supported formats
-----------------
``"movielens-dat"``
    ``user::item::rating::timestamp`` lines, no header (MovieLens 1M/10M
    ``ratings.dat``, pyspark's ``sample_movielens_ratings.txt``).
``"udata"``
    ``user<TAB>item<TAB>rating<TAB>timestamp`` lines, no header (MovieLens
    100k ``u.data``, ``u1.base``...).
``"movielens-csv"``
    CSV with header ``userId,movieId,rating,timestamp`` (MovieLens
    ``ratings.csv`` of ml-latest, ml-25m, ml-32m...).
``"csv"``
    Any CSV with a header; ``columns`` maps our names to the file's.
``"parquet"``
    A parquet file or directory; ``columns`` maps our names to the file's.

For the two headerless formats the timestamp field is optional (3 or 4
fields per line); blank lines are skipped.  Compressed text files
(``.gz``, ``.bz2``...) are read transparently by Spark.

Conventions
-----------
* Text is read by Spark as strings and converted with explicit checks, so a
  malformed line or a bad value raises with the offending line quoted instead
  of silently becoming null.  The checks cost one aggregate pass plus one
  duplicate pass; nothing but those one-row results reaches the driver.
* The returned DataFrame is lazy: it re-reads the files when used.  Cache it
  if it is used more than once.
* ``columns`` maps our names (``user``, ``item``, ``rating``, ``timestamp``)
  to the file's column names; ``{"rating": None}`` declares implicit data
  (every rating is 1.0).  A timestamp is only read for ``duplicates="last"``.
"""

from __future__ import annotations

import csv
import logging
import posixpath
import re

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from spark_unlearn.data.validate import (
    TIMESTAMP,
    Problem,
    check_policy,
    collect_problems,
    describe_columns,
    parse_string_id,
    parse_string_rating,
    raise_first,
    require_rows,
    resolve_duplicates,
    string_id_problem,
    string_rating_problem,
    to_ratings_schema,
    validate_numeric,
)
from spark_unlearn.errors import ConfigError, EmptyInputError, SchemaError
from spark_unlearn.schema import ITEM, RATING, USER

log = logging.getLogger(__name__)

FORMATS = ("auto", "movielens-dat", "udata", "movielens-csv", "csv", "parquet")
_OUR_COLUMNS = {USER: USER, ITEM: ITEM, RATING: RATING, TIMESTAMP: TIMESTAMP}
MOVIELENS_CSV_COLUMNS = {USER: "userId", ITEM: "movieId", RATING: "rating", TIMESTAMP: "timestamp"}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".snappy", ".deflate")
_TEXT_DELIMITERS = {"movielens-dat": "::", "udata": "\t"}
_EXAMPLE_CHARS = 200

# Internal column names of the string stage; prefixed so they cannot collide
# with a file's own columns.
_LINE, _BAD = "_su_line", "_su_malformed"
_USER_S, _ITEM_S, _RATING_S, _TS_S = "_su_user", "_su_item", "_su_rating", "_su_ts"


def read_ratings(
    spark: SparkSession,
    path: str,
    format: str = "auto",
    columns: dict[str, str | None] | None = None,
    duplicates: str = "error",
    delimiter: str | None = None,
) -> DataFrame:
    """Read and validate a ratings file as exactly ``RATINGS_SCHEMA``.

    Parameters
    ----------
    spark
        Active session.
    path
        File or directory (any Hadoop file system URI).
    format
        One of :data:`FORMATS`; ``"auto"`` picks by name and first line (see
        :func:`detect_format`).
    columns
        Our name -> the file's column name, for ``csv``, ``movielens-csv`` and
        ``parquet``; e.g. ``{"user": "uid", "item": "sku", "rating": "score"}``.
        Names not given default to ours (MovieLens names for
        ``movielens-csv``).  ``{"rating": None}`` means implicit data, rating 1.0.
    duplicates
        Policy for repeated (user, item) pairs: ``"error"``, ``"mean"``,
        ``"sum"``, ``"max"`` or ``"last"`` (latest timestamp).
    delimiter
        Field separator, overriding the format's (``,`` for CSV, ``::`` for
        movielens-dat, tab for udata).

    Returns
    -------
    DataFrame
        Lazy, validated, with user int, item int, rating float, non-null.

    Raises
    ------
    SchemaError
        Unknown layout, missing columns or malformed lines.
    InvalidIdError, InvalidRatingError
        Bad ids or ratings (message quotes the first offending line).
    DuplicateRatingError
        Repeated pairs with ``duplicates="error"``.
    EmptyInputError
        The path does not exist or holds no ratings.
    ConfigError
        Unknown format or policy, or ``columns`` invalid for the format.
    """
    check_policy(duplicates)
    if format not in FORMATS:
        raise ConfigError(f"unknown ratings format {format!r}; use one of {', '.join(map(repr, FORMATS))}")
    require_path(spark, path)
    fmt = detect_format(spark, path, delimiter) if format == "auto" else format
    log.info("reading ratings from %s as %s", path, fmt)
    with_ts = duplicates == "last"
    if fmt == "parquet":
        df = _read_parquet(spark, path, columns, with_ts)
        return validate_numeric(df, duplicates, source=path)
    if fmt in _TEXT_DELIMITERS:
        if columns:
            raise ConfigError(f"columns= does not apply to format {fmt!r} (fields are positional); got {columns!r}")
        raw, hint = _read_delimited_text(spark, path, fmt, delimiter or _TEXT_DELIMITERS[fmt], with_ts)
    else:
        defaults = MOVIELENS_CSV_COLUMNS if fmt == "movielens-csv" else _OUR_COLUMNS
        raw, hint = _read_csv_ratings(spark, path, defaults, columns, delimiter or ",", with_ts)
    parsed = _check_and_parse(raw, path, hint)
    return to_ratings_schema(resolve_duplicates(parsed, duplicates, path))


# --------------------------------------------------------------------------- format detection


def detect_format(spark: SparkSession, path: str, delimiter: str | None = None) -> str:
    """Guess the ratings format of ``path``.

    Rules, in order: ``*.parquet`` or a directory holding ``*.parquet`` files
    -> parquet; basename ``u.data`` -> udata; ``*.dat`` -> movielens-dat; a
    first line containing ``::`` -> movielens-dat; ``*.csv`` whose header
    starts ``userId,movieId`` -> movielens-csv; other ``*.csv`` -> csv; a first
    line of tab-separated integers -> udata.  Compression suffixes are ignored;
    ``delimiter`` (default ``,``) splits a CSV header.

    Raises
    ------
    SchemaError
        None of the rules applies; pass ``format=`` explicitly.
    """
    name = strip_compression(posixpath.basename(path.rstrip("/")))
    if name.endswith(".parquet"):
        return "parquet"
    children = list_dir(spark, path)
    if children is not None:
        if any(c.endswith(".parquet") for c in children):
            return "parquet"
        raise SchemaError(
            f"{path} is a directory without *.parquet files (found {sorted(children)[:10]}); "
            "pass format= explicitly or point at a file"
        )
    if name == "u.data":
        return "udata"
    if name.endswith(".dat"):
        return "movielens-dat"
    first = first_line(spark, path)
    if first is None:
        raise EmptyInputError(f"{path} is empty: no ratings")
    if "::" in first:
        return "movielens-dat"
    if name.endswith(".csv"):
        header = split_header(first, delimiter or ",")
        return "movielens-csv" if header[:2] == ["userId", "movieId"] else "csv"
    if re.fullmatch(r"\s*\d+\t\d+\t[^\t]+(\t\d+)?\s*", first):
        return "udata"
    raise SchemaError(
        f"cannot tell the format of {path} from its name or first line {first[:_EXAMPLE_CHARS]!r}; pass "
        f"format= one of {', '.join(repr(f) for f in FORMATS if f != 'auto')}"
    )


def strip_compression(name: str) -> str:
    """``name`` without a compression suffix Spark reads transparently (``.gz``, ``.bz2``, ...)."""
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- file system


def _hadoop_fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def require_path(spark: SparkSession, path: str) -> None:
    """Raise :class:`EmptyInputError` when ``path`` (or glob) matches nothing."""
    fs, hpath = _hadoop_fs(spark, path)
    matches = fs.globStatus(hpath)
    if matches is None or len(matches) == 0:
        raise EmptyInputError(
            f"input path {path} does not exist; check the path (relative paths are resolved by Spark)"
        )


def list_dir(spark: SparkSession, path: str) -> list[str] | None:
    """Visible entry names of directory ``path``, or ``None`` if it is not a directory."""
    fs, hpath = _hadoop_fs(spark, path)
    if not fs.exists(hpath) or not fs.getFileStatus(hpath).isDirectory():
        return None
    names = [status.getPath().getName() for status in fs.listStatus(hpath)]
    return [n for n in names if not n.startswith(("_", "."))]


def first_line(spark: SparkSession, path: str) -> str | None:
    """First line of a text file (``None`` if empty); reads one partition only."""
    rows = spark.read.text(path).limit(1).collect()
    return rows[0][0].lstrip("\ufeff") if rows else None


def split_header(line: str, delimiter: str) -> list[str]:
    """Column names of a CSV header line (quotes removed, spaces stripped)."""
    line = line.lstrip("\ufeff")
    if len(delimiter) == 1:
        fields = next(csv.reader([line], delimiter=delimiter), [])
    else:
        fields = line.split(delimiter)
    return [f.strip() for f in fields]


# --------------------------------------------------------------------------- readers


def _read_delimited_text(
    spark: SparkSession, path: str, fmt: str, delimiter: str, with_ts: bool
) -> tuple[DataFrame, str]:
    """Headerless ``user<d>item<d>rating[<d>timestamp]`` lines as strings, one row per non-blank line."""
    line = F.regexp_replace(F.col("value"), r"^[\s\x{FEFF}]+|\s+$", "")
    lines = spark.read.text(path).select(line.alias(_LINE)).filter(F.col(_LINE) != "")
    # \Q...\E makes the delimiter literal in Java's regex syntax.
    fields = F.split(F.col(_LINE), "\\Q" + delimiter + "\\E", -1)
    shown = delimiter.replace("\t", "<TAB>")
    layout = f"user{shown}item{shown}rating[{shown}timestamp]"
    cols = [
        F.col(_LINE),
        (~F.size(fields).isin(3, 4)).alias(_BAD),
        F.get(fields, 0).alias(_USER_S),
        F.get(fields, 1).alias(_ITEM_S),
        F.get(fields, 2).alias(_RATING_S),
    ]
    if with_ts:
        cols.append(F.get(fields, 3).alias(_TS_S))
    return lines.select(*cols), f"Expected {layout} ({fmt}); check the delimiter (delimiter=) or the format (format=)"


def read_csv_strings(spark: SparkSession, path: str, delimiter: str) -> tuple[DataFrame, list[str], str]:
    """Read a CSV with header as all-string columns plus a corrupt-record column.

    Returns
    -------
    df, header, corrupt
        ``df`` has one string column per header name and ``corrupt`` holding
        the raw line of rows with the wrong number of fields.  Spark only
        detects those when every column is referenced by the query, which the
        example column of :func:`csv_line` does.

    Raises
    ------
    EmptyInputError
        The file has no header line.
    SchemaError
        The header repeats a column name.
    """
    first = first_line(spark, path)
    if first is None:
        raise EmptyInputError(f"{path} is empty: no header line and no rows")
    header = split_header(first, delimiter)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise SchemaError(f"{path}: header {header} repeats column(s) {dupes}; column names must be unique")
    corrupt = "_corrupt_record"
    while corrupt in header:
        corrupt = "_" + corrupt
    schema = StructType([StructField(h, StringType()) for h in header] + [StructField(corrupt, StringType())])
    df = spark.read.csv(
        path,
        schema=schema,
        header=True,
        sep=delimiter,
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=corrupt,
    )
    return df, header, corrupt


def csv_line(header: list[str], corrupt: str, delimiter: str) -> Column:
    """The row as its raw line (malformed rows) or its fields re-joined (others)."""
    fields = [F.coalesce(F.col(f"`{h}`"), F.lit("")) for h in header]
    return F.coalesce(F.col(corrupt), F.concat_ws(delimiter, *fields))


def _read_csv_ratings(
    spark: SparkSession,
    path: str,
    defaults: dict[str, str],
    columns: dict[str, str | None] | None,
    delimiter: str,
    with_ts: bool,
) -> tuple[DataFrame, str]:
    df, header, corrupt = read_csv_strings(spark, path, delimiter)
    mapping = resolve_columns(columns, defaults, header, path, with_ts, delimiter)
    cols = [
        csv_line(header, corrupt, delimiter).alias(_LINE),
        F.col(corrupt).isNotNull().alias(_BAD),
        F.col(f"`{mapping[USER]}`").alias(_USER_S),
        F.col(f"`{mapping[ITEM]}`").alias(_ITEM_S),
    ]
    if mapping[RATING] is not None:
        cols.append(F.col(f"`{mapping[RATING]}`").alias(_RATING_S))
    if mapping.get(TIMESTAMP) is not None:
        cols.append(F.col(f"`{mapping[TIMESTAMP]}`").alias(_TS_S))
    hint = (
        f"Expected {len(header)} fields like the header {delimiter.join(header)!r}; "
        "check the delimiter (delimiter=) and the quoting"
    )
    return df.select(*cols), hint


def _read_parquet(spark: SparkSession, path: str, columns: dict[str, str | None] | None, with_ts: bool) -> DataFrame:
    df = spark.read.parquet(path)
    mapping = resolve_columns(columns, _OUR_COLUMNS, df.columns, path, with_ts, None, df)
    cols = [F.col(f"`{mapping[USER]}`").alias(USER), F.col(f"`{mapping[ITEM]}`").alias(ITEM)]
    rating = F.col(f"`{mapping[RATING]}`") if mapping[RATING] is not None else F.lit(1.0)
    cols.append(rating.alias(RATING))
    if mapping.get(TIMESTAMP) is not None:
        cols.append(F.col(f"`{mapping[TIMESTAMP]}`").alias(TIMESTAMP))
    return df.select(*cols)


def resolve_columns(
    columns: dict[str, str | None] | None,
    defaults: dict[str, str],
    found: list[str],
    source: str,
    with_ts: bool,
    delimiter: str | None,
    df: DataFrame | None = None,
) -> dict[str, str | None]:
    """Our column name -> the file's, checked against the file's columns.

    The timestamp is only looked up when ``with_ts``; a default timestamp
    column that is absent is simply not used.
    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(defaults))
    if unknown:
        raise ConfigError(f"columns= has unknown key(s) {unknown}; allowed keys are {sorted(defaults)}")
    for ours, theirs in columns.items():
        if theirs is None and ours in (USER, ITEM):
            raise ConfigError(f"columns={{'{ours}': None}} is not allowed: every rating needs a {ours} id")
        if theirs is not None and not isinstance(theirs, str):
            raise ConfigError(f"columns['{ours}'] must be a column name (str) or None, got {theirs!r}")
    mapping = {**defaults, **columns}
    if not with_ts:
        mapping[TIMESTAMP] = None
    elif TIMESTAMP not in columns and mapping[TIMESTAMP] not in found:
        mapping[TIMESTAMP] = None
    missing = {ours: theirs for ours, theirs in mapping.items() if theirs is not None and theirs not in found}
    if missing:
        shown = describe_columns(df) if df is not None else str(found)
        hint = f" or delimiter= (read with {delimiter!r})" if delimiter is not None and len(found) == 1 else ""
        raise SchemaError(
            f"{source}: column(s) {sorted(missing.values())} (for {sorted(missing)}) not found; the file has columns "
            f"{shown}. Pass columns={{'user': ..., 'item': ..., 'rating': ...}} naming the file's columns{hint}"
        )
    return mapping


# --------------------------------------------------------------------------- checks


def _check_and_parse(raw: DataFrame, source: str, hint: str) -> DataFrame:
    """Run every row check in one aggregate, raise on problems, else convert the strings.

    ``raw`` holds the string stage: the line, the malformed flag, the id
    strings and optionally the rating and timestamp strings (absent rating
    means implicit data).  ``hint`` describes the expected layout.
    """
    with_rating, with_ts = _RATING_S in raw.columns, _TS_S in raw.columns
    line = F.concat(F.lit("line '"), F.substring(F.col(_LINE), 1, _EXAMPLE_CHARS), F.lit("'"))
    ok = ~F.col(_BAD)
    problems = [
        string_id_problem(F.col(_USER_S), USER, line),
        string_id_problem(F.col(_ITEM_S), ITEM, line),
    ]
    if with_rating:
        problems.append(string_rating_problem(F.col(_RATING_S), line))
    if with_ts:
        ts = F.trim(F.col(_TS_S))
        bad_ts = ts.isNotNull() & (ts != "") & ts.try_cast("long").isNull()
        what = "with a timestamp that is not an integer"
        problems.append(Problem(SchemaError, bad_ts, line, what, "Timestamps must be integer epoch times"))
    malformed = Problem(SchemaError, F.col(_BAD), line, "with the wrong number of fields", hint)
    problems = [malformed] + [p.only_where(ok) for p in problems]
    total, findings, _ = collect_problems(raw, problems)
    raise_first(findings, source)
    require_rows(total, source)
    cols = [
        parse_string_id(F.col(_USER_S)).alias(USER),
        parse_string_id(F.col(_ITEM_S)).alias(ITEM),
        (parse_string_rating(F.col(_RATING_S)) if with_rating else F.lit(1.0)).alias(RATING),
    ]
    if with_ts:
        cols.append(F.trim(F.col(_TS_S)).try_cast("long").alias(TIMESTAMP))
    return raw.select(*cols)
