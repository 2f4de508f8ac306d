"""Unlearn-ALS on Spark: frontier re-solves (default), offset full sweeps, or the paper's plain sweeps.

Modes
-----
``frontier``
    Re-solve the rows whose own data changed, then only the rows their change
    reaches beyond the tolerance (:mod:`spark_unlearn.als.frontier`), with
    the data read from cached blocks of the remaining ratings.  Falls back to
    ``full`` when the frontier would cover more than
    ``full_fallback_fraction`` of all rows.
``full``
    Offset ALS over every row (``A'x = b' + t``), warm-started from the
    model, until the certificate holds or ``full_iterations`` sweeps: the
    same fixed point the frontier targets, computed the expensive way.
``paper``
    Xu et al. (2023): plain ALS sweeps over every row, warm-started, for
    ``full_iterations`` sweeps (no offsets).  Kept for comparison.

Every result carries a certificate computed over all rows in Spark:
``max_r |A'_r x_r - b'_r - t_r| / |b'_r|`` with ``t_r = 0`` for rows whose
own data changed and the training residual ``e_r`` otherwise (``t = 0``
everywhere in ``paper`` mode, whose fixed point is plain stationarity).

Compute is separate from apply: :func:`unlearn_als` returns new tables and
a report and stores nothing; the job publishes them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.als.blocks import factors_to_dataframe
from spark_unlearn.als.frontier import frontier_unlearn
from spark_unlearn.als.incremental import gram_of
from spark_unlearn.als.kernels import SolveSpec
from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.spark_source import BoundedGramSource, SparkRowSource
from spark_unlearn.als.train import MAX_VIOLATORS, ALSState, ResidualCheck, certificate_rows, offsets_frame
from spark_unlearn.errors import ConfigError, EmptyInputError, UnknownIdError
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

MODES = ("frontier", "full", "paper")
ENGINES = ("auto", "targeted", "layout")
# Above this many requests a batch is planned and solved on the block layout:
# the targeted engine collects the batch and the deleted rows on the driver.
TARGETED_MAX_REQUESTS = 10_000
# Factors are float32: below this relative residual rounding alone breaks the
# certificate, so a smaller tolerance can never be met.
TOL_FLOOR = 1e-5


# ---------------------------------------------------------------------------
# Deletion plan: what the batch removes from the data
# ---------------------------------------------------------------------------


@dataclass
class DeletionPlan:
    """The effect of a deletion batch on a ratings table (lazy DataFrames + small driver sets)."""

    remaining: DataFrame  # ratings minus every deleted row
    deleted: DataFrame  # the deleted rows (user, item, rating)
    direct: dict[str, set[int]]  # rows (still in the model) whose own ratings changed
    erased_users: set[int]
    withdrawn_items: set[int]
    counts: dict[str, int]
    not_found: dict[str, list]  # examples of requested pairs/users/items absent from the data


def batch_requests(batch: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The batch's distinct interaction pairs (``user``, ``item``), erased users (``user``) and withdrawn items (``item``)."""
    pairs = batch.filter(F.col("kind") == "interaction").select("user", "item").distinct()
    users = batch.filter(F.col("kind") == "user").select("user").distinct()
    items = batch.filter(F.col("kind") == "item").select("item").distinct()
    return pairs, users, items


def remove_batch(ratings: DataFrame, batch: DataFrame) -> DataFrame:
    """``ratings`` without every row the batch names: its pairs, its erased users, its withdrawn items."""
    pairs, users, items = batch_requests(batch)
    return (
        ratings.join(pairs, ["user", "item"], "left_anti")
        .join(users, ["user"], "left_anti")
        .join(items, ["item"], "left_anti")
    )


def plan_deletion(
    ratings: DataFrame, batch: DataFrame, strict: bool = False, examples: int = 5, forgotten: DataFrame | None = None
) -> DeletionPlan:
    """Resolve a deletion batch (``user``, ``item``, ``kind``) against ``ratings``.

    ``kind`` is ``interaction`` (forget the pair), ``user`` (erase the user)
    or ``item`` (withdraw the item).  Requests that match nothing are
    reported in ``not_found``: those that an earlier batch already removed
    (``forgotten``: ``user``, ``item``, ``kind`` of earlier requests, or a
    zero-argument callable returning them, called only when needed) as
    *already forgotten*, the rest as unknown.  With ``strict`` unknown
    requests raise :class:`~spark_unlearn.errors.UnknownIdError`.
    """
    pairs, users, items = batch_requests(batch)

    erased_users = {r[0] for r in users.collect()}
    withdrawn_items = {r[0] for r in items.collect()}
    by_pair = ratings.join(pairs, ["user", "item"], "left_semi")
    by_user = ratings.join(users, ["user"], "left_semi")
    by_item = ratings.join(items, ["item"], "left_semi")
    deleted = by_pair.unionByName(by_user).unionByName(by_item).dropDuplicates(["user", "item"]).cache()
    remaining = ratings.join(deleted.select("user", "item"), ["user", "item"], "left_anti")

    missing_pairs = pairs.join(ratings.select("user", "item"), ["user", "item"], "left_anti").cache()
    # Each lookup is a scan of the ratings: skip those the batch has nothing for.
    known_users = ({r[0] for r in ratings.join(users, ["user"], "left_semi").select("user").distinct().collect()}
                   if erased_users else set())
    known_items = ({r[0] for r in ratings.join(items, ["item"], "left_semi").select("item").distinct().collect()}
                   if withdrawn_items else set())
    missing_users, missing_items = erased_users - known_users, withdrawn_items - known_items
    already = {"interactions": 0, "users": set(), "items": set(), "examples": []}
    if forgotten is not None and (missing_users or missing_items or not missing_pairs.isEmpty()):
        if callable(forgotten):
            forgotten = forgotten()  # may be None: no earlier version forgot anything
        if forgotten is not None:
            already = _already_forgotten(missing_pairs, missing_users, missing_items, forgotten, examples)
    unknown_pairs = missing_pairs
    if already["interactions"]:
        unknown_pairs = missing_pairs.join(already["pairs"], ["user", "item"], "left_anti")
    n_unknown_pairs = unknown_pairs.count()
    unknown_users, unknown_items = missing_users - already["users"], missing_items - already["items"]
    not_found = unknown_requests(
        n_unknown_pairs, [tuple(r) for r in unknown_pairs.limit(examples).collect()], unknown_users, unknown_items,
        already, strict, examples,
    )

    # Rows whose own data changed and that keep ratings: both sides in one job.
    touched = deleted.select("user", "item").distinct()
    kept_users = remaining.join(touched.select("user").distinct(), ["user"], "left_semi").select(
        F.lit("user").alias("side"), F.col("user").alias("id"))
    kept_items = remaining.join(touched.select("item").distinct(), ["item"], "left_semi").select(
        F.lit("item").alias("side"), F.col("item").alias("id"))
    direct: dict[str, set[int]] = {"user": set(), "item": set()}
    for side, row_id in kept_users.unionByName(kept_items).distinct().collect():
        direct[side].add(row_id)
    n_deleted = deleted.count()
    counts = plan_counts(pairs.count(), len(erased_users), len(withdrawn_items), n_deleted, n_unknown_pairs,
                         unknown_users, unknown_items, already, direct)
    missing_pairs.unpersist()
    log.info("deletion plan: %s", counts)
    return DeletionPlan(remaining, deleted, direct, erased_users & known_users, withdrawn_items & known_items, counts, not_found)


def unknown_requests(n_pairs: int, pair_examples: list, users: set[int], items: set[int], already: dict[str, Any],
                     strict: bool, examples: int) -> dict[str, list]:
    """The report's ``not_found`` for requests that match nothing; with ``strict`` raise :class:`UnknownIdError`.

    ``users``/``items``/``n_pairs`` are the requests neither in the data nor
    already forgotten; ``already`` is :func:`_already_forgotten`'s result.
    """
    not_found = {
        "interactions": pair_examples[:examples],
        "users": sorted(users)[:examples],
        "items": sorted(items)[:examples],
        "already_forgotten": already["examples"],
    }
    if strict and (n_pairs or users or items):
        raise UnknownIdError(
            f"deletion batch names data that is not in the ratings: {n_pairs} interaction(s) "
            f"(e.g. {not_found['interactions']}), users {not_found['users']}, items {not_found['items']}; "
            "drop them from the batch or run without --strict to have them reported only"
        )
    return not_found


def plan_counts(n_pairs: int, n_users: int, n_items: int, n_deleted: int, n_unknown_pairs: int, unknown_users: set[int],
                unknown_items: set[int], already: dict[str, Any], direct: dict[str, set[int]]) -> dict[str, int]:
    """The ``deletion`` counts of a report (same keys for both engines)."""
    return {
        "requested_interactions": n_pairs,
        "requested_users": n_users,
        "requested_items": n_items,
        "deleted_ratings": n_deleted,
        "not_found_interactions": n_unknown_pairs,
        "not_found_users": len(unknown_users),
        "not_found_items": len(unknown_items),
        "already_forgotten_interactions": already["interactions"],
        "already_forgotten_users": len(already["users"]),
        "already_forgotten_items": len(already["items"]),
        "direct_users": len(direct["user"]),
        "direct_items": len(direct["item"]),
    }


def _already_forgotten(missing_pairs: DataFrame, missing_users: set[int], missing_items: set[int], forgotten: DataFrame,
                       examples: int) -> dict[str, Any]:
    """Which absent requests an earlier batch removed: by the same pair, or by erasing its user or item."""
    f_pairs = forgotten.filter(F.col("kind") == "interaction").select("user", "item", "version")
    f_users = forgotten.filter(F.col("kind") == "user").select("user", "version")
    f_items = forgotten.filter(F.col("kind") == "item").select("item", "version")
    hit_pairs = (
        missing_pairs.join(f_pairs, ["user", "item"])
        .unionByName(missing_pairs.join(f_users, ["user"]))
        .unionByName(missing_pairs.join(f_items, ["item"]))
        .groupBy("user", "item")
        .agg(F.min("version").alias("version"))
        .cache()
    )
    n_pairs = hit_pairs.count()
    spark = missing_pairs.sparkSession
    user_hits = {}
    if missing_users:
        wanted = spark.createDataFrame([(u,) for u in sorted(missing_users)], "user int")
        user_hits = {r[0]: r[1] for r in wanted.join(f_users, ["user"]).groupBy("user").agg(F.min("version")).collect()}
    item_hits = {}
    if missing_items:
        wanted = spark.createDataFrame([(i,) for i in sorted(missing_items)], "item int")
        item_hits = {r[0]: r[1] for r in wanted.join(f_items, ["item"]).groupBy("item").agg(F.min("version")).collect()}
    shown = [{"user": r[0], "item": r[1], "forgotten_in": r[2]} for r in hit_pairs.orderBy("user", "item").limit(examples).collect()]
    shown += [{"user": u, "forgotten_in": v} for u, v in sorted(user_hits.items())[:examples]]
    shown += [{"item": i, "forgotten_in": v} for i, v in sorted(item_hits.items())[:examples]]
    return {
        "interactions": n_pairs,
        "pairs": hit_pairs.select("user", "item"),
        "users": set(user_hits),
        "items": set(item_hits),
        "examples": shown,
    }


# ---------------------------------------------------------------------------
# Helpers on block RDDs
# ---------------------------------------------------------------------------


def _apply_updates(factors: RDD, updates: dict[int, np.ndarray]) -> RDD:
    """Factor blocks with some rows replaced (``updates``: id -> vector, broadcast; small)."""
    bc = factors.context.broadcast(
        (np.asarray(sorted(updates), np.int64), np.stack([updates[i] for i in sorted(updates)]).astype(np.float32))
        if updates
        else (np.zeros(0, np.int64), None)
    )

    def apply(kv):
        ids, X = kv
        upd_ids, upd = bc.value
        if upd_ids.size == 0 or ids.size == 0:
            return kv
        pos = np.minimum(np.searchsorted(upd_ids, ids), upd_ids.size - 1)
        hit = upd_ids[pos] == ids
        if not hit.any():
            return kv
        X = X.copy()
        X[hit] = upd[pos[hit]]
        return ids, X

    return factors.mapValues(apply)


def _targets(offsets: RDD, direct: set[int], rank: int, zero_all: bool = False) -> RDD:
    """Offset targets ``t`` per row: training residual, or zero for direct rows (or all rows)."""
    direct_arr = np.asarray(sorted(direct), np.int64)
    bc = offsets.context.broadcast(direct_arr)

    def target(kv):
        ids, M = kv
        T = np.zeros((ids.size, rank)) if zero_all else M[:, :rank].copy()
        if not zero_all and bc.value.size:
            T[np.isin(ids, bc.value)] = 0.0
        return ids, T

    return offsets.mapValues(target)


@dataclass
class Certificate:
    """Residual certificate of an unlearned model (over all rows)."""

    max_relative_residual: float
    per_side: dict[str, float]
    violators: dict[str, list[int]]
    residual_blocks: dict[str, RDD]  # (block, (ids, [T | bnorm | R - T])) per side: the next version's offsets

    def to_dict(self, tol: float) -> dict[str, Any]:
        return {
            "max_relative_residual": self.max_relative_residual,
            "per_side": self.per_side,
            "tolerance": tol,
            "holds": bool(self.max_relative_residual <= tol),
            "definition": "max over rows r of |A'_r x_r - b'_r - t_r| / |b'_r|, t_r = 0 for rows whose data changed, "
            "else the training residual e_r (t = 0 everywhere in paper mode)",
        }


def certify(
    state: ALSState, users: RDD, items: RDD, targets: dict[str, RDD], params: ALSParams, tol: float, max_violators: int = MAX_VIOLATORS,
    absorb: bool = False,
) -> Certificate:
    """Exact residuals of every row on the remaining data, against the targets (one pass per side).

    The next version's offsets keep each row's target ``T`` and its drift
    ``R - T`` apart; with ``absorb`` (the paper's plain sweeps, which have no
    targets) the residual ``R`` itself becomes the target, as after training.
    Full sweeps certify inside their own solves instead (:func:`_full_sweeps`).
    """
    per_side, violators, blocks, merged = {}, {}, {}, {}
    for side, mine, theirs in (("user", users, items), ("item", items, users)):
        res = state.residuals(side, mine, theirs, params)

        def combine(it):
            freeze_worker_heap()
            block, got, tgt = None, None, None
            for key, value in it:
                block = key
                if len(value) == 3:
                    got = value
                else:
                    tgt = value
            if got is None:
                return
            ids, R, bnorm = got
            T = tgt[1] if tgt is not None else np.zeros_like(R)
            rel, stored = certificate_rows(R, bnorm, T)
            if absorb:  # the residual becomes the target, as after training
                stored = certificate_rows(R, bnorm, R)[1]
            yield block, (ids, stored, rel)

        merged[side] = res.union(targets[side]).mapPartitions(combine, preservesPartitioning=True).persist(StorageLevel.MEMORY_AND_DISK)
        blocks[side] = merged[side].mapValues(lambda v: (v[0], v[1]))

    def stats_of(side):
        return lambda kv: (side, float(kv[1][2].max()) if kv[1][2].size else 0.0, kv[1][0][kv[1][2] > tol][:max_violators].tolist())

    # Both sides in one job: a certificate per sweep should cost one pass, not one job per side.
    stats = merged["user"].map(stats_of("user")).union(merged["item"].map(stats_of("item"))).collect()
    for side in ("user", "item"):
        per_side[side] = max((m for s, m, _ in stats if s == side), default=0.0)
        violators[side] = [i for s, _, v in stats if s == side for i in v][:max_violators]
    return Certificate(max(per_side.values()), per_side, violators, blocks)


# ---------------------------------------------------------------------------
# Unlearning
# ---------------------------------------------------------------------------


@dataclass
class UnlearnResult:
    """New tables (lazy DataFrames) and the report.  Nothing has been stored."""

    model: FactorModel
    offsets: tuple[DataFrame, DataFrame]
    remaining: DataFrame
    deleted: DataFrame
    report: dict[str, Any]
    state: ALSState | None
    grams: dict[str, list] | None = None  # per side, the Gram of the new factor tables, if known
    x_watch: dict[str, dict] | None = None  # implicit, targeted engine: per side, the new version's RatioWatch (JSON)

    def release(self) -> None:
        if self.state is not None:
            self.state.unpersist()


def default_tolerance(training_residual: dict[str, float] | None, tol_factor: float) -> tuple[float, str]:
    """Tolerance relative to the model's own training residual (DESIGN §2), floored by float32 precision."""
    if training_residual and training_residual.get("p90"):
        tol = max(TOL_FLOOR, tol_factor * float(training_residual["p90"]))
        return tol, f"{tol_factor} x the 90th percentile of the model's training residual ({training_residual['p90']:.3g})"
    return 1e-2 * tol_factor, "1e-2 (no training residual recorded for this model)"


def residual_summary(offsets: tuple[DataFrame, DataFrame]) -> dict[str, float]:
    """Percentiles of ``|e_r| / |b_r|`` over all rows (a model's own training residual)."""
    rel = None
    for df in offsets:
        side = df.select(
            (F.sqrt(F.aggregate("residual", F.lit(0.0), lambda acc, x: acc + x * x)) / F.greatest(F.col("bnorm"), F.lit(1e-300))).alias("rel")
        )
        rel = side if rel is None else rel.unionByName(side)
    q = rel.approxQuantile("rel", [0.5, 0.9, 0.99], 1e-3)
    mx = rel.agg(F.max("rel")).first()[0]
    return {"p50": q[0], "p90": q[1], "p99": q[2], "max": float(mx or 0.0)}


def unlearn_als(
    ratings: DataFrame,
    model: FactorModel,
    offsets: tuple[DataFrame, DataFrame],
    batch: DataFrame,
    *,
    mode: str = "frontier",
    tol: float | None = None,
    tol_factor: float = 1.0,
    training_residual: dict[str, float] | None = None,
    strict: bool = False,
    max_rounds: int = 50,
    full_fallback_fraction: float = 0.5,
    full_iterations: int = 10,
    num_blocks: int | None = None,
    forgotten: DataFrame | None = None,
    engine: str = "auto",
    grams: dict[str, Any] | None = None,
    drift_bound: dict[str, float] | None = None,
    counts: dict[str, int] | None = None,
    x_ratio: dict[str, float] | None = None,
    x_watch: dict[str, dict] | None = None,
    driver_rows: int | None = None,
) -> UnlearnResult:
    """Remove a deletion batch from an ALS model trained on ``ratings``.

    Parameters
    ----------
    ratings
        The data the model was trained on (canonical schema).
    model
        The trained factors and hyperparameters.
    offsets
        ``(user_offsets, item_offsets)`` with columns ``id``, ``residual``,
        ``bnorm``, ``drift`` (:data:`~spark_unlearn.schema.OFFSETS_SCHEMA`):
        each row's target (training residual ``A x - b``, or 0 once its data
        changed), ``|b|`` and drift ``A x - b - target``.
    batch
        Deletion requests (``user``, ``item``, ``kind``), see
        :func:`spark_unlearn.data.deletions.read_deletions`.
    mode
        ``frontier`` | ``full`` | ``paper`` (module docstring).
    tol
        Certificate tolerance; default: ``tol_factor`` x the 90th percentile
        of the model's training residual (``training_residual``), never below
        ``TOL_FLOOR``.
    forgotten
        Requests earlier batches applied (``user``, ``item``, ``kind``,
        ``version``), to report requests of this batch that are already
        forgotten (:func:`plan_deletion`).
    engine
        Frontier mode only.  ``targeted``: targeted scans of the stored
        tables, incremental certificate, no block layout
        (:mod:`spark_unlearn.als.incremental`); ``layout``: cached block
        layout of the remaining ratings and a certificate recomputed from
        the ratings for every row; ``auto``: ``targeted`` for batches of at
        most ``TARGETED_MAX_REQUESTS`` requests, else ``layout``.
    grams
        Per side, the Gram ``F^T F`` of the model's factor tables, if known
        (saves a pass per side in implicit mode).
    drift_bound
        Per side, an upper bound of the stored ``|d|/|b|`` (the version's
        ``drift_max``; 0 after training), if known (saves a pass over the
        offsets in the targeted engine).
    counts
        ``n_ratings``, ``n_users``, ``n_items`` of ``ratings`` and the model
        if known (a version's manifest holds them; saves three counting jobs).
    x_ratio
        Implicit mode: per side, an upper bound of ``max |x|/|b|`` over the
        rows (the version's manifest), if known (saves a join per side in the
        targeted engine, and usually the certificate's pass over every row:
        :func:`~spark_unlearn.als.incremental.unlearn_targeted`).
    x_watch
        Implicit mode: per side, the version's
        :class:`~spark_unlearn.als.ratio_watch.RatioWatch` as JSON (the
        manifest's ``x_watch``), if known: a tighter form of ``x_ratio``.
    driver_rows
        Targeted engine: when the rows a round re-solves have more neighbours
        than this on the other side, that side's neighbours stay in Spark
        (:mod:`~spark_unlearn.als.neighbour_pass`; ``None``: its ``DRIVER_ROWS``).
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown unlearning engine {engine!r}; use one of {list(ENGINES)}")
    if driver_rows is not None and driver_rows < 0:
        raise ConfigError(f"driver_rows={driver_rows} is negative; give a number of rows >= 0 (0 keeps every neighbour "
                          "in Spark)")
    if mode not in MODES:
        raise ConfigError(f"unknown unlearning mode {mode!r}; use one of {list(MODES)}")
    if tol is not None and tol < TOL_FLOOR:
        raise ConfigError(f"tol={tol} is below what float32 factors can certify ({TOL_FLOOR}); use tol >= {TOL_FLOOR}")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = model.params
    spec = SolveSpec(float(params.reg), params.implicit, float(params.alpha))
    if training_residual is None:
        training_residual = residual_summary(offsets)
    if tol is None:
        tol, tol_source = default_tolerance(training_residual, tol_factor)
    else:
        tol_source = "given"
    log.info("unlearning (%s mode) with tolerance %.3g (%s)", mode, tol, tol_source)

    if mode == "frontier" and engine != "layout":
        # One job: a small batch is collected anyway, a large one is not (it goes to the layout engine).
        rows = batch.select("user", "item", "kind").limit(TARGETED_MAX_REQUESTS + 1).collect() if engine == "auto" else None
        if engine == "targeted" or len(rows) <= TARGETED_MAX_REQUESTS:
            out = _unlearn_targeted(ratings, model, offsets, rows if rows is not None else batch, spec, tol, tol_source,
                                    training_residual, strict, max_rounds, full_fallback_fraction, forgotten, grams, t0,
                                    drift_bound, counts, batch, x_ratio, x_watch, driver_rows)
            if out is not None:
                return out
            log.warning("the frontier outgrew %.0f%% of the rows: falling back to the block layout and full sweeps",
                        100 * full_fallback_fraction)
            mode = "full"
    plan = plan_deletion(ratings, batch, strict=strict, forgotten=forgotten)
    remaining = plan.remaining.persist(StorageLevel.MEMORY_AND_DISK)
    n_remaining = remaining.count()
    if n_remaining == 0:
        raise EmptyInputError("the deletion batch removes every rating; nothing would remain to define a model")
    timings["plan"] = time.perf_counter() - t0

    t = time.perf_counter()
    state = ALSState.build(remaining, num_blocks or params.num_blocks)
    source = SparkRowSource(state, {"user": model.user_factors, "item": model.item_factors}, {"user": offsets[0], "item": offsets[1]}, params.rank)
    n_rows = {s: state.side(s).map(lambda kv: kv[1].n_rows).sum() for s in ("user", "item")}
    timings["layout"] = time.perf_counter() - t
    total_rows = n_rows["user"] + n_rows["item"]

    t = time.perf_counter()
    frontier_info: dict[str, Any] = {}
    users, items = source.factors["user"], source.factors["item"]
    used_mode = mode
    cert: Certificate | None = None
    if mode == "frontier":
        grams_train = grams_now = None
        if params.implicit:
            grams_train = {s: gram_of(model.user_factors if s == "user" else model.item_factors) for s in ("user", "item")}
            grams_now = {s: source.gram(s) for s in ("user", "item")}
        bounded = BoundedGramSource(source, {s: source.ratio_bound(s) for s in ("user", "item")} if params.implicit
                                    else {"user": (0.0, 0.0), "item": (0.0, 0.0)})
        budget = int(full_fallback_fraction * total_rows)
        result = frontier_unlearn(
            bounded, plan.direct, spec, tol, gram_train=grams_train, gram_now=grams_now, max_rounds=max_rounds, max_rows=budget
        )
        rows_solved, rounds, sizes = result.rows_solved, result.rounds, list(result.frontier_sizes)
        converged = result.converged
        if converged:
            users = _apply_updates(source.factors["user"], result.updates["user"]).persist(StorageLevel.MEMORY_AND_DISK)
            items = _apply_updates(source.factors["item"], result.updates["item"]).persist(StorageLevel.MEMORY_AND_DISK)
            targets = _side_targets(source, plan, params.rank)
            cert = certify(state, users, items, targets, params, tol)
            # The certificate divides by the exact |b'|, the frontier's drift test by the training |b|: rows it flags
            # are re-solved from the applied factors.
            users, items, cert, repair = _repair(state, params, spec, tol, users, items, cert, targets, max_rounds,
                                                 budget - rows_solved)
            rows_solved += repair["rows_solved"]
            rounds += repair["rounds"]
            sizes += repair["frontier_sizes"]
            converged = repair["converged"]
        frontier_info = {"engine": "layout", "rounds": rounds, "frontier_sizes": sizes, "spark_jobs": source.jobs,
                         "converged": converged}
        if not converged:
            log.warning("frontier would exceed %.0f%% of rows (%d solves); falling back to full sweeps",
                        100 * full_fallback_fraction, rows_solved)
            used_mode = "full"
            cert = None
    else:
        rows_solved = 0
    if used_mode in ("full", "paper"):
        users, items, sweeps, cert, extra_half = _full_sweeps(state, source, plan, params, tol, full_iterations,
                                                              paper=used_mode == "paper")
        rows_solved += sweeps * total_rows + (n_rows["item"] if extra_half else 0)
        frontier_info["sweeps"] = sweeps
        if used_mode == "full" and cert.max_relative_residual > tol:
            # Sweeps that stopped above tol are finished by the frontier (if that outgrows its budget, they stay).
            users, items, cert, repair = _repair(state, params, spec, tol, users, items, cert,
                                                 _side_targets(source, plan, params.rank), max_rounds,
                                                 int(full_fallback_fraction * total_rows))
            rows_solved += repair["rows_solved"]
            frontier_info["repair"] = repair
    timings["solve"] = time.perf_counter() - t

    t = time.perf_counter()
    if cert is None:
        paper = used_mode == "paper"
        cert = certify(state, users, items, _side_targets(source, plan, params.rank, zero_all=paper), params, tol, absorb=paper)
    timings["certificate"] = time.perf_counter() - t

    new_model = FactorModel(
        user_factors=factors_to_dataframe(state.spark, users, params.rank),
        item_factors=factors_to_dataframe(state.spark, items, params.rank),
        params=params,
    )
    new_offsets = tuple(offsets_frame(state.spark, cert.residual_blocks[s], params.rank, with_drift=True) for s in ("user", "item"))
    report = {
        "mode": used_mode,
        "requested_mode": mode,
        "tolerance": tol,
        "tolerance_source": tol_source,
        "training_residual": training_residual,
        "deletion": plan.counts,
        "not_found": plan.not_found,
        "erased_users": sorted(plan.erased_users)[:20],
        "withdrawn_items": sorted(plan.withdrawn_items)[:20],
        "rows_total": total_rows,
        "rows_solved": int(rows_solved),
        "remaining_ratings": n_remaining,
        "certificate": cert.to_dict(tol),
        "drift_max": {"user": 0.0, "item": 0.0} if used_mode == "paper" else dict(cert.per_side),
        "seconds": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t0}.items()},
        **frontier_info,
    }
    return UnlearnResult(new_model, new_offsets, remaining, plan.deleted, report, state)


def _unlearn_targeted(ratings, model, offsets, batch, spec, tol, tol_source, training_residual, strict, max_rounds,
                      full_fallback_fraction, forgotten, grams, t0, drift_bound=None, counts=None,
                      batch_frame=None, x_ratio=None, x_watch=None, driver_rows=None) -> UnlearnResult | None:
    """The targeted engine (:mod:`spark_unlearn.als.incremental`); ``None`` if the frontier outgrew its budget.

    ``batch``: the requests as collected rows (or a DataFrame); ``batch_frame`` the DataFrame.
    """
    from spark_unlearn.als.incremental import unlearn_targeted

    counts = counts or {}
    table_rows = None
    if counts.get("n_users") is not None and counts.get("n_items") is not None:
        table_rows = {"user": int(counts["n_users"]), "item": int(counts["n_items"])}
        total_rows = table_rows["user"] + table_rows["item"]
    else:
        total_rows = model.user_factors.count() + model.item_factors.count()
    out = unlearn_targeted(ratings, model, offsets, batch, spec=spec, tol=tol, max_rounds=max_rounds,
                           max_rows=int(full_fallback_fraction * total_rows), strict=strict, forgotten=forgotten, grams=grams,
                           drift_bound=drift_bound, n_ratings=counts.get("n_ratings"), x_ratio=x_ratio, x_watch=x_watch,
                           table_rows=table_rows, driver_rows=driver_rows)
    if not out.converged:
        return None
    remaining = remove_batch(ratings, batch_frame if batch_frame is not None else batch)
    report = {
        "mode": "frontier",
        "requested_mode": "frontier",
        "tolerance": tol,
        "tolerance_source": tol_source,
        "training_residual": training_residual,
        "deletion": out.plan.counts,
        "not_found": out.plan.not_found,
        "erased_users": sorted(out.plan.erased_users)[:20],
        "withdrawn_items": sorted(out.plan.withdrawn_items)[:20],
        "rows_total": total_rows - len(out.plan.removed["user"]) - len(out.plan.removed["item"]),
        **out.report,
    }
    report["seconds"] = {k: round(v, 3) for k, v in {**out.report["seconds"], "total": time.perf_counter() - t0}.items()}
    return UnlearnResult(out.model, out.offsets, remaining, out.deleted, report, None, out.grams, out.x_watch)


def _side_targets(source: SparkRowSource, plan: DeletionPlan, rank: int, zero_all: bool = False) -> dict[str, RDD]:
    return {s: _targets(source.offs[s], plan.direct[s], rank, zero_all) for s in ("user", "item")}


def _repair(state, params, spec, tol, users, items, cert, targets, max_rounds, max_rows, attempts=3):
    """A certificate above ``tol``: re-solve its violators, and the rows they reach, with the frontier.

    ``users``/``items`` (block RDDs) become the frontier's base and the
    certificate's ``R - T`` its stored drift, so the bookkeeping starts
    exactly where the factors are and only rows off their targets are
    solved: after the frontier (whose drift test used the training ``|b|``)
    or after full sweeps (another sweep would solve every row and may still
    stop above ``tol``).  Returns ``(users, items, certificate, info)``; the
    certificate is recomputed over all rows after each attempt.
    ``info["converged"]`` is False if a repair outgrew ``max_rows`` (the
    factors are then those it started from).
    """
    info: dict[str, Any] = {"rows_solved": 0, "rounds": 0, "frontier_sizes": [], "converged": True,
                            "certificates": [cert.max_relative_residual]}
    for _ in range(attempts):
        if cert.max_relative_residual <= tol or not any(cert.violators.values()):
            break
        log.info("certificate %.3g > tol %.3g: re-solving %d violating rows with the frontier",
                 cert.max_relative_residual, tol, sum(len(v) for v in cert.violators.values()))
        src = SparkRowSource.from_blocks(state, {"user": users, "item": items}, cert.residual_blocks, params.rank)
        grams = {s: src.gram(s) for s in ("user", "item")} if spec.implicit else None
        bounded = BoundedGramSource(src, {s: src.ratio_bound(s) if spec.implicit else (0.0, 0.0) for s in ("user", "item")})
        result = frontier_unlearn(bounded, {}, spec, tol, gram_train=grams, gram_now=grams, max_rounds=max_rounds,
                                  max_rows=max_rows, seed_frontier={s: set(v) for s, v in cert.violators.items()})
        info["rows_solved"] += result.rows_solved
        info["rounds"] += result.rounds
        info["frontier_sizes"] += result.frontier_sizes
        if not result.converged:
            # A repair that would re-solve most rows is no repair: keep the factors and report the certificate.
            log.warning("the repair frontier outgrew its budget (%d solves); keeping the factors it started from",
                        result.rows_solved)
            info["converged"] = False
            break
        users = _apply_updates(users, result.updates["user"]).persist(StorageLevel.MEMORY_AND_DISK)
        items = _apply_updates(items, result.updates["item"]).persist(StorageLevel.MEMORY_AND_DISK)
        cert = certify(state, users, items, targets, params, tol)
        info["certificates"].append(cert.max_relative_residual)
    return users, items, cert, info


def _full_sweeps(state, source, plan, params, tol, iterations, paper):
    """Warm-started ALS sweeps over every row (offset ALS, or plain ALS for the paper's method).

    A half-sweep is one stage that solves a side and routes its new rows on
    (:meth:`ALSState.solve_routed`).  Offset sweeps are certified inside
    those stages: the user solve of sweep ``s`` checks the rows it solved
    against the items they were solved from, and the item solve of sweep
    ``s + 1`` first checks sweep ``s``'s items against sweep ``s``'s users
    (the messages it reads anyway), then solves.  So a certified sweep is
    two stages and one job, like a plain one; the price is one item
    half-solve after the last sweep, whose result is discarded (counted in
    the returned ``extra_half``).  Returns ``(users, items, sweeps, cert,
    extra_half)``; ``cert`` is None and ``extra_half`` False in paper mode.
    """
    # Read by every half-sweep: computed once.
    targets = {s: t.persist(StorageLevel.MEMORY_AND_DISK) for s, t in _side_targets(source, plan, params.rank, zero_all=paper).items()}
    users, items = source.factors["user"], source.factors["item"]
    to_items = state.routed("user", users, params.implicit)
    if paper:
        return (*_paper_sweeps(state, params, targets, to_items, iterations), None, False)

    def half_sweep(side, incoming, sweep, check=None, own=None):
        solved = state.solve_routed(side, incoming, params, targets=targets[side], check=check, own=own)
        solved = solved.persist(StorageLevel.MEMORY_AND_DISK)
        if sweep % params.checkpoint_interval == 0:
            solved.localCheckpoint()
        return solved

    solved_items = half_sweep("item", to_items, 1)
    cert, cached, sweep = None, [], 0
    for sweep in range(1, iterations + 1):
        solved_users = half_sweep("user", state.onward(solved_items), sweep, ResidualCheck("user", "after", tol))
        items, users = state.factors_of(solved_items), state.factors_of(solved_users)
        nxt = half_sweep("item", state.onward(solved_users), sweep + 1, ResidualCheck("item", "before", tol), own=items)
        # One job per sweep: both sides' summaries arrive with the next item solve's blocks.
        stats = [st for per_block in nxt.map(lambda kv: kv[1][3][1]).collect() for st in per_block]
        cert = _certificate_of(stats, {"user": solved_users, "item": nxt})
        for old in cached:  # this sweep's results are cached now: the previous ones are unused
            old.unpersist()
        cached = [solved_items, solved_users]
        log.info("full sweep %d: certificate %.3g (tol %.3g)", sweep, cert.max_relative_residual, tol)
        if cert.max_relative_residual <= tol:
            break
        solved_items = nxt
    return users, items, sweep, cert, True


def _certificate_of(stats: list, checked: dict[str, RDD]) -> Certificate:
    """A :class:`Certificate` from the :class:`CheckStats` of every block of both sides and the checked solves."""
    per_side, violators, blocks = {}, {}, {}
    for side in ("user", "item"):
        mine = sorted((st for st in stats if st.side == side), key=lambda st: st.block)
        per_side[side] = max((st.max_relative for st in mine), default=0.0)
        violators[side] = [i for st in mine for i in st.violators][:MAX_VIOLATORS]
        blocks[side] = checked[side].mapValues(lambda v: (v[0], v[3][0]))
    return Certificate(max(per_side.values()), per_side, violators, blocks)


def _paper_sweeps(state, params, targets, to_items, iterations):
    """The paper's plain warm-started sweeps, chained lazily and run as one job (no certificate per sweep)."""

    def half_sweep(side, incoming, sweep):
        solved = state.solve_routed(side, incoming, params, targets=targets[side])
        if sweep == iterations:  # only the last sweep's results are read twice
            solved = solved.persist(StorageLevel.MEMORY_AND_DISK)
        if sweep % params.checkpoint_interval == 0:
            solved.localCheckpoint()
        return solved

    users = items = None
    for sweep in range(1, iterations + 1):
        solved_items = half_sweep("item", to_items, sweep)
        solved_users = half_sweep("user", state.onward(solved_items), sweep)
        to_items = state.onward(solved_users)
        items, users = state.factors_of(solved_items), state.factors_of(solved_users)
        log.info("paper sweep %d/%d", sweep, iterations)
    return users, items, iterations
