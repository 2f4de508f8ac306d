"""Unlearn-ALS on Spark: the strategy choice between frontier re-solves, sweeps and a retrain.

Modes (:class:`~spark_unlearn.als.options.UnlearnOptions`)
-----
``frontier``
    Re-solve the rows whose own data changed, then only the rows their change
    reaches beyond the floor (:mod:`spark_unlearn.als.frontier`): by targeted
    scans of the stored tables for small batches
    (:mod:`spark_unlearn.als.incremental`), else on cached blocks of the
    remaining ratings.  Falls back to ``options.fallback`` (a retrain, or
    ``full``) when the frontier would cover more than
    ``full_fallback_fraction`` of all rows.
``full``
    Offset ALS over every row (``A'x = b' + t``), warm-started from the
    model, until the certificate holds or ``full_iterations`` sweeps: the
    same fixed point the frontier targets (:mod:`spark_unlearn.als.sweeps`).
``retrain``
    ALS from scratch on the remaining data (:mod:`spark_unlearn.als.retrain`).

Every result carries a certificate (:mod:`spark_unlearn.als.certify`): each
row's ``|A'_r x_r - b'_r - t_r| / |b'_r|`` within its bound under the
request's policy (:mod:`spark_unlearn.als.policy`), with ``t_r = 0`` for
rows whose own data changed and the training residual ``e_r`` otherwise.

Compute is separate from apply: :func:`unlearn_als` returns new tables and
a report and stores nothing; the job publishes them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from spark_unlearn.als.blocks import factors_to_dataframe
from spark_unlearn.als.certify import Certificate, certify, residual_summary, side_targets
from spark_unlearn.als.factor_passes import gram_of
from spark_unlearn.als.frontier import frontier_unlearn
from spark_unlearn.als.kernels import SolveSpec
from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.options import UnlearnOptions, VersionFacts
from spark_unlearn.als.plan import plan_deletion, remove_batch
from spark_unlearn.als.result import UnlearnResult, report_head
from spark_unlearn.als.retrain import retrained
from spark_unlearn.als.policy import RowTolerance, row_tolerance, strict_figure
from spark_unlearn.als.spark_source import BoundedGramSource, SparkRowSource
from spark_unlearn.als.sweeps import apply_updates, full_sweeps, repair
from spark_unlearn.als.train import ALSState, offsets_frame
from spark_unlearn.deferred import Deferred, force
from spark_unlearn.errors import EmptyInputError

log = logging.getLogger(__name__)

# Above this many requests a batch is planned and solved on the block layout:
# the targeted engine collects the batch and the deleted rows on the driver.
TARGETED_MAX_REQUESTS = 10_000
# The same for a blocked version: its rows come from its block files, and the batch planner can sweep it on the
# driver (a 1 % batch of the 5M ADM expansion, 40,004 requests: 94 s through the planner against 222 s on the layout).
BLOCKED_MAX_REQUESTS = 200_000


# ---------------------------------------------------------------------------
# Helpers on block RDDs
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Unlearning
# ---------------------------------------------------------------------------


def unlearn_als(
    ratings: DataFrame,
    model: FactorModel,
    offsets: tuple[DataFrame, DataFrame],
    batch: DataFrame,
    options: UnlearnOptions | None = None,
    facts: VersionFacts | None = None,
    batch_rows: list | None = None,
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
    options
        How to solve and certify (:class:`~spark_unlearn.als.options.UnlearnOptions`).
        In frontier mode ``engine`` ``auto`` takes the targeted engine
        (:mod:`spark_unlearn.als.incremental`: scans of the stored tables,
        incremental certificate) for batches of at most
        ``TARGETED_MAX_REQUESTS`` requests (``BLOCKED_MAX_REQUESTS`` on a
        blocked version), else the block layout (a certificate recomputed
        from the ratings for every row).
    facts
        What the version's manifest knows (:class:`~spark_unlearn.als.options.VersionFacts`):
        each known fact saves a pass over a table.
    batch_rows
        The batch's ``(user, item, kind)`` rows, when the caller holds them
        on the driver already (at most ``BLOCKED_MAX_REQUESTS``): not
        collected again.
    """
    o = options or UnlearnOptions()
    f = facts or VersionFacts()
    mode, engine, strict, max_rounds = o.mode, o.engine, o.strict, o.max_rounds
    full_fallback_fraction, full_iterations, num_blocks = o.full_fallback_fraction, o.full_iterations, o.num_blocks
    forgotten, training_residual = f.forgotten, f.training_residual
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = model.params
    spec = SolveSpec(float(params.reg), params.implicit, float(params.alpha))
    if training_residual is None:
        training_residual = residual_summary(tuple(force(o) for o in offsets))
    bound = row_tolerance(o.certificate_policy, training_residual, o.tol, o.tol_factor)
    # The solve stages hold rows to the floor (no row's bound is below it); the certificate to each row's own bound.
    tol, tol_source = bound.floor, bound.source
    log.info("unlearning (%s mode), certificate policy %s, floor %.3g (%s)", mode, bound.policy, tol, tol_source)

    # Full sweeps of a blocked version that fits the driver run there, on its stored blocks (no layout is built).
    driver_sweeps = mode == "full" and f.blocks is not None and o.sweep_driver_mb > 0
    if (mode == "frontier" or driver_sweeps) and engine != "layout":
        # One job: a small batch is collected anyway, a large one is not (it goes to the layout engine).
        rows = batch_rows
        limit = BLOCKED_MAX_REQUESTS if f.blocks is not None else TARGETED_MAX_REQUESTS
        if rows is None and engine == "auto":
            rows = batch.select("user", "item", "kind").limit(limit + 1).collect()
        if engine == "targeted" or len(rows) <= limit:
            out = _unlearn_targeted(ratings, model, offsets, rows if rows is not None else batch, spec, bound,
                                    training_residual, o, f, t0, batch)
            if out is not None:
                return out
            if mode == "frontier":
                log.warning("the frontier outgrew %.0f%% of the rows (or the planner's sweeps did not certify): falling "
                            "back to %s", 100 * full_fallback_fraction,
                            "a retrain" if o.fallback == "retrain" else "the block layout and full sweeps")
                mode = o.fallback
            else:
                log.warning("full sweeps could not run (or certify) on the driver: sweeping on the block layout")
    # The block layout and the retrain read the tables: build them (they may be unbuilt plans, spark_unlearn.deferred).
    ratings, offsets = force(ratings), tuple(force(o) for o in offsets)
    plan = plan_deletion(ratings, batch, strict=strict, forgotten=forgotten)
    remaining = plan.remaining.persist(StorageLevel.MEMORY_AND_DISK)
    n_remaining = remaining.count()
    if n_remaining == 0:
        raise EmptyInputError("the deletion batch removes every rating; nothing would remain to define a model")
    timings["plan"] = time.perf_counter() - t0

    t = time.perf_counter()
    state = ALSState.build(remaining, num_blocks or params.num_blocks)
    source = (None if mode == "retrain" else
              SparkRowSource(state, {"user": model.user_factors, "item": model.item_factors},
                             {"user": offsets[0], "item": offsets[1]}, params.rank))
    n_rows = {s: state.side(s).map(lambda kv: kv[1].n_rows).sum() for s in ("user", "item")}
    timings["layout"] = time.perf_counter() - t
    total_rows = n_rows["user"] + n_rows["item"]

    t = time.perf_counter()
    frontier_info: dict[str, Any] = {}
    used_mode = mode
    if mode == "retrain":
        return retrained(remaining, plan, state, params, bound, o.mode, timings, t0, total_rows, n_remaining, 0,
                         frontier_info)
    users, items = source.factors["user"], source.factors["item"]
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
            users = apply_updates(source.factors["user"], result.updates["user"]).persist(StorageLevel.MEMORY_AND_DISK)
            items = apply_updates(source.factors["item"], result.updates["item"]).persist(StorageLevel.MEMORY_AND_DISK)
            targets = side_targets(source, plan, params.rank)
            cert = certify(state, users, items, targets, params, bound)
            # The certificate divides by the exact |b'|, the frontier's drift test by the training |b|: rows it flags
            # are re-solved from the applied factors.
            users, items, cert, repaired = repair(state, params, spec, bound, users, items, cert, targets, max_rounds,
                                                 budget - rows_solved)
            rows_solved += repaired["rows_solved"]
            rounds += repaired["rounds"]
            sizes += repaired["frontier_sizes"]
            converged = repaired["converged"]
        frontier_info = {"engine": "layout", "rounds": rounds, "frontier_sizes": sizes, "spark_jobs": source.jobs,
                         "converged": converged}
        if not converged:
            log.warning("frontier would exceed %.0f%% of rows (%d solves); falling back to %s",
                        100 * full_fallback_fraction, rows_solved, o.fallback)
            used_mode = o.fallback
            cert = None
            if used_mode == "retrain":
                timings["solve"] = time.perf_counter() - t
                return retrained(remaining, plan, state, params, bound, o.mode, timings, t0, total_rows, n_remaining,
                                 rows_solved,
                                 frontier_info)
    else:
        rows_solved = 0
    if used_mode == "full":
        users, items, sweeps, cert, extra_half = full_sweeps(state, source, plan, params, bound, full_iterations)
        rows_solved += sweeps * total_rows + (n_rows["item"] if extra_half else 0)
        frontier_info["sweeps"] = sweeps
        if not cert.holds:
            # Sweeps that stopped above tol are finished by the frontier (if that outgrows its budget, they stay).
            users, items, cert, repaired = repair(state, params, spec, bound, users, items, cert,
                                                 side_targets(source, plan, params.rank), max_rounds,
                                                 int(full_fallback_fraction * total_rows))
            rows_solved += repaired["rows_solved"]
            frontier_info["repair"] = repaired
    timings["solve"] = time.perf_counter() - t
    # Every way here certified inside its solve stage: the frontier's certify-and-repair, full sweeps in their stages.
    timings["certificate"] = 0.0

    new_model = FactorModel(
        user_factors=factors_to_dataframe(state.spark, users, params.rank),
        item_factors=factors_to_dataframe(state.spark, items, params.rank),
        params=params,
    )
    new_offsets = tuple(offsets_frame(state.spark, cert.residual_blocks[s], params.rank, with_drift=True) for s in ("user", "item"))
    report = {
        **report_head(used_mode, o.mode, bound, training_residual, plan),
        "rows_total": total_rows,
        "rows_solved": int(rows_solved),
        "remaining_ratings": n_remaining,
        "certificate": cert.to_dict(bound),
        "drift_max": dict(cert.per_side),
        "bnorm_exact": {"user": True, "item": True},  # every row's |b'| recomputed from the data
        "seconds": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t0}.items()},
        **frontier_info,
    }
    report["certificate"]["strict"] = strict_figure(cert.max_relative_residual, training_residual, o.tol_factor)
    # Sweeps on the layout know only each side's maximum drift: no drift watch.
    return UnlearnResult(new_model, new_offsets, remaining, plan.deleted, report, state)


def _unlearn_targeted(ratings, model, offsets, batch, spec, bound: RowTolerance, training_residual, o: UnlearnOptions,
                      f: VersionFacts, t0, batch_frame=None) -> UnlearnResult | None:
    """The targeted engine (:mod:`spark_unlearn.als.incremental`); ``None`` if the frontier outgrew its budget.

    ``batch``: the requests as collected rows (or a DataFrame); ``batch_frame`` the DataFrame.
    """
    from spark_unlearn.als.incremental import unlearn_targeted

    counts = f.counts or {}
    table_rows = None
    if counts.get("n_users") is not None and counts.get("n_items") is not None:
        table_rows = {"user": int(counts["n_users"]), "item": int(counts["n_items"])}
        total_rows = table_rows["user"] + table_rows["item"]
    else:
        total_rows = model.user_factors.count() + model.item_factors.count()
    full = o.mode == "full"
    out = unlearn_targeted(ratings, model, offsets, batch, spec=spec, tol=bound.floor, policy=bound, max_rounds=o.max_rounds,
                           max_rows=int(o.full_fallback_fraction * total_rows), strict=o.strict, forgotten=f.forgotten,
                           grams=f.grams, drift_bound=f.drift_bound, n_ratings=counts.get("n_ratings"), x_ratio=f.x_ratio,
                           x_watch=f.x_watch, table_rows=table_rows, driver_rows=o.driver_rows, reader=f.blocks,
                           hold_bytes=o.hold_side_mb << 20, drift_watch=f.drift_watch, bnorm_exact=f.bnorm_exact,
                           sweep_bytes=o.sweep_driver_mb << 20, max_sweeps=o.full_iterations if full else None,
                           force_sweeps=full, min_sweeps=o.min_sweeps, forgetting_share=o.forgetting_share,
                           retrain_share=o.retrain_share)
    if not out.converged:
        return None
    remaining = Deferred(lambda: remove_batch(force(ratings), batch_frame if batch_frame is not None else batch))
    strategy = out.report.get("strategy")
    if strategy == "retrain":  # a new training run: its own residual is the next request's reference
        training_residual = out.report["new_training_residual"]
    report = {
        **report_head({"sweeps": "full", "retrain": "retrain"}.get(strategy, "frontier"), o.mode, bound,
                      training_residual, out.plan),
        "rows_total": total_rows - len(out.plan.removed["user"]) - len(out.plan.removed["item"]),
        **out.report,
    }
    report["seconds"] = {k: round(v, 3) for k, v in {**out.report["seconds"], "total": time.perf_counter() - t0}.items()}
    cert = report["certificate"]
    cert["strict"] = strict_figure(cert["max_relative_residual"], training_residual, o.tol_factor,
                                   cert.get("max_kind", "exact"))
    pair = out.offsets
    return UnlearnResult(out.model, Deferred(lambda: tuple(force(o) for o in pair)), remaining, out.deleted, report,
                         None, out.grams, out.x_watch, out.changes, out.deleted_local, offset_plans=pair,
                         drift_watch=out.drift_watch)


