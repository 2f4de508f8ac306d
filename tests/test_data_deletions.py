"""Deletion batches: kinds, mixed rows, repeated rows, bad ids and columns."""

from __future__ import annotations

import logging

import pytest

from spark_unlearn.data.deletions import DELETIONS_SCHEMA, read_deletions
from spark_unlearn.errors import ConfigError, EmptyInputError, InvalidIdError, SchemaError


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _rows(df) -> list[tuple]:
    return sorted(((r.user, r.item, r.kind) for r in df.collect()), key=repr)


def test_mixed_csv_kinds_and_repeated_rows(spark, tmp_path, caplog):
    path = _write(tmp_path, "batch.csv", "user,item,reason\n1,2,gdpr\n1,2,again\n3,,erase\n,4,withdrawn\n 5 , 6 ,\n")
    with caplog.at_level(logging.INFO, logger="spark_unlearn.data.deletions"):
        df = read_deletions(spark, path)
    assert "3 interaction, 1 user and 1 item row(s); 1 repeated row(s) dropped" in caplog.text
    assert df.schema == DELETIONS_SCHEMA
    assert _rows(df) == sorted(
        [(1, 2, "interaction"), (3, None, "user"), (None, 4, "item"), (5, 6, "interaction")], key=repr
    )


def test_user_only_and_item_only_files(spark, tmp_path):
    users = _write(tmp_path, "users.csv", "user\n7\n8\n7\n")
    items = _write(tmp_path, "items.csv", "sku\n9\n")
    assert _rows(read_deletions(spark, users)) == [(7, None, "user"), (8, None, "user")]
    assert _rows(read_deletions(spark, items, columns={"item": "sku"})) == [(None, 9, "item")]


def test_parquet_batch(spark, tmp_path):
    path = str(tmp_path / "batch.parquet")
    spark.createDataFrame([(1, 2), (None, 3), (4, None), (1, 2)], "uid long, item long").write.parquet(path)
    df = read_deletions(spark, path, columns={"user": "uid"})
    assert df.schema == DELETIONS_SCHEMA
    assert _rows(df) == sorted([(1, 2, "interaction"), (None, 3, "item"), (4, None, "user")], key=repr)


def test_empty_batches_are_allowed(spark, tmp_path):
    assert read_deletions(spark, _write(tmp_path, "header.csv", "user,item\n")).count() == 0
    empty = read_deletions(spark, _write(tmp_path, "zero.csv", ""))
    assert empty.schema == DELETIONS_SCHEMA and empty.count() == 0


@pytest.mark.parametrize(
    ("text", "error", "pattern"),
    [
        ("user,item\n1,x\n", InvalidIdError, r"invalid item id, first: item 'x' in line '1,x' \(not an integer\)"),
        ("user,item\n-1,2\n", InvalidIdError, r"user '-1' .*\(negative\)"),
        ("user,item\n1,3000000000\n", InvalidIdError, r"item '3000000000' .*\(larger than 2147483647\)"),
        ("user,item,why\n,,no ids\n", InvalidIdError, r"neither a user nor an item id, first: line ',,no ids'"),
        ("user,item\n1,2,3\n", SchemaError, r"wrong number of fields, first: line '1,2,3'"),
        ("rating\n5\n", SchemaError, r"needs a user and/or an item column; found \['rating'\]"),
    ],
)
def test_bad_batches(spark, tmp_path, text, error, pattern):
    with pytest.raises(error, match=pattern):
        read_deletions(spark, _write(tmp_path, "bad.csv", text))


def test_parquet_string_ids_and_fractional_ids(spark, tmp_path):
    strings = str(tmp_path / "s.parquet")
    spark.createDataFrame([("1", 2)], "user string, item long").write.parquet(strings)
    with pytest.raises(SchemaError, match=r"'user' \(for user\) has type string.*found \[user: string, item: bigint\]"):
        read_deletions(spark, strings)
    floats = str(tmp_path / "f.parquet")
    spark.createDataFrame([(1.5, 2.0)], "user double, item double").write.parquet(floats)
    with pytest.raises(InvalidIdError, match=r"invalid user id, first: user=1.5, item=2.0 \(not an integer\)"):
        read_deletions(spark, floats)


def test_bad_arguments_and_paths(spark, tmp_path):
    path = _write(tmp_path, "b.csv", "user\n1\n")
    with pytest.raises(ConfigError, match="'json'"):
        read_deletions(spark, path, format="json")
    with pytest.raises(ConfigError, match=r"\['rating'\]"):
        read_deletions(spark, path, columns={"rating": "r"})
    with pytest.raises(SchemaError, match=r"'uid' \(for user\) not found"):
        read_deletions(spark, path, columns={"user": "uid"})
    with pytest.raises(EmptyInputError, match="does not exist"):
        read_deletions(spark, str(tmp_path / "missing.csv"))
    with pytest.raises(SchemaError, match="format='csv'"):
        read_deletions(spark, _write(tmp_path, "batch.txt", "user\n1\n"))


# --------------------------------------------------------------------------- the driver's fast path


PLAIN_CASES = [
    ("mixed.csv", "user,item,reason\n1,2,gdpr\n1,2,again\n3,,erase\n,4,withdrawn\n 5 , 6 ,\n"),
    ("users.csv", "user\n7\n8\n7\n"),
    ("signs.csv", "item,user\n+3,007\n2147483647,0\n"),
    ("no_newline.csv", "user,item\n1,2"),
    ("extra_cols.csv", "ts,user,item\n100,4,5\n"),
    ("empty_body.csv", "user,item\n"),
]
DOUBTFUL_CASES = [
    ("quoted.csv", 'user,item\n"1",2\n'),
    ("crlf.csv", "user,item\r\n1,2\r\n"),
    ("blank_line.csv", "user,item\n1,2\n\n3,4\n"),
    ("fields.csv", "user,item\n1,2,3\n"),
    ("negative.csv", "user,item\n-1,2\n"),
    ("too_big.csv", "user,item\n2147483648,2\n"),
    ("decimal.csv", "user,item\n1.0,2\n"),
    ("neither.csv", "user,item\n,\n"),
    ("tab.csv", "user,item\n1\t,2\n"),
    ("bom.csv", "\ufeffuser,item\n1,2\n"),
    ("empty.csv", ""),
]


@pytest.mark.parametrize("name,text", PLAIN_CASES)
def test_a_plain_file_read_on_the_driver_gives_what_spark_reads(spark, tmp_path, name, text):
    from spark_unlearn.data.plain_deletions import read_deletion_rows, read_plain_deletions

    path = _write(tmp_path, name, text)
    rows = read_plain_deletions(path)
    assert rows is not None, "a plain file takes the driver's path"
    assert sorted(rows, key=repr) == _rows(read_deletions(spark, path))
    batch, got = read_deletion_rows(spark, path)
    assert got == rows and _rows(batch) == sorted(rows, key=repr) and batch.schema == DELETIONS_SCHEMA


@pytest.mark.parametrize("name,text", DOUBTFUL_CASES)
def test_a_doubtful_file_is_left_to_spark_and_gets_its_answer(spark, tmp_path, name, text):
    from spark_unlearn.data.plain_deletions import read_deletion_rows, read_plain_deletions

    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    assert read_plain_deletions(str(path)) is None
    try:
        expected = _rows(read_deletions(spark, str(path)))
    except (SchemaError, InvalidIdError) as exc:
        with pytest.raises(type(exc)):
            read_deletion_rows(spark, str(path))
    else:
        batch, rows = read_deletion_rows(spark, str(path))
        assert rows is None and _rows(batch) == expected


def test_plain_parquet_on_the_driver_and_a_wrong_column_mapping_fails_the_same_way(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_unlearn.data.plain_deletions import read_plain_deletions

    path = str(tmp_path / "batch.parquet")
    pq.write_table(pa.table({"user": pa.array([1, None, 3, 1], pa.int64()), "item": pa.array([2, 5, None, 2], pa.int16())}),
                   path)
    assert sorted(read_plain_deletions(path), key=repr) == _rows(read_deletions(spark, path))
    floats = str(tmp_path / "floats.parquet")
    pq.write_table(pa.table({"user": pa.array([1.0])}), floats)
    assert read_plain_deletions(floats) is None  # Spark decides what a float id means
    csv = _write(tmp_path, "b.csv", "uid,sku\n1,2\n")
    with pytest.raises(SchemaError) as driver:
        read_plain_deletions(csv, columns={"user": "nope"})
    with pytest.raises(SchemaError) as spark_err:
        read_deletions(spark, csv, columns={"user": "nope"})
    assert str(driver.value) == str(spark_err.value)
