"""Certify stage: every row's distance to the unlearned fixed point, and the tolerance it is held to.

For every row ``r`` of the remaining data the certificate is
``|A'_r x_r - b'_r - t_r| / |b'_r|`` with ``t_r = 0`` for rows whose own
data changed and the training residual ``e_r`` otherwise (``t = 0``
everywhere for the paper's plain sweeps, whose fixed point is plain
stationarity).  :func:`certify` computes it exactly over all rows in Spark
(one pass per side); full sweeps certify inside their own solves
(:func:`certificate_of`).  Each row is held to its own bound under the
request's policy (:class:`~spark_unlearn.als.policy.RowTolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.plan import DeletionPlan
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.spark_source import SparkRowSource
from spark_unlearn.als.train import MAX_VIOLATORS, ALSState, certificate_rows, row_bounds
from spark_unlearn.worker_heap import freeze_worker_heap



def offset_targets(offsets: RDD, direct: set[int], rank: int) -> RDD:
    """Offset targets ``t`` per row: training residual, or zero for direct rows."""
    direct_arr = np.asarray(sorted(direct), np.int64)
    bc = offsets.context.broadcast(direct_arr)

    def target(kv):
        ids, M = kv
        T = M[:, :rank].copy()
        if bc.value.size:
            T[np.isin(ids, bc.value)] = 0.0
        return ids, T

    return offsets.mapValues(target)


def side_targets(source: SparkRowSource, plan: DeletionPlan, rank: int) -> dict[str, RDD]:
    return {s: offset_targets(source.offs[s], plan.direct[s], rank) for s in ("user", "item")}


@dataclass
class Certificate:
    """Residual certificate of an unlearned model (over all rows).

    ``per_side`` holds each side's largest deviation ``|A'x - b' - t| / |b'|``
    and ``ratio_per_side`` its largest deviation over the row's own bound
    (:class:`~spark_unlearn.als.policy.RowTolerance`); the certificate holds
    when every row is within its bound (``max_bound_ratio <= 1``).
    """

    max_relative_residual: float
    per_side: dict[str, float]
    violators: dict[str, list[int]]
    residual_blocks: dict[str, RDD]  # (block, (ids, [T | bnorm | R - T])) per side: the next version's offsets
    ratio_per_side: dict[str, float] | None = None

    @property
    def max_bound_ratio(self) -> float:
        return max(self.ratio_per_side.values()) if self.ratio_per_side else float("nan")

    @property
    def holds(self) -> bool:
        return bool(self.max_bound_ratio <= 1.0)

    def to_dict(self, tolerance: RowTolerance) -> dict[str, Any]:
        return certificate_record(self.max_relative_residual, self.per_side, self.max_bound_ratio, tolerance,
                                  method="exact, every row", max_kind="exact")


def certificate_record(max_relative: float, per_side: dict[str, float], max_bound_ratio: float, tolerance: RowTolerance,
                       method: str, **extra: Any) -> dict[str, Any]:
    """The report's (and the ledger's) ``certificate``: one shape for every engine.

    ``extra`` holds what an engine adds; ``max_kind`` (``"exact"`` or
    ``"upper bound"``, with ``max_kind_why``) says whether
    ``max_relative_residual`` is the exact maximum, which the verifier then
    holds it to (:func:`spark_unlearn.verify.certificate.recorded_kind`).
    """
    return {
        "max_relative_residual": max_relative,
        "per_side": per_side,
        "tolerance": tolerance.floor,
        "policy": tolerance.to_dict(),
        "max_bound_ratio": max_bound_ratio,
        "holds": bool(max_bound_ratio <= 1.0),
        "method": method,
        **extra,
        "definition": "every row r: |A'_r x_r - b'_r - t_r| / |b'_r| <= max(floor, own_residual_weight * |t_r| / |b'_r|), "
        "t_r = 0 for rows whose data changed, else the training residual e_r",
    }


def certify(
    state: ALSState, users: RDD, items: RDD, targets: dict[str, RDD], params: ALSParams, tol: RowTolerance,
    max_violators: int = MAX_VIOLATORS,
) -> Certificate:
    """Exact residuals of every row on the remaining data, against the targets (one pass per side).

    The next version's offsets keep each row's target ``T`` and its drift
    ``R - T`` apart.
    Full sweeps certify inside their own solves instead (:func:`full_sweeps`).
    """
    per_side, ratios, violators, blocks, merged = {}, {}, {}, {}, {}
    floor, own = tol.floor, tol.own
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
            ratio = rel / row_bounds(floor, own, T, bnorm)
            yield block, (ids, stored, rel, ratio)

        merged[side] = res.union(targets[side]).mapPartitions(combine, preservesPartitioning=True).persist(StorageLevel.MEMORY_AND_DISK)
        blocks[side] = merged[side].mapValues(lambda v: (v[0], v[1]))

    def stats_of(side):
        def stats(kv):
            ids, _, rel, ratio = kv[1]
            return (side, float(rel.max()) if rel.size else 0.0, ids[~(ratio <= 1.0)][:max_violators].tolist(),
                    float(ratio.max()) if ratio.size else 0.0)
        return stats

    # Both sides in one job: a certificate per sweep should cost one pass, not one job per side.
    stats = merged["user"].map(stats_of("user")).union(merged["item"].map(stats_of("item"))).collect()
    for side in ("user", "item"):
        per_side[side] = max((m for s, m, _, _ in stats if s == side), default=0.0)
        ratios[side] = max((r for s, _, _, r in stats if s == side), default=0.0)
        violators[side] = [i for s, _, v, _ in stats if s == side for i in v][:max_violators]
    return Certificate(max(per_side.values()), per_side, violators, blocks, ratios)


def certificate_of(stats: list, checked: dict[str, RDD]) -> Certificate:
    """A :class:`Certificate` from the :class:`CheckStats` of every block of both sides and the checked solves."""
    per_side, ratios, violators, blocks = {}, {}, {}, {}
    for side in ("user", "item"):
        mine = sorted((st for st in stats if st.side == side), key=lambda st: st.block)
        per_side[side] = max((st.max_relative for st in mine), default=0.0)
        ratios[side] = max((st.max_ratio for st in mine), default=0.0)
        violators[side] = [i for st in mine for i in st.violators][:MAX_VIOLATORS]
        blocks[side] = checked[side].mapValues(lambda v: (v[0], v[3][0]))
    return Certificate(max(per_side.values()), per_side, violators, blocks, ratios)


def residual_summary(offsets: tuple[DataFrame, DataFrame]) -> dict[str, Any]:
    """Percentiles of ``|e_r| / |b_r|`` (a model's own training residual): pooled over all rows, and per side
    (``by_side``; the training-precision policy's floor is a quantile of the side ALS solves first)."""
    rel = None
    for name, df in zip(("user", "item"), offsets):
        side = df.select(
            F.lit(name).alias("side"),
            (F.sqrt(F.aggregate("residual", F.lit(0.0), lambda acc, x: acc + x * x)) / F.greatest(F.col("bnorm"), F.lit(1e-300))).alias("rel")
        )
        rel = side if rel is None else rel.unionByName(side)
    # One job: the pooled quantiles and each side's, as rows of one aggregation.
    quantiles = F.percentile_approx("rel", F.array(F.lit(0.5), F.lit(0.9), F.lit(0.99)), 1000)
    pooled = rel.agg(F.lit("all").alias("side"), quantiles.alias("q"), F.max("rel").alias("max"), F.count("rel").alias("n"))
    per_side = rel.groupBy("side").agg(quantiles.alias("q"), F.max("rel").alias("max"), F.count("rel").alias("n"))
    got = {r["side"]: r for r in pooled.unionByName(per_side).collect()}

    def summary(r) -> dict[str, float]:
        q = r["q"] if r is not None and r["q"] is not None else [0.0, 0.0, 0.0]
        return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float((r["max"] if r is not None else 0.0) or 0.0)}

    return {**summary(got.get("all")), "by_side": {s: summary(got.get(s)) for s in ("user", "item")}}
