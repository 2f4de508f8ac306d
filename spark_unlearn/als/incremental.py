"""The targeted engine of frontier Unlearn-ALS: a few scans per request, no layout, no pass over the ratings.

For a small deletion batch the work is proportional to what the deletion
reaches, not to the data:

1. **Plan: one scan.**  The batch is small, so it is collected; one scan of
   the ratings (broadcast semi-join) returns every rating of the users and
   items it names.  The driver finds the deleted rows, the requests that
   match nothing, and the rows whose own data changed (*direct* rows).
   A second scan fetches the direct rows' remaining ratings; rows left with
   none leave the model (an erased user, an item nobody rates any more).
2. **Frontier** (:func:`~spark_unlearn.als.frontier.frontier_unlearn`) over a
   :class:`~spark_unlearn.als.table_source.TableRowSource`: each round reads
   only the rows it has not seen (one scan per table).
3. **Certificate and new offsets, incrementally.**  Each row stores a
   target ``t`` (its training residual, or 0 once its own data changed) and
   a drift ``d = A x - b - t`` apart, so drift left below the tolerance by
   one request is still seen by the next and cannot pile up.  The frontier
   keeps, for every row it touched, the exact change of its drift (edge by
   edge, including the float32 rounding of each solve) and of ``b``; a row
   it solved keeps ``b`` itself, so its ``|b'|`` is exact, while a row that
   only drifted has ``|b'|`` bounded below.  Untouched rows: in explicit
   mode nothing in their equation changed, so their term is what the
   version knew (its drift watch, else its ``drift_max``; rows above ``tol``,
   possible only when ``tol`` is lowered, are found by one pass over the
   offsets tables and re-solved); in implicit mode their drift moves by
   ``ΔG x`` (:func:`~spark_unlearn.als.targeted_certificate.implicit_untouched`).
   The rows whose bound could exceed the exact maximum are then read from
   the data and made exact
   (:func:`~spark_unlearn.als.targeted_certificate.settle_side`); the record
   says whether its maximum is exact (``max_kind``) and, if not, why.  The
   next version's offsets are the stored ones patched at the touched rows
   (and ``d += ΔG x`` in implicit mode).
4. The new factor tables are the stored ones patched at the solved rows and
   without the removed rows (broadcast joins, no shuffle of the ratings).

Compute is separate from apply: everything returned is a lazy DataFrame or
driver data; the caller publishes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.als.result import RowChanges, TargetedResult
from spark_unlearn.als.block_source import HOLD_SIDE_BYTES, BlockRowSource
from spark_unlearn.als.frontier import frontier_unlearn, other
from spark_unlearn.als.held_sweeps import SWEEP_DRIVER_BYTES, planned_strategy, swept
from spark_unlearn.als.kernels import SolveSpec
from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.certify import certificate_record
from spark_unlearn.als.factor_passes import arrow_column, arrow_matrix, gram_of, vector_norm
from spark_unlearn.als.plan import already_forgotten, plan_counts, unknown_requests
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.ratio_watch import RatioWatch, ratio_watch
from spark_unlearn.als.selection import deleted_arrow, pair_keys, select_ids
from spark_unlearn.als.strategy_cost import RETRAIN_SHARE, StrategyChoice, frontier_should_yield
from spark_unlearn.als.table_source import TableRowSource
from spark_unlearn.als.targeted_certificate import (UNTOUCHED_CERTIFICATE, implicit_untouched, next_drift_watch,
                                                    settle_side, touched_rows)
from spark_unlearn.deferred import Deferred, ForcedDict, force
from spark_unlearn.errors import EmptyInputError
from spark_unlearn.schema import with_drift
from spark_unlearn.worker_heap import freeze_worker_heap

log = logging.getLogger(__name__)

SIDES = ("user", "item")


def drift_pass(spark, offsets: dict[str, DataFrame], tol: float) -> tuple[dict[str, float], dict[str, set[int]]]:
    """One pass over both offsets tables: rows whose stored drift exceeds ``tol`` and the largest drift of the rest.

    Returns ``(bound, seeds)``: per side, ``max |d|/|b|`` over the rows with
    ``|d| <= tol |b|`` and the ids of the others (non-empty only when ``tol``
    is below the tolerance the version was certified at).  The seeds are
    re-solved; every other row keeps ``|d|/|b| <= bound``.
    """
    ratio = vector_norm("drift") / F.greatest(F.col("bnorm"), F.lit(1e-300))
    both = None
    for s in SIDES:
        part = with_drift(offsets[s]).select(F.lit(s).alias("side"), "id", ratio.alias("ratio"))
        both = part if both is None else both.unionByName(part)
    rows = both.groupBy("side").agg(
        F.max(F.when(F.col("ratio") <= F.lit(tol), F.col("ratio"))).alias("bound"),
        F.collect_list(F.when(F.col("ratio") > F.lit(tol), F.col("id"))).alias("seeds"),
    ).collect()
    bound = {s: 0.0 for s in SIDES}
    seeds: dict[str, set[int]] = {s: set() for s in SIDES}
    for r in rows:
        bound[r["side"]] = float(r["bound"] or 0.0)
        seeds[r["side"]] = set(int(i) for i in r["seeds"])
    return bound, seeds


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------


@dataclass
class TargetedPlan:
    """A small batch resolved on the driver (ids and the deleted ratings)."""

    deleted_users: np.ndarray
    deleted_items: np.ndarray
    deleted_ratings: np.ndarray
    direct: dict[str, set[int]]
    removed: dict[str, set[int]]
    erased_users: set[int]
    withdrawn_items: set[int]
    counts: dict[str, int]
    not_found: dict[str, list]


def plan_targeted(source: TableRowSource, batch, *, strict: bool = False, forgotten=None,
                  examples: int = 5) -> TargetedPlan:
    """Resolve a small batch with one or two scans of the ratings (see the module docstring).

    ``batch``: the requests (``user``, ``item``, ``kind``) as a DataFrame or
    as already collected rows.  ``forgotten``: earlier requests (DataFrame),
    or a zero-argument callable returning them, called only if some request
    matches nothing.
    """

    rows = batch.select("user", "item", "kind").collect() if isinstance(batch, DataFrame) else list(batch)
    pairs = {(r[0], r[1]) for r in rows if r[2] == "interaction"}
    erased = {r[0] for r in rows if r[2] == "user"}
    withdrawn = {r[1] for r in rows if r[2] == "item"}
    pair_users = {u for u, _ in pairs}
    # The items of deleted pairs are direct rows: scanning their ratings now saves a scan later.
    item_rows = withdrawn | {i for _, i in pairs}

    spark = source.spark
    if pair_users | erased | item_rows:
        u, i, r = source.read_ratings(np.array(sorted(pair_users | erased), np.int64), np.array(sorted(item_rows), np.int64))
    else:
        u = i = np.zeros(0, np.int64)
        r = np.zeros(0, np.float32)
    keys = pair_keys(u, i)
    wanted_pairs = pair_keys(np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))
    is_deleted = np.isin(keys, wanted_pairs) | np.isin(u, list(erased)) | np.isin(i, list(withdrawn))
    du, di, dr = u[is_deleted], i[is_deleted], r[is_deleted]
    source.deleted = np.unique(pair_keys(du, di))
    source.add_ratings(u, i, r, {"user": np.array(sorted(pair_users | erased), np.int64), "item": np.array(sorted(item_rows), np.int64)})

    found_pairs = set(zip(du.tolist(), di.tolist()))
    missing_pairs = sorted(pairs - found_pairs)
    missing_users = erased - set(u.tolist())
    missing_items = withdrawn - set(i.tolist())
    already = {"interactions": 0, "users": set(), "items": set(), "examples": [], "keys": set()}
    if callable(forgotten) and (missing_pairs or missing_users or missing_items):
        forgotten = forgotten()
    if forgotten is not None and not callable(forgotten) and (missing_pairs or missing_users or missing_items):

        mp = spark.createDataFrame(missing_pairs, "user int, item int")
        found = already_forgotten(mp, missing_users, missing_items, forgotten, examples)
        already = {**found, "keys": {(r_[0], r_[1]) for r_ in found["pairs"].collect()}}
    unknown_pairs = [p for p in missing_pairs if p not in already["keys"]]
    unknown_users, unknown_items = missing_users - already["users"], missing_items - already["items"]
    not_found = unknown_requests(len(unknown_pairs), unknown_pairs, unknown_users, unknown_items, already, strict, examples)

    erased_known, withdrawn_known = erased - missing_users, withdrawn - missing_items
    candidates = {"user": set(du.tolist()) - erased_known, "item": set(di.tolist()) - withdrawn_known}
    # Second scan: the direct rows' remaining ratings (cached for the frontier); rows left with none leave the model.
    source.fetch_ratings({s: np.array(sorted(v), np.int64) for s, v in candidates.items() if v})
    direct, removed = {}, {"user": set(erased_known), "item": set(withdrawn_known)}
    for s in SIDES:
        ids = np.array(sorted(candidates[s]), np.int64)
        keep = source.has_ratings(s, ids) if ids.size else np.zeros(0, bool)
        direct[s] = set(ids[keep].tolist())
        removed[s] |= set(ids[~keep].tolist())
    counts = plan_counts(len(pairs), len(erased), len(withdrawn), int(is_deleted.sum()), len(unknown_pairs), unknown_users,
                         unknown_items, already, direct)
    counts.update(removed_users=len(removed["user"]), removed_items=len(removed["item"]))
    log.info("deletion plan (targeted): %s", counts)
    return TargetedPlan(du, di, dr, direct, removed, erased_known, withdrawn_known, counts, not_found)


# ---------------------------------------------------------------------------
# Certificate, offsets and factors of the result
# ---------------------------------------------------------------------------


def patched(df: DataFrame, ids: np.ndarray, columns: dict[str, tuple]) -> DataFrame:
    """``df`` with ``columns`` replaced at the rows ``ids``; no shuffle.

    ``columns``: name -> ``(values, SQL type)`` or ``(values, SQL type,
    valid)``; ``values`` is ``(n,)`` or ``(n, k)`` in the order of ``ids``
    and rows where ``valid`` is False keep their old value.  Other rows and
    columns are unchanged.  The new values become a small table built from
    Arrow (no Python worker) and broadcast into a left join.
    """
    import pyarrow as pa

    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        return df
    table = pa.table({"id": pa.array(ids.astype(np.int32)),
                      **{f"new_{name}": arrow_column(*spec) for name, spec in columns.items()}})
    schema = ", ".join(["id int"] + [f"new_{name} {spec[1]}" for name, spec in columns.items()])
    upd = df.sparkSession.createDataFrame(table, schema)
    return df.join(F.broadcast(upd), "id", "left").select(
        *[F.coalesce(f"new_{c}", c).alias(c) if c in columns else F.col(c) for c in df.columns])


def patched_factors(spark, factors: DataFrame, ids: np.ndarray, X: np.ndarray, removed: set[int]) -> DataFrame:
    """``factors`` without ``removed`` rows and with rows ``ids`` set to ``X`` (float32, in the order of ``ids``)."""
    out = factors.select("id", "features")
    if removed:
        out = select_ids(out, "id", sorted(removed), keep=False)
    if len(ids):
        out = patched(out, np.asarray(ids, np.int64), {"features": (np.asarray(X, np.float32), "array<float>")})
    return out


def patched_offsets(spark, offsets: DataFrame, factors: DataFrame, touched: dict[str, Any], removed: set[int],
                    delta_gram: np.ndarray | None, lazy: DataFrame | None = None) -> DataFrame:
    """Next offsets: touched rows replaced, removed rows dropped, and (implicit) ``d += ΔG x`` for the rest.

    Targets of untouched rows never change: what moved goes to their drift.
    ``lazy``: the side's rows were left in Spark
    (:func:`~spark_unlearn.als.neighbour_pass.lazy_frame` over every row,
    which adds the edge terms and the Gram term); then only the touched rows
    are patched in.
    """
    out = with_drift(offsets).select("id", "residual", "bnorm", "drift") if lazy is None else lazy.select(
        "id", "residual", "bnorm", "drift")
    if removed:
        out = select_ids(out, "id", sorted(removed), keep=False)
    if lazy is None and delta_gram is not None and np.abs(delta_gram).max() > 0:
        dg = np.asarray(delta_gram, np.float64)

        def part(batches):
            freeze_worker_heap()
            import pyarrow as pa

            for batch in batches:
                if batch.num_rows == 0:
                    continue
                D = arrow_matrix(batch, "drift") + arrow_matrix(batch, "features") @ dg.T
                k = D.shape[1]
                arr = pa.FixedSizeListArray.from_arrays(pa.array(D.reshape(-1)), k).cast(pa.list_(pa.float64()))
                yield pa.RecordBatch.from_arrays([batch.column("id"), batch.column("residual"), batch.column("bnorm"), arr],
                                                 names=["id", "residual", "bnorm", "drift"])

        out = out.join(factors.select("id", "features"), "id").mapInArrow(
            part, "id int, residual array<double>, bnorm double, drift array<double>")
    if touched["ids"].size:
        out = patched(out, touched["ids"], {"bnorm": (touched["bnorm"], "double"), "drift": (touched["drift"], "array<double>")})
        # Only solved rows get a new target (rows that only drifted keep theirs, not read: see touched_rows); a
        # table of their own keeps the tens of thousands of drifting neighbours from carrying an empty target.
        solved = np.asarray(touched["solved"], bool)
        if solved.any():
            out = patched(out, touched["ids"][solved], {"residual": (touched["target"][solved], "array<double>")})
    return out


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


def unlearn_targeted(ratings: DataFrame, model: FactorModel, offsets: tuple[DataFrame, DataFrame], batch: DataFrame, *,
                     spec: SolveSpec, tol: float, max_rounds: int, max_rows: int, strict: bool = False,
                     forgotten: DataFrame | None = None, grams: dict[str, np.ndarray] | None = None,
                     drift_bound: dict[str, float] | None = None, n_ratings: int | None = None,
                     x_ratio: dict[str, float] | None = None, x_watch: dict[str, dict] | None = None,
                     table_rows: dict[str, int] | None = None, driver_rows: int | None = None,
                     policy: RowTolerance | None = None, reader=None, drift_watch: dict[str, dict] | None = None,
                     bnorm_exact: dict[str, bool] | None = None, hold_bytes: int | None = None,
                     sweep_bytes: int | None = None, max_sweeps: int | None = None,
                     force_sweeps: bool = False, min_sweeps: int = 1, forgetting_share: float = 0.0,
                     retrain_share: float = RETRAIN_SHARE) -> TargetedResult:
    """Frontier Unlearn-ALS by targeted scans; see the module docstring.

    ``tol``: every row is solved until its deviation is at most ``tol``
    (the floor of ``policy``, the request's row tolerance, which the certificate
    records; default: strict at ``tol``).

    ``grams``: per side, the Gram of the version's factor tables if known
    (stored in the manifest); computed (one pass per side) otherwise, in
    implicit mode only.  ``drift_bound``: per side, an upper bound of the
    version's stored ``|d|/|b|`` (its certificate); when unknown or above
    ``tol``, one pass over the offsets tables finds it and the rows to
    re-solve.  ``x_ratio``: per side, an upper bound of ``max |x|/|b|``
    (implicit; the version's manifest), computed by a join per side when
    unknown.  ``drift_watch``: per side, the version's drift watch (explicit;
    :class:`~spark_unlearn.als.ratio_watch.RatioWatch` JSON with exact flags);
    without it the untouched rows' term is ``drift_bound`` and the record an
    upper bound.  ``bnorm_exact``: per side, whether every stored ``|b|`` is
    exact (implicit: the exact passes over untouched rows divide by it).
    ``x_watch``: per side, the version's
    :class:`~spark_unlearn.als.ratio_watch.RatioWatch` (as JSON; implicit),
    which replaces ``x_ratio``; without either, it is computed (a join and
    a top-k per side).  ``table_rows``: per side, the factor table's row
    count if known (reads of most of a table then scan it whole).
    ``driver_rows``: above this many neighbours of a round's solves, a
    side's rows that are not re-solved stay in Spark
    (:mod:`~spark_unlearn.als.neighbour_pass`; default
    :data:`~spark_unlearn.als.neighbour_pass.DRIVER_ROWS`).
    ``reader``: reads the version's blocked files by id (see
    :class:`~spark_unlearn.als.block_source.BlockRowSource`); then the
    request's rows come from the files of their blocks, on the driver,
    instead of filtered Spark scans; in implicit mode each side whose held
    rows fit ``hold_bytes`` (default
    :data:`~spark_unlearn.als.block_source.HOLD_SIDE_BYTES`) is read whole.
    ``converged=False`` means the frontier outgrew
    ``max_rows`` (or sweeps did not certify): the caller falls back.

    The batch planner (:mod:`~spark_unlearn.als.strategy_cost`) may take
    warm sweeps of the whole version on the driver instead
    (:mod:`~spark_unlearn.als.held_sweeps`) when ``reader`` is given and
    the version fits ``sweep_bytes`` (default
    :data:`~spark_unlearn.als.held_sweeps.SWEEP_DRIVER_BYTES`; 0: never):
    at once when the rows whose data changed cost more than the sweeps,
    or when the frontier's remaining rounds are predicted to cost more
    (:func:`~spark_unlearn.als.strategy_cost.frontier_should_yield`; the
    sweeps then start from the rows it solved), or when it stops at
    ``max_rows`` or ``max_rounds``.  At most
    ``max_sweeps`` sweeps (the model's iterations), at least ``min_sweeps``, and until the deleted pairs have made
    ``forgetting_share`` of their estimated move (:mod:`~spark_unlearn.als.forgetting_watch`); a batch deleting at
    least ``retrain_share`` of the ratings is retrained there instead (:mod:`~spark_unlearn.als.held_retrain`);
    ``force_sweeps``
    (``mode = "full"``) sweeps whenever the version fits.  The report's
    ``planner`` gives the choice, its estimate and what it cost.

    Implicit certificate of the rows the frontier did not touch: every one
    drifts by ``ΔG x``, so ``|d + ΔG x| / |b| <= drift_bound + |ΔG|_2 x_ratio``.
    When that bound is within ``tol`` it is the certificate's term for those
    rows (no pass).  With a watch, the bound of the rows it does not list uses
    its ``rest``, and the listed rows whose own bound fails are read and
    evaluated exactly.  Otherwise one pass computes every row's exact value.
    The report gives the new version's ``x_ratio``, the result its watch.
    """
    spark = SparkSession.getActiveSession() or force(ratings).sparkSession
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # The tables as given, built only when a Spark pass reads them (spark_unlearn.deferred).
    raw = model.__dict__
    factors = ForcedDict(user=raw["user_factors"], item=raw["item_factors"])
    offs = ForcedDict(user=offsets[0], item=offsets[1])
    args = (ratings, factors, offs, model.params.rank, np.zeros(0, np.int64), table_rows, driver_rows)
    source = TableRowSource(*args) if reader is None else BlockRowSource(reader, *args)
    # Implicit feedback moves every row: a blocked version's sides that fit the driver are held there whole.
    hold = HOLD_SIDE_BYTES if hold_bytes is None else int(hold_bytes)
    held = {s: spec.implicit and reader is not None and source.hold_side(s, hold) for s in SIDES}
    plan = plan_targeted(source, batch, strict=strict, forgotten=forgotten)
    n_remaining = (force(ratings).count() if n_ratings is None else int(n_ratings)) - plan.counts["deleted_ratings"]
    if n_remaining <= 0:
        raise EmptyInputError("the deletion batch removes every rating; nothing would remain to define a model")
    max_sweeps = int(max_sweeps or model.params.iterations)
    choice = planned_strategy(reader, model.params.rank, plan, max_rows, max_sweeps, sweep_bytes, force_sweeps,
                              retrain_share)
    log.info("planner: %s (%s)", choice.choice, choice.why)
    if (spec.implicit and choice.choice == "frontier" and choice.sweeps_possible and hold > 0 and not all(held.values())
            and choice.frontier_growth * choice.direct_rows > source.driver_rows):
        # A frontier this large would keep a side that is not held in Spark (a pass per round: 55 of 98 s for a 1 %
        # batch of the 5M ADM expansion), while the whole version fits the sweeps' budget: hold its sides within it.
        budget = SWEEP_DRIVER_BYTES if sweep_bytes is None else int(sweep_bytes)
        held = {s: held[s] or source.hold_side(s, max(hold, budget)) for s in SIDES}
        log.info("frontier of about %d rows: sides held on the driver within sweep_driver_mb: %s",
                 choice.frontier_growth * choice.direct_rows, [s for s in SIDES if held[s]])
    if force_sweeps and not choice.sweeps_possible:
        return TargetedResult(model, offsets, None, plan, {"seconds": timings, "planner": choice.to_dict()}, False, None)
    if choice.choice in ("sweeps", "retrain"):
        timings["plan"] = time.perf_counter() - t0
        return swept(spark, reader, model, plan, spec, policy or RowTolerance(tol), max_sweeps, choice, source, n_remaining,
                     timings, min_sweeps=min_sweeps, forgetting_share=forgetting_share)
    give_up = None
    if choice.sweeps_possible:
        give_up = partial(frontier_should_yield, sweep_row_solves=choice.sweep_most_row_solves)
    seeds: dict[str, set[int]] = {s: set() for s in SIDES}
    if drift_bound is None or any(float(drift_bound.get(s, np.inf)) > tol for s in SIDES):
        # Unknown, or certified at a looser tolerance: rows whose stored drift is above tol are re-solved.
        drift_bound, seeds = drift_pass(spark, offs, tol)  # removed rows among them: the frontier skips its gone rows
        log.info("stored drift: bound %s, %d rows above tol to re-solve", drift_bound, sum(map(len, seeds.values())))
    timings["plan"] = time.perf_counter() - t0

    t = time.perf_counter()
    gram_train = gram_now = watch = None
    wrapped = source
    if spec.implicit:
        from spark_unlearn.als.spark_source import BoundedGramSource

        gram_train = {s: np.asarray(grams[s]) if grams and s in grams else gram_of(factors[s]) for s in SIDES}
        gram_now = {}
        for s in SIDES:
            gone = np.array(sorted(plan.removed[s]), np.int64)
            X = source.base_factors(s, gone).astype(np.float64) if gone.size else np.zeros((0, model.params.rank))
            gram_now[s] = gram_train[s] - X.T @ X
        if x_watch is not None and all(s in x_watch for s in SIDES):
            watch = {s: RatioWatch.from_json(x_watch[s]) for s in SIDES}
        elif x_ratio is None or any(s not in x_ratio for s in SIDES):
            watch = {s: ratio_watch(factors[s], offs[s]) for s in SIDES}
        if watch is not None:
            x_ratio = {s: watch[s].max for s in SIDES}
        wrapped = BoundedGramSource(source, {s: (float(x_ratio[s]), float(drift_bound.get(s, 0.0))) for s in SIDES},
                                    watch)
    result = frontier_unlearn(wrapped, plan.direct, spec, tol, gram_train=gram_train, gram_now=gram_now,
                              max_rounds=max_rounds, max_rows=max_rows, seed_frontier=seeds, gone=plan.removed,
                              give_up=give_up)
    timings["solve"] = time.perf_counter() - t
    if not result.converged:
        if choice.sweeps_possible:
            why = (f"after {result.rounds} rounds ({result.rows_solved} rows) the frontier's remaining rounds were "
                   "predicted to cost more than sweeping" if result.stopped == "give_up" else
                   f"the frontier stopped at {result.stopped} ({max_rows} rows, {max_rounds} rounds)")
            log.info("planner: %s: sweeping instead", why)
            switched = StrategyChoice(**{**choice.to_dict(), "choice": "sweeps", "why": why})
            return swept(spark, reader, model, plan, spec, policy or RowTolerance(tol), max_sweeps, switched, source,
                         n_remaining, timings, frontier_rows=result.rows_solved,
                         start={s: result.changed(s) for s in SIDES}, min_sweeps=min_sweeps,
                         forgetting_share=forgetting_share)
        return TargetedResult(model, offsets, None, plan, {"seconds": timings, "planner": choice.to_dict()}, False, None)

    t = time.perf_counter()
    touched = touched_rows(result, source, plan.direct, plan.removed, spec)
    per_side = {s: 0.0 for s in SIDES}
    # The new tables as Spark plans, built only if read (a copy-on-write publication reads the row changes instead).
    new_factors = {s: Deferred(lambda s=s, changed=result.changed(s): patched_factors(spark, factors[s], *changed,
                                                                                      plan.removed[s]))
                   for s in SIDES}
    delta = {s: (result.grams_final[other(s)] - gram_train[other(s)]) if spec.implicit else None for s in SIDES}
    # Lazy sides: rows next to moved rows that were not re-solved stayed in Spark; the last check of the frontier
    # (after its last move) gives their certificate term and what the ratio watch must learn.
    lazy = {s: result.lazy[s] for s in SIDES if s in result.lazy}
    lazy_ids = {s: lazy[s]["check"].ids if s in lazy else np.zeros(0, np.int64) for s in SIDES}
    new_offsets = {}
    for s in SIDES:
        frame = None
        if s in lazy:
            frame = source.lazy_frame(s, lazy[s]["moves"], touched[s]["ids"], spec, delta[s], every_row=True,
                                      keep_skipped=True)
        new_offsets[s] = Deferred(lambda s=s, frame=frame: patched_offsets(spark, offs[s], factors[s], touched[s],
                                                                           plan.removed[s], delta[s], frame))
    # Explicit feedback: an untouched row's equation did not change, so its term is what the version knew: its
    # drift watch, else the version's drift_max (a bound).
    untouched = {s: float(drift_bound.get(s, 0.0)) for s in SIDES}
    # Implicit feedback moves every row by ΔG x: its untouched term comes from implicit_untouched, not a watch.
    dwatch = {s: RatioWatch.from_json(drift_watch[s]) if drift_watch and s in drift_watch and not spec.implicit
              else None for s in SIDES}
    untouched_how = {s: "stored" if dwatch[s] is None else "drift_watch" for s in SIDES}
    new_x_ratio = new_watch = None
    if spec.implicit:
        new_x_ratio, new_watch = {}, {}
        for s in SIDES:
            untouched[s], untouched_how[s], new_x_ratio[s], w = implicit_untouched(
                source, s, factors[s], offs[s], watch[s] if watch else None, x_ratio[s], delta[s], touched[s],
                plan.removed[s], lazy.get(s), lazy_ids[s], float(drift_bound.get(s, 0.0)), tol)
            if w is not None:
                new_watch[s] = w
    # The maximum per side: exact terms, bounds, and the rows read from the data where a bound could exceed it.
    settled, next_dwatch = {}, {}
    for s in SIDES:
        exact_terms, bound_terms = {}, {}
        if spec.implicit:
            # The exact passes divide by the stored |b|: exact only while every stored |b| of the side is.
            exact_pass = untouched_how[s] in ("exact", "exact_held") and bool((bnorm_exact or {}).get(s))
            (exact_terms if exact_pass else bound_terms)[f"untouched rows ({untouched_how[s]})"] = untouched[s]
        elif dwatch[s] is None:
            bound_terms["untouched rows (the version's drift_max; no drift watch)"] = untouched[s]
        if s in lazy and not (spec.implicit and untouched_how[s] == "spark"):
            bound_terms["rows left in Spark (|b'| bounded below)"] = float(lazy[s]["check"].max_ratio)
        skip = np.concatenate([touched[s]["ids"], np.array(sorted(plan.removed[s]), np.int64), lazy_ids[s]])
        settled[s] = settle_side(source, s, touched[s], result.rows, plan.direct[s], spec,
                                 result.grams_final[other(s)] if spec.implicit else None, exact_terms=exact_terms,
                                 bound_terms=bound_terms, watch=dwatch[s], untouched_skip=skip)
        if dwatch[s] is not None:
            untouched[s] = settled[s]["untouched_max"]
        if not spec.implicit:
            next_dwatch[s] = next_drift_watch(settled[s]["watch"], touched[s], plan.removed[s], lazy_ids[s],
                                              float(lazy[s]["check"].max_ratio) if s in lazy else None)
        per_side[s] = settled[s]["max"]
    timings["certificate"] = time.perf_counter() - t
    deleted_local = _deleted_table(plan)
    deleted = Deferred(partial(spark.createDataFrame, deleted_local, "user int, item int, rating float"))
    grams_out = None
    if spec.implicit:
        grams_out = {s: result.grams_final[s].tolist() for s in SIDES}
    policy = policy or RowTolerance(tol)
    worst = max(per_side.values())
    # The overall maximum is exact when every side that is only bounded stays at or below an exact side's maximum.
    exact_top = max((per_side[s] for s in SIDES if settled[s]["exact"]), default=-1.0)
    is_exact = all(settled[s]["exact"] or per_side[s] <= exact_top for s in SIDES)
    why = {s: settled[s]["why"] for s in SIDES if not settled[s]["exact"]}
    # Every row's bound is at least the floor the frontier used: worst / floor bounds each row's own ratio.
    cert = certificate_record(
        worst, per_side, worst / policy.floor, policy, method="incremental",
        method_note="touched rows from exact drift bookkeeping, |b'| exact for solved rows and for rows read from the "
        "data where their bound could exceed the maximum; the ratio is against the floor (an upper bound of every "
        "row's ratio to its own bound)",
        max_kind="exact" if is_exact else "upper bound",
        max_kind_why=None if is_exact else "; ".join(f"{s}: {w}" for s, w in why.items()),
        per_side_kind={s: "exact" if settled[s]["exact"] else "upper bound" for s in SIDES},
        rows_read_exactly={s: settled[s]["read"] for s in SIDES},
        touched_rows={s: int(touched[s]["ids"].size) for s in SIDES},
        untouched_rows_max=untouched,
        untouched_rows={s: UNTOUCHED_CERTIFICATE[untouched_how[s]] for s in SIDES},
        spark_rows={s: int(lazy_ids[s].size) for s in SIDES},
        spark_rows_max={s: float(lazy[s]["check"].max_ratio) if s in lazy else None for s in SIDES},
    )
    report = {
        "engine": "targeted",
        "remaining_ratings": n_remaining,
        "rounds": result.rounds,
        "frontier_sizes": result.frontier_sizes,
        "rows_solved": result.rows_solved,
        "spark_jobs": source.jobs,
        # Rows of each side whose factor or offsets reached the driver (the rest stayed in Spark).
        "driver_rows": {s: int(source.cached_rows(s)) for s in SIDES},
        "driver_rows_limit": source.driver_rows,
        # Sides read whole onto the driver (implicit, blocked version within HOLD_SIDE_BYTES).
        "held_sides": [s for s in SIDES if held[s]],
        "certificate": cert,
        "drift_max": dict(per_side),
        # Whether every stored |b| of a side is exact after this request (the implicit exact passes divide by it).
        "bnorm_exact": {s: bool((bnorm_exact or {}).get(s)) and bool(touched[s]["exact"].all()) and s not in lazy
                        for s in SIDES},
        **({"x_ratio": new_x_ratio} if new_x_ratio is not None else {}),
        "seconds": timings,
        "converged": True,
        "strategy": "frontier",
        "planner": {**choice.to_dict(), "actual_row_solves": int(result.rows_solved)},
    }
    new_model = FactorModel(user_factors=new_factors["user"], item_factors=new_factors["item"], params=model.params)
    # A held side's untouched rows get d + ΔG x on the driver: every offsets row is then known exactly.
    untouched_offsets = {s: source.held_offsets(s, delta[s], np.concatenate([touched[s]["ids"], np.array(
        sorted(plan.removed[s]), np.int64)])) if held[s] and s not in lazy else None for s in SIDES}
    changes = {s: row_changes(result, touched[s], plan.removed[s], s, exact_offsets=not spec.implicit and s not in lazy,
                              untouched=untouched_offsets[s])
               for s in SIDES}
    return TargetedResult(new_model, (new_offsets["user"], new_offsets["item"]), deleted, plan, report, True, grams_out,
                          new_watch or None, changes, deleted_local,
                          {s: w.to_json() for s, w in next_dwatch.items() if w is not None} or None)


def row_changes(result, touched: dict[str, Any], removed: set[int], side: str, exact_offsets: bool,
                untouched: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> RowChanges:
    """The rows :func:`patched_factors` and :func:`patched_offsets` change, as arrays (see :class:`RowChanges`).

    ``exact_offsets``: explicit feedback with no row left in Spark, where an
    untouched row's offsets do not change.  ``untouched``: ``(ids, |b|, d)``
    of every row the request did not touch, computed on the driver
    (implicit, a held side: ``d + ΔG x``).  Otherwise the offsets are left to
    a full write.
    """
    ids, X = result.changed(side)
    gone = np.asarray(sorted(removed), np.int64)
    if not exact_offsets and untouched is None:
        return RowChanges(gone, np.asarray(ids, np.int64), np.asarray(X, np.float32))
    solved = np.asarray(touched["solved"], bool)
    off_ids, bnorm, drift = (np.asarray(touched["ids"], np.int64), np.asarray(touched["bnorm"], np.float64),
                             np.asarray(touched["drift"], np.float64))
    if untouched is not None:
        u_ids, u_bnorm, u_drift = untouched
        off_ids = np.concatenate([np.asarray(u_ids, np.int64), off_ids])
        bnorm = np.concatenate([np.asarray(u_bnorm, np.float64), bnorm])
        drift = np.concatenate([np.asarray(u_drift, np.float64), drift])
    return RowChanges(gone, np.asarray(ids, np.int64), np.asarray(X, np.float32),
                      offset_ids=off_ids, bnorm=bnorm, drift=drift,
                      target_ids=np.asarray(touched["ids"], np.int64)[solved],
                      targets=np.asarray(touched["target"], np.float64)[solved])


def _deleted_table(plan: TargetedPlan):
    return deleted_arrow(plan.deleted_users, plan.deleted_items, plan.deleted_ratings)
