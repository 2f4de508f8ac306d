"""validate_ratings on user-built DataFrames: schema, ids, ratings, duplicates."""

from __future__ import annotations

import math

import pytest

from spark_unlearn.data.validate import validate_ratings
from spark_unlearn.errors import (
    ConfigError,
    DuplicateRatingError,
    EmptyInputError,
    InvalidIdError,
    InvalidRatingError,
    SchemaError,
)
from spark_unlearn.schema import RATINGS_SCHEMA


def _rows(df) -> list[tuple]:
    return sorted((r.user, r.item, r.rating) for r in df.collect())


def test_casts_integral_floats_and_drops_other_columns(spark):
    df = spark.createDataFrame(
        [(1.0, 10, 4.5, "a"), (2.0, 20, 3.0, "b")], "user double, item long, rating double, note string"
    )
    out = validate_ratings(df)
    assert out.schema == RATINGS_SCHEMA
    assert _rows(out) == [(1, 10, 4.5), (2, 20, 3.0)]


def test_decimal_and_small_int_types(spark):
    df = spark.sql("SELECT CAST(7 AS DECIMAL(10,0)) AS user, CAST(3 AS SMALLINT) AS item, CAST(2.5 AS DECIMAL(3,1)) AS rating")
    assert _rows(validate_ratings(df)) == [(7, 3, 2.5)]


def test_missing_column_names_found_and_expected(spark):
    df = spark.createDataFrame([(1, 2, 3.0)], "uid int, item int, rating double")
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['user'\]; found \[uid: int, item: int, rating: double\]"):
        validate_ratings(df)


def test_string_column_is_a_schema_error(spark):
    df = spark.createDataFrame([("1", 2, 3.0)], "user string, item int, rating double")
    with pytest.raises(SchemaError, match=r"\['user'\] are not numeric.*user: string"):
        validate_ratings(df)


@pytest.mark.parametrize(
    ("row", "error", "pattern"),
    [
        ((1, 2, None), InvalidRatingError, r"1 row with an invalid rating, first: user=1.0, item=2.0, rating=null \(null\)"),
        ((1, 2, math.nan), InvalidRatingError, r"rating=nan \(NaN\)"),
        ((1, 2, math.inf), InvalidRatingError, r"rating=inf \(infinite\)"),
        ((1, 2, 1e300), InvalidRatingError, r"rating=1e\+300 \(outside the float32 range\)"),
        ((None, 2, 3.0), InvalidIdError, r"invalid user id, first: user=null.*\(null\)"),
        ((1.5, 2, 3.0), InvalidIdError, r"invalid user id, first: user=1.5.*\(not an integer\)"),
        ((1, -7, 3.0), InvalidIdError, r"invalid item id, first: user=1.0, item=-7.0.*\(negative\)"),
        ((1, 2**31, 3.0), InvalidIdError, r"item=2147483648.0.*\(larger than 2147483647\)"),
        ((1e20, 2, 3.0), InvalidIdError, r"invalid user id, first: user=1e\+20.*\(larger than 2147483647\)"),
        ((math.nan, 2, 3.0), InvalidIdError, r"user=nan.*\(not an integer\)"),
    ],
)
def test_bad_values(spark, row, error, pattern):
    # Ids are double here so that null, NaN and fractions can be expressed;
    # a good row first, so the offending one is not trivially the only row.
    values = tuple(float(v) if v is not None else None for v in row)
    df = spark.createDataFrame([(5.0, 6.0, 4.0), values], "user double, item double, rating double")
    with pytest.raises(error, match=pattern):
        validate_ratings(df)


def test_long_ids_out_of_range_and_counts(spark):
    df = spark.createDataFrame([(1, 2**31, 1.0), (2, 2**40, 1.0), (3, 4, 1.0)], "user long, item long, rating float")
    with pytest.raises(InvalidIdError, match=r"2 rows with an invalid item id, first: user=1, item=2147483648"):
        validate_ratings(df)


def test_empty_input(spark):
    df = spark.createDataFrame([], "user int, item int, rating float")
    with pytest.raises(EmptyInputError, match="0 rows"):
        validate_ratings(df)


DUPES = [(1, 2, 1.0, 30), (1, 2, 4.0, 10), (1, 2, 2.0, 20), (3, 4, 5.0, 1)]


@pytest.mark.parametrize(
    ("policy", "merged"),
    [("mean", 7 / 3), ("sum", 7.0), ("max", 4.0), ("last", 1.0)],
)
def test_duplicate_policies(spark, policy, merged):
    df = spark.createDataFrame(DUPES, "user int, item int, rating double, timestamp long")
    out = validate_ratings(df, duplicates=policy)
    assert out.schema == RATINGS_SCHEMA
    assert _rows(out) == [(1, 2, pytest.approx(merged)), (3, 4, 5.0)]


def test_last_without_timestamp_keeps_largest_rating(spark):
    df = spark.createDataFrame([r[:3] for r in DUPES], "user int, item int, rating double")
    assert _rows(validate_ratings(df, duplicates="last")) == [(1, 2, 4.0), (3, 4, 5.0)]


def test_duplicates_error_message(spark):
    df = spark.createDataFrame(DUPES + [(3, 4, 1.0, 2)], "user int, item int, rating double, timestamp long")
    with pytest.raises(
        DuplicateRatingError,
        match=r"2 \(user, item\) pair\(s\) occur more than once \(3 surplus rows\), e\.g\. user=1, item=2 occurs 3 times\. "
        r"Pass duplicates='last'.*'mean'.*'sum'",
    ):
        validate_ratings(df)


def test_unknown_policy(spark):
    df = spark.createDataFrame([(1, 2, 3.0)], "user int, item int, rating double")
    with pytest.raises(ConfigError, match=r"'median'.*'error', 'mean', 'sum', 'max', 'last'"):
        validate_ratings(df, duplicates="median")
