"""Solve strategies over every row of the block layout: warm offset sweeps and repairs.

``full_sweeps`` runs offset ALS (``A'x = b' + t``) warm-started from the
model until the certificate holds; ``repair`` re-solves a certificate's violators, and the rows
they reach, with the frontier.  All of them solve with the kernels training
uses (:meth:`~spark_unlearn.als.train.ALSState.solve_routed`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark import RDD, StorageLevel

from spark_unlearn.als.certify import certificate_of, certify, side_targets
from spark_unlearn.als.frontier import frontier_unlearn
from spark_unlearn.als.spark_source import BoundedGramSource, SparkRowSource
from spark_unlearn.als.train import ResidualCheck

log = logging.getLogger(__name__)


def apply_updates(factors: RDD, updates: dict[int, np.ndarray]) -> RDD:
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


def repair(state, params, spec, tol, users, items, cert, targets, max_rounds, max_rows, attempts=3):
    """A certificate above its bound (``tol``, a :class:`~spark_unlearn.als.policy.RowTolerance`): re-solve its
    violators, and the rows they reach, with the frontier (held to ``tol.floor``, which no row's bound is below).

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
        if cert.holds or not any(cert.violators.values()):
            break
        log.info("certificate at %.3g x its bound: re-solving %d violating rows with the frontier",
                 cert.max_bound_ratio, sum(len(v) for v in cert.violators.values()))
        src = SparkRowSource.from_blocks(state, {"user": users, "item": items}, cert.residual_blocks, params.rank)
        grams = {s: src.gram(s) for s in ("user", "item")} if spec.implicit else None
        bounded = BoundedGramSource(src, {s: src.ratio_bound(s) if spec.implicit else (0.0, 0.0) for s in ("user", "item")})
        result = frontier_unlearn(bounded, {}, spec, tol.floor, gram_train=grams, gram_now=grams, max_rounds=max_rounds,
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
        users = apply_updates(users, result.updates["user"]).persist(StorageLevel.MEMORY_AND_DISK)
        items = apply_updates(items, result.updates["item"]).persist(StorageLevel.MEMORY_AND_DISK)
        cert = certify(state, users, items, targets, params, tol)
        info["certificates"].append(cert.max_relative_residual)
    return users, items, cert, info


def full_sweeps(state, source, plan, params, tol, iterations):
    """Warm-started offset ALS sweeps over every row.

    A half-sweep is one stage that solves a side and routes its new rows on
    (:meth:`ALSState.solve_routed`).  Offset sweeps are certified inside
    those stages: the user solve of sweep ``s`` checks the rows it solved
    against the items they were solved from, and the item solve of sweep
    ``s + 1`` first checks sweep ``s``'s items against sweep ``s``'s users
    (the messages it reads anyway), then solves.  So a certified sweep is
    two stages and one job, like a plain one; the price is one item
    half-solve after the last sweep, whose result is discarded (counted in
    the returned ``extra_half``).  Returns ``(users, items, sweeps, cert,
    extra_half)``.
    """
    # Read by every half-sweep: computed once.
    targets = {s: t.persist(StorageLevel.MEMORY_AND_DISK) for s, t in side_targets(source, plan, params.rank).items()}
    users, items = source.factors["user"], source.factors["item"]
    to_items = state.routed("user", users, params.implicit)

    def half_sweep(side, incoming, sweep, check=None, own=None):
        solved = state.solve_routed(side, incoming, params, targets=targets[side], check=check, own=own)
        solved = solved.persist(StorageLevel.MEMORY_AND_DISK)
        if sweep % params.checkpoint_interval == 0:
            solved.localCheckpoint()
        return solved

    solved_items = half_sweep("item", to_items, 1)
    cert, cached, sweep = None, [], 0
    for sweep in range(1, iterations + 1):
        solved_users = half_sweep("user", state.onward(solved_items), sweep, ResidualCheck("user", "after", tol.floor, tol.own))
        items, users = state.factors_of(solved_items), state.factors_of(solved_users)
        nxt = half_sweep("item", state.onward(solved_users), sweep + 1, ResidualCheck("item", "before", tol.floor, tol.own), own=items)
        # One job per sweep: both sides' summaries arrive with the next item solve's blocks.
        stats = [st for per_block in nxt.map(lambda kv: kv[1][3][1]).collect() for st in per_block]
        cert = certificate_of(stats, {"user": solved_users, "item": nxt})
        for old in cached:  # this sweep's results are cached now: the previous ones are unused
            old.unpersist()
        cached = [solved_items, solved_users]
        log.info("full sweep %d: certificate %.3g, %.3g x its bound", sweep, cert.max_relative_residual,
                 cert.max_bound_ratio)
        if cert.holds:
            break
        solved_items = nxt
    return users, items, sweep, cert, True
