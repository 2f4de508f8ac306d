"""The sweep strategy on the driver: warm offset sweeps over a blocked version read whole.

When a batch reaches a large share of the rows (thousands of erased users),
re-solving row by row with the frontier's bookkeeping costs more than
solving every row at once: a vectorised sweep solves a row for a small
fraction of what a frontier row costs (:mod:`spark_unlearn.als.strategy_cost`).
If the whole version fits the driver (:func:`sweep_bytes` within the
request's ``sweep_driver_mb``), the batch planner may take this way:

1. **Read** every block file of the version's ratings (blocked by user),
   factor and offsets tables from its manifest (no Spark job), drop the
   deleted ratings and the rows that left the model;
2. **Solve**: warm offset sweeps (:func:`~spark_unlearn.als.sweep_kernel.warm_sweeps`)
   from the version's factors, each row to ``A'x = b' + t`` (``t = 0`` on
   rows whose own data changed), until every row is within its bound under
   the request's policy, at most a cold retrain's iteration count;
3. **Certify**: the deviation of every row on the float32 factors that are
   published, computed from the data after the last sweep (after a repair
   round, the rows away from the repaired ones are updated by the Gram's
   change, exact up to float64 rounding), so the certificate's maximum is
   exact;
4. **Publish**: every row's factor and offsets as the request's row changes
   (the copy-on-write publication rewrites the blocks they fall in: all).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from spark_unlearn.als.block_source import RATINGS_TABLE, TABLE_COLUMNS, VERSION_TABLES
from spark_unlearn.als.forgetting_watch import ForgettingWatch
from spark_unlearn.als.held_retrain import residual_figures, retrain_sides
from spark_unlearn.als.kernels import SolveSpec, residuals, solve_rows
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.result import RowChanges, TargetedResult
from spark_unlearn.als.selection import deleted_arrow, pair_keys, sorted_lookup
from spark_unlearn.als.strategy_cost import RETRAIN_SHARE, StrategyChoice, choose_strategy, forced_sweeps
from spark_unlearn.als.sweep_kernel import SweepRun, SweepSide, warm_sweeps
from spark_unlearn.als.table_source import rows_of
from spark_unlearn.deferred import Deferred
from spark_unlearn.errors import StoreError
from spark_unlearn.faults import failpoint

log = logging.getLogger(__name__)

SIDES = ("user", "item")

# Up to this many driver bytes for a whole version (ratings twice, both sides' rows with their workspaces; the
# estimate of sweep_bytes, which leaves out the file cache of decoded blocks) the planner may sweep on the driver:
# about 8M ratings with 400k rows at rank 32.
SWEEP_DRIVER_BYTES = 1024 << 20

# The sweeps' repair (sweep_kernel's module docstring): after a sweep that leaves at most this fraction of the
# first side's rows outside their bounds, at most this many rounds of solving just the violators.  A round after
# the first costs its rows and their neighbours (not a side's every rating), so rounds are cheap beside a sweep: on
# the 5M ADM expansion (1 %), 4 rounds left 1 row of 981,823 outside and a second sweep ran for it.
REPAIR_FRACTION = 0.05
REPAIR_ROUNDS = 12
# Sweeps started from the version solve the rows whose own data changed first (sweep_kernel's module docstring); the
# block layout's Spark sweeps do not, so a test that holds the two equal turns it off.
SOLVE_CHANGED_FIRST = True


def sweep_bytes(n_ratings: int, n_rows: int, rank: int) -> int:
    """Driver bytes of the sweep strategy on a version of ``n_ratings`` ratings and ``n_rows`` rows (both sides).

    Per rating: the read columns and pair keys (8 + 8 + 4 + 8), and the two
    CSR copies (8 + 4 each, plus the sort order 8 each).  Per row: its
    id, float32 factor, float64 target, drift and bound terms, and the float64
    copies the kernels make of the other side's factors and of each solved
    batch (``8 + 4k + 8k + 8k + 8k + 8k + 32``).
    """
    return int(n_ratings) * (28 + 2 * 20) + int(n_rows) * (8 + 36 * int(rank) + 32)


@dataclass
class HeldVersion:
    """A version's remaining data on the driver, ready for :func:`warm_sweeps`."""

    ids: dict[str, np.ndarray]  # per side, the ids of the rows left, sorted
    sides: dict[str, SweepSide]
    n_ratings: int
    changed: dict[str, np.ndarray]  # per side, which of those rows had their own data changed (target 0)


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int):
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order], vals[order]


def read_held(reader, rank: int, deleted_users: np.ndarray, deleted_items: np.ndarray,
              direct: dict[str, set[int]], removed: dict[str, set[int]], warm: bool = True) -> HeldVersion:
    """Every remaining rating, factor and target of the version behind ``reader``, as :class:`SweepSide` arrays.

    ``deleted_*``: the deleted ratings' pairs; ``direct``: rows whose own data
    changed (their target becomes 0); ``removed``: rows that left the model.
    ``warm=False`` (a retrain, which starts from its own initial factors and
    computes its own targets): the targets tables are not read, only the
    factor tables' ids are taken, and factors and targets are zeros.
    """
    ratings = reader.whole(RATINGS_TABLE, ["user", "item", "rating"])
    u = ratings.column("user").to_numpy().astype(np.int64)
    i = ratings.column("item").to_numpy().astype(np.int64)
    r = ratings.column("rating").to_numpy().astype(np.float32)
    keep = ~np.isin(pair_keys(u, i), pair_keys(deleted_users, deleted_items))
    u, i, r = u[keep], i[keep], r[keep]
    ids, X, T, changed = {}, {}, {}, {}
    for s in SIDES:
        f = reader.whole(VERSION_TABLES[s, "factors"], TABLE_COLUMNS["factors"] if warm else ["id"])
        fid = f.column("id").to_numpy().astype(np.int64)
        order = np.argsort(fid)
        fid = fid[order]
        left = ~np.isin(fid, np.array(sorted(removed[s]), np.int64))
        ids[s] = fid[left]
        if not warm:
            X[s], T[s] = np.zeros((ids[s].size, rank), np.float32), np.zeros((ids[s].size, rank))
        else:
            o = reader.whole(VERSION_TABLES[s, "targets"], ["id", "residual"])
            oid = o.column("id").to_numpy().astype(np.int64)
            o_order = np.argsort(oid)
            if not np.array_equal(fid, oid[o_order]):
                raise StoreError(f"the {s} factor and offsets tables hold different ids ({fid.size} and {oid.size} "
                                 "rows): the version is damaged; restore it from its parent")
            X[s] = rows_of(f.column("features"), rank)[order][left].astype(np.float32)
            T[s] = rows_of(o.column("residual"), rank)[o_order][left].astype(np.float64)
        changed[s] = np.isin(ids[s], np.array(sorted(direct[s]), np.int64))
        T[s][changed[s]] = 0.0
    pos = {}
    for s, col in (("user", u), ("item", i)):
        p, found = sorted_lookup(ids[s], col)
        if not found.all():
            bad = int(col[~found][0])
            raise StoreError(f"a remaining rating names {s} {bad}, which has no factor row in the version: the version "
                             "is damaged (or the deletion plan missed a removed row); restore it from its parent")
        pos[s] = p
    sides = {}
    for s, mine, theirs in (("user", pos["user"], pos["item"]), ("item", pos["item"], pos["user"])):
        indptr, src, vals = _csr(mine, theirs, r, ids[s].size)
        sides[s] = SweepSide(indptr, src, vals, X[s], T[s])
    return HeldVersion(ids, sides, int(r.size), changed)


def sweep_changes(held: HeldVersion, run: SweepRun, removed: dict[str, set[int]], side: str,
                  retrained: bool = False) -> RowChanges:
    """Every row of ``side`` changed: its factor, ``|b'|`` and drift; rows whose own data changed get target 0
    (``retrained``: every row gets its new target, ``held.sides[side].T``)."""
    ids = held.ids[side]
    if retrained:
        return RowChanges(np.array(sorted(removed[side]), np.int64), ids, run.factors[side], offset_ids=ids,
                          bnorm=run.bnorm[side], drift=run.drift[side], target_ids=ids, targets=held.sides[side].T)
    changed = held.changed[side]
    k = run.factors[side].shape[1]
    return RowChanges(np.array(sorted(removed[side]), np.int64), ids, run.factors[side], offset_ids=ids,
                      bnorm=run.bnorm[side], drift=run.drift[side], target_ids=ids[changed],
                      targets=np.zeros((int(changed.sum()), k)))


def deleted_pairs_watch(held: HeldVersion, deleted_users: np.ndarray, deleted_items: np.ndarray,
                        target: float) -> ForgettingWatch:
    """The :class:`ForgettingWatch` of the deleted pairs whose user and item both stay in the model (row positions)."""
    users, u_ok = sorted_lookup(held.ids["user"], np.asarray(deleted_users, np.int64))
    items, i_ok = sorted_lookup(held.ids["item"], np.asarray(deleted_items, np.int64))
    both = u_ok & i_ok
    return ForgettingWatch(users[both].astype(np.int64), items[both].astype(np.int64), float(target))


def sweep_version(reader, rank: int, plan, spec: SolveSpec, policy: RowTolerance, max_sweeps: int,
                  progress=None, start: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, min_sweeps: int = 1,
                  threads: int = 1, forgetting_share: float = 0.0) -> tuple[HeldVersion, SweepRun]:
    """Read the version whole and sweep it warm (steps 1-3 of the module docstring).

    ``start``: per side, ``(ids, factors)`` of rows to start from instead of
    the version's (a frontier's solves before the planner switched: its work
    is kept as the sweeps' starting point; the certificate is computed after
    the last sweep whatever the start).  ``threads``: the kernels' threads
    (:func:`driver_threads`).  ``forgetting_share``: the sweeps also run
    until the deleted pairs have made this share of their estimated move
    (:mod:`~spark_unlearn.als.forgetting_watch`; 0: the certificate alone).
    """
    held = read_held(reader, rank, plan.deleted_users, plan.deleted_items, plan.direct, plan.removed)
    watch = deleted_pairs_watch(held, plan.deleted_users, plan.deleted_items, forgetting_share)
    watch.observe(held.sides["user"].X, held.sides["item"].X)  # the trained model's scores: where the move starts
    for s, (ids, X) in (start or {}).items():
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:  # a frontier stopped before its first round has no table (and no rank) for a side
            continue
        pos, ok = sorted_lookup(held.ids[s], ids)
        held.sides[s].X[pos[ok]] = np.asarray(X, np.float32)[ok]
    log.info("sweep strategy: %d ratings, %d user and %d item rows on the driver", held.n_ratings,
             held.ids["user"].size, held.ids["item"].size)
    # The rows whose own data changed are solved first, unless a frontier already solved some (it starts with them).
    frontier_ran = any(np.size(ids) for ids, _ in (start or {}).values())
    if frontier_ran:
        watch.observe(held.sides["user"].X, held.sides["item"].X)  # the frontier's work is the first step
    first = None if frontier_ran or not SOLVE_CHANGED_FIRST else {s: np.flatnonzero(held.changed[s]) for s in SIDES}
    run = warm_sweeps(held.sides, spec, policy, max_sweeps, progress=progress, repair_fraction=REPAIR_FRACTION,
                      repair_rounds=REPAIR_ROUNDS, min_sweeps=min_sweeps, solve_fn=partial(solve_rows, threads=threads),
                      residual_fn=partial(residuals, threads=threads), first_rows=first, watch=watch)
    return held, run


def driver_threads(spark) -> int:
    """Threads the driver's sweeps may use: ``spark.driver.cores`` when set, else local mode's task slots, else 1.

    While the driver sweeps, no Spark task of the request runs, so in local
    mode the cores Spark's tasks would use are idle.
    """
    sc = spark.sparkContext
    cores = sc.getConf().get("spark.driver.cores", None)
    here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores:
        return max(1, min(int(cores), here))
    # defaultParallelism may be spark.default.parallelism (8 in conf/spark-local.properties), not the cores.
    return max(1, min(int(sc.defaultParallelism), here)) if sc.master.startswith("local") else 1


def _frames(spark, held: HeldVersion, run: SweepRun, side: str):
    """The side's new factor and offsets tables as DataFrames built from the driver's arrays (every row)."""
    import pyarrow as pa

    from spark_unlearn.als.factor_passes import arrow_column

    ids = pa.array(held.ids[side].astype(np.int32))
    factors = spark.createDataFrame(pa.table({"id": ids, "features": arrow_column(run.factors[side], "array<float>")}),
                                    "id int, features array<float>")
    offsets = spark.createDataFrame(pa.table({
        "id": ids, "residual": arrow_column(held.sides[side].T, "array<double>"),
        "bnorm": arrow_column(run.bnorm[side], "double"), "drift": arrow_column(run.drift[side], "array<double>")}),
        "id int, residual array<double>, bnorm double, drift array<double>")
    return factors, offsets


def sweep_result(spark, model, held: HeldVersion, run: SweepRun, plan, policy: RowTolerance, spec: SolveSpec,
                 deleted, deleted_local, report: dict, retrained: bool = False) -> TargetedResult:
    """The :class:`~spark_unlearn.als.result.TargetedResult` of a sweep run: every row changed, the certificate exact.

    ``deleted``/``deleted_local``: the deleted ratings as a (deferred)
    DataFrame and as Arrow; ``report``: the engine's fields so far (plan,
    timings, Spark jobs), completed here.  ``retrained``: ``run`` is a
    retrain (:mod:`~spark_unlearn.als.held_retrain`): its residual is every
    row's new target and the version's new training residual.
    """
    from spark_unlearn.als.certify import certificate_record
    from spark_unlearn.als.kernels import gram
    from spark_unlearn.als.model import FactorModel
    from spark_unlearn.als.ratio_watch import DRIFT_WATCH_SIZE, RatioWatch
    frames = {s: Deferred(lambda s=s: _frames(spark, held, run, s)) for s in SIDES}
    per_side = {s: float(run.deviation[s].max(initial=0.0)) for s in SIDES}
    ratio = max(float((run.deviation[s] / np.maximum(run.bounds[s], 1e-300)).max(initial=0.0)) for s in SIDES)
    rows = {s: int(held.ids[s].size) for s in SIDES}
    note = ("a new training run on the remaining data, on the driver: each row's training residual is its target, so "
            "every deviation is 0 up to float32 rounding (the verifier recomputes it)" if retrained else
            "every row's deviation on the published float32 factors, from the remaining data after the last sweep (a "
            "repair round's rows away from the repaired ones by the Gram's change); the ratio is every row's deviation "
            "over its own bound")
    cert = certificate_record(
        max(per_side.values()), per_side, ratio, policy, method="retrain" if retrained else "sweeps",
        method_note=note,
        max_kind="exact", max_kind_why=None, per_side_kind={s: "exact" for s in SIDES}, rows_read_exactly=rows,
        touched_rows=rows, sweeps=run.sweeps,
        deviation_quantiles={s: {f"p{int(100 * q)}": float(np.quantile(run.deviation[s], q)) if rows[s] else 0.0
                                 for q in (0.5, 0.9, 0.99)} | {"max": per_side[s]} for s in SIDES})
    x_ratio = x_watch = drift_watch = None
    if spec.implicit:
        watches = {s: RatioWatch.from_values(held.ids[s], np.linalg.norm(run.factors[s].astype(np.float64), axis=1)
                                             / np.maximum(run.bnorm[s], 1e-300)) for s in SIDES}
        x_ratio = {s: watches[s].max for s in SIDES}
        x_watch = {s: w.to_json() for s, w in watches.items()}
    else:
        drift_watch = {s: RatioWatch.from_values(held.ids[s], run.deviation[s], DRIFT_WATCH_SIZE,
                                                 exact=np.ones(held.ids[s].size, bool)).to_json() for s in SIDES}
    report = {
        **report,
        "engine": "targeted",
        "strategy": "retrain" if retrained else "sweeps",
        **({"new_training_residual": residual_figures(held.sides, run.bnorm), "iterations": run.sweeps}
           if retrained else {}),
        "sweeps": run.sweeps,
        "sweep_history": run.history,
        "repaired_rows": run.repaired_rows,
        "presolved_rows": run.presolved_rows,
        "forgetting_stop": run.forgetting,
        "rounds": None,
        "frontier_sizes": [],
        "rows_solved": report.get("rows_solved", 0) + run.row_solves,
        "driver_rows": rows,
        "held_sides": list(SIDES),
        "certificate": cert,
        "drift_max": per_side,
        "bnorm_exact": {s: True for s in SIDES},
        **({"x_ratio": x_ratio} if x_ratio is not None else {}),
        "converged": run.holds,
    }
    new_model = FactorModel(user_factors=Deferred(lambda: frames["user"].get()[0]),
                            item_factors=Deferred(lambda: frames["item"].get()[0]), params=model.params)
    offsets = (Deferred(lambda: frames["user"].get()[1]), Deferred(lambda: frames["item"].get()[1]))
    changes = {s: sweep_changes(held, run, plan.removed, s, retrained) for s in SIDES}
    grams = {s: gram(run.factors[s]).tolist() for s in SIDES} if spec.implicit else None
    return TargetedResult(new_model, offsets, deleted, plan, report, run.holds, grams, x_watch, changes, deleted_local,
                          drift_watch)


def planned_strategy(reader, rank: int, plan, max_rows: int, max_sweeps: int, limit_bytes: int | None,
                     force_sweeps: bool, retrain_share: float = RETRAIN_SHARE) -> StrategyChoice:
    """The planner's choice for this request (:func:`~spark_unlearn.als.strategy_cost.choose_strategy`): sweeps (and
    the retrain on the driver) are possible when the version is blocked (``reader``) and :func:`sweep_bytes` is within
    ``limit_bytes`` (default :data:`SWEEP_DRIVER_BYTES`)."""
    direct = len(plan.direct["user"]) + len(plan.direct["item"])
    if reader is None:
        return choose_strategy(direct, 0, max_rows, max_sweeps, False, "the version is not blocked, or the request "
                               "names other ratings than the store's")
    rows = reader.table_rows(VERSION_TABLES["user", "factors"]) + reader.table_rows(VERSION_TABLES["item", "factors"])
    n_ratings = reader.table_rows(RATINGS_TABLE)
    need = sweep_bytes(n_ratings, rows, rank)
    share = {"deleted_share": np.size(plan.deleted_users) / max(int(n_ratings), 1), "retrain_share": retrain_share}
    rows -= len(plan.removed["user"]) + len(plan.removed["item"])  # rows that leave the model are not swept
    limit = SWEEP_DRIVER_BYTES if limit_bytes is None else int(limit_bytes)
    if need > limit:
        return choose_strategy(direct, rows, max_rows, max_sweeps, False, f"the whole version needs {need >> 20} MiB "
                               f"on the driver, above sweep_driver_mb = {limit >> 20}", **share)
    if force_sweeps:
        return forced_sweeps(direct, rows, max_sweeps)
    return choose_strategy(direct, rows, max_rows, max_sweeps, True, **share)


def swept(spark, reader, model, plan, spec: SolveSpec, policy: RowTolerance, max_sweeps: int,
          choice: StrategyChoice, source, n_remaining: int, timings: dict, frontier_rows: int = 0,
          start: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, min_sweeps: int = 1,
          forgetting_share: float = 0.0) -> TargetedResult:
    """Warm sweeps of the whole version on the driver, or a retrain there when the planner chose one
    (:mod:`~spark_unlearn.als.held_retrain`), as the targeted engine's result (``plan``: its
    :class:`~spark_unlearn.als.incremental.TargetedPlan`; ``frontier_rows``: rows a frontier solved before the
    planner switched, ``start`` their factors, where the sweeps start; ``min_sweeps``: the fewest sweeps, at most
    ``max_sweeps``; ``forgetting_share``: :func:`sweep_version`'s)."""
    t = time.perf_counter()
    min_sweeps = min(min_sweeps, max_sweeps)

    def progress(n, record):
        log.info("sweep %d of at most %d: %s", n, max_sweeps, {s: v for s, v in record.items() if s != "sweep"})
        failpoint("during_solve")

    threads = driver_threads(spark)
    retrain = choice.choice == "retrain"
    if retrain:
        held = read_held(reader, model.params.rank, plan.deleted_users, plan.deleted_items, plan.direct, plan.removed,
                         warm=False)
        log.info("retrain on the driver: %d ratings, %d user and %d item rows, %d iterations", held.n_ratings,
                 held.ids["user"].size, held.ids["item"].size, model.params.iterations)
        run = retrain_sides(held.sides, held.ids, spec, policy, model.params.rank, model.params.iterations,
                            model.params.seed, solve_fn=partial(solve_rows, threads=threads),
                            residual_fn=partial(residuals, threads=threads))
    else:
        held, run = sweep_version(reader, model.params.rank, plan, spec, policy, max_sweeps, progress=progress,
                                  start=start, min_sweeps=min_sweeps, threads=threads, forgetting_share=forgetting_share)
    # The deviations the sweeps computed are the certificate: their time is reported apart from the solves.
    timings["solve"] = timings.get("solve", 0.0) + time.perf_counter() - t - run.check_seconds
    timings["certificate"] = run.check_seconds
    deleted_local = deleted_arrow(plan.deleted_users, plan.deleted_items, plan.deleted_ratings)
    deleted = Deferred(partial(spark.createDataFrame, deleted_local, "user int, item int, rating float"))
    report = {"remaining_ratings": n_remaining, "spark_jobs": source.jobs, "seconds": timings,
              "rows_solved": int(frontier_rows), "driver_rows_limit": source.driver_rows,
              "planner": {**choice.to_dict(), "actual_row_solves": int(frontier_rows + run.row_solves),
                          "actual_sweeps": run.sweeps, "frontier_rows_before": int(frontier_rows),
                          "min_sweeps": min_sweeps, "forgetting_share": forgetting_share,
                          "driver_threads": threads}}
    if not run.holds:
        log.warning("sweeps did not certify within %d sweeps (a cold retrain's iterations)", max_sweeps)
    return sweep_result(spark, model, held, run, plan, policy, spec, deleted, deleted_local, report, retrain)
