"""What an unlearning strategy returns: new tables and the report, nothing stored yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.train import ALSState


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
