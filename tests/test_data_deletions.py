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
