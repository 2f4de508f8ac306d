"""Synthetic MovieLens-like ratings generated inside Spark.

Model
-----
Row ``j`` of ``spark.range(n_draws)`` becomes one (user, item, rating) draw,
computed from nothing but ``(seed, j)`` with a counter-based hash (splitmix64),
so the output is the same for any partitioning and is never built on the
driver:

* user and item *popularity ranks* ``r`` are drawn independently from a
  power law ``P(r) ~ r^-s`` on ``1..n`` (inverse CDF of the continuous law on
  ``[1, n + 1)``, floored: Zipf-like, exact enough for benchmarks);
* ranks become ids by the affine bijection ``id = (a * (r - 1) + b) mod n``
  with ``gcd(a, n) = 1`` and ``a, b`` derived from the seed, so popular ids are
  scattered over ``[0, n)`` instead of being the small ones;
* the rating of a pair is ``3.5 + b_u + b_i + x_u . y_i / sqrt(rank) + noise * e``
  with ``b ~ N(0, 0.5^2)``, ``x, y ~ N(0, I)`` (pure functions of the seed and
  the id) and ``e ~ N(0, 1)`` (a function of the seed and the pair), clipped
  to ``[0.5, 5]`` and rounded to halves.  Because every term is a function of
  the pair, repeated draws of a pair are identical rows.

Repeated (user, item) pairs are removed inside Spark.  To land near
``n_ratings`` anyway, the number of draws is raised so that the *expected*
number of distinct pairs equals ``n_ratings`` (computed on the driver from the
two popularity laws, in O(log n) bins); the realised count differs from
``n_ratings`` by random fluctuation, typically within about 1%.  When the
requested density cannot be reached with at most ``_MAX_OVERSAMPLING`` times as
many draws the result is smaller, and a warning is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.errors import ConfigError
from spark_unlearn.schema import INT32_MAX, ITEM, RATING, RATINGS_SCHEMA, USER
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

_ROWS_PER_PARTITION = 1_000_000
_MAX_OVERSAMPLING = 8.0
_GOLDEN = (math.sqrt(5) - 1) / 2
_MASK64 = (1 << 64) - 1
_ARROW_SCHEMA = pa.schema(
    [pa.field(USER, pa.int32(), False), pa.field(ITEM, pa.int32(), False), pa.field(RATING, pa.float32(), False)]
)

# Stream tags keep the hash inputs of different quantities apart.
_S_USER_RANK, _S_ITEM_RANK, _S_USER_F, _S_ITEM_F, _S_USER_B, _S_ITEM_B, _S_NOISE = range(1, 8)


def synthetic_ratings(
    spark: SparkSession,
    n_users: int,
    n_items: int,
    n_ratings: int,
    rank: int = 8,
    user_zipf: float = 1.0,
    item_zipf: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    partitions: int | None = None,
) -> DataFrame:
    """Generate a ratings table with power-law activity and low-rank structure.

    Parameters
    ----------
    spark
        Active session.
    n_users, n_items
        Id ranges: users are ``0..n_users-1``, items ``0..n_items-1`` (not
        every id necessarily occurs).
    n_ratings
        Target number of distinct (user, item) pairs; the result is close to
        it (see the module notes), at most ``n_users * n_items``.
    rank
        Dimension of the latent factors.
    user_zipf, item_zipf
        Power-law exponents ``s >= 0`` of user activity and item popularity
        (0 is uniform, 1 is classic Zipf).
    noise
        Standard deviation of the gaussian noise added before clipping.
    seed
        Seed; the output is a pure function of the arguments other than
        ``partitions``.
    partitions
        Partitions of the generating stage (default: one per million draws).
        Only affects speed, never the rows.

    Returns
    -------
    DataFrame
        Lazy, exactly ``RATINGS_SCHEMA``, ratings in ``{0.5, 1.0, ..., 5.0}``.

    Raises
    ------
    ConfigError
        A non-positive size, an id range beyond int32, a negative exponent
        or noise, or ``n_ratings > n_users * n_items``.
    """
    _check_args(n_users, n_items, n_ratings, rank, user_zipf, item_zipf, noise, seed, partitions)
    n_draws = _draws_for(n_ratings, n_users, n_items, user_zipf, item_zipf)
    if partitions is None:
        partitions = max(1, math.ceil(n_draws / _ROWS_PER_PARTITION))
    params = _Params(n_users, n_items, rank, user_zipf, item_zipf, noise, seed)
    log.info(
        "synthetic ratings: %s draws for %s target ratings (%s users, %s items), %d partitions",
        f"{n_draws:,}", f"{n_ratings:,}", f"{n_users:,}", f"{n_items:,}", partitions,
    )

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        freeze_worker_heap()
        for batch in batches:
            yield params.batch(batch.column(0).to_numpy().astype(np.uint64))

    draws = spark.range(0, n_draws, 1, numPartitions=partitions)
    rows = draws.mapInArrow(generate, RATINGS_SCHEMA)
    # Repeated pairs are identical rows (all terms are functions of the pair),
    # so which one survives does not matter.
    return rows.dropDuplicates([USER, ITEM])


class _Params:
    """Everything a generating task needs; plain numbers so it pickles small."""

    def __init__(self, n_users, n_items, rank, user_zipf, item_zipf, noise, seed):
        self.n_users, self.n_items, self.rank = n_users, n_items, rank
        self.user_zipf, self.item_zipf, self.noise = float(user_zipf), float(item_zipf), float(noise)
        self.seed = np.uint64(seed & _MASK64)
        self.user_perm = _affine(n_users, seed, 1)
        self.item_perm = _affine(n_items, seed, 2)

    def batch(self, rows: np.ndarray) -> pa.RecordBatch:
        """The draws of row indices ``rows`` (uint64) as a RATINGS_SCHEMA batch."""
        user_rank = _zipf_rank(uniform_from_hash(_hash(self.seed, _S_USER_RANK, rows)), self.n_users, self.user_zipf)
        item_rank = _zipf_rank(uniform_from_hash(_hash(self.seed, _S_ITEM_RANK, rows)), self.n_items, self.item_zipf)
        users = _permute(user_rank, self.n_users, *self.user_perm)
        items = _permute(item_rank, self.n_items, *self.item_perm)
        ratings = self._ratings(users, items)
        arrays = [pa.array(users.astype(np.int32)), pa.array(items.astype(np.int32)), pa.array(ratings)]
        return pa.RecordBatch.from_arrays(arrays, schema=_ARROW_SCHEMA)

    def _ratings(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        x, bu = self._latent(users, _S_USER_F, _S_USER_B)
        y, bi = self._latent(items, _S_ITEM_F, _S_ITEM_B)
        pair = _hash(self.seed, _S_NOISE, users.astype(np.uint64) << np.uint64(32) | items.astype(np.uint64))
        e = _gaussian(pair)
        r = 3.5 + bu + bi + np.einsum("ij,ij->i", x, y) / math.sqrt(self.rank) + self.noise * e
        return np.clip(np.round(r * 2) / 2, 0.5, 5.0).astype(np.float32)

    def _latent(self, ids: np.ndarray, factor_stream: int, bias_stream: int) -> tuple[np.ndarray, np.ndarray]:
        """Factors (n, rank) and biases (n,) of ``ids``, computed once per distinct id in the batch."""
        uniq, inverse = np.unique(ids, return_inverse=True)
        keys = uniq.astype(np.uint64)
        components = np.arange(self.rank, dtype=np.uint64)
        grid = (keys[:, None] << np.uint64(16)) | components[None, :]
        factors = _gaussian(_hash(self.seed, factor_stream, grid))
        bias = 0.5 * _gaussian(_hash(self.seed, bias_stream, keys))
        return factors[inverse], bias[inverse]


# --------------------------------------------------------------------------- hashing


def splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hash(seed: np.uint64, stream: int, values: np.ndarray) -> np.ndarray:
    return splitmix(splitmix(seed ^ np.uint64(stream)) ^ values.astype(np.uint64))


def uniform_from_hash(h: np.ndarray) -> np.ndarray:
    """Uniform in (0, 1) from the top 53 bits of a hash."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _gaussian(h: np.ndarray) -> np.ndarray:
    """Standard normal from one 64-bit hash (Box-Muller on two 32-bit halves)."""
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


# --------------------------------------------------------------------------- popularity


def _zipf_rank(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """Ranks in ``1..n`` with ``P(r) = F(r + 1) - F(r)`` for :func:`_zipf_cdf`, by inverse CDF."""
    log_end = math.log(n + 1.0)
    t = 1.0 - s
    if abs(t) < 1e-9:
        x = np.exp(u * log_end)
    else:
        x = np.exp(np.log1p(u * math.expm1(t * log_end)) / t)
    return np.clip(np.floor(x), 1, n).astype(np.int64)


def _zipf_cdf(x: np.ndarray, n: int, s: float) -> np.ndarray:
    """CDF of the continuous power law ``~ x^-s`` on ``[1, n + 1)``."""
    log_end = math.log(n + 1.0)
    t = 1.0 - s
    if abs(t) < 1e-9:
        return np.log(x) / log_end
    return np.expm1(t * np.log(x)) / math.expm1(t * log_end)


def _affine(n: int, seed: int, salt: int) -> tuple[int, int]:
    """Multiplier (coprime to ``n``) and offset of the rank -> id bijection."""
    mix = int(splitmix(np.array([(seed * 8 + salt) & _MASK64], dtype=np.uint64))[0])
    a = max(1, int(n * _GOLDEN)) + mix % 97
    while math.gcd(a, n) != 1:
        a += 1
    return a % n if n > 1 else 0, (mix >> 8) % n


def _permute(rank: np.ndarray, n: int, a: int, b: int) -> np.ndarray:
    # a, rank < 2^31, so the product fits in int64.
    return (np.int64(a) * (rank - 1) + np.int64(b)) % np.int64(n)


# --------------------------------------------------------------------------- oversampling


def _binned_probabilities(n: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-rank probability and number of ranks sharing it, in geometric bins of ranks.

    Ranks 1..64 are exact; beyond, bins grow by 2%, where the law varies by
    well under 2% within a bin.
    """
    n_geometric = 1 + int(math.log(max(n + 1, 65) / 64) / math.log(1.02))
    edges = np.concatenate([np.arange(1, min(n, 64) + 1), np.geomspace(64, n + 1, n_geometric), [n + 1]])
    edges = np.unique(np.clip(np.round(edges), 1, n + 1)).astype(np.float64)
    mass = np.diff(_zipf_cdf(edges, n, s))
    width = np.diff(edges)
    return mass / width, width


def expected_distinct(n_draws: float, n_users: int, n_items: int, user_zipf: float, item_zipf: float) -> float:
    """Expected number of distinct pairs among ``n_draws`` independent draws (Poisson approximation)."""
    pu, wu = _binned_probabilities(n_users, user_zipf)
    pi, wi = _binned_probabilities(n_items, item_zipf)
    seen = -np.expm1(-n_draws * np.outer(pu, pi))
    return float(wu @ seen @ wi)


def _draws_for(n_ratings: int, n_users: int, n_items: int, user_zipf: float, item_zipf: float) -> int:
    """Number of draws whose expected distinct count is ``n_ratings`` (bisection)."""
    def distinct(d: float) -> float:
        return expected_distinct(d, n_users, n_items, user_zipf, item_zipf)

    high = n_ratings * _MAX_OVERSAMPLING
    if distinct(high) < n_ratings:
        log.warning(
            "synthetic ratings: %s distinct pairs are out of reach for %s users x %s items with zipf (%s, %s); "
            "expect about %s (lower the exponents or raise n_users / n_items)",
            f"{n_ratings:,}", f"{n_users:,}", f"{n_items:,}", user_zipf, item_zipf, f"{distinct(high):,.0f}",
        )
        return int(high)
    low = float(n_ratings)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if distinct(mid) < n_ratings else (low, mid)
        if high - low < 0.5:
            break
    return int(math.ceil(high))


def _check_args(n_users, n_items, n_ratings, rank, user_zipf, item_zipf, noise, seed, partitions) -> None:
    sizes = (("n_users", n_users, INT32_MAX + 1), ("n_items", n_items, INT32_MAX + 1), ("n_ratings", n_ratings, None))
    for name, value, limit in sizes + (("rank", rank, 65536),):
        bad_int = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if bad_int or (limit is not None and value > limit):
            bound = f" and at most {limit}" if limit is not None else ""
            raise ConfigError(f"{name} must be a positive integer{bound}, got {value!r}")
    if n_ratings > n_users * n_items:
        raise ConfigError(f"n_ratings={n_ratings:,} exceeds the {n_users * n_items:,} possible (user, item) pairs")
    for name, value in (("user_zipf", user_zipf), ("item_zipf", item_zipf), ("noise", noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1):
        raise ConfigError(f"partitions must be a positive integer or None, got {partitions!r}")
