"""What an unlearning strategy returns: new tables and the report, nothing stored yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from spark_unlearn.als.model import FactorModel
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
