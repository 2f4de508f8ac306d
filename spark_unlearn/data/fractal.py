"""Large realistic ratings tables by randomized fractal (Kronecker) expansion.

After Belletti et al., "Scalable Realistic Recommendation Datasets through
Fractal Expansions" (arXiv 1901.08910) and "Scaling Up Collaborative
Filtering Data Sets through Randomized Fractal Expansions" (arXiv 1905.09874).

Model
-----
Let ``R`` be the ``m x n`` 0/1 incidence matrix of the original table (users
and items renumbered ``0..m-1``, ``0..n-1`` in ascending id order) with
``nnz`` interactions, and ``B`` a small ``k x l`` matrix of keep
probabilities derived from ``R``.  The expansion ``X`` (``mk x nl``) holds,
for every interaction ``(u, i)`` of ``R`` and every cell ``(a, b)`` of ``B``,
the interaction ``(u k + a, i l + b)`` with probability ``B[a, b]``, decided
by ``U(h(seed, u, i, a l + b)) < B[a, b]`` where ``h`` is a splitmix64 hash
and ``U`` maps it to ``(0, 1)``.  So ``E[X] = R (x) B`` (Kronecker product),
and the keep decisions are pure functions of the pair and the seed: any
Spark partitioning gives the same rows as the driver kernels.

What it preserves, in expectation: the singular values of ``R (x) B`` are the
products ``sigma_i(R) sigma_j(B)``; the degree of user copy ``(u, a)`` is
``deg(u) * sum_b B[a, b]`` and of item copy ``(i, b)`` is
``deg(i) * sum_a B[a, b]``, so degree distributions are mixtures of ``k``
(``l``) rescaled copies of the original ones and keep their power-law tail
exponent.  ``E[|X|] = nnz * sum(B)``; the realised count is a sum of
independent Bernoulli draws, within a few ``sqrt(sum p (1 - p)) <= sqrt(E)``
of its expectation.

Reduced matrix (paper 1, Algorithm 2)
-------------------------------------
1. Top ``r = min(k, l)`` singular triplets ``R ~ U S V^T`` by randomized
   subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4), which needs
   only the products ``R X`` and ``R^T Y``: on Spark these are sums over
   partitions, so the table is never collected.
2. "Resize" ``U`` to ``k x r`` and ``V`` to ``l x r`` by area averaging of
   consecutive rows (the papers resize them as images), then replace each by
   its closest column-orthonormal matrix (polar factor).
3. ``R^ = U^ S V^^T`` (``k x l``; its non-zero singular values are the top
   ``r`` of ``R``), min-max rescaled into ``[0, 1]`` as in the paper.
4. ``B = min(1, c R^)`` with ``c`` chosen so that ``nnz * sum(B)`` equals the
   target exactly (water-filling when some entries clip at 1).

Choices where the papers leave room
-----------------------------------
* Orientation: the papers write ``R^ (x) R`` (copies of ``R`` in blocks);
  we write ``R (x) B`` (ids ``u k + a``).  The two differ by a fixed
  permutation of rows and of columns: same degrees, same spectrum.
* Randomisation: each product entry is kept independently with probability
  ``B[a, b]`` (the papers' dropout of rate ``1 - B[a, b]``, per element
  rather than a fixed-size sample per block).  Their randomized operator
  (1901.08910 section III.4) also shuffles the rows and columns of every
  block; not done here, so user copy ``(u, a)`` stays a thinned copy of
  ``u`` and ``E[X]`` an exact Kronecker product.
* The SVD is of the binary incidence matrix (not of centred ratings).
* Shape: unless given, ``k l ~ 4 target / nnz`` (mean keep probability about
  1/4, so density drops about 4x), ``k = ceil(sqrt(k l))``, ``l = ceil(k l / k)``.
* Ratings: each expanded interaction copies its original pair's rating, so
  implicit data (all 1.0) stays implicit.
* Degree distributions: :func:`fit_power_law` (Clauset et al. 2009).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_unlearn.data.synthetic import splitmix, uniform_from_hash
from spark_unlearn.errors import ConfigError, EmptyInputError, OutputPathError
from spark_unlearn.schema import INT32_MAX, ITEM, RATING, RATINGS_SCHEMA, USER
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

KEEP_SLACK = 4.0
"""Default ``k l / (target / nnz)``: the mean keep probability is about ``1 / KEEP_SLACK``."""
_MASK64 = (1 << 64) - 1
_KEEP_STREAM = 0x66726163  # hash stream tag ("frac"), apart from synthetic.py's streams
_CELLS_PER_CHUNK = 1 << 21  # pairs x cells evaluated at once by expand_pairs (16 MB of hashes)
_ROWS_PER_PARTITION = 2_000_000  # expected output rows per expansion task
DU, DI = "_su_du", "_su_di"  # dense ids of the original (internal columns)


# --------------------------------------------------------------------------- expansion kernels


def keep_uniforms(users, items, cells, seed: int) -> np.ndarray:
    """``U(h(seed, u, i, c))`` in ``(0, 1)``, elementwise with numpy broadcasting of the three id arrays.

    ``h`` is splitmix64 applied to ``(u << 32 | i) xor s`` and again to the
    result xor the cell index ``c = a l + b``, with ``s`` a mix of the seed;
    ``U`` takes the top 53 bits.  Dense ids must be in ``[0, 2^31)``.
    """
    s = splitmix(np.array([(seed & _MASK64) ^ _KEEP_STREAM], dtype=np.uint64))[0]
    pair = (np.asarray(users).astype(np.uint64) << np.uint64(32)) | np.asarray(items).astype(np.uint64)
    return uniform_from_hash(splitmix(splitmix(pair ^ s) ^ np.asarray(cells).astype(np.uint64)))


def expand_pairs(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, reduced: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomized Kronecker expansion of a list of interactions.

    Interaction ``(u, i, r)`` becomes ``(u k + a, i l + b, r)`` for each cell
    ``(a, b)`` of ``reduced`` (``k x l``) with
    ``keep_uniforms(u, i, a l + b, seed) < reduced[a, b]``.

    ``users``, ``items``: dense 0-based ids ``< 2^31``; ``reduced``: keep
    probabilities in ``[0, 1]``.  The copies of a pair are a pure function of
    ``(u, i, reduced, seed)``.  Returns ``users, items`` (int64) and
    ``ratings``, grouped by input pair in input order, cells row-major.
    """
    k, l = reduced.shape
    cells = np.flatnonzero(reduced.ravel() > 0)
    probs = reduced.ravel()[cells]
    users, items, ratings = np.asarray(users, np.int64), np.asarray(items, np.int64), np.asarray(ratings)
    step = max(1, _CELLS_PER_CHUNK // max(1, cells.size))
    out_u, out_i, out_r = [users[:0]], [items[:0]], [ratings[:0]]
    for start in range(0, users.size, step):
        u, i = users[start:start + step], items[start:start + step]
        rows, cols = np.nonzero(keep_uniforms(u[:, None], i[:, None], cells[None, :], seed) < probs[None, :])
        out_u.append(u[rows] * k + cells[cols] // l)
        out_i.append(i[rows] * l + cells[cols] % l)
        out_r.append(ratings[start:start + step][rows])
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_r)


def expand_dense_reference(present: np.ndarray, values: np.ndarray, reduced: np.ndarray, seed: int) -> np.ndarray:
    """Slow, obvious oracle of :func:`expand_pairs` on a dense ``m x n`` matrix.

    ``P = present (x) reduced`` (numpy ``kron``) is the keep probability of
    every entry of the ``mk x nl`` product; entry ``(U, I)`` comes from
    ``(u, i, a, b) = (U // k, I // l, U % k, I % l)``, is kept when
    ``keep_uniforms(u, i, a l + b, seed) < P[U, I]`` and then holds
    ``values[u, i]``.  Returns the expansion as a dense matrix, NaN where empty.
    """
    k, l = reduced.shape
    prob = np.kron(present.astype(float), reduced)
    big_u, big_i = np.indices(prob.shape)
    u, i, cell = big_u // k, big_i // l, (big_u % k) * l + big_i % l
    copied = np.kron(values.astype(float), np.ones((k, l)))
    return np.where((prob > 0) & (keep_uniforms(u, i, cell, seed) < prob), copied, np.nan)


def split_ids(expanded: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``(original dense id, copy index)`` of expanded ids: ``(x // factor, x % factor)``."""
    expanded = np.asarray(expanded, np.int64)
    return expanded // factor, expanded % factor


# --------------------------------------------------------------------------- reduced matrix kernels


def truncated_svd(
    matmul: Callable[[np.ndarray], np.ndarray], rmatmul: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int], rank: int, seed: int, oversample: int = 10, power_iters: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top singular triplets of an implicit matrix by randomized subspace iteration.

    With ``p = min(rank + oversample, m, n)`` and a gaussian ``Omega``
    (``n x p``, from ``numpy.random.default_rng(seed)``):
    ``Q = orth(A Omega)``, then ``power_iters`` times
    ``Q = orth(A orth(A^T Q))``; finally ``A^T Q = V S W^T`` (thin SVD), so
    ``A ~ (Q W) S V^T``.  Exact when ``p = min(m, n)``.  ``matmul`` and
    ``rmatmul`` compute ``X (n x p) -> A X`` and ``Y (m x p) -> A^T Y``
    (``2 power_iters + 2`` calls); ``shape = (m, n)``.  Returns ``u``
    (``m x r``), ``s`` (descending) and ``v`` (``n x r``), ``r = min(rank, p)``.
    """
    m, n = shape
    p = max(1, min(rank + oversample, m, n))
    omega = np.random.default_rng(seed).standard_normal((n, p))
    q = np.linalg.qr(matmul(omega))[0]
    for _ in range(power_iters):
        q = np.linalg.qr(matmul(np.linalg.qr(rmatmul(q))[0]))[0]
    v, s, wt = np.linalg.svd(rmatmul(q), full_matrices=False)
    r = min(rank, s.size)
    return (q @ wt.T)[:, :r], s[:r], v[:, :r]


def resize_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Area-averaging resize of ``x`` (``m x r``) to ``rows x r``.

    Row ``t`` of ``x`` covers ``[t/m, (t+1)/m)``; output row ``g`` is the
    mean of the piecewise-constant function over ``[g/rows, (g+1)/rows)``:
    ``rows * (F((g+1)/rows) - F(g/rows))`` with ``F`` its integral.  Works
    both ways (``m < rows`` repeats rows).
    """
    m = x.shape[0]
    cum = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)]) / m  # F at t/m

    def integral(pos: np.ndarray) -> np.ndarray:
        t = np.minimum(np.floor(pos * m).astype(np.int64), m - 1)
        return cum[t] + (pos * m - t)[:, None] * x[t] / m

    edges = np.arange(rows + 1) / rows
    return rows * np.diff(integral(edges), axis=0)


def closest_orthonormal(x: np.ndarray) -> np.ndarray:
    """Closest column-orthonormal matrix (polar factor): ``W Z^T`` for ``x = W S Z^T``."""
    w, _, zt = np.linalg.svd(x, full_matrices=False)
    return w @ zt


def reduced_matrix(u: np.ndarray, s: np.ndarray, v: np.ndarray, k: int, l: int) -> np.ndarray:
    """The paper's reduced matrix from the top singular triplets of ``R``.

    With ``r = min(k, l, len(s))``:
    ``R^ = polar(resize(U_r, k)) diag(s_r) polar(resize(V_r, l))^T``, whose
    singular values are ``s_1..s_r``, then min-max rescaled to ``[0, 1]``
    (all ones if ``R^`` is constant).  Invariant to the signs of singular
    vector pairs.
    """
    r = min(k, l, s.size)
    uk = closest_orthonormal(resize_rows(u[:, :r], k))
    vl = closest_orthonormal(resize_rows(v[:, :r], l))
    rhat = (uk * s[:r]) @ vl.T
    lo, hi = rhat.min(), rhat.max()
    if not hi - lo > 1e-12 * max(abs(hi), 1.0):
        return np.ones((k, l))
    return (rhat - lo) / (hi - lo)


def scale_to_target(reduced: np.ndarray, n_interactions: int, target: int) -> np.ndarray:
    """``min(1, c reduced)`` with ``c`` such that ``n_interactions * sum(.) == target``.

    Water-filling: with the positive entries sorted ``b_1 >= b_2 >= ...`` and
    the first ``j`` clipped at 1, ``c = (f - j) / sum_{t > j} b_t`` for
    ``f = target / n_interactions``; ``j`` is the least for which
    ``c b_{j+1} <= 1``.

    Raises
    ------
    ConfigError
        ``f`` exceeds the number of positive entries (even all of them at 1
        fall short): choose a larger ``k`` or ``l``.
    """
    f = target / n_interactions
    pos = np.sort(reduced[reduced > 0].ravel())[::-1]
    if f > pos.size * (1 + 1e-12):
        raise ConfigError(
            f"target {target:,} needs {f:.2f} expected copies per interaction but the {reduced.shape[0]} x "
            f"{reduced.shape[1]} reduced matrix has only {pos.size} non-zero cells; use a larger k or l"
        )
    tail = np.cumsum(pos[::-1])[::-1]  # tail[j] = sum_{t >= j} pos[t]
    for j in range(pos.size):
        c = (f - j) / tail[j]
        if c * pos[j] <= 1 + 1e-12:
            break
    return np.minimum(1.0, c * reduced)


def choose_shape(factor: float, k: int | None = None, l: int | None = None) -> tuple[int, int]:
    """``(k, l)`` for an expansion by ``factor = target / nnz`` (module notes); given values are kept."""
    cells = KEEP_SLACK * factor
    for name, value in (("k", k), ("l", l)):
        if value is not None:
            _require_positive_int(name, value)
    if k is None and l is None:
        k = max(2, math.ceil(math.sqrt(cells)))
    if k is None:
        k = max(1, math.ceil(cells / l))
    return k, (max(1, math.ceil(cells / k)) if l is None else l)


def _require_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- degree distributions


@dataclass(frozen=True)
class PowerLawFit:
    """``P(X = x) ~ x^-alpha`` for ``x >= xmin``; ``sigma = (alpha - 1) / sqrt(n_tail)``; ``ks`` the KS distance."""

    alpha: float
    xmin: int
    n_tail: int
    ks: float
    sigma: float


def fit_power_law(values: np.ndarray, min_tail: int = 50, min_tail_fraction: float = 0.05) -> PowerLawFit:
    """Discrete power-law fit of positive integers (Clauset, Shalizi & Newman 2009).

    For each candidate ``xmin`` (a distinct value), the approximate discrete
    MLE ``alpha = 1 + n_tail / sum_{x >= xmin} ln(x / (xmin - 1/2))`` and the
    KS distance ``max |F_emp(x) - F_model(x)|`` over the tail's distinct
    values, with ``F_model(x) = 1 - ((x + 1/2) / (xmin - 1/2))^(1 - alpha)``;
    the ``xmin`` of least KS distance wins.  Our restriction: candidates
    leave at least ``max(min_tail, min_tail_fraction * n)`` values in the
    tail (all if fewer), so that an original and its k-fold expansion are
    fitted on the same share of their distributions; without it the KS
    minimum often lands on a few dozen extreme values (sigma ~ 0.3-0.8).

    Raises
    ------
    EmptyInputError
        No value ``>= 1``.
    """
    x = np.asarray(values)
    x = x[x >= 1].astype(np.int64)
    if x.size == 0:
        raise EmptyInputError("power-law fit: no value >= 1 (degrees of an empty table?)")
    vals, counts = np.unique(x, return_counts=True)
    tail_n = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])  # values >= vals[t]
    tail_log = np.cumsum((counts * np.log(vals))[::-1])[::-1]
    best = None
    for t in np.flatnonzero(tail_n[:-1] >= min(max(min_tail, min_tail_fraction * x.size), x.size)):
        n_t = tail_n[t]
        denominator = tail_log[t] - n_t * math.log(vals[t] - 0.5)
        alpha = 1.0 + n_t / denominator if denominator > 0 else math.inf
        if not math.isfinite(alpha):
            continue
        emp = 1.0 - tail_n[t + 1:] / n_t
        model = 1.0 - ((vals[t:] + 0.5) / (vals[t] - 0.5)) ** (1.0 - alpha)
        ks = float(np.max(np.abs(emp - model)))
        if best is None or ks < best[0]:
            best = (ks, alpha, int(vals[t]), int(n_t))
    if best is None:  # all values equal: no tail to fit
        return PowerLawFit(math.inf, int(vals[0]), int(x.size), 0.0, math.inf)
    ks, alpha, xmin, n_t = best
    return PowerLawFit(float(alpha), xmin, n_t, ks, float((alpha - 1.0) / math.sqrt(n_t)))


# --------------------------------------------------------------------------- driver path (small data, tests)


def expand_arrays(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, target: int, seed: int = 0,
    k: int | None = None, l: int | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The whole expansion on the driver: the same steps and kernels as :func:`expand_ratings`.

    Returns ``((users, items, ratings), reduced)`` with expanded ids over
    the dense renumbering (ascending original ids) of ``users`` and ``items``.
    """
    from scipy import sparse

    _require_positive_int("target_interactions", target)
    if len(users) == 0:
        raise EmptyInputError("fractal expansion: the ratings are empty")
    user_ids, du = np.unique(users, return_inverse=True)
    item_ids, di = np.unique(items, return_inverse=True)
    m, n, nnz = user_ids.size, item_ids.size, du.size
    k, l = _checked_shape(target, nnz, m, n, k, l)
    a = sparse.csr_matrix((np.ones(nnz), (du, di)), shape=(m, n))
    u, s, v = truncated_svd(lambda x: a @ x, lambda y: a.T @ y, (m, n), min(k, l), seed)
    reduced = scale_to_target(reduced_matrix(u, s, v, k, l), nnz, target)
    return expand_pairs(du, di, np.asarray(ratings), reduced, seed), reduced


def _checked_shape(target: int, nnz: int, m: int, n: int, k: int | None, l: int | None) -> tuple[int, int]:
    if target < nnz:
        raise ConfigError(
            f"target_interactions={target:,} is below the original's {nnz:,} interactions; an expansion only grows "
            "the table (sample the original down instead)"
        )
    k, l = choose_shape(target / nnz, k, l)
    if m * k > INT32_MAX + 1 or n * l > INT32_MAX + 1:
        raise ConfigError(f"{m:,} users x k={k} or {n:,} items x l={l} exceeds the int32 id range; lower k or l")
    return k, l


# --------------------------------------------------------------------------- Spark plumbing


@dataclass
class FractalPlan:
    """Everything an expansion needs, computed once.

    ``indexed`` is the original with dense ids (columns ``DU``, ``DI``,
    ``rating``), persisted; ``user_map`` / ``item_map`` hold
    ``(user|item, dense)``: expanded id ``x`` comes from dense id ``x // k``
    (``x // l`` for items), copy ``x % k`` (:meth:`original_ids`).
    """

    reduced: np.ndarray
    seed: int
    n_users: int
    n_items: int
    n_interactions: int
    singular_values: np.ndarray
    indexed: DataFrame
    user_map: DataFrame
    item_map: DataFrame

    @property
    def k(self) -> int:
        return self.reduced.shape[0]

    @property
    def l(self) -> int:  # noqa: E743 (the papers' name)
        return self.reduced.shape[1]

    @property
    def expected_interactions(self) -> float:
        return float(self.n_interactions * self.reduced.sum())

    def expand(self) -> DataFrame:
        """The expansion as a lazy ``RATINGS_SCHEMA`` DataFrame (ids ``u k + a``, ``i l + b``)."""
        reduced, seed = self.reduced, self.seed

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            freeze_worker_heap()
            for batch in batches:
                cols = [batch.column(j).to_numpy(zero_copy_only=False) for j in range(3)]
                u, i, r = expand_pairs(cols[0], cols[1], cols[2].astype(np.float32), reduced, seed)
                arrays = [pa.array(u.astype(np.int32)), pa.array(i.astype(np.int32)), pa.array(r)]
                yield pa.RecordBatch.from_arrays(arrays, schema=_ARROW_RATINGS)

        parts = max(self.indexed.rdd.getNumPartitions(), math.ceil(self.expected_interactions / _ROWS_PER_PARTITION))
        return self.indexed.repartition(parts).select(DU, DI, RATING).mapInArrow(run, RATINGS_SCHEMA)

    def original_ids(self, expanded: DataFrame) -> DataFrame:
        """``expanded`` plus ``orig_user``, ``orig_item`` (original ids) and ``user_copy``, ``item_copy``."""
        um = self.user_map.select(F.col(USER).alias("orig_user"), F.col("dense").alias("_du"))
        im = self.item_map.select(F.col(ITEM).alias("orig_item"), F.col("dense").alias("_di"))
        k, l = F.lit(self.k), F.lit(self.l)
        out = expanded.withColumn("_du", F.floor(F.col(USER) / k)).withColumn("_di", F.floor(F.col(ITEM) / l))
        out = out.withColumn("user_copy", F.pmod(F.col(USER), k)).withColumn("item_copy", F.pmod(F.col(ITEM), l))
        return out.join(um, "_du").join(im, "_di").drop("_du", "_di")


_ARROW_RATINGS = pa.schema(
    [pa.field(USER, pa.int32(), False), pa.field(ITEM, pa.int32(), False), pa.field(RATING, pa.float32(), False)]
)


def plan_expansion(
    spark: SparkSession, ratings: DataFrame, target_interactions: int, seed: int = 0,
    k: int | None = None, l: int | None = None, *, power_iters: int = 3,
) -> FractalPlan:
    """Dense ids, the SVD of ``R`` and the scaled reduced matrix, without collecting the table.

    What reaches the driver: counts, the randomized SVD's ``m x p`` and
    ``n x p`` product matrices (``p = min(k, l) + 10``), summed over
    partitions.  Same arguments and errors as :func:`expand_ratings`.
    """
    _require_positive_int("target_interactions", target_interactions)
    user_map, m = _dense_ids(spark, ratings, USER)
    if m == 0:
        raise EmptyInputError("fractal expansion: the ratings are empty")
    item_map, n = _dense_ids(spark, ratings, ITEM)
    indexed = (
        ratings.join(user_map.withColumnRenamed("dense", DU), USER)
        .join(item_map.withColumnRenamed("dense", DI), ITEM)
        .select(DU, DI, RATING)
        .persist()
    )
    nnz = indexed.count()
    k, l = _checked_shape(target_interactions, nnz, m, n, k, l)
    u, s, v = _spark_svd(spark, indexed, m, n, min(k, l), seed, power_iters)
    reduced = scale_to_target(reduced_matrix(u, s, v, k, l), nnz, target_interactions)
    log.info("fractal plan: %d x %d users/items, %s interactions -> k=%d, l=%d, expected %s; singular values %s",
             m, n, f"{nnz:,}", k, l, f"{nnz * reduced.sum():,.0f}", np.round(s, 3))
    return FractalPlan(reduced, seed, m, n, nnz, s, indexed, user_map, item_map)


def expand_ratings(
    spark: SparkSession, ratings_df: DataFrame, target_interactions: int, seed: int = 0,
    k: int | None = None, l: int | None = None,
) -> DataFrame:
    """Expand a ratings table to about ``target_interactions`` rows by randomized fractal expansion.

    Parameters
    ----------
    ratings_df
        ``user``, ``item``, ``rating`` (``RATINGS_SCHEMA``), one row per pair.
    target_interactions
        Expected number of output rows (exact in expectation; the realised
        count is within a few ``sqrt(target)``).
    seed
        The rows are a pure function of the input rows, the arguments and
        the seed, whatever the partitioning.
    k, l
        Copies per user / per item; default from the target (module notes).

    Returns
    -------
    DataFrame
        Lazy ``RATINGS_SCHEMA``: user ``u k + a``, item ``i l + b`` over the
        dense renumbering of the original (:class:`FractalPlan` maps back).

    Raises
    ------
    ConfigError
        Target not a positive integer, below the input's size, or out of
        reach of ``k x l``; ids beyond int32.
    EmptyInputError
        ``ratings_df`` has no rows.
    """
    return plan_expansion(spark, ratings_df, target_interactions, seed, k, l).expand()


def _dense_ids(spark: SparkSession, df: DataFrame, col: str) -> tuple[DataFrame, int]:
    """``(col, dense)`` with dense ``0..N-1`` in ascending ``col`` order, and ``N``.

    A window over all distinct ids, so one task ranks them (Spark warns about
    the single partition): fine for the millions of ids of tables worth expanding.
    """
    order = Window.orderBy(col)
    ranked = df.select(col).distinct().select(col, (F.row_number().over(order) - 1).alias("dense"))
    mapping = ranked.persist()
    return mapping, mapping.count()


def _spark_svd(spark: SparkSession, indexed: DataFrame, m: int, n: int, rank: int, seed: int, power_iters: int):
    """:func:`truncated_svd` of the 0/1 matrix of ``indexed`` with products summed over partitions."""
    from scipy import sparse

    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            pairs = np.stack([batch.column(j).to_numpy(zero_copy_only=False) for j in range(2)]).astype(np.int64)
            yield pa.RecordBatch.from_arrays([pa.array([pairs.tobytes()], pa.binary())], ["pairs"])

    chunks = (
        indexed.select(DU, DI).mapInArrow(pack, "pairs binary")
        .rdd.map(lambda row: np.frombuffer(row[0], np.int64).reshape(2, -1)).persist()
    )
    sc = spark.sparkContext

    def product(x: np.ndarray, transpose: bool) -> np.ndarray:
        shared = sc.broadcast(x)
        out_rows = n if transpose else m

        def partial(parts):
            x_local = shared.value
            acc = np.zeros((out_rows, x_local.shape[1]))
            for pairs in parts:
                rows, cols = (pairs[1], pairs[0]) if transpose else (pairs[0], pairs[1])
                acc += sparse.csr_matrix((np.ones(rows.size), (rows, cols)), (out_rows, x_local.shape[0])) @ x_local
            yield acc

        try:
            return chunks.mapPartitions(partial).treeReduce(np.add)
        finally:
            shared.destroy()

    try:
        return truncated_svd(lambda x: product(x, False), lambda y: product(y, True), (m, n), rank, seed,
                             power_iters=power_iters)
    finally:
        chunks.unpersist()


def write_blocked(df: DataFrame, path: str, num_blocks: int, row_group_bytes: int = 1 << 20,
                  overwrite: bool = False) -> None:
    """Write ratings as Parquet clustered by user block, atomically.

    Layout: ``path/user_block=b/part-*.parquet`` with ``b = user mod
    num_blocks``, one task per block (range-partitioned on ``b``), rows
    sorted by ``(user, item)`` inside, Parquet row groups of about
    ``row_group_bytes``.  Written to a hidden sibling directory first and
    renamed to ``path`` when complete; a failure removes the sibling.
    ``read_ratings(spark, path, format="parquet")`` reads it back.

    Raises
    ------
    OutputPathError
        ``path`` exists and ``overwrite`` is false, or the rename fails.
    ConfigError
        ``num_blocks`` or ``row_group_bytes`` not a positive integer.
    """
    _require_positive_int("num_blocks", num_blocks)
    _require_positive_int("row_group_bytes", row_group_bytes)
    spark = df.sparkSession
    jvm = spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    final = fs.makeQualified(jvm.org.apache.hadoop.fs.Path(path))
    if fs.exists(final) and not overwrite:
        raise OutputPathError(f"output {path} exists; remove it or choose another path")
    tmp = jvm.org.apache.hadoop.fs.Path(final.getParent(), f".{final.getName()}.tmp-{uuid.uuid4().hex}")
    try:
        (
            df.withColumn("user_block", F.pmod(F.col(USER), F.lit(num_blocks)))
            .repartitionByRange(num_blocks, "user_block")
            .sortWithinPartitions("user_block", USER, ITEM)
            .write.option("parquet.block.size", str(row_group_bytes))
            .partitionBy("user_block")
            .parquet(tmp.toString())
        )
        if fs.exists(final):
            fs.delete(final, True)
        if not fs.rename(tmp, final):
            raise OutputPathError(f"could not rename {tmp.toString()} to {path}")
    except BaseException:
        fs.delete(tmp, True)
        raise
    log.info("wrote %s in %d user blocks", path, num_blocks)
