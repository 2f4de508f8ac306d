"""What an unlearning strategy returns: new tables and the report, nothing stored yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pyspark.sql import DataFrame

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.train import ALSState
from spark_unlearn.deferred import ForcesDeferred


@dataclass(frozen=True)
class RowChanges:
    """What a strategy changed in one side's factor and offsets tables, exactly, as arrays on the driver.

    ``removed``: ids whose rows left the side.  ``factor_ids``/``factors``:
    rows whose factor changed, and the new factors.  ``offset_ids`` with
    ``bnorm`` and ``drift``: rows whose offsets changed, and ``target_ids``
    with ``targets`` the rows that also got a new target (``residual``);
    ``offset_ids`` is ``None`` when offsets changed beyond the driver's
    arrays (implicit feedback moves every row's drift by ``ΔG x``, and a side
    not held on the driver, or rows left in Spark, keep those changes in
    Spark).  The store then writes that table in full.
    """

    removed: np.ndarray
    factor_ids: np.ndarray
    factors: np.ndarray
    offset_ids: np.ndarray | None = None
    bnorm: np.ndarray | None = None
    drift: np.ndarray | None = None
    target_ids: np.ndarray | None = None
    targets: np.ndarray | None = None


@dataclass
class UnlearnResult(ForcesDeferred):
    """New tables (lazy DataFrames) and the report.  Nothing has been stored.

    ``remaining`` and ``deleted`` may be :class:`~spark_unlearn.deferred.Deferred`
    (built when first read; :meth:`is_built` tells without building).
    """

    model: FactorModel
    offsets: tuple[DataFrame, DataFrame]
    remaining: DataFrame
    deleted: DataFrame
    report: dict[str, Any]
    state: ALSState | None
    grams: dict[str, list] | None = None  # per side, the Gram of the new factor tables, if known
    x_watch: dict[str, dict] | None = None  # implicit, targeted engine: per side, the new version's RatioWatch (JSON)
    changes: dict[str, RowChanges] | None = None  # per side, the exact row changes (targeted engine), for copy-on-write
    deleted_local: Any = None  # the deleted ratings as an Arrow table (user, item, rating) on the driver, if held there
    offset_plans: tuple | None = None  # the two offsets tables unbuilt (Deferred), when ``offsets`` builds them
    drift_watch: dict[str, dict] | None = None  # explicit: per side, the new version's drift watch (RatioWatch JSON)

    def release(self) -> None:
        if self.state is not None:
            self.state.unpersist()


def report_head(mode: str, requested_mode: str, bound: RowTolerance, training_residual: dict[str, Any] | None,
                plan: Any) -> dict[str, Any]:
    """The fields every strategy's report starts with: what ran, the certificate's policy and floor, and what the
    deletion plan found (``plan``: a :class:`~spark_unlearn.als.plan.DeletionPlan` or the targeted engine's plan)."""
    return {
        "mode": mode,
        "requested_mode": requested_mode,
        "tolerance": bound.floor,
        "tolerance_source": bound.source,
        "certificate_policy": bound.policy,
        "training_residual": training_residual,
        "deletion": plan.counts,
        "not_found": plan.not_found,
        "erased_users": sorted(plan.erased_users)[:20],
        "withdrawn_items": sorted(plan.withdrawn_items)[:20],
    }


@dataclass
class TargetedResult:
    """What the targeted engine's strategies (the frontier, sweeps on the driver) return; ``converged=False``: the
    strategy did not reach its certificate within its budget, and the caller falls back."""

    model: FactorModel
    offsets: tuple[DataFrame, DataFrame]
    deleted: DataFrame
    plan: Any  # the targeted engine's plan (spark_unlearn.als.incremental.TargetedPlan)
    report: dict[str, Any]
    converged: bool
    grams: dict[str, list] | None
    x_watch: dict[str, dict] | None = None  # implicit: per side, the new version's RatioWatch (as JSON)
    changes: dict[str, RowChanges] | None = None  # per side, the exact row changes (for copy-on-write publication)
    deleted_local: Any = None  # the deleted ratings (Arrow: user, item, rating)
    drift_watch: dict[str, dict] | None = None  # explicit: per side, the new version's drift watch (RatioWatch JSON)
