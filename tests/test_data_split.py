"""Per-user deterministic splits."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from spark_unlearn.data.split import train_test_split, train_val_test_split
from spark_unlearn.errors import ConfigError, SchemaError


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


@pytest.fixture(scope="module")
def ratings(spark):
    # Users with 1, 2, 3, 5, 8 and 13 ratings, so every rounding case occurs.
    sizes = {1: 1, 2: 2, 3: 3, 4: 5, 5: 8, 6: 13}
    rows = [(u, 100 * u + k, float(k % 5) + 0.5) for u, n in sizes.items() for k in range(n)]
    return spark.createDataFrame(rows, "user int, item int, rating float"), sizes


def _pairs(df) -> set[tuple[int, int]]:
    return {(r.user, r.item) for r in df.select("user", "item").collect()}


def test_train_test_counts_per_user_and_partition(ratings):
    df, sizes = ratings
    train, test = train_test_split(df, test_fraction=0.3, seed=7)
    train_pairs, test_pairs = _pairs(train), _pairs(test)
    assert not train_pairs & test_pairs
    assert train_pairs | test_pairs == _pairs(df)
    assert train.columns == df.columns
    per_user = Counter(u for u, _ in test_pairs)
    for user, n in sizes.items():
        assert per_user.get(user, 0) == min(_half_up(0.3 * n), n - 1), user
    # Every user keeps at least one training rating; the single-rating user stays whole.
    assert {u for u, _ in train_pairs} == set(sizes)


def test_split_is_deterministic_across_partitionings(ratings):
    df, _ = ratings
    a = _pairs(train_test_split(df.repartition(5), 0.3, seed=3)[1])
    b = _pairs(train_test_split(df.coalesce(1), 0.3, seed=3)[1])
    c = _pairs(train_test_split(df.orderBy("rating").repartition(3, "item"), 0.3, seed=3)[1])
    assert a == b == c
    # The order within a user comes from the hash, so another seed picks other items.
    assert _pairs(train_test_split(df, 0.3, seed=4)[1]) != a


def test_test_items_follow_the_hash_order(spark):
    # Oracle: the test item of a 5-rating user at fraction 0.2 is the one with the smallest xxhash64(seed, user, item).
    df = spark.createDataFrame([(9, i, 1.0) for i in range(5)], "user int, item int, rating float")
    hashes = spark.sql("SELECT id AS item, xxhash64(CAST(11 AS BIGINT), 9, CAST(id AS INT)) AS h FROM range(5)").collect()
    expected = min(hashes, key=lambda r: (r.h, r.item)).item
    _, test = train_test_split(df, 0.2, seed=11)
    assert _pairs(test) == {(9, expected)}


def test_train_val_test(ratings):
    df, sizes = ratings
    train, val, test = train_val_test_split(df, (0.6, 0.2, 0.2), seed=1)
    parts = [_pairs(p) for p in (train, val, test)]
    assert sum(len(p) for p in parts) == len(_pairs(df))
    assert set().union(*parts) == _pairs(df)
    val_n, test_n = Counter(u for u, _ in parts[1]), Counter(u for u, _ in parts[2])
    for user, n in sizes.items():
        t = min(_half_up(0.2 * n), n - 1)
        v = min(_half_up(0.2 * n), n - 1 - t)
        assert (test_n.get(user, 0), val_n.get(user, 0)) == (t, v), user
    assert {u for u, _ in parts[0]} == set(sizes)
    # Same seed and test fraction: the same test set as the two-way split.
    assert parts[2] == _pairs(train_test_split(df, 0.2, seed=1)[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, "0.2", True])
def test_bad_test_fraction(ratings, fraction):
    with pytest.raises(ConfigError, match="test_fraction must be a number in"):
        train_test_split(ratings[0], fraction)


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.2), (0.0, 0.5, 0.5), (0.6, 0.4), (0.6, -0.1, 0.5)])
def test_bad_fractions(ratings, fractions):
    with pytest.raises(ConfigError, match="fraction"):
        train_val_test_split(ratings[0], fractions)


def test_missing_columns(spark):
    df = spark.createDataFrame([(1, 2)], "uid int, item int")
    with pytest.raises(SchemaError, match=r"\['user'\]"):
        train_test_split(df)
