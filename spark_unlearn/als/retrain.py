"""The retrain strategy: train again on the remaining data, the exact reference and the planner's fallback.

When a deletion reaches most rows (the frontier outgrows its budget), warm
offset sweeps cost more than a retrain: a certified sweep reads the routed
factors twice, and on ml-latest-small and ADM three to six of them took
longer than ten training iterations from scratch (docs/BENCHMARKS.md,
"Certificate policies").  The result is a training version
of the remaining data: its own training residual becomes every row's target
(as after ``jobs/train.py``), so the certificate is zero by construction and
the next request's tolerance comes from this model's residual.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from spark_unlearn.als.certify import certificate_record, residual_summary
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.plan import DeletionPlan
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.ratio_watch import empty_drift_watches
from spark_unlearn.als.result import UnlearnResult, report_head
from spark_unlearn.als.train import ALSState, train_als

log = logging.getLogger(__name__)


def retrained(remaining: DataFrame, plan: DeletionPlan, state: ALSState, params: ALSParams, bound: RowTolerance,
              requested_mode: str, timings: dict[str, float], t0: float, total_rows: int, n_remaining: int,
              rows_tried: int, info: dict[str, Any]) -> UnlearnResult:
    """ALS from scratch (the model's hyperparameters and seed) on ``remaining`` (``n_remaining`` ratings), laid out
    as ``state``."""
    t = time.perf_counter()
    result = train_als(remaining, params, state=state)
    offsets = tuple(df.persist(StorageLevel.MEMORY_AND_DISK) for df in result.offsets())
    residual = residual_summary(offsets)  # the new model's: the next request's tolerance comes from it
    timings["solve"] = timings.get("solve", 0.0) + time.perf_counter() - t
    timings["certificate"] = 0.0
    log.info("retrained on the remaining data in %.1fs", time.perf_counter() - t)
    cert = certificate_record(
        0.0, {"user": 0.0, "item": 0.0}, 0.0, bound, method="retrain", max_kind="exact",
        method_note="a new training run on the remaining data: each row's training residual is its target, so every "
        "deviation is 0 up to float32 rounding (the verifier recomputes it)")
    report = {
        **report_head("retrain", requested_mode, bound, residual, plan),
        "rows_total": total_rows,
        "rows_solved": int(rows_tried + params.iterations * total_rows),
        "remaining_ratings": n_remaining,
        "certificate": cert,
        "drift_max": {"user": 0.0, "item": 0.0},
        "bnorm_exact": {"user": True, "item": True},
        "iterations": params.iterations,
        "seconds": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t0}.items()},
        **info,
    }
    return UnlearnResult(result.model, offsets, remaining, plan.deleted, report, state,
                         drift_watch=empty_drift_watches())  # every row at its new target: nothing drifts
