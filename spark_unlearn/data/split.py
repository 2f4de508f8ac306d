"""Deterministic per-user splits of a ratings table.

Conventions
-----------
* Within each user, ratings are ordered by ``xxhash64(seed, user, item)``
  (ties, which only duplicated pairs can produce, by item then rating).  The
  order depends on nothing but the data and the seed, so the split is the
  same whatever the partitioning, executor count or Spark version's
  shuffle order.
* A user with ``n`` ratings gets ``round_half_up(f * n)`` of them in a part of
  fraction ``f``, taken from the front of that order (test first, then
  validation), but the training part always keeps at least one rating of
  every user: users with a single rating stay entirely in train.
* All input columns are kept; the split is lazy (one window shuffle per
  action, cache the input if both parts are used repeatedly).
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from spark_unlearn.errors import ConfigError, SchemaError
from spark_unlearn.schema import ITEM, RATING, USER

log = logging.getLogger(__name__)

_POS, _N = "_su_pos", "_su_n"


def train_test_split(ratings: DataFrame, test_fraction: float = 0.2, seed: int = 0) -> tuple[DataFrame, DataFrame]:
    """Split each user's ratings into train and test.

    Parameters
    ----------
    ratings
        Table with ``user`` and ``item`` columns (any other columns are kept).
    test_fraction
        Share of each user's ratings put in test, ``0 < test_fraction < 1``;
        user ``u`` with ``n_u`` ratings gets ``min(round_half_up(test_fraction
        * n_u), n_u - 1)`` test ratings.
    seed
        Integer seed of the per-user order.

    Returns
    -------
    train, test
        Disjoint, together exactly ``ratings``; every user of ``ratings``
        appears in ``train``.

    Raises
    ------
    ConfigError
        ``test_fraction`` outside ``(0, 1)`` or ``seed`` not an integer.
    SchemaError
        ``user`` or ``item`` column missing.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    n_test = _capped(F.lit(float(test_fraction)), F.lit(0))
    ranked = _ranked(ratings, seed)
    train = ranked.filter(F.col(_POS) > n_test).drop(_POS, _N)
    test = ranked.filter(F.col(_POS) <= n_test).drop(_POS, _N)
    return train, test


def train_val_test_split(
    ratings: DataFrame, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Split each user's ratings into train, validation and test.

    Parameters
    ----------
    ratings
        Table with ``user`` and ``item`` columns (any other columns are kept).
    fractions
        ``(train, val, test)`` shares, each in ``[0, 1)`` with train ``> 0``,
        summing to 1.  User ``u`` gets ``t = min(round_half_up(test * n_u),
        n_u - 1)`` test ratings, then ``min(round_half_up(val * n_u), n_u - 1 -
        t)`` validation ratings; the rest (at least one) is train.
    seed
        Integer seed of the per-user order (same order as
        :func:`train_test_split`, so with equal seeds the test parts of both
        functions coincide when the test fractions do).

    Returns
    -------
    train, val, test

    Raises
    ------
    ConfigError
        Bad ``fractions`` or ``seed``.
    SchemaError
        ``user`` or ``item`` column missing.
    """
    if not isinstance(fractions, (tuple, list)) or len(fractions) != 3:
        raise ConfigError(f"fractions must be (train, val, test), got {fractions!r}")
    train_f, val_f, test_f = fractions
    _check_fraction("train fraction", train_f, allow_zero=False)
    _check_fraction("validation fraction", val_f, allow_zero=True)
    _check_fraction("test fraction", test_f, allow_zero=True)
    if not math.isclose(train_f + val_f + test_f, 1.0, abs_tol=1e-9):
        raise ConfigError(f"fractions must sum to 1, got {fractions!r} (sum {train_f + val_f + test_f!r})")
    n_test = _capped(F.lit(float(test_f)), F.lit(0))
    n_val = _capped(F.lit(float(val_f)), n_test)
    ranked = _ranked(ratings, seed)
    pos = F.col(_POS)
    test = ranked.filter(pos <= n_test)
    val = ranked.filter((pos > n_test) & (pos <= n_test + n_val))
    train = ranked.filter(pos > n_test + n_val)
    return tuple(part.drop(_POS, _N) for part in (train, val, test))  # type: ignore[return-value]


def _ranked(ratings: DataFrame, seed: int) -> DataFrame:
    """``ratings`` plus each row's 1-based position in its user's hash order and the user's count."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    missing = [c for c in (USER, ITEM) if c not in ratings.columns]
    if missing:
        raise SchemaError(f"cannot split: missing column(s) {missing}; found {ratings.columns}, expected user and item")
    key = F.xxhash64(F.lit(seed).cast("long"), F.col(USER), F.col(ITEM))
    order = [key, F.col(ITEM)] + ([F.col(RATING)] if RATING in ratings.columns else [])
    by_user = Window.partitionBy(USER)
    return ratings.withColumn(_POS, F.row_number().over(by_user.orderBy(*order))).withColumn(
        _N, F.count(F.lit(1)).over(by_user)
    )


def _capped(fraction: Column, taken: Column) -> Column:
    """``round_half_up(fraction * n)`` capped so that train keeps one rating after ``taken`` others."""
    wanted = F.round(fraction * F.col(_N), 0).cast("int")
    return F.least(wanted, F.col(_N) - 1 - taken)


def _check_fraction(name: str, value: float, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        bounds = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be a number in {bounds}, got {value!r}")
