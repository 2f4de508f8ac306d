"""Distributed ALS with Spark MLlib's objective, on the block layout of :mod:`spark_unlearn.als.blocks`.

One iteration solves every item from the user factors, then every user from
the item factors (Spark's order), so the final user factors are the exact
solution given the final item factors.  A half-iteration is one Spark stage:
each block of the solved side receives, through a shuffle, the factor rows it
needs from the other side (one message per block pair, never per rating),
forms its normal equations with the batched kernel of
:mod:`spark_unlearn.als.kernels`, solves them and, in the same pass, routes
its new rows to the blocks that need them next (:meth:`ALSState.solve_routed`).

In implicit mode the Gram ``Y^T Y`` of the solved-from side travels the same
way: each block sends its ``k x k`` share to every block of the other side,
which sum the shares in block order.  Half-iterations are chained lazily and
run as one Spark job per ``checkpoint_interval`` iterations, which also cuts
the lineage, so long runs neither overflow nor pay a job per step; progress
is logged from Spark's status tracker (:mod:`spark_unlearn.progress`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.als.blocks import SideBlock, align_pieces, dataframe_to_factor_pieces, factors_to_dataframe, rows_to_dataframe, side_blocks
from spark_unlearn.als.kernels import SolveSpec, gram, residuals, solve_rows
from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.errors import ConfigError
from spark_unlearn.progress import stage_progress
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


# The salt of each side's initial factors (init_factors): a retrain on the driver starts from the same rows.
INIT_SALT = {"user": 1, "item": 2}


def init_factors(ids: np.ndarray, rank: int, seed: int, salt: int) -> np.ndarray:
    """Deterministic random unit-norm rows (Spark's initialisation: gaussian, normalised).

    Each row depends only on ``(seed, salt, id)``, so the result does not
    depend on how rows are partitioned.
    """
    with np.errstate(over="ignore"):
        base = (np.asarray(ids, dtype=np.int64).astype(np.uint64) << np.uint64(20)) ^ np.uint64((seed * 1_000_003 + salt) & 0xFFFFF)
        cols = np.arange(2 * rank, dtype=np.uint64)
        bits = _splitmix64(_splitmix64(base[:, None] * np.uint64(0x100000001B3) + cols[None, :]) ^ np.uint64(seed & 0xFFFFFFFF))
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    g = np.sqrt(-2.0 * np.log(u[:, :rank])) * np.cos(2.0 * np.pi * u[:, rank:])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g.astype(np.float32)


@dataclass
class _GramPart:
    """One block's share ``F_b^T F_b`` (float64) of a side's Gram, sent to every block of the other side.

    Summing the parts in block order inside each solver gives every block the
    same ``F^T F`` without a driver round trip (an all-reduce through the
    shuffle that already carries the factors).
    """

    block: int
    G: np.ndarray


def _routed(static: SideBlock, F: np.ndarray, with_gram: bool) -> list:
    """The messages a block of solved factors sends: its rows each other-side block needs, and its Gram part."""
    out = [(dst, (static.block, F[rows])) for dst, rows in static.outlinks.items()]
    if with_gram:
        part = _GramPart(static.block, gram(F))
        out.extend((dst, part) for dst in range(static.num_blocks))
    return out


@dataclass
class _Own:
    """The solved side's own current factors, travelling beside the messages (residuals need them)."""

    ids: np.ndarray
    F: np.ndarray


@dataclass
class _Target:
    """Per-row right-hand-side offsets ``t`` travelling beside the messages (offset ALS solves ``A x = b + t``)."""

    ids: np.ndarray
    T: np.ndarray


# Rows a certificate names as above tol, per side: enough to seed a repair, bounded for the driver.
MAX_VIOLATORS = 10_000


def row_bounds(tol: float, own: float, T: np.ndarray, bnorm: np.ndarray) -> np.ndarray:
    """Each row's certificate bound ``max(tol, own * |t| / |b|)`` (:class:`~spark_unlearn.als.policy.RowTolerance`)."""
    return RowTolerance(tol, own).bounds(np.linalg.norm(T, axis=1), bnorm)


def certificate_rows(R: np.ndarray, bnorm: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row relative residual ``|R - T| / |b|`` and the offsets rows ``[T | |b| | R - T]`` a version stores.

    ``R = A x - b`` (:func:`~spark_unlearn.als.kernels.residuals`), ``T`` the
    rows' targets; keeping the target and the drift ``R - T`` apart means
    drift below tol is never absorbed into the targets.
    """
    rel = np.linalg.norm(R - T, axis=1) / np.maximum(bnorm, 1e-300)
    return rel, np.hstack([T, bnorm[:, None], R - T])


@dataclass(frozen=True)
class ResidualCheck:
    """Ask :meth:`ALSState.solve_routed` for every row's certificate residual, computed in the solve's own pass.

    ``when="after"``: the rows just solved, against the factors they were
    solved from.  ``when="before"``: the side's current factors (passed as
    ``own``), against the same incoming factors, before they are replaced:
    the residual of the previous sweep's rows.  A row's relative residual is
    ``|A x - b - t| / |b|`` (``t`` the row's target, zero without targets);
    its bound is ``max(tol, own * |t| / |b|)``
    (:class:`~spark_unlearn.als.policy.RowTolerance`); the per-block summary
    lists at most ``max_violators`` rows above their bound.
    """

    side: str
    when: str
    tol: float
    own: float = 0.0
    max_violators: int = MAX_VIOLATORS


@dataclass
class CheckStats:
    """A block's certificate summary: the largest relative residual, the largest ratio of a row's residual to its
    bound, and the first rows above their bound."""

    side: str
    block: int
    max_relative: float
    violators: list
    max_ratio: float = 0.0


def _gather(it):
    """Split a solver partition into its static block, the needed factors (message order) and extras.

    Extras are the block's own factors (:class:`_Own`), targets
    (:class:`_Target`), the other side's Gram summed from its parts in block
    order (keyed :class:`_GramPart`) and the :class:`CheckStats` forwarded by
    the other side's blocks (a list); returned in a dict keyed by type.
    """
    static, msgs, own, parts = None, [], {CheckStats: []}, []
    for _, value in it:
        if isinstance(value, SideBlock):
            static = value
        elif isinstance(value, (_Own, _Target)):
            own[type(value)] = value
        elif isinstance(value, _GramPart):
            parts.append(value)
        elif isinstance(value, CheckStats):
            own[CheckStats].append(value)
        else:
            msgs.append(value)
    if parts:
        parts.sort(key=lambda p: p.block)
        total = parts[0].G.copy()
        for p in parts[1:]:
            total += p.G
        own[_GramPart] = total
    if static is None:
        return None, None, None
    msgs.sort(key=lambda m: m[0])
    k = msgs[0][1].shape[1] if msgs else 0
    Y = np.concatenate([m[1] for m in msgs]) if msgs else np.zeros((0, k), np.float32)
    expected = int(static.needed_counts.sum())
    if Y.shape[0] != expected:  # a routing bug would silently mis-assign factors
        raise RuntimeError(f"block {static.block}: received {Y.shape[0]} factor rows, expected {expected}")
    return static, Y, own


@dataclass
class ALSState:
    """The cached block layout of one ratings table (both sides)."""

    spark: SparkSession
    users: RDD  # (block, SideBlock) with users as rows
    items: RDD  # (block, SideBlock) with items as rows
    num_blocks: int

    @classmethod
    def build(cls, ratings: DataFrame, num_blocks: int | None = None) -> "ALSState":
        spark = ratings.sparkSession
        P = num_blocks or max(2, spark.sparkContext.defaultParallelism)
        return cls(spark, side_blocks(ratings, "user", P), side_blocks(ratings, "item", P), P)

    def side(self, name: str) -> RDD:
        return self.users if name == "user" else self.items

    def unpersist(self) -> None:
        self.users.unpersist()
        self.items.unpersist()

    # -- factors ---------------------------------------------------------
    def initial_factors(self, side: str, rank: int, seed: int, warm: DataFrame | None = None) -> RDD:
        """Factor blocks ``(block, (ids, F))`` aligned with the side's rows.

        Rows present in ``warm`` (an ``id``/``features`` table) start there;
        the others get the deterministic random start.
        """
        salt = INIT_SALT[side]
        static = self.side(side)
        if warm is None:
            return static.mapValues(lambda s: (s.ids, init_factors(s.ids, rank, seed, salt)))
        pieces = dataframe_to_factor_pieces(warm, self.num_blocks)

        def fill(ids, missing, M):
            if M.shape[1] not in (0, rank):
                raise ConfigError(f"warm-start factors have rank {M.shape[1]}, the model wants rank {rank}")
            if M.shape[1] == 0:
                return init_factors(ids, rank, seed, salt)
            if missing.any():
                M[missing] = init_factors(ids[missing], rank, seed, salt)
            return M

        return align_pieces(static, pieces, self.num_blocks, fill)

    def gram(self, factors: RDD) -> np.ndarray:
        """``F^T F`` (float64) over all rows of a factor RDD: a distributed sum of k x k blocks."""
        grams = factors.map(lambda kv: gram(kv[1][1]))
        return grams.treeReduce(lambda a, b: a + b)

    def solve(self, dst_side: str, src_factors: RDD, params: ALSParams, targets: RDD | None = None) -> RDD:
        """New factors ``(block, (ids, X))`` of ``dst_side`` solved from the other side's ``src_factors`` (lazy RDD).

        ``targets`` (``(block, (ids, T))`` aligned with the side's rows) makes
        it solve ``A x = b + t`` (offset ALS, Unlearn-ALS's full sweep).
        """
        src_side = "item" if dst_side == "user" else "user"
        incoming = self.routed(src_side, src_factors, params.implicit)
        return self.factors_of(self.solve_routed(dst_side, incoming, params, targets))

    def routed(self, side: str, factors: RDD, with_gram: bool) -> RDD:
        """The messages factor blocks ``(block, (ids, F))`` of ``side`` send to the other side, shuffled there."""

        def route(it):
            freeze_worker_heap()
            static, F = None, None
            for _, value in it:
                if isinstance(value, SideBlock):
                    static = value
                else:
                    F = value[1]
            if static is not None and F is not None:
                yield from _routed(static, F, with_gram)

        return self.side(side).union(factors).mapPartitions(route).partitionBy(self.num_blocks)

    def solve_routed(
        self, dst_side: str, incoming: RDD, params: ALSParams, targets: RDD | None = None,
        check: ResidualCheck | None = None, own: RDD | None = None,
    ) -> RDD:
        """Solve ``dst_side`` from shuffled messages and route the result on: ``(block, (ids, X, outgoing, checked))``.

        ``incoming`` comes from :meth:`routed` or from the ``outgoing`` of the
        previous solve (factor rows and, in implicit mode, the Gram parts of
        the other side).  Solving and routing share one pass over the block,
        so a half-iteration is one stage and chained half-iterations need no
        job of their own (lazy RDD).  ``targets`` as in :meth:`solve`.

        With ``check`` the same pass also computes the certificate residual of
        every row (:class:`ResidualCheck`; ``own`` = the side's current factor
        blocks for ``when="before"``).  ``checked`` is then
        ``(stored, stats)``: ``stored`` the rows' ``[T | |b| | R - T]`` (the
        next version's offsets) and ``stats`` the :class:`CheckStats` of this
        block plus those forwarded to it; with ``when="after"`` the block's
        stats also travel with its outgoing messages (to the other side's
        block 0), so the next solve's result carries both sides' summaries.
        Without ``check``, ``checked`` is None.
        """
        spec = SolveSpec(reg=float(params.reg), implicit=params.implicit, alpha=float(params.alpha))
        implicit = params.implicit
        if check is not None and check.when not in ("before", "after"):
            raise ValueError(f"ResidualCheck.when must be 'before' or 'after', not {check.when!r}")
        if check is not None and check.when == "before" and own is None:
            raise ValueError("a 'before' residual check needs the side's current factors (own)")

        def checked(F, static, Y, G, T):
            R, bnorm = residuals(F, static.indptr, static.src_local, static.ratings, Y, spec, gram=G)
            T = np.zeros_like(R) if T is None else T
            rel, stored = certificate_rows(R, bnorm, T)
            ratio = rel / row_bounds(check.tol, check.own, T, bnorm)
            stats = CheckStats(check.side, static.block, float(rel.max()) if rel.size else 0.0,
                               static.ids[~(ratio <= 1.0)][: check.max_violators].tolist(),
                               float(ratio.max()) if ratio.size else 0.0)
            return stored, stats

        def solve_partition(it):
            freeze_worker_heap()
            static, Y, extra = _gather(it)
            if static is None:
                return
            G = extra.get(_GramPart)
            if implicit and G is None:
                raise RuntimeError(f"block {static.block}: no Gram parts arrived for an implicit solve")
            T = extra[_Target].T if _Target in extra else None
            result = None
            if check is not None and check.when == "before":
                result = checked(extra[_Own].F, static, Y, G, T)
            X = solve_rows(static.indptr, static.src_local, static.ratings, Y, spec, gram=G, offsets=T).astype(np.float32)
            out = _routed(static, X, implicit)
            if check is not None and check.when == "after":
                result = checked(X, static, Y, G, T)
                out.append((0, result[1]))
            if result is not None:
                result = (result[0], [result[1], *extra[CheckStats]])
            yield static.block, (static.ids, X, out, result)

        parts = self.side(dst_side).union(incoming)
        if targets is not None:
            parts = parts.union(targets.mapValues(lambda t: _Target(t[0], t[1])))
        if own is not None:
            parts = parts.union(own.mapValues(lambda f: _Own(f[0], f[1])))
        return parts.mapPartitions(solve_partition, preservesPartitioning=True)

    def onward(self, solved: RDD) -> RDD:
        """The messages a :meth:`solve_routed` result sends on, shuffled to their blocks (the next half-step's input)."""
        return solved.flatMap(lambda kv: kv[1][2]).partitionBy(self.num_blocks)

    @staticmethod
    def factors_of(solved: RDD) -> RDD:
        """The factor blocks ``(block, (ids, X))`` of a :meth:`solve_routed` result."""
        return solved.mapValues(lambda v: (v[0], v[1]))

    def residuals(self, dst_side: str, dst_factors: RDD, src_factors: RDD, params: ALSParams) -> RDD:
        """Per-row normal-equation residuals ``A x - b`` of ``dst_side``: RDD ``(block, (ids, R, |b|))``."""
        src_side = "item" if dst_side == "user" else "user"
        incoming = self.routed(src_side, src_factors, params.implicit)
        spec = SolveSpec(reg=float(params.reg), implicit=params.implicit, alpha=float(params.alpha))
        own = dst_factors.mapValues(lambda f: _Own(f[0], f[1]))

        def residual_partition(it):
            freeze_worker_heap()
            static, Y, extra = _gather(it)
            if static is None:
                return
            R, bnorm = residuals(extra[_Own].F, static.indptr, static.src_local, static.ratings, Y, spec, gram=extra.get(_GramPart))
            yield static.block, (static.ids, R, bnorm)

        return self.side(dst_side).union(incoming).union(own).mapPartitions(residual_partition, preservesPartitioning=True)


def _offsets_of_blocks(state: ALSState, users: RDD, items: RDD, params: ALSParams) -> tuple[DataFrame, DataFrame]:
    out = []
    for side, mine, theirs in (("user", users, items), ("item", items, users)):
        res = state.residuals(side, mine, theirs, params)
        packed = res.mapValues(lambda v: (v[0], np.hstack([v[1], v[2][:, None]])))
        out.append(offsets_frame(state.spark, packed, params.rank))
    return out[0], out[1]


def offsets_for(state: ALSState, model: FactorModel) -> tuple[DataFrame, DataFrame]:
    """Training offsets of any model (e.g. one trained by Spark MLlib) on the ratings behind ``state``.

    Every rated row must have a factor row; rows of the model without
    ratings are ignored.
    """
    from spark_unlearn.errors import StoreError

    P = state.num_blocks

    def require(side):
        def fill(ids, missing, M):
            if missing.any():
                raise StoreError(f"the model has no factor for {side} {int(ids[missing][0])}, which the ratings rate; "
                                 "these ratings are not the ones the model was trained on")
            return M
        return fill

    users = align_pieces(state.users, dataframe_to_factor_pieces(model.user_factors, P), P, require("user"))
    items = align_pieces(state.items, dataframe_to_factor_pieces(model.item_factors, P), P, require("item"))
    return _offsets_of_blocks(state, users.cache(), items.cache(), model.params)


def offsets_frame(spark: SparkSession, blocks: RDD, rank: int, with_drift: bool = False) -> DataFrame:
    """Offsets table (``id``, ``residual``, ``bnorm``, ``drift``) from blocks.

    Blocks are ``(block, (ids, [T | bnorm]))`` (drift zero: a freshly trained
    model's residual is its target) or, with ``with_drift``,
    ``(block, (ids, [T | bnorm | D]))``.
    """
    from pyspark.sql import functions as F

    from spark_unlearn.schema import WIDE_DOUBLES_SCHEMA

    width = 2 * rank + 1 if with_drift else rank + 1
    wide = rows_to_dataframe(spark, blocks, width, WIDE_DOUBLES_SCHEMA, np.float64)
    target = F.slice("values", 1, rank)
    drift = F.slice("values", rank + 2, rank) if with_drift else F.transform(target, lambda x: F.lit(0.0))
    return wide.select("id", target.alias("residual"), F.element_at("values", rank + 1).alias("bnorm"), drift.alias("drift"))


def _materialise(rdd: RDD, checkpoint: bool) -> RDD:
    """Persist ``rdd`` and compute it with one Spark job (a count), cutting its lineage if asked."""
    rdd = rdd.persist(StorageLevel.MEMORY_AND_DISK)
    if checkpoint:
        if rdd.context.getCheckpointDir():
            rdd.checkpoint()
        else:
            rdd.localCheckpoint()
    rdd.count()
    return rdd


@dataclass
class TrainResult:
    """Output of :func:`train_als`: the model plus its cached block state (for residuals/unlearning)."""

    model: FactorModel
    state: ALSState
    user_blocks: RDD  # (block, (ids, F)) of the final user factors
    item_blocks: RDD
    seconds: float
    seconds_per_iteration: float

    def offsets(self) -> tuple[DataFrame, DataFrame]:
        """Training residuals ``e_r = A_r x_r - b_r`` of every user and item row (DESIGN §2).

        Computed once after training, on the training data, and stored with the
        model: Unlearn-ALS solves ``A' x = b' + e`` so an untouched model is a
        fixed point.  Returns ``(user_offsets, item_offsets)`` DataFrames with
        :data:`~spark_unlearn.schema.OFFSETS_SCHEMA` (lazy; computed when written).
        """
        return _offsets_of_blocks(self.state, self.user_blocks, self.item_blocks, self.model.params)


def train_als(
    ratings: DataFrame,
    params: ALSParams,
    init: FactorModel | None = None,
    state: ALSState | None = None,
) -> TrainResult:
    """Train (or warm-start) ALS on a validated ratings DataFrame.

    Parameters
    ----------
    ratings
        Canonical ratings (``user``, ``item``, ``rating``), see
        :func:`spark_unlearn.data.readers.read_ratings`.
    params
        Hyperparameters; the objective is Spark MLlib's (see
        :class:`~spark_unlearn.als.params.ALSParams`).
    init
        Warm start: rows found in ``init``'s factor tables start there,
        others start at random.  Rows of ``init`` absent from ``ratings``
        are dropped (a row with no ratings has no factor, as in Spark).
    state
        A block layout already built for ``ratings`` (reused, not rebuilt).

    Returns
    -------
    TrainResult
        With the factor tables as lazily-built DataFrames backed by cached
        blocks; nothing is collected to the driver but ``k x k`` Grams.
    """
    t0 = time.perf_counter()
    state = state or ALSState.build(ratings, params.num_blocks)
    spark = state.spark
    users = state.initial_factors("user", params.rank, params.seed, init.user_factors if init else None)
    items = state.initial_factors("item", params.rank, params.seed, init.item_factors if init else None)
    implicit = params.implicit
    users = _materialise(users, checkpoint=False)
    if params.iterations == 0:  # otherwise the first half-step solves the items and the start is never read
        items = _materialise(items, checkpoint=False)
    t_setup = time.perf_counter() - t0
    log.info("ALS block layout ready: %d blocks per side, %.1fs", state.num_blocks, t_setup)
    t_iter = time.perf_counter()
    n_iter = params.iterations
    done_before = 0  # iterations finished by earlier jobs (one job per checkpoint interval)

    def describe(stages: int) -> str:
        # A job runs one routing stage, then one stage per half-iteration.
        return f"ALS iteration {min(done_before + max(stages - 1, 0) // 2, n_iter)}/{n_iter} (running)"

    with stage_progress(spark.sparkContext, describe):
        msgs = state.routed("user", users, implicit)
        for it in range(1, n_iter + 1):
            last = it == n_iter
            solved_items = state.solve_routed("item", msgs, params)
            if last:  # the result keeps the final items; earlier ones only feed the next half-step
                solved_items = solved_items.persist(StorageLevel.MEMORY_AND_DISK)
                items = state.factors_of(solved_items)
            msgs = state.onward(solved_items)
            solved_users = state.solve_routed("user", msgs, params)
            if not last and it % params.checkpoint_interval:
                msgs = state.onward(solved_users)
                continue
            # One job per checkpoint interval runs the chained half-iterations and cuts the lineage.
            done = _materialise(state.factors_of(solved_users), checkpoint=not last)
            users.unpersist()
            users, done_before = done, it
            msgs = state.routed("user", users, implicit)
            log.info("ALS iteration %d/%d done (%.1fs)", it, n_iter, time.perf_counter() - t0)
    per_iter = (time.perf_counter() - t_iter) / max(params.iterations, 1)
    model = FactorModel(
        user_factors=factors_to_dataframe(spark, users, params.rank),
        item_factors=factors_to_dataframe(spark, items, params.rank),
        params=params,
    )
    return TrainResult(model, state, users, items, time.perf_counter() - t0, per_iter)
