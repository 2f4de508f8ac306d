"""read_ratings: every format, auto-detection, and each kind of bad input."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from spark_unlearn.data.readers import detect_format, read_ratings
from spark_unlearn.errors import (
    ConfigError,
    DuplicateRatingError,
    EmptyInputError,
    InvalidIdError,
    InvalidRatingError,
    SchemaError,
)
from spark_unlearn.schema import RATINGS_SCHEMA


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _rows(df) -> list[tuple]:
    return sorted((r.user, r.item, r.rating) for r in df.collect())


# --------------------------------------------------------------------------- formats


def test_movielens_dat_exact_rows_skipping_blank_and_crlf_lines(spark, tmp_path):
    # Optional timestamp (3 fields), a blank line, CRLF endings and spaces are all tolerated.
    path = _write(tmp_path, "ratings.dat", "1::10::3.5::978300760\r\n\r\n2::20::4::978300761\r\n 3 :: 30 :: 0.5\n")
    df = read_ratings(spark, path)
    assert df.schema == RATINGS_SCHEMA
    assert _rows(df) == [(1, 10, 3.5), (2, 20, 4.0), (3, 30, 0.5)]


def test_udata_by_name(spark, tmp_path):
    path = _write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    assert detect_format(spark, path) == "udata"
    assert _rows(read_ratings(spark, path)) == [(22, 377, 1.0), (186, 302, 3.0), (196, 242, 3.0)]


def test_movielens_csv_auto(spark, tmp_path):
    path = _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n6,3,1,9\n")
    assert detect_format(spark, path) == "movielens-csv"
    assert _rows(read_ratings(spark, path)) == [(1, 1, 4.0), (1, 3, 4.5), (6, 3, 1.0)]


def test_generic_csv_with_column_mapping_delimiter_and_quotes(spark, tmp_path):
    path = _write(tmp_path, "events.csv", 'sku;uid;score;note\n7;1;2.5;"a;b"\n"8";2;5;\n')
    assert detect_format(spark, path) == "csv"
    df = read_ratings(spark, path, format="csv", columns={"user": "uid", "item": "sku", "rating": "score"}, delimiter=";")
    assert _rows(df) == [(1, 7, 2.5), (2, 8, 5.0)]


def test_implicit_csv_without_rating_column(spark, tmp_path):
    path = _write(tmp_path, "clicks.csv", "user,item\n1,2\n3,4\n")
    assert _rows(read_ratings(spark, path, columns={"rating": None})) == [(1, 2, 1.0), (3, 4, 1.0)]


def test_parquet_with_mapping_and_integral_float_ids(spark, tmp_path):
    path = str(tmp_path / "r.parquet")
    spark.createDataFrame([(1.0, 5, 3.0), (2.0, 6, 4.5)], "uid double, sku long, score double").write.parquet(path)
    assert detect_format(spark, path) == "parquet"
    df = read_ratings(spark, path, columns={"user": "uid", "item": "sku", "rating": "score"})
    assert df.schema == RATINGS_SCHEMA
    assert _rows(df) == [(1, 5, 3.0), (2, 6, 4.5)]


def test_detect_format_rules(spark, tmp_path):
    assert detect_format(spark, _write(tmp_path, "x.dat", "1::2::3::4\n")) == "movielens-dat"
    assert detect_format(spark, _write(tmp_path, "sample.txt", "0::2::3::1424380312\n")) == "movielens-dat"
    assert detect_format(spark, _write(tmp_path, "u1.base", "1\t2\t3\t4\n")) == "udata"
    with pytest.raises(SchemaError, match="pass format="):
        detect_format(spark, _write(tmp_path, "mystery.txt", "1 2 3\n"))
    (tmp_path / "notparquet").mkdir()
    (tmp_path / "notparquet" / "a.txt").write_text("x")
    with pytest.raises(SchemaError, match="a.txt"):
        detect_format(spark, str(tmp_path / "notparquet"))


# --------------------------------------------------------------------------- bad lines


@pytest.mark.parametrize(
    ("line", "error", "pattern"),
    [
        ("1::2", SchemaError, r"wrong number of fields, first: line '1::2'"),
        ("1,2,3,4", SchemaError, r"wrong number of fields, first: line '1,2,3,4'.*delimiter="),
        ("u12::2::3::0", InvalidIdError, r"invalid user id, first: user 'u12' in line 'u12::2::3::0' \(not an integer\)"),
        ("1::3.5::3::0", InvalidIdError, r"invalid item id, first: item '3.5' .*\(not an integer\)"),
        ("-4::2::3::0", InvalidIdError, r"invalid user id, first: user '-4' .*\(negative\)"),
        ("1::2147483648::3::0", InvalidIdError, r"item '2147483648' .*\(larger than 2147483647\)"),
        ("1::2::NaN::0", InvalidRatingError, r"invalid rating, first: rating 'NaN' in line '1::2::NaN::0' \(NaN\)"),
        ("1::2::-inf::0", InvalidRatingError, r"rating '-inf' .*\(infinite\)"),
        ("1::2::1e39::0", InvalidRatingError, r"rating '1e39' .*\(outside the float32 range\)"),
        ("1::2::::0", InvalidRatingError, r"rating '' in line '1::2::::0' \(missing"),
        ("1::2::four::0", InvalidRatingError, r"rating 'four' .*\(not a number\)"),
    ],
)
def test_bad_line_raises_and_quotes_it(spark, tmp_path, line, error, pattern):
    path = _write(tmp_path, "bad.dat", f"5::6::4::0\n{line}\n7::8::2::0\n")
    with pytest.raises(error, match=pattern):
        read_ratings(spark, path)


def test_message_counts_and_lists_other_problems(spark, tmp_path):
    path = _write(tmp_path, "bad.dat", "x::1::1::0\ny::2::1::0\n1::-2::1::0\n")
    with pytest.raises(InvalidIdError, match=r"2 rows with an invalid user id, first: user 'x'.*Other problems.*1 row with an invalid item id \(negative\)"):
        read_ratings(spark, path)


def test_csv_row_with_wrong_field_count(spark, tmp_path):
    path = _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2\n")
    with pytest.raises(SchemaError, match=r"wrong number of fields, first: line '1,2'"):
        read_ratings(spark, path)


def test_csv_missing_column_names_what_was_found(spark, tmp_path):
    path = _write(tmp_path, "r.csv", "uid,sku,score\n1,2,3\n")
    with pytest.raises(SchemaError, match=r"\['item', 'rating', 'user'\].*not found.*\['uid', 'sku', 'score'\]"):
        read_ratings(spark, path)


def test_csv_read_with_the_wrong_delimiter_hints_at_delimiter(spark, tmp_path):
    path = _write(tmp_path, "r.csv", "user\titem\trating\n1\t2\t3\n")
    with pytest.raises(SchemaError, match="delimiter="):
        read_ratings(spark, path, format="csv")


# --------------------------------------------------------------------------- duplicates


DUPLICATED = "userId,movieId,rating,timestamp\n1,2,1.0,30\n1,2,4.0,10\n1,2,2.0,20\n3,4,5.0,1\n"


def test_duplicates_error_names_pair_and_fix(spark, tmp_path):
    path = _write(tmp_path, "ratings.csv", DUPLICATED)
    with pytest.raises(DuplicateRatingError, match=r"1 \(user, item\) pair.*2 surplus.*user=1, item=2 occurs 3 times.*duplicates='last'"):
        read_ratings(spark, path)


def test_duplicates_last_keeps_latest_timestamp(spark, tmp_path):
    path = _write(tmp_path, "ratings.csv", DUPLICATED)
    df = read_ratings(spark, path, duplicates="last")
    assert df.schema == RATINGS_SCHEMA
    assert _rows(df) == [(1, 2, 1.0), (3, 4, 5.0)]


def test_duplicates_mean(spark, tmp_path):
    path = _write(tmp_path, "ratings.csv", DUPLICATED)
    assert _rows(read_ratings(spark, path, duplicates="mean")) == [(1, 2, pytest.approx(7 / 3)), (3, 4, 5.0)]


# --------------------------------------------------------------------------- arguments and empty input


def test_bad_arguments(spark, tmp_path):
    path = _write(tmp_path, "r.dat", "1::2::3::4\n")
    with pytest.raises(ConfigError, match="'xlsx'"):
        read_ratings(spark, path, format="xlsx")
    with pytest.raises(ConfigError, match="'first'"):
        read_ratings(spark, path, duplicates="first")
    with pytest.raises(ConfigError, match="positional"):
        read_ratings(spark, path, columns={"user": "u"})
    with pytest.raises(ConfigError, match="'user': None"):
        read_ratings(spark, path, format="csv", columns={"user": None})


def test_missing_and_empty_inputs(spark, tmp_path):
    with pytest.raises(EmptyInputError, match="does not exist"):
        read_ratings(spark, str(tmp_path / "nope.dat"))
    with pytest.raises(EmptyInputError, match="0 rows"):
        read_ratings(spark, _write(tmp_path, "blank.dat", "\n\n"))
    with pytest.raises(EmptyInputError, match="0 rows"):
        read_ratings(spark, _write(tmp_path, "header.csv", "userId,movieId,rating,timestamp\n"))


# --------------------------------------------------------------------------- real data


def _summary(df):
    return df.agg(F.count(F.lit(1)), F.count_distinct("user"), F.count_distinct("item"), F.sum("rating")).first()


def test_pyspark_sample_round_trip(spark, sample_ratings_path):
    df = read_ratings(spark, sample_ratings_path)
    assert df.schema == RATINGS_SCHEMA
    n, users, items, total = _summary(df)
    assert (n, users, items) == (1501, 30, 100)
    # Independent oracle: parse the file in plain Python.
    with open(sample_ratings_path) as f:
        expected = sum(float(line.split("::")[2]) for line in f if line.strip())
    assert total == pytest.approx(expected)


@pytest.mark.movielens
def test_ml_latest_small(spark, movielens_small_dir):
    df = read_ratings(spark, str(movielens_small_dir / "ratings.csv"))
    n, users, items, total = _summary(df)
    assert (n, users, items) == (100_836, 610, 9_724)
    assert total / n == pytest.approx(3.5016, abs=1e-4)
