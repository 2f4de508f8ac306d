"""Validating ratings tables: schema, ids, ratings and duplicate (user, item) pairs.

Conventions
-----------
* Ids are non-negative integers that fit in int32, ``[0, 2**31 - 1]``, the
  id type of Spark ALS.  A float id is accepted only when it is integral
  (``3.0``), never ``3.5``.
* A rating is any finite number that fits in float32; its sign and scale are
  the model's business (explicit stars, implicit counts or confidences).
* Checks never collect the table.  Each check is one aggregate returning one
  row: the number of offending rows of every kind of problem and the first
  offending row of each (first in input order, via
  ``monotonically_increasing_id``), which the error message quotes.
* A kind of problem is one column's bad values (a user id that is missing,
  not an integer, negative or too large is one kind); the message gives the
  reason for the quoted row.  This keeps the aggregate small.
* The problem reported is the first kind found in the order malformed rows,
  user ids, item ids, ratings; the message lists the other kinds found with
  their counts, so that one run shows everything wrong with the input.

The helpers below other than :func:`validate_ratings` are shared with
:mod:`spark_unlearn.data.readers` and :mod:`spark_unlearn.data.deletions`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ByteType,
    DataType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
)

from spark_unlearn.errors import (
    ConfigError,
    DuplicateRatingError,
    EmptyInputError,
    InvalidIdError,
    InvalidRatingError,
    SchemaError,
    SparkUnlearnError,
)
from spark_unlearn.schema import INT32_MAX, ITEM, RATING, USER

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
DUPLICATE_POLICIES = ("error", "mean", "sum", "max", "last")
FLOAT32_MAX = 3.4028234663852886e38

_INTEGRAL_TYPES = (ByteType, ShortType, IntegerType, LongType)
_FRACTIONAL_TYPES = (FloatType, DoubleType, DecimalType)
_ROW = "_su_row"
_PLAIN_INT = re.compile(r"[+-]?[0-9]+")
_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Problem:
    """One kind of bad row, checked in a single aggregate with the others.

    Attributes
    ----------
    error
        Exception type raised when at least one row has the problem.
    condition
        Boolean column, true exactly on the offending rows (null counts as false).
    example
        Column describing a row (a string, or a struct shown as
        ``name=value, ...``); the first offending one is quoted.
    what
        Completes "N row(s) ...", e.g. ``"with an invalid user id"``.
    fix
        How to fix it, appended to the message.
    value, explain
        Optional offending value (collected with the example) and a function
        turning it into the reason, e.g. ``"negative"``: the condition covers
        several reasons at once, which keeps the aggregate small.
    """

    error: type[SparkUnlearnError]
    condition: Column
    example: Column
    what: str
    fix: str
    value: Column | None = None
    explain: Callable[[Any], str] | None = None

    def only_where(self, ok: Column) -> "Problem":
        """The same problem, counted only on rows where ``ok`` holds."""
        return replace(self, condition=ok & self.condition)


@dataclass(frozen=True)
class Finding:
    """Result of one :class:`Problem` over a table."""

    problem: Problem
    count: int
    example: str | None
    reason: str | None


# --------------------------------------------------------------------------- policy


def check_policy(duplicates: str) -> str:
    """Return ``duplicates`` if it is a known duplicate policy, else raise :class:`ConfigError`."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"unknown duplicates policy {duplicates!r}; use one of "
            + ", ".join(repr(p) for p in DUPLICATE_POLICIES)
        )
    return duplicates


# --------------------------------------------------------------------------- problems


def collect_problems(
    df: DataFrame, problems: list[Problem], extra: list[Column] | None = None
) -> tuple[int, list[Finding], list]:
    """Count every problem and fetch its first example in one aggregate pass.

    Parameters
    ----------
    df
        Table to check; never collected.
    problems
        Kinds of bad rows to look for.
    extra
        Further aggregate columns to compute in the same pass.

    Returns
    -------
    total, findings, extras
        Number of rows, one :class:`Finding` per problem in order, and the
        values of ``extra``.
    """
    # Conditions are projected once so the aggregate below only refers to them.
    flags = [F.coalesce(p.condition, F.lit(False)).alias(f"_su_p{k}") for k, p in enumerate(problems)]
    flagged = df.select("*", F.monotonically_increasing_id().alias(_ROW), *flags)
    aggs = [F.count(F.lit(1))]
    for k, p in enumerate(problems):
        hit = F.col(f"_su_p{k}")
        # The smallest row id is the first offending row in input order; the
        # example string is only built for offending rows.
        value = p.value if p.value is not None else F.lit(None)
        first = F.struct(F.col(_ROW).alias("row"), p.example.alias("example"), value.alias("value"))
        aggs += [F.count_if(hit), F.min(F.when(hit, first))]
    extra = list(extra or [])
    row = flagged.agg(*aggs, *extra).first()
    findings = []
    for k, p in enumerate(problems):
        count, first = int(row[1 + 2 * k]), row[2 + 2 * k]
        reason = p.explain(first["value"]) if first is not None and p.explain is not None else None
        findings.append(Finding(p, count, _render(first["example"]) if first is not None else None, reason))
    return int(row[0]), findings, list(row[1 + 2 * len(problems) :])


def _render(example: Any) -> str | None:
    """An example as text: strings as they are, rows as ``user=1, item=2.5, rating=nan``."""
    if example is None or isinstance(example, str):
        return example
    return ", ".join(f"{name}={'null' if v is None else v}" for name, v in example.asDict().items())


def raise_first(findings: list[Finding], source: str) -> None:
    """Raise the exception of the first problem found, mentioning the others."""
    found = [f for f in findings if f.count > 0]
    if not found:
        return
    first = found[0]
    message = f"{source}: {_describe(first)}. {first.problem.fix}"
    if len(found) > 1:
        message += ". Other problems in the same input: " + "; ".join(_describe(f, example=False) for f in found[1:])
    raise first.problem.error(message)


def _describe(f: Finding, example: bool = True) -> str:
    noun = "row" if f.count == 1 else "rows"
    text = f"{f.count:,} {noun} {f.problem.what}"
    if example and f.example is not None:
        text += f", first: {f.example}"
    if f.reason is not None:
        text += f" ({f.reason})"
    return text


def _id_fix(name: str) -> str:
    return f"{name} ids must be integers in [0, {INT32_MAX}]; remap them (e.g. with StringIndexer) before loading"


def string_id_problem(value: Column, name: str, example: Column, required: bool = True) -> Problem:
    """Rows whose id string is not a plain integer in ``[0, INT32_MAX]``.

    Leading/trailing spaces and a leading ``+`` are accepted.  When
    ``required`` is false a missing (null or empty) id is allowed.
    """
    s = F.trim(value)
    ok = s.rlike(r"^\+?[0-9]+$") & (s.try_cast("long") <= INT32_MAX)
    bad = ~F.coalesce(ok, F.lit(False))
    if not required:
        bad = bad & s.isNotNull() & (s != "")
    shown = F.format_string(f"{name} %s in %s", _quote(s), example)
    return Problem(InvalidIdError, bad, shown, f"with an invalid {name} id", _id_fix(name), s, _explain_id_string)


def _quote(s: Column) -> Column:
    """``'value'``, or ``(none)`` for null."""
    return F.coalesce(F.concat(F.lit("'"), s, F.lit("'")), F.lit("(none)"))


def _explain_id_string(s: str | None) -> str:
    if s is None or s == "":
        return "missing"
    if not _PLAIN_INT.fullmatch(s):
        return "not an integer"
    if s.startswith("-"):
        return "negative"
    return f"larger than {INT32_MAX}"


def parse_string_id(value: Column) -> Column:
    """Long value of an id string that passed :func:`string_id_problem` (null when missing)."""
    return F.trim(value).try_cast("long")


def string_rating_problem(value: Column, example: Column) -> Problem:
    """Rows whose rating string is missing, not a number, NaN, infinite or beyond float32."""
    s = F.trim(value)
    parsed = s.try_cast("double")
    ok = ~F.isnan(parsed) & (F.abs(parsed) <= FLOAT32_MAX)
    bad = ~F.coalesce(ok, F.lit(False))
    shown = F.format_string("rating %s in %s", _quote(s), example)
    return Problem(InvalidRatingError, bad, shown, "with an invalid rating", _RATING_FIX, s, _explain_rating_string)


_RATING_FIX = "ratings must be finite numbers; drop or fix those rows"


def _explain_rating_string(s: str | None) -> str:
    if s is None or s == "":
        return "missing; for implicit data without ratings pass columns={'rating': None}"
    word = s.lower().lstrip("+-")
    if word == "nan":
        return "NaN"
    if word in ("inf", "infinity"):
        return "infinite"
    if not _PLAIN_NUMBER.fullmatch(s):
        return "not a number"
    return "outside the float32 range"


def parse_string_rating(value: Column) -> Column:
    """Double value of a rating string that passed :func:`string_rating_problem`."""
    return F.trim(value).try_cast("double")


def numeric_id_problem(col: Column, dtype: DataType, name: str, example: Column, required: bool = True) -> Problem:
    """Rows whose numeric id is null, not integral, negative or beyond int32."""
    ok = col.isNotNull() & (col >= 0)
    if isinstance(dtype, _FRACTIONAL_TYPES):
        # x % 1 is NaN for NaN and +-inf, so those fail too; floor() would
        # saturate to a long and call 1e20 integral.
        ok = ok & ((col % 1) == 0)
    if not isinstance(dtype, (ByteType, ShortType, IntegerType)):
        ok = ok & (col <= INT32_MAX)
    bad = ~F.coalesce(ok, F.lit(False))
    if not required:
        bad = bad & col.isNotNull()
    return Problem(InvalidIdError, bad, example, f"with an invalid {name} id", _id_fix(name), col, _explain_id_number)


def _explain_id_number(v: Any) -> str:
    if v is None:
        return "null"
    if (isinstance(v, float) and not math.isfinite(v)) or v % 1 != 0:
        return "not an integer"
    if v < 0:
        return "negative"
    return f"larger than {INT32_MAX}"


def numeric_rating_problem(col: Column, dtype: DataType, example: Column) -> Problem:
    """Rows whose numeric rating is null, NaN, infinite or beyond float32."""
    ok = col.isNotNull()
    if isinstance(dtype, (FloatType, DoubleType)):
        ok = ok & ~F.isnan(col) & (F.abs(col) <= FLOAT32_MAX)
    elif isinstance(dtype, DecimalType):
        ok = ok & (F.abs(col) <= FLOAT32_MAX)
    bad = ~F.coalesce(ok, F.lit(False))
    what = "with an invalid rating"
    return Problem(InvalidRatingError, bad, example, what, _RATING_FIX, col, _explain_rating_number)


def _explain_rating_number(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, float) and math.isinf(v):
        return "infinite"
    return "outside the float32 range"


def numeric_example(*cols: str) -> Column:
    """The named columns of a row, shown as ``user=1, item=2, rating=nan`` in messages."""
    return F.struct(*[F.col(f"`{c}`") for c in cols])


# --------------------------------------------------------------------------- duplicates


def resolve_duplicates(df: DataFrame, duplicates: str, source: str) -> DataFrame:
    """Apply the duplicate policy to a table with user, item, rating [, timestamp].

    ``"error"`` runs one aggregate over (user, item) and raises
    :class:`DuplicateRatingError` if any pair repeats; it returns ``df``
    unchanged.  The other policies merge each pair into one row lazily:

    * ``"mean"``, ``"sum"``, ``"max"``: that aggregate of the pair's ratings;
    * ``"last"``: the rating with the largest timestamp (ties: largest rating);
      without a timestamp column, the largest rating.
    """
    check_policy(duplicates)
    if duplicates == "error":
        _raise_on_duplicates(df, source)
        return df
    rating = F.col(RATING).cast("double")
    if duplicates == "mean":
        merged = F.avg(rating)
    elif duplicates == "sum":
        merged = F.sum(rating)
    elif duplicates == "max":
        merged = F.max(rating)
    elif TIMESTAMP in df.columns:
        merged = F.max_by(rating, F.struct(F.col(TIMESTAMP), rating))
    else:
        log.info("%s: no timestamp column, duplicates='last' keeps the largest rating of each pair", source)
        merged = F.max(rating)
    return df.groupBy(USER, ITEM).agg(merged.alias(RATING))


def _raise_on_duplicates(df: DataFrame, source: str) -> None:
    pairs = df.groupBy(USER, ITEM).agg(F.count(F.lit(1)).alias("n")).filter(F.col("n") > 1)
    row = pairs.agg(
        F.count(F.lit(1)).alias("pairs"),
        F.sum("n").alias("rows"),
        F.min(F.struct(USER, ITEM, "n")).alias("first"),
    ).first()
    if row["pairs"] == 0:
        return
    first = row["first"]
    surplus = row["rows"] - row["pairs"]
    raise DuplicateRatingError(
        f"{source}: {row['pairs']:,} (user, item) pair(s) occur more than once ({surplus:,} surplus rows), "
        f"e.g. user={first[USER]}, item={first[ITEM]} occurs {first['n']} times. Pass duplicates='last' "
        "(keep the latest by timestamp), duplicates='mean', duplicates='sum' or duplicates='max' to merge them"
    )


# --------------------------------------------------------------------------- schema


def to_ratings_schema(df: DataFrame) -> DataFrame:
    """Cast validated user/item/rating columns to exactly ``RATINGS_SCHEMA``.

    The values were checked already; ``coalesce`` with a literal only tells
    Spark the columns are non-nullable (it never fires on validated data).
    """
    return df.select(
        F.coalesce(F.col(USER).cast("int"), F.lit(0)).alias(USER),
        F.coalesce(F.col(ITEM).cast("int"), F.lit(0)).alias(ITEM),
        F.coalesce(F.col(RATING).cast("float"), F.lit(0.0).cast("float")).alias(RATING),
    )


def describe_columns(df: DataFrame) -> str:
    """``"[uid: bigint, score: double]"``, for error messages."""
    return "[" + ", ".join(f"{name}: {dtype}" for name, dtype in df.dtypes) + "]"


def _require_numeric(df: DataFrame, source: str) -> None:
    missing = [c for c in (USER, ITEM, RATING) if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{source}: missing column(s) {missing}; found {describe_columns(df)}, expected user, item, rating "
            "(rename your columns, or use read_ratings(..., columns={'user': ..., 'item': ..., 'rating': ...}))"
        )
    types = {f.name: f.dataType for f in df.schema.fields}
    wrong = [c for c in (USER, ITEM, RATING) if not isinstance(types[c], _INTEGRAL_TYPES + _FRACTIONAL_TYPES)]
    if wrong:
        raise SchemaError(
            f"{source}: column(s) {wrong} are not numeric; found {describe_columns(df)}, expected user int, "
            "item int, rating float (cast them, or read text files with read_ratings)"
        )


# --------------------------------------------------------------------------- entry point


def validate_ratings(df: DataFrame, duplicates: str = "error") -> DataFrame:
    """Check a DataFrame with user/item/rating columns and return it as ``RATINGS_SCHEMA``.

    Parameters
    ----------
    df
        Any DataFrame with numeric columns ``user``, ``item`` and ``rating``
        (integral or float; float ids must be integral).  Other columns are
        dropped, except that a ``timestamp`` column orders ``duplicates='last'``.
    duplicates
        What to do with repeated (user, item) pairs: ``"error"`` (default),
        ``"mean"``, ``"sum"``, ``"max"`` or ``"last"``; see
        :func:`resolve_duplicates`.

    Returns
    -------
    DataFrame
        Lazily defined; exactly ``spark_unlearn.schema.RATINGS_SCHEMA``.

    Raises
    ------
    SchemaError
        A column is missing or not numeric.
    InvalidIdError
        A null, non-integral, negative or larger than int32 id.
    InvalidRatingError
        A null, NaN, infinite or out-of-float32-range rating.
    EmptyInputError
        No rows.
    DuplicateRatingError
        Repeated (user, item) pairs with ``duplicates="error"``.
    ConfigError
        Unknown ``duplicates`` policy.

    Notes
    -----
    Runs two Spark jobs (one aggregate for the row checks, one for
    duplicates); cache ``df`` first if it is expensive to recompute.
    """
    return validate_numeric(df, duplicates, source="ratings DataFrame")


def validate_numeric(df: DataFrame, duplicates: str, source: str) -> DataFrame:
    """:func:`validate_ratings` with the input named ``source`` in messages."""
    check_policy(duplicates)
    _require_numeric(df, source)
    types = {f.name: f.dataType for f in df.schema.fields}
    example = numeric_example(USER, ITEM, RATING)
    problems = [
        numeric_id_problem(F.col(USER), types[USER], USER, example),
        numeric_id_problem(F.col(ITEM), types[ITEM], ITEM, example),
        numeric_rating_problem(F.col(RATING), types[RATING], example),
    ]
    total, findings, _ = collect_problems(df, problems)
    raise_first(findings, source)
    require_rows(total, source)
    keep = [USER, ITEM, RATING] + ([TIMESTAMP] if duplicates == "last" and TIMESTAMP in df.columns else [])
    checked = df.select(*keep)
    return to_ratings_schema(resolve_duplicates(checked, duplicates, source))


def require_rows(total: int, source: str) -> None:
    """Raise :class:`EmptyInputError` when a ratings input has no rows."""
    if total == 0:
        raise EmptyInputError(f"{source}: no ratings (0 rows); check the path and the file's contents")
    log.info("%s: %s ratings passed validation", source, f"{total:,}")
